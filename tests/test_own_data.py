"""Your own tabular file runs end to end after changing only `task` and `collect.sources` of the shipped params.yaml:
every value that depends on the task or the data's columns is `auto` there and resolved by the stages (`params.resolve`).

Two data sets made here (not the simulator): a regression CSV with a time column, through a real `dvc repro` in a
copy of the project, and a classification Parquet without one, through the stages in this process. Each ends with a
champion in the registry, one raw record answered over HTTP by `mlops-nb serve`, and a monitor run on the newest rows
of the data that judges the data's own columns (no alert about the simulator's)."""
import contextlib, copy, json, re
from pathlib import Path

import numpy as np, pandas as pd, pytest, yaml

from conftest import ROOT, PROJECT_FILES, Project, run
from test_serve import Server
from test_raw_record import records
from test_docs import browser   # headless Debian Chromium + chromedriver (a module fixture)
from test_experiment_views import DATA_PIXELS, draw_offline, html_id, plots_page
from test_data_contract import kept_tree

SHIPPED = yaml.safe_load((ROOT/'params.yaml').read_text())
SIM_COLUMNS = ('amount', 'merchant_category', 'customer_avg_amount', 'timestamp')

def own_params(task:dict, sources:list[dict]) -> dict:
    "The shipped params.yaml with only `task` and `collect.sources` changed."
    p = copy.deepcopy(SHIPPED)
    p['task'], p['collect'] = task, dict(p['collect'], sources=sources)
    assert {k for k in p if p[k] != SHIPPED.get(k)} <= {'task', 'collect'}
    assert {k for k in p['collect'] if p['collect'][k] != SHIPPED['collect'].get(k)} == {'sources'}
    return p

def houses_csv(path:Path, n:int=3000, seed:int=0) -> Path:
    "House prices listed every 15 minutes over about a month (inside collect's 40-day window): target `price`."
    rng = np.random.default_rng(seed)
    size, rooms = rng.uniform(30, 200, n).round(1), rng.integers(1, 7, n)
    district = rng.choice(['north', 'south', 'east', 'west'], n)
    price = (size * 3000 + rooms * 5000 + np.where(district == 'north', 40000, 0) + rng.normal(0, 8000, n)).round(0)
    pd.DataFrame({'listing_id': [f'L{i:05d}' for i in range(n)],
                  'listed_at': pd.date_range('2026-03-01', periods=n, freq='15min').strftime('%Y-%m-%d %H:%M:%S'),
                  'size_m2': size, 'rooms': rooms, 'district': district, 'price': price}).to_csv(path, index=False)
    return path

def churn_parquet(path:Path, n:int=3000, seed:int=1) -> Path:
    "Customers without a time order: target `churned`, driven by tenure, charges and plan."
    rng = np.random.default_rng(seed)
    tenure, charges = rng.integers(1, 72, n), rng.uniform(20, 120, n).round(2)
    plan = rng.choice(['basic', 'plus', 'pro'], n)
    z = 2.5 - 0.09 * tenure + 0.03 * (charges - 70) + np.where(plan == 'basic', 1.0, 0.0)
    churned = (rng.uniform(size=n) < 1 / (1 + np.exp(-z))).astype(int)
    pd.DataFrame({'customer': [f'C{i}' for i in range(n)], 'tenure_months': tenure, 'monthly_charges': charges,
                  'plan': plan, 'churned': churned}).to_parquet(path, index=False)
    return path

def answer_one_raw_record(root:Path, registry:Path, row:pd.Series, id_column:str):
    "Serve the registry's champion and send it one raw record (as the data holds it, without the target) over HTTP."
    srv = Server(root, registry, '--no-capture')
    try: st, body, _ = srv.post('/invocations', {'dataframe_records': records(row.to_frame().T.infer_objects())})
    finally: srv.stop()
    assert st == 200, body
    assert len(body['predictions']) == 1 and body['ids'][id_column] == [row[id_column]], body
    return body['predictions'][0]

def check_monitor(status:dict, metrics:dict, columns:list[str], metric:str):
    "The monitor judged the data's own columns on the newest rows, with labels: no column reported missing."
    assert metrics['rows_current'] == 600, metrics['rows_current']      # the newest 20 % (prepare.split.test_fraction) of 3000 rows
    assert set(columns) <= set(metrics['features']), metrics['features'].keys()
    assert not set(SIM_COLUMNS) & set(metrics['features'])
    rules = [a['rule'] for a in status['alerts']]
    assert 'window_too_small' not in rules and not any('missing_column' in json.dumps(a) for a in status['alerts']), status['alerts']
    assert (metrics.get('performance') or {}).get(metric) is not None, metrics.get('performance')


def sig4(v) -> float: return float(f'{v:.4g}')

def check_regression_key_metrics(p:Path):
    """The metrics DVC tracks (metrics/key/STAGE.json) after a regression run: one short line per stage with the regression numbers
    (R², RMSE, MAE; the search's CV score; the monitor's live RMSE), rounded to 4 significant digits as for classification, nothing volatile."""
    key = {f.stem: json.loads(f.read_text()) for f in (p/'metrics/key').glob('*.json')}
    full = {n: json.loads((p/f'metrics/{n}.json').read_text()) for n in ('train', 'evaluate', 'monitor')}
    assert set(key) == {'prepare', 'train', 'evaluate', 'deploy', 'monitor'}, key
    assert key['evaluate'] == {m: sig4(full['evaluate'][m]) for m in ('r2', 'rmse', 'mae')}, key['evaluate']   # no classification metric
    assert key['train'] == {'cv_score': sig4(full['train']['cv_best_score'])} and key['train']['cv_score'] < 0, key['train']   # neg. RMSE
    assert key['monitor'] == dict(alert=full['monitor']['alert'], drift_share=sig4(full['monitor']['drift_share']),
                                  drifted=full['monitor']['drifted_features'], live_rmse=sig4(full['monitor']['performance']['rmse'])), key['monitor']
    assert key['deploy'] == {'passed': True, 'promoted': 'champion'} and set(key['prepare']) == {'rows'}, key
    for stage, d in key.items():
        assert not [k for k in d if re.search(r'latency|seconds|_ms$|_at$|time|duration', k)], (stage, d)   # nothing volatile
        assert all(type(v) in (bool, int, str) or sig4(v) == v for v in d.values()), (stage, d)          # every float at 4 digits

def check_regression_plots_drawn(proj:Project, browser):
    "The page of `dvc plots show` draws the regression curves (the residual plot among them) in Chromium with the network off."
    page, kinds = plots_page(proj)
    assert {f'plots/evaluate/curves/{c}.csv' for c in ('rec', 'calibration', 'residual')} <= set(kinds['vega']), kinds
    drawn, fetched = draw_offline(browser, page, len(kinds['vega']))
    assert drawn['colored'].get(html_id('plots/evaluate/curves/residual.csv'), 0) > DATA_PIXELS, drawn   # the residual line is drawn
    assert len(drawn['charts']) == len(kinds['vega']) and all(v > 500 for v in drawn['charts'].values()), drawn
    assert all(v > DATA_PIXELS for v in drawn['colored'].values()), drawn['colored']
    assert not [u for u in fetched if not u.startswith('file:')], fetched


@pytest.mark.e2e
def test_a_regression_csv_runs_dvc_repro_with_only_task_and_sources_changed(tmp_path, browser):
    proj = Project(tmp_path/'proj')
    for name in PROJECT_FILES:   # the project as shipped: its own params.yaml, not the tests' small one
        src, dst = ROOT/name, tmp_path/'proj'/name
        dst.parent.mkdir(parents=True, exist_ok=True)
        run(f"cp -r '{src}' '{dst}'", tmp_path)
    (proj.path/'data/external').mkdir(parents=True)
    houses_csv(proj.path/'data/external/houses.csv')
    params = own_params({'type': 'regression', 'target': 'price', 'time_column': 'listed_at', 'id_columns': ['listing_id']},
                        [{'type': 'file', 'path': 'data/external/houses.csv'}])
    (proj.path/'params.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
    proj.run('git init -q -b main && git add -A && git commit -qm "own data"')
    proj.run('dvc repro', timeout=1500)

    p = proj.path
    train, ev, gate = (json.loads((p/f'metrics/{n}.json').read_text()) for n in ('train', 'evaluate', 'gate'))
    assert (train['estimator'], train['scoring']) == ('hist_gradient_boosting_regressor', 'neg_root_mean_squared_error')
    assert ev['r2'] > 0.8 and ev['rmse'] > ev['mae'] > 0
    assert gate['passed'] and gate['promoted_to'] == 'champion' and {c['metric'] for c in gate['checks']} == {'r2', 'latency_ms'}
    spec = json.loads((p/'data/prepared/features.json').read_text())
    assert spec['features'] == {'time_parts': ['hour', 'dayofweek'], 'log': [], 'ratios': {}}   # the stream's log/ratio steps need its columns
    plots = json.loads(proj.run('dvc plots show --json').stdout)
    assert not plots.get('errors'), plots.get('errors')
    assert {f'plots/evaluate/curves/{c}.csv' for c in ('rec', 'calibration', 'residual')} <= set(plots['data'])
    check_regression_key_metrics(p)
    check_regression_plots_drawn(proj, browser)
    shown = proj.run('mlops-nb params show --resolved').stdout
    assert 'estimator: hist_gradient_boosting_regressor' in shown and 'metric: rmse' in shown and 'source: newest' in shown, shown
    report = json.loads((p/'reports/03_train.ipynb').read_text())
    assert 'hist_gradient_boosting_regressor (auto)' in json.dumps(report), 'the report shows the resolved estimator, marked auto'

    row = pd.read_csv(p/'data/external/houses.csv').iloc[-1].drop('price')
    price = answer_one_raw_record(p, p/'registry', row, 'listing_id')
    assert 30000 < price < 900000, price
    check_monitor(json.loads((p/'monitor/status.json').read_text()), json.loads((p/'metrics/monitor.json').read_text()),
                  ['size_m2', 'rooms', 'district', 'listed_at_hour'], 'rmse')


def test_a_classification_parquet_without_time_runs_every_stage_with_only_task_and_sources_changed(tmp_path):
    from mlops_nb import steps
    data = churn_parquet(tmp_path/'churn.parquet')
    params = own_params({'type': 'classification', 'target': 'churned', 'time_column': '', 'id_columns': ['customer']},
                        [{'type': 'file', 'path': str(data)}])
    with contextlib.chdir(tmp_path):   # every step's default paths (data/, models/, registry/, metrics/) are here
        steps.run_collect(params)
        prepared = steps.run_prepare(params)
        assert prepared.ok and prepared.numeric == ['tenure_months', 'monthly_charges'] and prepared.categorical == ['plan']
        trained = steps.run_train(params)
        assert trained.metrics['estimator'] == 'hist_gradient_boosting' and trained.metrics['scoring'] == 'average_precision'
        evaluated = steps.run_evaluate(params)
        assert evaluated.metrics['roc_auc'] > 0.8
        assert {p.stem for p in Path('plots/evaluate/curves').glob('*.csv')} == {'roc', 'pr', 'calibration'}
        deployed = steps.run_deploy(params)
        assert deployed.promoted_to == 'champion', deployed.gate['reasons']
        monitored = steps.run_monitor(params)
    row = pd.read_parquet(data).iloc[0].drop('churned')
    assert answer_one_raw_record(tmp_path, tmp_path/'registry', row, 'customer') in (0, 1)
    check_monitor(monitored.status, monitored.result.metrics(), ['tenure_months', 'monthly_charges', 'plan'], 'roc_auc')
    assert monitored.source['source'] == 'registry'     # the champion is the reference


def test_a_feature_step_naming_a_missing_column_is_an_error_naming_it(tmp_path):
    from mlops_nb.core import DataError
    from mlops_nb import steps
    params = own_params({'type': 'classification', 'target': 'churned', 'time_column': '', 'id_columns': ['customer']},
                        [{'type': 'file', 'path': str(churn_parquet(tmp_path/'churn.parquet', n=400))}])
    params['prepare']['features'] = dict(params['prepare']['features'], log=['amount'])   # set by hand: not auto
    with contextlib.chdir(tmp_path), pytest.raises(DataError, match=r"prepare.features.log names 'amount', not a column of the data"):
        steps.run_collect(params)
    assert not (tmp_path/'data/raw').exists() and kept_tree(tmp_path) == {}   # nothing written in data/, models/, registry/, metrics/
