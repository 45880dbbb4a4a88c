"""Named models in one registry (MLflow's registered models): each name has its own versions, aliases and history;
a registry written before names existed (one model at the root) still reads, and new names go beside it.
Real files, real fitted scikit-learn pipelines, the real `mlops-nb` console script."""
import json, subprocess
from argparse import Namespace
from pathlib import Path

import numpy as np, pandas as pd, pytest
from sklearn.linear_model import LogisticRegression

from conftest import VENV_BIN, merge
from mlops_nb.core import MlopsError
from mlops_nb.registry import Registry, parse_model_ref


def _data(seed):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({'a': rng.normal(size=300), 'b': rng.normal(size=300)})
    return X, (X.a + rng.normal(scale=0.5, size=300) > 0).astype(int)

def _register(reg, seed, **kw):
    X, y = _data(seed)
    return reg.register(LogisticRegression(C=1.0 / (seed + 1)).fit(X, y), features=['a', 'b'], task='classification',
                        X_test=X.iloc[:50], metrics={'roc_auc': 0.5 + seed / 100}, **kw)

def cli(args, cwd, check=0):
    r = subprocess.run([str(VENV_BIN/'mlops-nb'), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == check, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def test_two_named_models_have_independent_versions_aliases_and_history(tmp_path):
    root = tmp_path/'registry'
    fraud, churn = Registry(root, 'fraud'), Registry(root, 'churn')
    assert [_register(fraud, 1), _register(fraud, 2)] == ['v0001', 'v0002']
    assert _register(churn, 3) == 'v0001'                       # numbering is per model
    fraud.promote('v0002', reason='better'); churn.promote('v0001'); fraud.promote('v0001', alias='challenger')
    assert fraud.aliases() == {'champion': 'v0002', 'challenger': 'v0001'} and churn.aliases() == {'champion': 'v0001'}
    assert Registry(root).names() == ['fraud', 'churn'] and fraud.names() == churn.names()
    # the first model keeps the one-model layout at the root; the others live under models/NAME/
    assert fraud.dir == root and churn.dir == root/'models'/'churn' and json.loads((root/'registry.json').read_text()) == {'root_model': 'fraud'}
    assert Registry(root).name == 'fraud' and Registry(root).aliases() == fraud.aliases()
    # lineage and history per name: model.json and every history line name their model
    assert fraud.info('champion')['name'] == 'fraud' and churn.info('champion')['name'] == 'churn'
    assert [(h['model'], h['alias'], h['version']) for h in fraud.history()] == [('fraud', 'champion', 'v0002'), ('fraud', 'challenger', 'v0001')]
    assert [(h['model'], h['version']) for h in churn.history()] == [('churn', 'v0001')]
    # a rollback, an archive or a load of one model leaves the other alone
    churn_before = (churn.aliases(), churn.history())
    fraud.rollback(to='v0001'); fraud.promote('v0002', alias='challenger')
    assert fraud.aliases()['champion'] == 'v0001' and (churn.aliases(), churn.history()) == churn_before
    assert np.allclose(churn.load('champion').coef_, LogisticRegression(C=0.25).fit(*_data(3)).coef_)
    # the name a version is registered under is the registry model's
    with pytest.raises(MlopsError, match="name 'churn' differs from this registry model's name 'fraud'"): _register(fraud, 4, name='churn')
    with pytest.raises(MlopsError, match="model name 'Bad Name!' is not valid"): Registry(root, 'Bad Name!')
    with pytest.raises(MlopsError, match=r"model 'nope'.*unknown version 'v0001'"): Registry(root, 'nope').resolve('v0001')


def test_model_references_name_a_model_and_a_version_or_alias():
    assert parse_model_ref('fraud@champion') == ('fraud', 'champion')
    assert parse_model_ref('models:/fraud@challenger') == ('fraud', 'challenger')
    assert parse_model_ref('models:/churn/3') == ('churn', '3')
    assert parse_model_ref('champion') == (None, 'champion') and parse_model_ref('v0002', 'churn') == ('churn', 'v0002')
    with pytest.raises(MlopsError, match="nothing after '@'"): parse_model_ref('fraud@')
    with pytest.raises(MlopsError, match='is not valid'): parse_model_ref('a b@champion')


def _legacy_registry(root):
    "A registry as written before named models: one model's versions/, aliases.json, history.jsonl at the root, no registry.json."
    reg = Registry(root)
    _register(reg, 1); _register(reg, 2); reg.promote('v0001')
    (root/'registry.json').unlink()
    lines = [json.loads(l) for l in (root/'history.jsonl').read_text().splitlines()]
    (root/'history.jsonl').write_text(''.join(json.dumps({k: v for k, v in l.items() if k != 'model'}, sort_keys=True) + '\n' for l in lines))
    assert sorted(p.name for p in root.iterdir()) == ['.lock', 'aliases.json', 'history.jsonl', 'versions']
    return root


def test_a_registry_written_before_named_models_still_reads_and_grows_new_names(tmp_path):
    root = _legacy_registry(tmp_path/'registry')
    old = Registry(root)
    assert old.name == 'model' and old.versions() == ['v0001', 'v0002'] and old.aliases() == {'champion': 'v0001'}
    assert Registry(root, 'model').info('champion')['version'] == 'v0001' and len(old.history()) == 1
    before = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob('*') if p.is_file() and p.name != '.lock'}
    churn = Registry(root, 'churn')
    _register(churn, 3); churn.promote('v0001')
    assert churn.dir == root/'models'/'churn' and old.names() == ['model', 'churn']
    after = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob('*') if p.is_file() and p.name != '.lock' and not p.relative_to(root).as_posix().startswith('models/')}
    assert after == before                                       # the old model's files untouched, no migration needed
    _register(old, 4); old.promote('v0003')                      # and it keeps growing in place
    assert (root/'versions'/'v0003'/'model.json').is_file() and old.aliases() == {'champion': 'v0003'} and churn.aliases() == {'champion': 'v0001'}


def test_cli_models_takes_the_model_name(tmp_path):
    root = _legacy_registry(tmp_path/'registry')
    churn = Registry(root, 'churn'); _register(churn, 3); _register(churn, 4)
    out = cli(['models', 'list', '--registry', 'registry'], tmp_path).stdout
    rows = [l.split() for l in out.splitlines()[2:]]
    assert out.splitlines()[0].split()[:3] == ['model', 'version', 'status']
    assert [(r[0], r[1]) for r in rows] == [('model', 'v0001'), ('model', 'v0002'), ('churn', 'v0001'), ('churn', 'v0002')]
    cli(['models', 'promote', 'v0002', '--model', 'churn', '--registry', 'registry', '--reason', 'newer'], tmp_path)
    assert churn.aliases() == {'champion': 'v0002'} and Registry(root).aliases() == {'champion': 'v0001'}
    shown = json.loads(cli(['models', '--model', 'churn', 'show', 'champion', '--registry', 'registry', '--json'], tmp_path).stdout)
    assert shown['name'] == 'churn' and shown['version'] == 'v0002'
    names = json.loads(cli(['models', 'names', '--registry', 'registry', '--json'], tmp_path).stdout)
    assert [(n['model'], n['versions'], n['champion']) for n in names] == [('model', 2, 'v0001'), ('churn', 2, 'v0002')]
    hist = json.loads(cli(['models', 'history', '--model', 'churn', '--registry', 'registry', '--json'], tmp_path).stdout)
    assert [(h['model'], h['version'], h['reason']) for h in hist] == [('churn', 'v0002', 'newer')]
    # deploy.model_name of ./params.yaml picks the model when --model is not given
    (tmp_path/'params.yaml').write_text('deploy: {registry: registry, model_name: churn}\n')
    assert 'churn v0002' in cli(['models', 'show', 'champion'], tmp_path).stdout
    err = cli(['models', 'show', 'champion', '--model', 'nope'], tmp_path, check=2).stderr
    assert "no model named 'nope' (models: model, churn" in err


def test_monitor_reference_names_a_model(tmp_path):
    from mlops_nb.monitor import _registry_ref
    root = tmp_path/'registry'
    _register(Registry(root, 'fraud'), 1); churn = Registry(root, 'churn'); _register(churn, 2); churn.promote('v0001')
    reg, ref = _registry_ref(Namespace(reference='churn@champion', registry=str(root), model=None), {})
    assert (reg.name, reg.resolve(ref)) == ('churn', 'v0001')
    reg, ref = _registry_ref(Namespace(reference='champion', registry=str(root), model=None), {'deploy': {'model_name': 'churn'}})
    assert reg.name == 'churn'
    reg, ref = _registry_ref(Namespace(reference=str(root/'models/churn/versions/v0001'), registry=None, model=None), {})
    assert (reg.name, reg.dir, ref) == ('churn', root/'models'/'churn', 'v0001')
    with pytest.raises(MlopsError, match="no model 'nope' in the registry .*models: fraud, churn"):
        _registry_ref(Namespace(reference='nope@champion', registry=str(root), model=None), {})


def test_the_pipeline_steps_use_the_model_deploy_model_name_names(tmp_path):
    from mlops_nb import monitor as mon
    from mlops_nb.steps import champion_contract, monitor_reference
    root = tmp_path/'registry'
    fraud = Registry(root, 'fraud'); _register(fraud, 1); fraud.promote('v0001')
    mon.reference_profile(_data(2)[0], ['a', 'b'], []).save(tmp_path/'profile')
    churn = Registry(root, 'churn'); _register(churn, 2); _register(churn, 3, artifacts={'profile': tmp_path/'profile'}); churn.promote('v0002')
    params = lambda name: {'task': {'type': 'classification', 'target': 'y'}, 'deploy': {'registry': str(root), 'model_name': name}}
    assert champion_contract(params('churn'))[1] == 'v0002' and champion_contract(params('fraud'))[1] == 'v0001'
    assert champion_contract(params('nope')) is None                # a name with no champion yet: prepare infers its schema
    feats = merge(params('churn'), {'task': {'time_column': 'ts'}, 'prepare': {'features': {'time_parts': ['hour'], 'log': ['a'], 'ratios': {'a_b': ['a', 'b']}}}})
    assert champion_contract(feats)[2] == ['a_b', 'log_a', 'ts_hour']   # the columns the prepare step derives (not in raw data)
    ref = monitor_reference(params('churn'))                        # the monitor's reference: that model's champion and its profile
    assert (ref.source, ref.version, ref.registry.name) == ('registry', 'v0002', 'churn') and "model 'churn'" in ref.note


def test_serve_takes_a_named_model_and_follows_its_own_alias(tmp_path):
    "`mlops-nb serve --model churn@champion` serves that model's champion and swaps when its alias moves, not another model's."
    import time
    from test_serve import Server
    root = tmp_path/'registry'
    fraud, churn = Registry(root, 'fraud'), Registry(root, 'churn')
    _register(fraud, 1); _register(churn, 2); _register(churn, 3)
    fraud.promote('v0001'); churn.promote('v0001')
    srv = Server(tmp_path, root, '--model', 'churn@champion', '--no-capture')
    try:
        st, meta = srv.get('/metadata')
        assert st == 200 and meta['version'] == 'v0001' and Path(meta['path']) == churn.versions_dir/'v0001', meta
        st, out, _ = srv.post('/invocations', {'dataframe_records': [{'a': 0.3, 'b': -1.0}]})
        assert st == 200 and out['predictions'] in ([0], [1]), out
        fraud.promote('v0001', alias='challenger')                # another model's aliases: nothing to reload
        churn.promote('v0002', reason='better')
        for _ in range(100):
            if srv.get('/metadata')[1]['version'] == 'v0002': break
            time.sleep(0.1)
        meta = srv.get('/metadata')[1]
        assert meta['version'] == 'v0002' and Path(meta['path']) == churn.versions_dir/'v0002', meta
    finally:
        assert srv.stop() == 0


def _history_rows(card:str) -> list[tuple]:
    "The (action, alias, version, previous, why) of every row of a card's 'Deployment history' table."
    table = card.split('## Deployment history', 1)[1].strip().splitlines()[2:]
    return [(c[1], c[2], c[3], c[4], c[6]) for c in ([x.strip() for x in l.strip('|').split('|')] for l in table if l.startswith('|'))]

def test_the_model_card_of_a_named_model_shows_its_own_name_versions_and_aliases(tmp_path):
    "Two models with the same version numbers: each card names its model and shows that model's version, metrics and alias changes only."
    from mlops_nb.registry import card_markdown
    root = tmp_path/'registry'
    fraud, churn = Registry(root, 'fraud'), Registry(root, 'churn')
    for seed in (1, 2, 3): _register(fraud, seed)                 # roc_auc 0.51, 0.52, 0.53
    _register(churn, 4); _register(churn, 5)                       # roc_auc 0.54, 0.55
    fraud.promote('v0002', reason='fraud first'); fraud.promote('v0001', alias='challenger', reason='fraud trial')
    fraud.promote('v0003', reason='fraud second')                  # fraud's champion leaves v0002
    churn.promote('v0002', reason='churn release'); churn.promote('v0001', alias='challenger', reason='churn trial')
    card = churn.card('champion')
    assert card.splitlines()[0] == '# Model card: churn v0002', card.splitlines()[0]
    assert '| roc_auc | 0.55 |' in card and '0.52' not in card     # churn v0002's metrics, not fraud v0002's
    assert _history_rows(card) == [('promote', 'champion', 'v0002', '—', 'churn release')], card
    assert 'fraud' not in card
    assert _history_rows(churn.card('v0001')) == [('promote', 'challenger', 'v0001', '—', 'churn trial')]
    # the same version number of the other model (the registry's root model): its own title, metrics and alias changes
    for reg in (fraud, Registry(root)):
        other = reg.card('v0002')
        assert other.splitlines()[0] == '# Model card: fraud v0002' and '| roc_auc | 0.52 |' in other and 'churn' not in other, other
        assert _history_rows(other) == [('promote', 'champion', 'v0002', '—', 'fraud first'),
                                        ('promote', 'champion', 'v0003', 'v0002', 'fraud second')], other
    # the registered card.md (card_markdown of model.json) and the HTML card carry the name too
    assert card_markdown(churn.info('v0001')).splitlines()[0] == '# Model card: churn v0001'
    assert (churn.versions_dir/'v0002'/'card.md').read_text().splitlines()[0] == '# Model card: churn v0002'
    assert '<title>Model card: churn v0002</title>' in churn.card('champion', html=True)
    # and the CLI prints the named model's card
    out = cli(['models', 'card', 'champion', '--model', 'churn', '--registry', 'registry'], tmp_path).stdout
    assert out.splitlines()[0] == '# Model card: churn v0002' and _history_rows(out) == _history_rows(card), out


def test_cli_monitor_compares_with_the_named_models_champion(tmp_path):
    """`mlops-nb monitor --reference NAME@champion` (or --model NAME) compares the current window with that model's champion's
    saved profile, not the root model's nor another version's; a model name the registry does not hold is an error naming it."""
    from mlops_nb import monitor as mon
    def frame(shift, seed, n=2000):
        rng = np.random.default_rng(seed)
        return pd.DataFrame({'a': rng.normal(shift, 1, n), 'b': rng.normal(-shift, 1, n)})
    mon.reference_profile(frame(0, 1), ['a', 'b'], []).save(tmp_path/'profile_old')
    mon.reference_profile(frame(3, 2), ['a', 'b'], []).save(tmp_path/'profile_new')
    root = tmp_path/'registry'
    fraud, churn = Registry(root, 'fraud'), Registry(root, 'churn')
    _register(fraud, 1, artifacts={'profile': tmp_path/'profile_old'}); fraud.promote('v0001')
    _register(churn, 2, artifacts={'profile': tmp_path/'profile_old'}); _register(churn, 3, artifacts={'profile': tmp_path/'profile_new'})
    churn.promote('v0002')                                         # churn's champion was profiled on the shifted data
    frame(3, 9, 800).to_csv(tmp_path/'current.csv', index=False)    # the current window: like churn's champion's data
    base = ['monitor', '--registry', 'registry', '--current', 'current.csv']
    for ref in (['--reference', 'churn@champion'], ['--reference', 'models:/churn@champion'], ['--reference', 'champion', '--model', 'churn']):
        r = cli(base + ref + ['--status', 'status.json'], tmp_path)      # exit 0: no drift against churn v0002
        assert 'OK: 0 of 2 features drifted' in r.stdout and "(reference: model 'churn' v0002 in registry)" in r.stdout, r.stdout
        status = json.loads((tmp_path/'status.json').read_text())
        ref_info = dict(status['reference'])
        assert ref_info.pop('estimation').startswith('not estimated'), status   # this window carries no scores to estimate from
        assert status['status'] == 'ok' and ref_info == dict(source='registry', registry='registry', model='churn', version='v0002',
                                                             ref='champion', profile='saved at registration'), status
    # the root model's champion (fraud v0001) and churn's own v0001: the old data, so both features drifted (exit 1)
    for ref in (['--reference', 'champion'], ['--reference', 'churn@v0001']):
        r = cli(base + ref + ['--status', 'status.json'], tmp_path, check=1)
        assert 'ALERT: 2 of 2 features drifted' in r.stdout and f"(reference: model '{'churn' if 'churn@v0001' in ref else 'fraud'}' v0001 in registry)" in r.stdout, r.stdout
        assert json.loads((tmp_path/'status.json').read_text())['reference']['model'] == ('churn' if 'churn@v0001' in ref else 'fraud')
    # a model the registry does not hold: exit 2 and a message naming it and the models there are
    for ref in (['--reference', 'nope@champion'], ['--reference', 'champion', '--model', 'nope']):
        r = cli(base + ref, tmp_path, check=2)
        assert "no model 'nope' in the registry at registry" in r.stderr and 'models: fraud, churn' in r.stderr, r.stderr
        assert 'Traceback' not in r.stderr and not r.stdout.strip(), r
