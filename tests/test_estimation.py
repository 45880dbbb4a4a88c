"""Label-free performance estimation (CBPE) against NannyML's on the same chunks, and against the realised metric on
data with covariate shift only. NannyML runs in its own environment (benchmarks/.venv-nannyml, created when missing,
or the interpreter named by $MLOPS_NB_NANNYML_PYTHON): its pins do not fit the project's."""
import json, os, subprocess, sys, textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from mlops_nb.estimate import CBPE
from mlops_nb.monitor import window_metrics
from mlops_nb.sim import TransactionSimulator

ROOT = Path(__file__).resolve().parents[1]
NANNYML = 'nannyml==0.13.1'
CHUNK = 10000


def nannyml_python() -> str:
    given = os.environ.get('MLOPS_NB_NANNYML_PYTHON')
    if given: return given
    venv = ROOT/'benchmarks'/'.venv-nannyml'
    py = venv/'bin'/'python'
    if not py.exists() or subprocess.run([str(py), '-c', 'import nannyml'], capture_output=True).returncode:
        subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
        subprocess.run([str(py), '-m', 'pip', 'install', '-q', NANNYML, 'statsmodels'], check=True)
    return str(py)


def features(df):
    X = pd.DataFrame(dict(r=np.log(df['amount'] / df['customer_avg_amount']), night=df['timestamp'].dt.hour < 6,
                          online=df['channel'] == 'online', foreign=df['distance_from_home_km'] > 200,
                          tx=df['customer_tx_24h'], risky=df['merchant_category'].isin(['electronics', 'travel', 'cash'])))
    return X.astype(float)


@pytest.fixture(scope='module')
def chunks(tmp_path_factory):
    "A model trained before a covariate-only shift, its scored reference and analysis rows (chunks of CHUNK rows)."
    sim = TransactionSimulator(seed=11, n_customers=3000, transactions_per_day=5000,
                               drift=dict(day=8, schedule='gradual', span_days=4, amount_scale=1.8, new_category='crypto',
                                          new_category_share=0.1, fraud_pattern='card_testing', concept=False))
    train, ref, ana = sim.frame(0, 3), sim.frame(3, 4), sim.frame(8, 6)
    clf = LogisticRegression(max_iter=1000).fit(features(train), train['is_fraud'])
    out = {}
    for name, df in (('reference', ref), ('analysis', ana)):
        s = clf.predict_proba(features(df))[:, 1]
        out[name] = pd.DataFrame(dict(score=s, pred=(s >= 0.1).astype(int), y=df['is_fraud'].to_numpy()))
    return out


def test_cbpe_matches_nannyml_and_realised(chunks, tmp_path):
    ref, ana = chunks['reference'], chunks['analysis']
    ref.to_csv(tmp_path/'reference.csv', index=False); ana.drop(columns='y').to_csv(tmp_path/'analysis.csv', index=False)
    script = textwrap.dedent(f"""
        import json, pandas as pd, nannyml as nml
        ref, ana = pd.read_csv('{tmp_path}/reference.csv'), pd.read_csv('{tmp_path}/analysis.csv')
        est = nml.CBPE(problem_type='classification_binary', y_pred_proba='score', y_pred='pred', y_true='y',
                       metrics=['roc_auc', 'average_precision'], chunk_size={CHUNK})
        est.fit(ref)
        r = est.estimate(ana).filter(period='analysis').to_df()
        print(json.dumps(dict(roc_auc=r[('roc_auc', 'value')].tolist(), pr_auc=r[('average_precision', 'value')].tolist(),
                              calibrated=bool(est.needs_calibration))))
    """)
    got = subprocess.run([nannyml_python(), '-c', script], capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, got.stderr[-3000:]
    theirs = json.loads(got.stdout.strip().splitlines()[-1])
    cbpe = CBPE(threshold=0.1).fit(ref['y'], ref['score'])
    assert cbpe.calibrated_ == theirs['calibrated']
    n = len(ana) // CHUNK
    assert n == len(theirs['roc_auc']) >= 3
    for i in range(n):
        part = ana.iloc[i*CHUNK:(i+1)*CHUNK]
        ours = cbpe.estimate(part['score'])
        real = window_metrics(part['y'], part['score'], threshold=0.1)
        assert abs(ours['roc_auc'] - theirs['roc_auc'][i]) <= 0.01, (i, ours['roc_auc'], theirs['roc_auc'][i])
        assert abs(ours["pr_auc"] - theirs["pr_auc"][i]) <= 0.01, (i, ours['pr_auc'], theirs['pr_auc'][i])
        assert abs(ours['roc_auc'] - real['roc_auc']) <= 0.02, (i, ours['roc_auc'], real['roc_auc'])
        assert ours['roc_auc_lo'] < ours['roc_auc'] < ours['roc_auc_hi']


def test_dle_follows_the_error_under_covariate_shift():
    "Direct loss estimation: where the error depends on an input, a shift of that input moves the estimated MAE with the realised one."
    from mlops_nb.estimate import DLE, estimated_performance
    rng = np.random.default_rng(3)
    def rows(n, centre):
        x = rng.normal(centre, 1, n); z = rng.normal(0, 1, n)
        y = 2*x + z + rng.normal(0, 0.2 + np.abs(x), n)          # noisier far from 0
        return pd.DataFrame(dict(x=x, z=z, y=y, prediction=2*x + z))
    ref, cur = rows(6000, 0.0), rows(3000, 1.0)
    dle = DLE(features=['x', 'z']).fit(ref, ref['y'])
    est = estimated_performance(dle, cur.assign(t=pd.Timestamp('2026-01-01')), 'prediction', 't', target='y', task='regression', metric='mae')
    row = est.iloc[-1]
    ref_mae = float(np.abs(ref['y'] - ref['prediction']).mean())
    assert row["realised_mae"] > 1.3 * ref_mae                    # the shift really hurts
    assert abs(row['estimated_mae'] - row['realised_mae']) < 0.1 * row['realised_mae'], row.to_dict()
    assert not row['concept_drift']
    with pytest.raises(Exception, match=r"DLE: the window lacks column\(s\) \['z'\]"):
        dle.estimate(cur.drop(columns='z'))
    # a changed relation between inputs and target (concept drift): the estimate stays, the realised error leaves it
    changed = cur.assign(y=cur['y'] + rng.normal(0, 2.0, len(cur)))
    row = estimated_performance(dle, changed.assign(t=pd.Timestamp('2026-01-01')), 'prediction', 't', target='y', task='regression', metric='mae').iloc[-1]
    assert row['concept_drift'] and row['gap'] > 0.3, row.to_dict()
