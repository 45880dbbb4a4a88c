"""params.yaml checked before any work; numbers read strictly; absolute rules when the schema is inferred; every
failure recorded with its stage; nothing good replaced. On two small data sets made here (not the simulator):
a regression CSV with a time column and a classification Parquet without one."""
import contextlib, hashlib, json
from pathlib import Path

import numpy as np, pandas as pd, pytest, yaml

from mlops_nb.core import DataError, MlopsError
from mlops_nb.params import check_params, params_problems
from mlops_nb.steps import run_collect, run_prepare
from conftest import ROOT, merge, run, copy_project

BASE = yaml.safe_load((ROOT/'params.yaml').read_text())


@pytest.fixture(scope='module', autouse=True)
def _in_own_folder(tmp_path_factory):
    "The steps run in this process read `deploy.registry` relative to the working folder: never the project's own registry."
    with contextlib.chdir(tmp_path_factory.mktemp('cwd')): yield

def regression_csv(path:Path, n:int=600, seed:int=0) -> Path:
    "House prices by the hour: a time column, numbers, a category; target `price`."
    rng = np.random.default_rng(seed)
    size = rng.uniform(30, 200, n).round(1)
    rooms = rng.integers(1, 7, n)
    district = rng.choice(['north', 'south', 'east', 'west'], n)
    price = (size * 3000 + rooms * 5000 + np.select([district == 'north'], [40000], 0) + rng.normal(0, 8000, n)).round(0)
    df = pd.DataFrame({'listing_id': [f'L{i:05d}' for i in range(n)],
                       'listed_at': pd.date_range('2026-03-01', periods=n, freq='h').strftime('%Y-%m-%d %H:%M:%S'),
                       'size_m2': size, 'rooms': rooms, 'district': district, 'price': price})
    df.to_csv(path, index=False)
    return path

def classification_parquet(path:Path, n:int=600, seed:int=1) -> Path:
    "Customer churn, rows without a time order; target `churned`."
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 72, n)
    charges = rng.uniform(20, 120, n).round(2)
    plan = rng.choice(['basic', 'plus', 'pro'], n)
    churned = (rng.uniform(size=n) < 1 / (1 + np.exp(0.05 * tenure - 0.02 * charges))).astype(int)
    pd.DataFrame({'customer': [f'C{i}' for i in range(n)], 'tenure_months': tenure, 'monthly_charges': charges,
                  'plan': plan, 'churned': churned}).to_parquet(path, index=False)
    return path

REG = {'task': {'type': 'regression', 'target': 'price', 'time_column': 'listed_at', 'id_columns': ['listing_id']},
       'collect': {'days': 0}, 'prepare': {'features': {}},
       'train': {'estimator': 'ridge', 'search': {'scoring': 'r2'}}, 'deploy': {'gates': {'r2': {'threshold': 0.5}}},
       'monitor': {'performance': {'metric': 'rmse'}}}
CLS = {'task': {'type': 'classification', 'target': 'churned', 'time_column': '', 'id_columns': ['customer']},
       'collect': {'days': 0}, 'prepare': {'features': {}}}

def params_for(over:dict, *sources, base:dict|None=None) -> dict:
    p = merge(base or BASE, over)
    for sec, key in (('deploy', 'gates'), ('prepare', 'features')):   # replaced, not merged
        if key in over.get(sec, {}): p[sec] = dict(p[sec], **{key: over[sec][key]})
    p['collect'] = dict(p['collect'], sources=[{'type': 'file', 'path': str(s)} for s in sources])
    return p

def regression_project(dst:Path, **over) -> 'Project':
    """A copy of the project (conftest's `copy_project`) whose one source is the regression CSV `houses.csv`, with a two-candidate
    ridge search; `over` sets further params, e.g. `monitor={'alerts': {'min_rows': 100}}`."""
    proj = copy_project(dst)
    regression_csv(proj.path/'houses.csv')
    p = merge(params_for(REG, base=proj.params), over)
    p['collect']['sources'] = [{'type': 'file', 'path': 'houses.csv'}]
    p['train']['search']['space'], p['train']['estimator_params'] = {'alpha': [0.1, 1.0]}, {}
    (proj.path/'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))
    return proj

def checksum(*folders:Path) -> dict:
    "sha256 of every file under `folders` (missing folders count as empty)."
    out = {}
    for f in folders:
        for p in sorted(Path(f).rglob('*')) if Path(f).exists() else []:
            if p.is_file(): out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out

def kept_tree(folder:Path, sources_changed:bool=False) -> dict:
    """What a bad input must leave as it was in the project `folder`: sha256 of every file (and `<dir>` for every folder, so a
    left-over temporary folder shows) under its data/, models/, registry/ and metrics/ that exist, by path relative to `folder`.
    Left out is what a failure legitimately writes: metrics/data_quality.json (the failure's record), data/quarantine/ (the
    rejected batch) and, with `sources_changed`, data/sources.json (what the sources hold now)."""
    folder, out = Path(folder), {}
    skip = {'metrics/data_quality.json'} | ({'data/sources.json'} if sources_changed else set())
    for d in ('data', 'models', 'registry', 'metrics'):
        for p in sorted((folder/d).rglob('*')) if (folder/d).is_dir() else []:
            rel = p.relative_to(folder).as_posix()
            if rel in skip or rel == 'data/quarantine' or rel.startswith('data/quarantine/'): continue
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else '<dir>'
    return out

# --- params.yaml --------------------------------------------------------------------------------------------------

def test_project_params_are_valid():
    assert params_problems(BASE) == []

def test_every_problem_in_one_message_with_its_key_path():
    bad = merge(BASE, {'collect': {'source': [{'type': 'simulator'}], 'sources': []},
                       'train': {'search': {'scoring': 'r2', 'n_iter': 'six'}},
                       'deploy': {'gates': {'rmse': {'threshold': 1.0}}}, 'monitor': {'alerts': {'features': 'amount'}}})
    with pytest.raises(MlopsError) as e: check_params(bad)
    msg = str(e.value)
    for want in ["collect.source: unknown key (did you mean 'sources'?)", 'collect.sources: must not be empty',
                 "train.search.n_iter: 'six' is not of type 'integer'",
                 "train.search.scoring: 'r2' is a regression scorer but task.type is 'classification'",
                 'deploy.gates.rmse: not a classification metric (a regression metric)',
                 "monitor.alerts.features: 'amount' is not of type 'array'"]:
        assert want in msg, msg
    assert msg.startswith('params.yaml: 6 problems')

CLASSIFICATION_VALUES = {'train': {'estimator': 'hist_gradient_boosting', 'search': {'scoring': 'average_precision'}},
                         'deploy': {'gates': {'pr_auc': {'threshold': 0.2}}}, 'monitor': {'performance': {'metric': 'roc_auc'}}}

def test_regression_task_with_classification_values_is_refused():
    with pytest.raises(MlopsError) as e: check_params(merge(merge(BASE, CLASSIFICATION_VALUES), {'task': {'type': 'regression', 'target': 'price'}}))
    msg = str(e.value)
    assert "train.estimator: 'hist_gradient_boosting' is a classification estimator but task.type is 'regression'" in msg
    assert "train.search.scoring: 'average_precision' is a classification scorer" in msg
    assert 'deploy.gates.pr_auc: not a regression metric' in msg and "monitor.performance.metric: 'roc_auc'" in msg

def test_sql_source_needs_a_table_or_a_query():
    p = merge(BASE, {'collect': {'sources': [{'type': 'sql', 'url': 'sqlite:///x.db'}, {'type': 'file'}]}})
    probs = params_problems(p)
    assert "collect.sources[0]: give exactly one of 'table' or 'query'" in probs and "collect.sources[1]: 'path' is a required property" in probs

def test_cli_params_check(tmp_path):
    good = tmp_path/'params.yaml'
    good.write_text(yaml.safe_dump(BASE))
    assert 'ok' in run(f'mlops-nb params check --params {good}', tmp_path).stdout
    (tmp_path/'bad.yaml').write_text(yaml.safe_dump(merge(BASE, {'collect': {'source': []}})))
    r = run(f'mlops-nb params check --params {tmp_path}/bad.yaml', tmp_path, check=False)
    assert r.returncode == 2 and "collect.source: unknown key (did you mean 'sources'?)" in r.stderr, r.stderr

def test_a_misspelt_source_key_stops_collect_before_any_work(tmp_path):
    raw = tmp_path/'data/raw'
    run_collect(params_for(REG, regression_csv(tmp_path/'houses.csv')), raw)
    before = kept_tree(tmp_path)
    p = params_for(REG, tmp_path/'houses.csv')
    p['collect'] = {'source': p['collect']['sources']}
    with pytest.raises(MlopsError, match=r"collect.source: unknown key \(did you mean 'sources'\?\)"):
        run_collect(p, raw, tmp_path/'metrics/data_quality.json')
    assert kept_tree(tmp_path) == before and 'data/raw/manifest.json' in before
    q = json.loads((tmp_path/'metrics/data_quality.json').read_text())
    assert q['ok'] is False and q['stage'] == 'collect' and 'collect.source' in q['error']['message']

# --- strict reading -----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def houses(tmp_path_factory):
    "A good collect + prepare of the regression CSV; its schema can then be pinned."
    d = tmp_path_factory.mktemp('houses')
    p = params_for(REG, regression_csv(d/'houses.csv'))
    run_collect(p, d/'raw')
    run_prepare(p, d/'raw', d/'prepared', d/'quality.json')
    return d

def test_the_regression_csv_is_read_with_its_types(houses):
    schema = json.loads((houses/'prepared'/'schema.json').read_text())
    kinds = {c['name']: c['kind'] for c in schema['columns']}
    assert kinds == {'listing_id': 'categorical', 'listed_at': 'datetime', 'size_m2': 'numeric', 'rooms': 'integer',
                     'district': 'categorical', 'price': 'numeric'}

@pytest.mark.parametrize('pinned', [True, False])
def test_null_like_tokens_are_wrong_dtype_unless_listed(houses, tmp_path, pinned):
    df = pd.read_csv(houses/'houses.csv', dtype=str, keep_default_na=False)
    rows = df.index[-60:]   # in the newest rows, so the reference (inferred case) is clean
    df.loc[rows[:12], 'size_m2'] = 'n/a'; df.loc[rows[12:22], 'size_m2'] = 'NA'; df.loc[rows[22:24], 'size_m2'] = '-nan'
    f = tmp_path/'houses.csv'
    df.to_csv(f, index=False)
    over = merge(REG, {'prepare': {'schema': str(houses/'prepared'/'schema.json')}}) if pinned else REG
    p = params_for(over, f)
    with pytest.raises(DataError) as e: run_collect(p, tmp_path/'data/raw', tmp_path/'metrics/data_quality.json')   # refused before data/raw is written
    assert kept_tree(tmp_path) == {}
    msg = str(e.value)
    assert f"{f}: column 'size_m2' breaks rule 'wrong_dtype': 24 of 600 rows" in msg, msg
    assert "'n/a' (12), 'NA' (10), '-nan' (2)" in msg and 'prepare.null_tokens' in msg, msg
    assert not (tmp_path/'data/raw').exists() and json.loads((tmp_path/'metrics/data_quality.json').read_text())['stage'] == 'collect'
    p = merge(p, {'prepare': {'null_tokens': ['n/a', 'NA', '-nan']}})
    run_collect(p, tmp_path/'data/raw')
    ok = run_prepare(p, tmp_path/'data/raw', tmp_path/'data/prepared', tmp_path/'metrics/data_quality.json')
    assert ok.ok and ok.schema.columns['size_m2'].kind == 'numeric'

def test_text_in_a_number_column_of_a_second_source_does_not_make_it_categorical(houses, tmp_path):
    second = pd.read_csv(houses/'houses.csv').tail(100).copy()
    second['listing_id'] = 'X' + second['listing_id']
    second['size_m2'] = second['size_m2'].astype(str)
    second.loc[second.index[:30], 'size_m2'] = 'abc'
    second.to_csv(tmp_path/'more.csv', index=False)
    first = pd.read_csv(houses/'houses.csv').head(500)
    first.to_csv(tmp_path/'houses.csv', index=False)
    p = params_for(REG, tmp_path/'houses.csv', tmp_path/'more.csv')
    with pytest.raises(DataError) as e: run_collect(p, tmp_path/'data/raw', tmp_path/'metrics/data_quality.json')
    assert kept_tree(tmp_path) == {}
    assert f"{tmp_path/'more.csv'}: column 'size_m2' breaks rule 'wrong_dtype': 30 of 100 rows" in str(e.value), str(e.value)
    q = json.loads((tmp_path/'metrics/data_quality.json').read_text())
    assert q['ok'] is False and q['stage'] == 'collect' and q['failed_batches'] == 1 and not (tmp_path/'data/raw').exists()

# --- absolute rules when the schema is inferred from the only source -------------------------------------------

def test_a_column_mostly_null_stops_prepare_even_as_the_only_source(tmp_path):
    f = classification_parquet(tmp_path/'churn.parquet')
    df = pd.read_parquet(f)
    df.loc[df.sample(frac=0.6, random_state=0).index, 'monthly_charges'] = np.nan
    df.to_parquet(f, index=False)
    p = params_for(CLS, f)
    with pytest.raises(DataError) as e: run_collect(p, tmp_path/'data/raw', tmp_path/'metrics/data_quality.json')
    assert kept_tree(tmp_path) == {} and json.loads((tmp_path/'metrics/data_quality.json').read_text())['stage'] == 'collect'
    assert f"{f}: column 'monthly_charges' breaks rule 'too_many_nulls': 360 of 600 rows (null rate 0.600 > max_null_rate 0.5" in str(e.value), str(e.value)

def test_a_flood_of_new_categories_in_a_high_cardinality_column_is_checked(tmp_path):
    f = classification_parquet(tmp_path/'churn.parquet')
    df = pd.read_parquet(f)
    rng = np.random.default_rng(3)
    flood = df.sample(frac=0.5, random_state=1).index
    df.loc[flood, 'plan'] = [f'plan_{x}' for x in rng.integers(0, 10**6, len(flood))]   # > 50 distinct values
    df.to_parquet(f, index=False)
    p = params_for(CLS, f)
    with pytest.raises(DataError) as e: run_collect(p, tmp_path/'data/raw', tmp_path/'metrics/data_quality.json')
    assert kept_tree(tmp_path) == {} and json.loads((tmp_path/'metrics/data_quality.json').read_text())['stage'] == 'collect'
    assert f"{f}: column 'plan' breaks rule 'unseen_categories'" in str(e.value), str(e.value)

def test_the_classification_parquet_without_time_prepares(tmp_path):
    p = params_for(CLS, classification_parquet(tmp_path/'churn.parquet'))
    run_collect(p, tmp_path/'raw')
    res = run_prepare(p, tmp_path/'raw', tmp_path/'prepared', tmp_path/'quality.json')
    assert res.ok and sorted(res.numeric) == ['monthly_charges', 'tenure_months'] and res.categorical == ['plan']
    assert res.schema.columns['customer'].categories is None   # an id column keeps no categories

def test_a_misspelt_time_column_is_named_and_recorded(houses, tmp_path):
    p = params_for(merge(REG, {'task': {'time_column': 'listed'}}), houses/'houses.csv')
    with pytest.raises(DataError) as e: run_collect(p, tmp_path/'data/raw', tmp_path/'metrics/data_quality.json')
    assert kept_tree(tmp_path) == {}
    assert "column 'listed' breaks rule 'missing_column' (task.time_column names 'listed', not a column of the data (columns: " in str(e.value), str(e.value)
    q = json.loads((tmp_path/'metrics/data_quality.json').read_text())
    assert q == {'ok': False, 'stage': 'collect', 'error': q['error']} and q['error']['rule'] == 'missing_column' and q['error']['column'] == 'listed'

# --- through DVC and papermill: the real error reaches the user and nothing good is lost ---------------------------

@pytest.mark.e2e
def test_dvc_repro_prepare_shows_the_real_error_and_keeps_the_last_good_data(tmp_path):
    proj = copy_project(tmp_path/'proj')
    regression_csv(proj.path/'houses.csv')
    p = params_for(REG, base=proj.params)
    p['collect']['sources'] = [{'type': 'file', 'path': 'houses.csv'}]
    (proj.path/'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))
    proj.run('dvc repro prepare')
    kept = lambda: kept_tree(proj.path, sources_changed=True)   # the sources stage reruns on every repro
    good_data = kept()
    assert 'data/prepared/schema.json' in good_data and 'metrics/key/prepare.json' in good_data
    assert json.loads((proj.path/'metrics/data_quality.json').read_text())['ok'] is True
    proj.set_params({'task': {'time_column': 'listed'}})
    r = proj.run('dvc repro prepare', check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "task.time_column names 'listed', not a column of the data" in out, out[-3000:]
    assert 'file not found' not in out
    assert kept() == good_data      # data/ and metrics/ as they were
    q = json.loads((proj.path/'metrics/data_quality.json').read_text())
    assert q['ok'] is False and q['stage'] == 'collect' and q['error']['column'] == 'listed'   # stopped before data/raw was replaced
    # a params typo stops the stage before any work, with the key path
    proj.set_params({'task': {'time_column': 'listed_at'}, 'prepare': {'null_token': ['NA']}})
    r = proj.run('dvc repro prepare', check=False)
    assert r.returncode != 0 and "prepare.null_token: unknown key (did you mean 'null_tokens'?)" in r.stdout + r.stderr
    assert kept() == good_data

# --- the production contract: once a champion exists, its schema is not rewritten by the data ----------------------

CHAMP = merge(CLS, {'train': {'estimator': 'logistic_regression', 'estimator_params': {},
                              'search': {'method': 'grid', 'scoring': 'roc_auc', 'cv_splits': 2, 'space': {'C': [1.0]}}},
                    'deploy': {'gates': {'roc_auc': {'threshold': 0.5}}}})

@pytest.fixture(scope='module')
def champion(tmp_path_factory):
    "A project folder whose registry has a champion trained on the classification Parquet."
    from mlops_nb.steps import run_train, run_evaluate, run_deploy
    d = tmp_path_factory.mktemp('champ')
    f = classification_parquet(d/'churn.parquet')
    p = params_for(CHAMP, f)
    p['deploy']['registry'] = str(d/'registry')
    p['train']['estimator_params'] = {}
    p['train']['search']['space'] = {'C': [1.0]}
    run_collect(p, d/'data/raw')
    run_prepare(p, d/'data/raw', d/'data/prepared', d/'metrics/data_quality.json')
    run_train(p, d/'data/prepared', d/'models/candidate', d/'metrics/train.json')
    run_evaluate(p, d/'data/prepared', d/'models/candidate', d/'metrics/evaluate.json', d/'plots/evaluate', d/'data/predictions/test.parquet')
    dep = run_deploy(p, d/'data/prepared', d/'models/candidate', d/'metrics/evaluate.json', d/'plots/evaluate/figures', d/'metrics/gate.json', project_dir=d)
    assert json.loads((d/'registry/aliases.json').read_text())['champion'] == 'v0001'
    return d, p

@pytest.mark.parametrize('change,column,detail', [
    ('removed', 'plan', "column removed: champion v0001's schema has 'plan' (categorical)"),
    ('kind', 'tenure_months', "kind changed: champion v0001's schema has integer, the batch has categorical")])
def test_a_schema_change_against_the_champion_is_refused_unless_allowed(champion, tmp_path, change, column, detail):
    d, p = champion
    df = pd.read_parquet(d/'churn.parquet')
    df = df.drop(columns=['plan']) if change == 'removed' else df.assign(tenure_months=df.tenure_months.map(lambda x: f'{x} months'))
    f = tmp_path/'churn.parquet'
    df.to_parquet(f, index=False)
    q = dict(p, collect=dict(p['collect'], sources=[{'type': 'file', 'path': str(f)}]))
    kept = kept_tree(d)
    assert {'models', 'registry', 'metrics', 'data'} <= {k.split('/')[0] for k in kept}
    with pytest.raises(DataError) as e: run_collect(q, d/'data/raw', d/'metrics/data_quality.json')
    msg = str(e.value)
    assert f"{f}: column '{column}' breaks rule 'schema_change'" in msg and detail in msg, msg
    rep = json.loads((d/'metrics/data_quality.json').read_text())
    assert rep['ok'] is False and any(v['rule'] == 'schema_change' for b in rep['per_batch'] for v in b['violations'])
    assert kept_tree(d) == kept   # everything good is kept, data/raw too
    assert (d/'data/quarantine/file_churn.json').exists() and rep['stage'] == 'collect'
    if change == 'removed':   # the user may allow it, explicitly
        q2 = merge(q, {'prepare': {'schema_evolution': 'allow'}})
        run_collect(q2, tmp_path/'raw')
        assert run_prepare(q2, tmp_path/'raw', tmp_path/'prepared', tmp_path/'quality.json').ok

def test_the_same_data_passes_the_champion_contract(champion, tmp_path):
    d, p = champion
    res = run_prepare(p, d/'data/raw', tmp_path/'prepared', tmp_path/'quality.json')
    assert res.ok and not [v for r in res.reports for v in r.violations if v['rule'] in ('schema_change', 'new_column')]

def test_alert_features_that_name_no_feature_are_an_error(champion):
    "An alert on a column the model does not have would never fire: the monitor says so instead of staying silent."
    from mlops_nb.steps import run_monitor
    d, p = champion
    q = merge(p, {'monitor': {'alerts': {'features': ['plan', 'age', 'income'], 'min_rows': 10}}})
    cur = pd.read_parquet(d/'churn.parquet').tail(200)
    kept = kept_tree(d)
    with pytest.raises(MlopsError) as e:
        run_monitor(q, d/'data/prepared', d/'models/candidate', d/'data/predictions/test.parquet', d/'metrics/evaluate.json',
                    d/'m.json', d/'status.json', d/'plots', current=cur, registry=d/'registry')
    assert "params monitor.alerts.features: 'age', 'income' are not a feature of the model monitored (champion v0001); its features: " in str(e.value), str(e.value)
    assert not (d/'m.json').exists() and kept_tree(d) == kept
    ok = run_monitor(merge(p, {'monitor': {'alerts': {'features': ['plan'], 'min_rows': 10}}}), d/'data/prepared', d/'models/candidate',
                     d/'data/predictions/test.parquet', d/'metrics/evaluate.json', d/'m.json', d/'status.json', d/'plots', current=cur, registry=d/'registry')
    assert ok.status['status'] in ('ok', 'alert', 'retrain')
