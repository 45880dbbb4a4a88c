"""The continuous-improvement loop end to end on small params: the real service (`mlops-nb serve` over HTTP), the
project's own stages for retraining, deploy's gate, the registry's hot swap, and a state that survives SIGKILL."""
import json, subprocess, sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MLOPS = str(Path(sys.executable).with_name('mlops-nb'))


def small_params(**loop) -> dict:
    p = yaml.safe_load((ROOT/'params.yaml').read_text())
    p['sim'] = dict(n_customers=500, transactions_per_day=400, start_date='2026-01-01', fraud_rate=0.03,
                    drift=dict(day=13, amount_scale=1.6, new_category='crypto', new_category_share=0.1, fraud_pattern='card_testing'))
    p['train'] = dict(p['train'], estimator_params=dict(max_iter=40, early_stopping=False),
                      search=dict(p['train']['search'], n_iter=1, cv_splits=2))
    p['evaluate'] = dict(p['evaluate'], importance_repeats=1, importance_max_rows=300)
    p['deploy'] = dict(p['deploy'], latency_rows=5, gates=dict(pr_auc=dict(threshold=0.0, min_absolute_change=0.0), roc_auc=dict(threshold=0.5)))
    p['loop'] = dict(dict(dir='loop', start_day=10, label_delay_days=2, monitor_days=2, window=dict(kind='sliding', days=8),
                          triggers=dict(data_drift=True, realised_drop=0.1, estimated_drop=0.1),
                          min_days_between_retrains=3, min_labelled_rows=200), **loop)
    return p


def write_params(folder: Path, params: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder/'params.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
    return folder/'params.yaml'


def simulate(folder: Path, days: int, **kw):
    return subprocess.run([MLOPS, 'loop', 'simulate', '--days', str(days), '--params', str(folder/'params.yaml'), '--root', str(folder)],
                          capture_output=True, text=True, timeout=900, **kw)


def history(folder: Path) -> list[dict]:
    return json.loads((folder/'loop'/'state.json').read_text())['history']


def test_no_drift_never_retrains(tmp_path):
    p = small_params(); p['sim']['drift'] = dict(day=13, schedule='none', amount_scale=1.6)
    write_params(tmp_path, p)
    got = simulate(tmp_path, 7)
    assert got.returncode == 0, got.stderr[-3000:]
    h = history(tmp_path)
    assert len(h) == 7 and not any(r['decision']['retrain'] for r in h) and {r['version'] for r in h} == {'v0001'}


def test_a_challenger_that_loses_the_gate_is_rejected_and_the_champion_stays(tmp_path):
    p = small_params(triggers=dict(data_drift=False, realised_drop=0, estimated_drop=0, schedule_days=2), min_days_between_retrains=1)
    p['sim']['drift'] = None
    write_params(tmp_path, p)
    got = simulate(tmp_path, 3)                       # the first champion, then a scheduled retrain on day 12
    assert got.returncode == 0, got.stderr[-3000:]
    p['deploy']['gates']['pr_auc']['min_absolute_change'] = 0.5          # no challenger can be that much better
    write_params(tmp_path, p)
    got = simulate(tmp_path, 2)
    assert got.returncode == 0, got.stderr[-3000:]
    from mlops_nb.registry import Registry
    h = history(tmp_path)
    late = [r for r in h if r['day'] >= 13 and r['decision']['retrain']]
    assert late and all(r['retrain']['status'] == 'rejected' and not r['retrain']['promoted'] for r in late)
    reg = Registry(tmp_path/'loop'/'registry')
    assert reg.aliases()['champion'] == h[-1]['champion_after'] == late[0]['retrain']['champion_before']
    assert all(r['version'] == reg.aliases()['champion'] for r in h if r['day'] > late[0]['day'])
