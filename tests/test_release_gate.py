"""Experiments are not releases, and the gate needs evidence: real models, a real `dvc exp run` in a temporary copy."""
import json, os

import numpy as np, pytest
from sklearn.linear_model import LogisticRegression

from conftest import copy_project
from mlops_nb.evaluate import evidence_gate, gate
from mlops_nb.registry import Registry


# ---------------------------------------------------------------------------------------------- the evidence gate

def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] + 0.8 * X[:, 1] + rng.normal(0, 0.7, n) > 0.4).astype(int)
    return X, y

@pytest.fixture(scope='module')
def fitted():
    "Two real classifiers trained on the same rows: one sees the informative columns, one only the first; scored on newer rows."
    X, y = _data(3000, 0)
    Xt, yt = _data(1500, 1)
    full = LogisticRegression().fit(X, y)
    retrain = LogisticRegression().fit(X, y)                 # an identical retrain (same data, deterministic fit)
    weak = LogisticRegression().fit(X[:, :1], y)
    return dict(y=yt, full=full.predict_proba(Xt)[:, 1], retrain=retrain.predict_proba(Xt)[:, 1], weak=weak.predict_proba(Xt[:, :1])[:, 1])

RULES = {'roc_auc': {'threshold': 0.6, 'min_absolute_change': 0.0}, 'pr_auc': {'min_absolute_change': 0.0}}

def _gate(f, cand, champ, **kw):
    "The gate exactly as the deploy step calls it: point metrics plus the paired evidence on the same rows."
    from mlops_nb.evaluate import classification_metrics
    m = lambda s: classification_metrics(f['y'], s, 0.5)
    return gate(m(f[cand]), RULES, m(f[champ]), 'v0001', evidence=dict(y=f['y'], candidate_scores=f[cand], champion_scores=f[champ]) | kw)

def test_an_identical_retrain_never_promotes(fitted):
    g = _gate(fitted, 'retrain', 'full')
    assert not g['passed']
    ev = [c for c in g['checks'] if c['kind'] == 'evidence']
    assert {c['metric'] for c in ev} == {'roc_auc', 'pr_auc'}
    for c in ev:
        assert (c['ci_low'], c['ci_high'], c['difference']) == (0.0, 0.0, 0.0) and c['n'] == 1500 and c['method'] == 'paired bootstrap'
        assert c['p_value'] == 1.0

def test_a_clearly_better_model_promotes_with_its_interval(fitted):
    g = _gate(fitted, 'full', 'weak')
    assert g['passed'], g['failed']
    c = [c for c in g['checks'] if c['kind'] == 'evidence' and c['metric'] == 'roc_auc'][0]
    assert 0 < c['ci_low'] < c['difference'] < c['ci_high'] and c['p_value'] < 0.01
    assert 'CI' in c['reason'] and 'p=' in c['reason'] and '1500 paired rows' in c['reason']

def test_a_slightly_worse_model_never_promotes(fitted):
    rng = np.random.default_rng(5)
    worse = np.clip(fitted['full'] + rng.normal(0, 0.03, len(fitted['y'])), 0, 1)   # the same model, a little noise added
    fitted = dict(fitted, worse=worse)
    for seed in range(3):
        assert not _gate(fitted, 'worse', 'full', seed=seed)['passed']
    e = evidence_gate(fitted['y'], worse, fitted['full'], 'roc_auc')
    assert e['difference'] < 0 and not e['passed']

def test_with_few_rows_the_gate_lacks_evidence(fitted):
    few = {k: v[:60] for k, v in fitted.items()}
    g = _gate(few, 'full', 'weak')
    assert not g['passed'] and all('lacks evidence' in f for f in g['failed'] if 'threshold' not in f)
    assert any('lacks evidence' in f and '60 rows' in f for f in g['failed'])

def test_lower_is_better_and_regression_metrics_are_oriented():
    rng = np.random.default_rng(0)
    y = rng.normal(size=1000)
    good, bad = y + rng.normal(0, 0.1, 1000), y + rng.normal(0, 1.0, 1000)
    assert evidence_gate(y, good, bad, 'rmse')['passed'] and not evidence_gate(y, bad, good, 'rmse')['passed']
    assert evidence_gate(y, good, bad, 'r2')['passed']


# ---------------------------------------------------------------------------------------------- experiments vs releases

@pytest.mark.e2e
def test_an_experiment_registers_a_challenger_but_never_moves_the_champion(tmp_path):
    p = copy_project(tmp_path/'proj')
    # a margin any candidate clears (CI lower bound > -1), so only the release rule can keep the champion in place
    p.set_params({'deploy': {'gates': {'latency_ms': {'threshold': 60000}, 'pr_auc': {'threshold': 0.0, 'min_absolute_change': -1.0}},
                             'evidence': {'n_boot': 200}}})
    p.commit('test params')
    p.run('dvc repro')
    reg = Registry(p.path/'registry')
    assert reg.aliases() == {'champion': 'v0001'}                  # the first release on main
    p.commit('first run')
    out = p.run('dvc exp run -n try-search -S train.estimator_params.max_iter=25')
    g = json.loads((p.path/'metrics/gate.json').read_text())
    assert g['passed'] and g['version'] == 'v0002' and g['promoted_to'] == 'challenger', out.stdout[-2000:]
    assert (g['champion_before'], g['champion_after']) == ('v0001', 'v0001')
    assert g['release']['experiment'] == 'try-search' and g['release']['release'] is False
    reg = Registry(p.path/'registry')
    assert reg.aliases() == {'champion': 'v0001', 'challenger': 'v0002'}
    assert reg.info('v0002')['release']['experiment'] == 'try-search'
    # a feature branch is not the release line either
    p.run('git checkout -q -b feature')
    p.run('dvc repro -f -s deploy')
    assert Registry(p.path/'registry').aliases() == {'champion': 'v0001', 'challenger': 'v0003'}
    # back on main, the same deploy is a release and moves the champion
    p.run('git checkout -q main && dvc repro -f -s deploy')
    assert Registry(p.path/'registry').aliases()['champion'] == 'v0004'


def test_the_resampled_metrics_are_scikit_learns_on_each_resample():
    "The bootstrap computes each resample's metric from row counts; it must equal scikit-learn's on the resampled rows, ties included."
    from sklearn import metrics as M
    from mlops_nb.evaluate import _weighted_metric
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300).astype(float)
    s = np.round(rng.random(300), 1)                     # many ties
    idx = rng.integers(0, 300, 300)
    W = np.bincount(idx, minlength=300)[None, :].astype(float)
    want = dict(roc_auc=M.roc_auc_score(y[idx], s[idx]), pr_auc=M.average_precision_score(y[idx], s[idx]),
                brier=M.brier_score_loss(y[idx], s[idx]), f1=M.f1_score(y[idx], s[idx] >= 0.5), recall=M.recall_score(y[idx], s[idx] >= 0.5),
                precision=M.precision_score(y[idx], s[idx] >= 0.5), accuracy=M.accuracy_score(y[idx], s[idx] >= 0.5),
                mae=M.mean_absolute_error(y[idx], s[idx]), rmse=M.root_mean_squared_error(y[idx], s[idx]), r2=M.r2_score(y[idx], s[idx]))
    for m, v in want.items():
        assert abs(_weighted_metric(m, y, s, 0.5, W)[0] - v) < 1e-12, m
