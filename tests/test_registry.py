"""The model registry and the deploy stage, with real files and real processes.

One `dvc repro` (module-scoped) builds a project whose deploy stage registered and promoted v0001; one
`dvc exp run` with a stricter gate adds the rejected v0002. Everything else works on copies of that registry
and on the candidate model it produced: crash tests kill real subprocesses with SIGKILL at named points
(`MLOPS_NB_KILL_AT`, see `mlops_nb.registry._kill_point`), two real processes promote at once, files are
tampered with on disk, and the `mlops-nb` console script is run for its exit codes.
"""
import copy, json, os, shutil, signal, subprocess, sys, textwrap, time
from pathlib import Path

import nbformat, numpy as np, pandas as pd, pytest

from conftest import VENV_BIN, copy_project, run
from mlops_nb.core import MlopsError
from mlops_nb.registry import Registry, export_onnx, onnx_parity

pytestmark = pytest.mark.e2e


@pytest.fixture(scope='module')
def deployed(tmp_path_factory):
    "A project after `dvc repro` (v0001 accepted, champion) and a `dvc exp run` whose stricter gate rejected v0002."
    p = copy_project(tmp_path_factory.mktemp('deploy')/'proj')
    # latency is checked, but a test must not depend on how loaded the machine is: a bound no machine misses
    # the task's gates written out (a mapping replaces `auto`), so that `dvc exp run -S` can change one rule below
    from mlops_nb.params import TASK_DEFAULTS
    gates = copy.deepcopy(TASK_DEFAULTS['classification']['gates']) | {'latency_ms': {'threshold': 60000}}
    p.set_params({'deploy': {'gates': gates}})
    p.commit('test params')
    p.head = p.run('git rev-parse HEAD').stdout.strip()
    first = p.run('dvc repro').stdout
    assert "Running stage 'deploy'" in first
    p.first_gate = json.loads((p.path/'metrics/gate.json').read_text())
    p.first_report = nbformat.read(p.path/'reports/05_deploy.ipynb', as_version=4)
    p.second_repro = p.run('dvc repro').stdout
    p.commit('first run')
    p.exp = p.run('dvc exp run -S deploy.gates.pr_auc.min_absolute_change=0.5').stdout
    return p


def cli(args, cwd, check=None):
    "Run the `mlops-nb` console script; return the CompletedProcess (asserting its exit code if `check` is given)."
    r = subprocess.run([str(VENV_BIN/'mlops-nb'), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    if check is not None: assert r.returncode == check, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def state(root:Path) -> dict:
    "What a reader of the registry sees: versions (with their files' bytes), aliases, committed history, statuses."
    reg = Registry(root)
    files = {p.relative_to(root).as_posix(): p.read_bytes() for v in reg.versions() for p in (root/'versions'/v).rglob('*') if p.is_file()}
    return dict(versions=reg.versions(), aliases=reg.aliases(), history=reg.history(), status=reg._statuses(), files=files)


# ---------------------------------------------------------------------------------------------- the deploy stage

def test_deploy_stage_registers_gates_and_promotes(deployed):
    p, g = deployed.path, deployed.first_gate
    assert g['passed'] and g['version'] == 'v0001' and g['promoted_to'] == 'champion' and g['champion_before'] is None
    assert any('no champion yet' in r for r in g['reasons'])
    assert {c['metric'] for c in g['checks']} == {'pr_auc', 'roc_auc', 'ece', 'latency_ms'}
    # the report shows the decision and every reason, without errors
    outs = [o for c in deployed.first_report.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
    assert not [o for o in outs if o.output_type == 'error']
    shown = '\n'.join(str(o.get('data', {}).get('text/markdown', '')) for o in outs)
    assert 'Gate passed' in shown and 'v0001' in shown and 'pr_auc' in shown
    # the second repro changes nothing and keeps the registry
    again = deployed.second_repro   # only the look at the sources runs (always_changed); it finds them unchanged
    assert "Running stage 'sources'" in again and 'Running stage' not in again.replace("Running stage 'sources'", ''), again
    # the exp run with a stricter margin reran deploy only, rejected v0002 and kept the champion
    assert "Running stage 'deploy'" in deployed.exp and "Running stage 'train'" not in deployed.exp
    g2 = json.loads((p/'metrics/gate.json').read_text())
    assert (g2['passed'], g2['version'], g2['status'], g2['champion_before'], g2['champion_after']) == (False, 'v0002', 'rejected', 'v0001', 'v0001')
    assert any('min_absolute_change 0.5' in f for f in g2['failed'])
    reg = Registry(p/'registry')
    assert reg.versions() == ['v0001', 'v0002'] and reg.aliases() == {'champion': 'v0001'}
    assert reg.info('v0002')['status'] == 'rejected' and reg.info('v0002')['gate']['passed'] is False
    shown = json.loads(deployed.run('dvc metrics show --json').stdout)
    assert 'metrics/key/deploy.json' in json.dumps(shown)


def test_version_holds_lineage_schema_card_and_safe_artefacts(deployed):
    p = deployed.path
    reg = Registry(p/'registry')
    d, info = reg.version_dir('champion'), reg.info('champion')
    names = {f.relative_to(d).as_posix() for f in d.rglob('*') if f.is_file()}
    assert {'model.skops', 'schema.json', 'model.json', 'card.md', 'card.html', 'manifest.json', 'figures/roc.png'} <= names
    assert set(json.loads((d/'manifest.json').read_text())['files']) == names - {'manifest.json'}
    # lineage: the code commit, clean tree, the data snapshot DVC knows, training time
    assert info['git']['commit'] == deployed.head and info['git']['dirty'] is False
    lock = deployed.run('cat dvc.lock').stdout
    assert info['data']['dvc_md5'] and info['data']['dvc_md5'] in lock and len(info['data']['sha256']) == 64
    assert info['training_seconds'] > 0 and info['trained_at'] and info['created_at']
    assert info['params']['train']['estimator'] == 'hist_gradient_boosting' and info['estimator'] == 'hist_gradient_boosting'
    # the schema is the raw record the model takes (its feature step builds the rest), in order
    spec = json.loads((p/'data/prepared/features.json').read_text())
    assert info['features'] == spec['inputs'] and not set(info['feature_step']['derived']) & set(info['features'])
    assert [c['name'] for c in json.loads((d/'schema.json').read_text())['columns']] == info['features']
    # the model loads back (skops, trusted types) and predicts like the candidate
    test = pd.read_parquet(p/'data/prepared/test.parquet')
    from mlops_nb.train import load_model
    cand = load_model(p/'models/candidate/model.skops')
    np.testing.assert_allclose(reg.load('champion').predict_proba(test[info['features']])[:, 1],
                               cand.predict_proba(test[info['features']])[:, 1], atol=1e-12)
    # ONNX: exported in double, the default HistGradientBoosting pipeline passes parity, so model.onnx is kept
    o = info['onnx']
    assert o['tolerance'] == 1e-4 and o['rows'] == len(test)
    assert o['kept'] and o['max_abs_diff'] < 1e-6 and o['rows_over'] == 0 and (d/'model.onnx').exists(), o
    # the graph takes the model's columns after the feature step, which the version keeps as its numpy pre-step
    assert o['inputs'] and all(i['type'] == ('double' if i['name'] in info['numeric'] else 'string') for i in o['inputs'])
    assert {i['name'] for i in o['inputs']} <= set(info['numeric'] + info['categorical'])
    assert o['pre_step']['derived'] == info['feature_step']['derived'] and set(o['pre_step']['derived']) & {i['name'] for i in o['inputs']}
    from mlops_nb.registry import onnx_session
    sess = onnx_session(reg.load_onnx('champion'))
    assert [(i.name, i.type) for i in sess.get_inputs()] == [(i['name'], f"tensor({i['type']})") for i in o['inputs']]
    assert [(x.name, x.type) for x in sess.get_outputs()] == [('label', 'tensor(int64)'), ('probabilities', 'tensor(double)')]
    # the card: markdown and self-contained HTML from the evaluation metrics and figures
    md, page = (d/'card.md').read_text(), (d/'card.html').read_text()
    for s in ['## Intended use', '## Metrics on the held-out test data', '## Deploy gate', '## Limitations', 'figures/roc.png', info['git']['commit']]:
        assert s in md, s
    assert '<table>' in page and 'data:image/png;base64,' in page and f"{info['metrics']['pr_auc']:.4g}" in page


def test_default_model_onnx_matches_in_double_on_real_data(deployed):
    "The candidate (HistGradientBoosting behind the project's preprocessing) on the test split, with missing values."
    p = deployed.path
    from mlops_nb.registry import onnx_input_spec, onnx_predict, onnx_session
    from mlops_nb.train import load_model
    info = Registry(p/'registry').info('champion')
    cand = load_model(p/'models/candidate/model.skops')
    assert type(cand.named_steps['model']).__name__ == 'HistGradientBoostingClassifier'
    test = pd.read_parquet(p/'data/prepared/test.parquet')
    from mlops_nb.registry import _used_columns, onnx_model_frame, split_feature_step
    Xt = test[info['features']].copy()                       # raw records
    num = [c for c in info['features'] if c in info['numeric']]
    Xt.loc[Xt.index[::7], num[0]] = np.nan; Xt.loc[Xt.index[::11], num[-1]] = np.nan   # the imputers' path (and a ratio of a null) too
    Xt.loc[Xt.index[::13], [c for c in info['categorical'] if c in info['features']][0]] = None
    step, rest = split_feature_step(cand)
    assert step is not None
    frame = lambda X: onnx_model_frame(step, X)[_used_columns(rest)]   # what the server feeds the graph: the numpy pre-step's output
    b = export_onnx(rest, frame(Xt))
    par = onnx_parity(cand, b, Xt, tolerance=1e-6)
    assert par['ok'] and par['rows_over'] == 0 and par['max_abs_diff'] < 1e-6 and par['rows'] == len(Xt), par
    # also batch by batch and row by row, as the server calls it
    sess, spec = onnx_session(b), onnx_input_spec(frame(Xt))
    ref = cand.predict_proba(Xt)[:, 1]
    np.testing.assert_allclose(np.concatenate([onnx_predict(sess, frame(Xt.iloc[i:i + 100]), spec) for i in range(0, len(Xt), 100)]), ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose([onnx_predict(sess, frame(Xt.iloc[[i]]), spec)[0] for i in range(0, len(Xt), 37)], ref[::37], rtol=0, atol=1e-6)


def test_onnx_parity_rejects_a_differing_export(deployed):
    p = deployed.path
    from mlops_nb.train import load_model, make_estimator, make_pipeline
    info = Registry(p/'registry').info('champion')
    train, test = (pd.read_parquet(p/f'data/prepared/{s}.parquet') for s in ('train', 'test'))
    cols = info['numeric'] + info['categorical']            # a pipeline without a feature step, on the prepared columns
    X, Xt = train[cols], test[cols]
    lr = make_pipeline(info['numeric'], info['categorical'], make_estimator('logistic_regression', 'classification')).fit(X, train.is_fraud)
    good = onnx_parity(lr, export_onnx(lr, Xt), Xt)
    assert good['ok'] and good['max_abs_diff'] < 1e-5
    other = make_pipeline(info['numeric'], info['categorical'], make_estimator('logistic_regression', 'classification', {'C': 1e-4})).fit(X, train.is_fraud)
    bad = onnx_parity(lr, export_onnx(other, Xt), Xt)        # an ONNX graph that predicts differently
    assert not bad['ok'] and bad['max_abs_diff'] > 1e-3 and bad['rows_over'] > 0
    # register keeps model.onnx only when parity holds at the stated tolerance
    reg = Registry(p.parent/'onnx-registry')
    v_ok = reg.register(lr, features=cols, task='classification', X_test=Xt)
    v_strict = reg.register(lr, features=cols, task='classification', X_test=Xt, onnx_tolerance=0.0)
    assert (reg.version_dir(v_ok)/'model.onnx').exists() and reg.info(v_ok)['onnx']['kept']
    assert not (reg.version_dir(v_strict)/'model.onnx').exists()
    assert not reg.info(v_strict)['onnx']['kept'] and '> tolerance 0' in reg.info(v_strict)['onnx']['reason']
    from mlops_nb.registry import onnx_predict, onnx_session
    np.testing.assert_allclose(onnx_predict(onnx_session(reg.load_onnx(v_ok)), Xt), lr.predict_proba(Xt)[:, 1], atol=1e-5)
    with pytest.raises(MlopsError, match='no model.onnx'): reg.load_onnx(v_strict)


# ------------------------------------------------------------------------------------------ atomicity and locks

SCRIPT = textwrap.dedent('''
    import sys
    from mlops_nb.registry import Registry
    root, proj, op = sys.argv[1], sys.argv[2], sys.argv[3]
    reg = Registry(root)
    if op == 'register':
        import pandas as pd
        from mlops_nb.registry import load_skops
        info = reg.info('champion')
        X = pd.read_parquet(proj + '/data/prepared/test.parquet')[info['features']].head(200)
        print(reg.register(load_skops(proj + '/models/candidate/model.skops'), features=info['features'], task='classification', X_test=X))
    elif op == 'promote': print(reg.promote(sys.argv[4], reason='test'))
    elif op == 'rollback': print(reg.rollback(reason='test'))
    elif op == 'archive': print(reg.archive(sys.argv[4], reason='test'))
''')


def do(root:Path, proj:Path, op:str, *args):
    "The same operation in this process (the writer that comes after a killed one)."
    reg = Registry(root)
    if op == 'register':
        info = reg.info('champion')
        X = pd.read_parquet(proj/'data/prepared/test.parquet')[info['features']].head(200)
        from mlops_nb.registry import load_skops
        return reg.register(load_skops(proj/'models/candidate/model.skops'), features=info['features'], task='classification', X_test=X)
    if op == 'promote': return reg.promote(args[0], reason='test')
    if op == 'rollback': return reg.rollback(reason='test')
    if op == 'archive': return reg.archive(args[0], reason='test')


@pytest.fixture(scope='module')
def base_registry(deployed, tmp_path_factory):
    "The deployed registry plus a third, accepted version (v0003) promoted over v0001."
    root = tmp_path_factory.mktemp('base')/'registry'
    shutil.copytree(deployed.path/'registry', root)
    assert do(root, deployed.path, 'register') == 'v0003'
    Registry(root).promote('v0003', reason='setup', actor='test')
    return root


@pytest.fixture
def reg_copy(base_registry, tmp_path):
    "A fresh copy of the base registry, with the crash-test script beside it."
    root = tmp_path/'registry'
    shutil.copytree(base_registry, root)
    (tmp_path/'op.py').write_text(SCRIPT)
    return root


def op(root, *args, kill=None):
    "Run one registry operation in a new Python process, killed with SIGKILL at the named point."
    env = dict(os.environ, MLOPS_NB_KILL_AT=kill or '')
    return subprocess.run([sys.executable, str(root.parent/'op.py'), str(root), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize('point, args', [
    ('register:files-written', ['register']),
    ('register:before-rename', ['register']),
    ('promote:history-appended', ['promote', 'v0001']),
    ('promote:aliases-written', ['promote', 'v0001']),
    ('rollback:history-appended', ['rollback']),
    ('rollback:aliases-written', ['rollback']),
    ('archive:history-appended', ['archive', 'v0002']),
    ('archive:status-written', ['archive', 'v0002']),
])
def test_a_process_killed_mid_write_leaves_the_registry_as_it_was(reg_copy, deployed, point, args):
    root = reg_copy
    before = state(root)
    r = op(root, deployed.path, *args, kill=point)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    assert state(root) == before                       # readers see exactly the old registry
    assert Registry(root).load('champion') is not None  # and the champion still loads, verified
    # the next writer cleans up what the killed one left (a temp folder, an unfinished history line) and works
    do(root, deployed.path, *args)
    after = state(root)
    assert not [p for p in (root/'versions').iterdir() if p.name.startswith('.tmp-')]
    assert not list(root.glob('.*.tmp'))
    assert len(after['history']) == len(before['history']) + (0 if args[0] == 'register' else 1)
    assert [json.loads(l) for l in (root/'history.jsonl').read_text().splitlines()] == after['history']
    if args[0] == 'register': assert after['versions'] == before['versions'] + ['v0004']
    if args[0] == 'promote': assert after['aliases']['champion'] == 'v0001'
    if args[0] == 'rollback': assert after['aliases']['champion'] == 'v0001' and after['history'][-1]['previous'] == 'v0003'
    if args[0] == 'archive': assert after['status'] == {'v0002': 'archived'}


def test_two_processes_promoting_at_once_serialise(reg_copy, tmp_path):
    root, n = reg_copy, 15
    go = tmp_path/'go'
    code = textwrap.dedent(f'''
        import os, sys, time
        from mlops_nb.registry import Registry
        reg, mine = Registry({str(root)!r}), sys.argv[1:]
        while not os.path.exists({str(go)!r}): time.sleep(0.01)
        changed = 0
        for i in range({n}):
            for v in mine:
                changed += reg.promote(v, reason=f'pid {{os.getpid()}} round {{i}}') is not None
        print(changed)
    ''')
    procs = [subprocess.Popen([sys.executable, '-c', code, *vs], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for vs in (['v0001', 'v0003'], ['v0003', 'v0001'])]
    time.sleep(1.5); go.touch()
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    changed = sum(int(o[0].strip()) for o in outs)
    reg = Registry(root)
    hist = reg.history('champion')
    raw = (root/'history.jsonl').read_text().splitlines()
    assert len(raw) == len(reg.history()) and len(hist) == 2 + changed    # setup promoted twice before
    for a, b in zip(hist, hist[1:]): assert b['previous'] == a['version'] != b['version']   # an unbroken chain: no lost update
    assert reg.aliases()['champion'] == hist[-1]['version']
    pids = {h['reason'].split()[1] for h in hist[2:]}
    assert len(pids) == 2      # both processes really changed the champion


# ---------------------------------------------------------------------------------------------------- bad input

def test_tampered_or_truncated_artefacts_are_refused_and_the_champion_stays(deployed, reg_copy):
    root = reg_copy
    reg = Registry(root)
    f = root/'versions/v0001/model.skops'
    good = f.read_bytes()
    f.write_bytes(good[:-7] + b'tamper!')
    with pytest.raises(MlopsError, match='sha256 mismatch'): reg.load('v0001')
    r = cli(['models', '--registry', str(root), 'show', 'v0001'], deployed.path, check=2)
    assert 'sha256 mismatch' in r.stderr and 'model.skops' in r.stderr
    with pytest.raises(MlopsError, match='sha256 mismatch'): reg.promote('v0001')      # a damaged version is never promoted
    f.write_bytes(good[: len(good) // 2])
    with pytest.raises(MlopsError, match='truncated'): reg.load('v0001')
    (root/'versions/v0003/extra.py').write_text('print(1)')
    with pytest.raises(MlopsError, match='not in the manifest'): reg.version_dir('v0003')
    (root/'versions/v0003/extra.py').unlink()
    assert reg.aliases() == {'champion': 'v0003'} and reg.load('champion') is not None


def test_a_skops_file_with_an_untrusted_type_is_refused(deployed, tmp_path):
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer
    from mlops_nb.registry import sha256_file
    reg = Registry(tmp_path/'registry')
    evil = FunctionTransformer(func=eval)                  # loading it would hand `eval` to whoever wrote the file
    with pytest.raises(MlopsError, match=r"refusing to register a model holding type\(s\) \['builtins.eval'\]"):
        reg.register(evil, features=['a'], task='classification', X_test=pd.DataFrame({'a': [1.0, 2.0]}))
    # a registry written by someone else: a valid manifest over an untrusted model file
    shutil.copytree(deployed.path/'registry', tmp_path/'other')
    d = tmp_path/'other/versions/v0001'
    (d/'model.skops').write_bytes(sio.dumps(evil))
    man = json.loads((d/'manifest.json').read_text())
    man['files']['model.skops'] = dict(sha256=sha256_file(d/'model.skops'), size=(d/'model.skops').stat().st_size)
    (d/'manifest.json').write_text(json.dumps(man))
    with pytest.raises(MlopsError, match=r"refusing to load untrusted type\(s\) \['builtins.eval'\]"):
        Registry(tmp_path/'other').load('champion')


def test_unknown_references_and_refused_changes(deployed, reg_copy):
    reg = Registry(reg_copy)
    with pytest.raises(MlopsError, match="unknown version 'v0042'"): reg.resolve('v0042')
    with pytest.raises(MlopsError, match="unknown version '42'"): reg.load('42')
    with pytest.raises(MlopsError, match="alias 'challenger' is not set"): reg.promote('challenger')
    with pytest.raises(MlopsError, match="status 'rejected'"): reg.promote('v0002')
    with pytest.raises(MlopsError, match='is the champion'): reg.archive('champion')
    with pytest.raises(MlopsError, match='not valid'): reg.promote('v0001', alias='Prod Alias!')
    assert reg.aliases() == {'champion': 'v0003'}


# -------------------------------------------------------------------------------------------- rollback and CLI

def test_rollback_and_the_history_answer_which_model_served_when(deployed, reg_copy):
    reg = Registry(reg_copy)
    t_v3 = reg.history('champion')[-1]['ts']
    e = reg.rollback(reason='incident 7', actor='oncall')
    assert (e['version'], e['previous'], e['action'], e['actor']) == ('v0001', 'v0003', 'rollback', 'oncall')
    assert reg.aliases()['champion'] == 'v0001'
    assert reg.alias_at(t_v3) in ('v0003', 'v0001')         # same-second timestamps: the later change wins
    assert reg.alias_at('2000-01-01T00:00:00+00:00') is None
    reg.promote('v0003', reason='fixed')
    assert reg.rollback(to='v0001')['version'] == 'v0001'
    assert [h['version'] for h in reg.history('champion')] == ['v0001', 'v0003', 'v0001', 'v0003', 'v0001']


def test_cli_models_and_gate_exit_codes(deployed, reg_copy, tmp_path):
    p, R = deployed.path, ['models', '--registry', str(reg_copy)]
    out = cli([*R, 'list'], p, check=0).stdout
    assert 'v0001' in out and 'v0002' in out and 'rejected' in out and 'champion' in out
    rows = json.loads(cli([*R, 'list', '--json'], p, check=0).stdout)
    assert [r['version'] for r in rows] == ['v0001', 'v0002', 'v0003'] and rows[2]['aliases'] == 'champion'
    assert 'FAIL: pr_auc' in cli([*R, 'show', '2'], p, check=0).stdout
    r = cli([*R, 'promote', 'v0002'], p, check=2)
    assert "status 'rejected'" in r.stderr and r.stderr.count('\n') == 1        # one line, no traceback
    assert 'v0003 -> v0002' in cli([*R, 'promote', 'v0002', '--force', '--reason', 'manual override'], p, check=0).stdout
    assert 'v0002 -> v0003' in cli([*R, 'rollback'], p, check=0).stdout
    assert 'unknown version' in cli([*R, 'show', 'v0099'], p, check=2).stderr
    assert "alias 'staging' is not set" in cli([*R, 'diff', 'staging', 'v0001'], p, check=2).stderr
    d = json.loads(cli([*R, 'diff', 'v0001', 'v0003', '--json'], p, check=0).stdout)
    assert d['a'] == 'v0001' and d['b'] == 'v0003' and 'schema' in d
    cli([*R, 'card', 'champion', '--html', '--out', str(tmp_path/'card.html')], p, check=0)
    assert (tmp_path/'card.html').read_text().startswith('<!doctype html>')
    hist = json.loads(cli([*R, 'history', '--json'], p, check=0).stdout)
    assert hist[-2]['reason'] == 'manual override'
    assert 'v0003 archived' not in cli([*R, 'archive', 'v0003'], p, check=2).stdout
    cli(['models', 'frobnicate'], p, check=2)                                    # argparse: bad usage
    # the gate: from the stage's JSON (the last run failed), and computed afresh against the champion
    r = cli(['gate', '--from', 'metrics/gate.json'], p, check=1)
    assert 'gate FAILED' in r.stdout and 'min_absolute_change 0.5' in r.stdout
    r = cli(['gate', '--out', str(tmp_path/'g.json')], p, check=1)      # params.yaml now asks +0.5 pr_auc over the champion
    assert json.loads((tmp_path/'g.json').read_text())['champion'] == 'v0001'
    r = cli(['gate', '--registry', str(tmp_path/'empty-registry')], p, check=0)   # no champion: thresholds only
    assert 'no champion yet' in r.stdout
    cli(['gate', '--from', 'no/such.json'], p, check=2)


def test_commands_leave_pipeline_outputs_alone_and_say_what_they_see(deployed, reg_copy):
    "`mlops-nb monitor` writes no stage output unless told; `gate` says when the candidate is the champion; options after the action."
    p = deployed.path
    status = p/'monitor/status.json'
    before, dvc_before = status.read_bytes(), deployed.run('dvc status').stdout
    r = cli(['monitor', '--reference', 'champion', '--current', 'data/prepared/test.parquet', '--report-only'], p, check=0)
    assert 'features drifted' in r.stdout
    assert status.read_bytes() == before and deployed.run('dvc status').stdout == dvc_before
    # the exp run reran deploy only: models/candidate is the very model registered as v0001, the champion
    r = cli(['gate'], p, check=1)
    assert 'the candidate already is the champion v0001' in r.stdout
    out = cli(['models', 'list', '--registry', str(reg_copy)], p, check=0).stdout
    assert 'v0001' in out and 'champion' in out
    assert cli(['models', 'show', 'champion', '--registry', str(reg_copy), '--json'], p, check=0).stdout.lstrip().startswith('{')
    # `models list` checks every manifest: a tampered champion is listed as damaged, not as accepted
    with open(reg_copy/'versions'/'v0003'/'schema.json', 'a') as f: f.write(' ')
    rows = {r['version']: r for r in json.loads(cli(['models', 'list', '--json', '--registry', str(reg_copy)], p, check=0).stdout)}
    assert rows['v0003']['status'] == 'damaged' and rows['v0003']['aliases'] == 'champion' and 'schema.json' in rows['v0003']['error']
    assert 'damaged' in cli(['models', 'list', '--registry', str(reg_copy)], p, check=0).stdout
