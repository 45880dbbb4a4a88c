"""Label-free performance estimation in the monitor: every CBPE metric has an interval, precision and recall at the threshold
follow the realised values under covariate shift, and a monitor run (the library's and the monitor stage's) reports the
estimate beside the realised metric and suspects concept drift only when the simulator's fraud pattern changed.
(The comparison with NannyML itself is tests/test_estimation.py.)"""
import contextlib, json
from pathlib import Path

import numpy as np, pandas as pd, pytest, yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from mlops_nb import estimate as E, monitor as mon
from mlops_nb.sim import TransactionSimulator
from conftest import ROOT, SMALL, merge

DRIFT = dict(day=10, amount_scale=1.6, new_category='crypto', new_category_share=0.1, fraud_pattern='card_testing')

def _xy(df):
    X = pd.DataFrame(dict(r=np.log(df['amount'] / df['customer_avg_amount']), night=df['timestamp'].dt.hour < 6,
                          online=df['channel'] == 'online', foreign=df['distance_from_home_km'] > 200, tx=df['customer_tx_24h']))
    return X.astype(float), df['is_fraud'].to_numpy()

@pytest.fixture(scope='module')
def sims():
    "A model trained before the drift day, a labelled reference window, and two post-drift windows: inputs shifted only, or the fraud pattern too."
    s = {k: TransactionSimulator(seed=11, n_customers=2000, transactions_per_day=2500, drift=dict(DRIFT, concept=k == 'concept'))
         for k in ('covariate', 'concept')}
    X, y = _xy(s['covariate'].frame(0, 6)); clf = LogisticRegression(max_iter=500).fit(X, y)
    Xr, yr = _xy(s['covariate'].frame(6, 4))
    windows = {}
    for k in ('covariate', 'concept'):
        df = s[k].frame(10, 4); Xc, yc = _xy(df)
        windows[k] = Xc.assign(is_fraud=yc, timestamp=df['timestamp'].to_numpy(), score=clf.predict_proba(Xc)[:, 1])
    return dict(Xr=Xr, yr=yr, ref_scores=clf.predict_proba(Xr)[:, 1], windows=windows)

def test_average_precision_of_label_draws_equals_scikit_learn():
    g = np.random.default_rng(0)
    s = g.random(500).round(2)                                          # many ties
    y = (g.random((6, 500)) < s).astype(float)
    assert np.allclose(E._ranked_ap(y, s), [average_precision_score(r, s) for r in y], atol=1e-12)

def _covariate_shift(seed:int, n=20000):
    """A model's input shifts and nothing else: P(y | x) is the same logistic curve in the reference and the current window
    (the simulator's covariate shift also moves inputs the model does not see, which CBPE cannot follow). The interval counts
    the current window's label noise only, not the calibration's own error, which grows where the reference has few rows
    (a threshold deep in the tail, scores beyond the reference's range): the thresholds here keep hundreds of positives."""
    g = np.random.default_rng(seed)
    def draw(mu, sd):
        x = g.normal(mu, sd, n); return x[:, None], (g.random(n) < 1 / (1 + np.exp(4 - 1.5 * x))).astype(int)
    (xt, yt), (xr, yr), (xc, yc) = draw(0, 1), draw(0, 1), draw(0.4, 0.9)   # within the reference's range
    clf = LogisticRegression().fit(xt, yt)
    return yr, clf.predict_proba(xr)[:, 1], yc, clf.predict_proba(xc)[:, 1]

@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('threshold', [0.05, 0.1, 0.2])
def test_every_metric_has_an_interval_and_precision_recall_follow_covariate_shift(threshold, seed):
    yr, sr, yc, sc = _covariate_shift(seed)
    cbpe = E.CBPE(threshold=threshold).fit(yr, sr)
    est, real = cbpe.estimate(sc), mon.window_metrics(yc, sc, threshold=threshold)
    for k in ('roc_auc', 'pr_auc', 'precision', 'recall', 'f1'):
        assert np.isfinite(est[f'{k}_std']) and est[f'{k}_std'] > 0, (k, est)
        assert est[f'{k}_lo'] < est[k] < est[f'{k}_hi'], (k, est)
        # covariate shift only: the realised value is inside the interval (plus the monitor's tolerance), and close
        assert est[f'{k}_lo'] - 0.02 <= real[k] <= est[f'{k}_hi'] + 0.02, (threshold, k, est[k], est[f'{k}_lo'], est[f'{k}_hi'], real[k])
        assert abs(est[k] - real[k]) < 0.03, (threshold, k, est[k], real[k])

def test_a_monitor_run_suspects_concept_drift_only_when_the_concept_changed(sims):
    from mlops_nb.steps import key_metrics
    cbpe = E.CBPE(threshold=0.1).fit(sims['yr'], sims['ref_scores'])
    out = {}
    for k, w in sims['windows'].items():
        res = mon.monitor(sims['Xr'], w.drop(columns='score'), {'alerts': {'min_rows': 100}}, cur_predictions=dict(score=w['score'].to_numpy()),
                          target='is_fraud', time_column='timestamp', threshold=0.1, estimator=cbpe)
        m, s = res.metrics(), res.status()
        assert m['estimated'] == s['estimated'] and m['concept_drift_suspected'] == s['concept_drift_suspected']
        e = m['estimated']
        assert (e['metric'], e['rows'], e['labelled']) == ('roc_auc', len(w), len(w)), e
        assert e['estimated_roc_auc_lo'] < e['estimated_roc_auc'] < e['estimated_roc_auc_hi']
        assert abs(e['realised_roc_auc'] - m['performance']['roc_auc']) < 1e-12
        assert set(key_metrics('monitor', m, 'roc_auc')) == {'alert', 'drift_share', 'drifted', 'live_roc_auc'}   # dvc metrics show: 160 columns
        assert len(res.estimation) == 5 and list(res.estimation['window'])[-1] == 'all'          # 4 days and the whole window
        out[k] = (m['concept_drift_suspected'], e)
    assert out['covariate'][0] is False and out['concept'][0] is True, out
    assert out['concept'][1]['realised_roc_auc'] < out['concept'][1]['estimated_roc_auc_lo'] - 0.02
    # labels for part of the window only: the estimate covers every row, the verdict is judged on the labelled ones
    w = sims['windows']['covariate'].copy(); w.loc[w.index[: len(w) // 2], 'is_fraud'] = np.nan
    res = mon.monitor(sims['Xr'], w.drop(columns='score'), {'alerts': {'min_rows': 100}}, cur_predictions=dict(score=w['score'].to_numpy()),
                      target='is_fraud', time_column='timestamp', threshold=0.1, estimator=cbpe)
    e = res.estimated()
    assert (e['rows'], e['labelled'], e['concept_drift_suspected']) == (len(w), len(w) - len(w) // 2, False), e
    # no labels at all: an estimate, nothing to compare with
    res = mon.monitor(sims['Xr'], w.drop(columns=['score', 'is_fraud']), {'alerts': {'min_rows': 100}}, cur_predictions=dict(score=w['score'].to_numpy()),
                      target='is_fraud', time_column='timestamp', threshold=0.1, estimator=cbpe)
    e = res.estimated()
    assert e['labelled'] == 0 and e['realised_roc_auc'] is None and e['concept_drift_suspected'] is False
    assert E.estimation_line(res).endswith('no labels yet')

@pytest.mark.parametrize('kind', ['covariate', 'concept'])
def test_the_monitor_command_estimates_from_reference_scores(sims, kind, tmp_path):
    "`mlops-nb monitor --reference-scores`: the estimate and the concept-drift verdict in the status and metrics JSON."
    from conftest import run
    sims['Xr'].to_parquet(tmp_path/'ref.parquet')
    pd.DataFrame(dict(y_true=sims['yr'], score=sims['ref_scores'])).to_parquet(tmp_path/'scores.parquet')
    w = sims['windows'][kind]
    w.rename(columns={'is_fraud': 'label', 'timestamp': 'ts', 'score': 'prediction'}).to_parquet(tmp_path/'cur.parquet')
    (tmp_path/'p.json').write_text(json.dumps({'threshold': 0.1}))
    p = run(f'mlops-nb monitor --reference ref.parquet --current cur.parquet --params none.yaml --evaluation p.json --reference-scores scores.parquet '
            f'--status s.json --metrics m.json --min-rows 100 --report-only', tmp_path, check=False)
    assert p.returncode == 0, p.stderr
    s, m = json.loads((tmp_path/'s.json').read_text()), json.loads((tmp_path/'m.json').read_text())
    assert s['estimated'].keys() == m['estimated'].keys() and s['reference']['estimation'].startswith('CBPE fitted on'), s['reference']
    assert s['concept_drift_suspected'] is (kind == 'concept'), s['estimated']
    assert f"estimated roc_auc: " in p.stdout
    bad = run('mlops-nb monitor --reference ref.parquet --current cur.parquet --params none.yaml --reference-scores ref.parquet --status s2.json',
              tmp_path, check=False)
    assert bad.returncode == 2 and "column(s) ['y_true', 'score'] missing" in bad.stderr, bad.stderr

def test_dle_rmse_has_an_interval():
    g = np.random.default_rng(1)
    ref = pd.DataFrame(dict(x=g.normal(size=3000))); y = 2 * ref['x'] + g.normal(size=3000)
    dle = E.DLE(['x'], prediction='prediction').fit(ref.assign(prediction=2 * ref['x']), y)
    cur = pd.DataFrame(dict(x=g.normal(0.5, 1, 2000))); cur['prediction'] = 2 * cur['x']
    e = dle.estimate(cur)
    assert e['rmse_lo'] < e['rmse'] < e['rmse_hi'] and abs(e['rmse'] - 1) < 0.1, e

# ------------------------------------------------------------------ the monitor stage, on a small project, in process
@pytest.fixture(scope='module')
def lifecycle(tmp_path_factory):
    "collect, prepare, train, evaluate and deploy (a champion) of a small simulator project, in process."
    from mlops_nb import steps
    d = tmp_path_factory.mktemp('est')
    params = merge(yaml.safe_load((ROOT/'params.yaml').read_text()), SMALL)
    params = merge(params, {'sim': {'transactions_per_day': 1000}})
    with contextlib.chdir(d):
        steps.run_collect(params); steps.run_prepare(params); steps.run_train(params); steps.run_evaluate(params)
        assert steps.run_deploy(params).promoted_to == 'champion'
    return d, params

@pytest.mark.parametrize('concept', [False, True])
def test_monitor_stage_reports_the_estimate_and_suspects_concept_drift(lifecycle, concept):
    from mlops_nb import steps
    d, params = lifecycle
    day = params['sim']['drift']['day']
    p = merge(params, {'sim': {'drift': {'concept': concept}}, 'monitor': {'current': {'source': 'simulator', 'start_day': day + 2, 'days': 14}}})
    with contextlib.chdir(d):
        mo = steps.run_monitor(p, metrics_path=f'metrics/monitor_{concept}.json', status_path=f'monitor/status_{concept}.json',
                               plots_dir=f'plots/monitor_{concept}')
        m, s = json.loads(Path(f'metrics/monitor_{concept}.json').read_text()), json.loads(Path(f'monitor/status_{concept}.json').read_text())
        key = json.loads(Path('metrics/key/monitor.json').read_text())
        est = pd.read_csv(f'plots/monitor_{concept}/estimated.csv')
    e = m['estimated']
    assert s['estimated'] == e and s['reference']['source'] == 'registry' and 'CBPE fitted on' in s['reference']['estimation'], s['reference']
    assert e['metric'] == 'roc_auc' and e['rows'] == e['labelled'] == 14 * 1000, e
    assert e['estimated_roc_auc_lo'] < e['estimated_roc_auc'] < e['estimated_roc_auc_hi'] and e['realised_roc_auc'] == m['performance']['roc_auc']
    assert m['concept_drift_suspected'] is concept and s['concept_drift_suspected'] is concept, e
    assert set(key) == {'alert', 'drift_share', 'drifted', 'live_roc_auc'}, key    # no column more: dvc metrics show fits 160 columns
    assert list(est['window'])[-1] == 'all' and len(est) == 15
    assert E.estimation_line(mo.result).endswith('concept drift suspected')

def test_the_monitor_command_fits_a_registered_reference_on_prepared_dir(lifecycle, tmp_path):
    "`mlops-nb monitor --prepared-dir`: a registered reference's estimate is fitted on that folder's test split, not on ./data/prepared."
    import shutil
    from conftest import run
    from mlops_nb.evaluate import predict_scores
    from mlops_nb.registry import Registry
    d, params = lifecycle
    shutil.copytree(d/'data'/'prepared', tmp_path/'elsewhere')
    (tmp_path/'params.yaml').write_text(yaml.safe_dump(merge(params, {'deploy': {'registry': str(d/'registry')}}), sort_keys=False))
    reg = Registry(d/'registry', params['deploy']['model_name']); info = reg.info('champion')
    test = pd.read_parquet(d/'data'/'prepared'/'test.parquet')
    test.assign(prediction=predict_scores(reg.load('champion'), test[info['features']], 'classification')).to_parquet(tmp_path/'cur.parquet')
    cmd = 'mlops-nb monitor --reference champion --current cur.parquet --status {}.json --report-only'
    assert run(cmd.format('given') + ' --prepared-dir elsewhere', tmp_path).returncode == 0
    assert run(cmd.format('default'), tmp_path).returncode == 0          # no ./data/prepared here: not estimated
    given, default = (json.loads((tmp_path/f'{n}.json').read_text())['reference']['estimation'] for n in ('given', 'default'))
    assert given.startswith('CBPE fitted on') and 'elsewhere/test.parquet' in given, given
    assert default.startswith('not estimated'), default
