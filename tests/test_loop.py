"""The continuous-improvement loop end to end on small params: the real service (`mlops-nb serve` over HTTP), the
project's own stages for retraining, deploy's gate, the registry's hot swap, and a state that survives SIGKILL."""
import copy, json, os, random, signal, subprocess, sys, time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MLOPS = str(Path(sys.executable).with_name('mlops-nb'))
DAYS = 12                                             # simulated by the end-to-end tests, from loop.start_day 10


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


def drift_params() -> dict:
    "The drift run's params: a retrain after the drift needs two labelled days of the new world (window.since_drift)."
    return small_params(min_labelled_rows=800, window=dict(kind='sliding', days=8, min_days_since_drift=2))


def write_params(folder: Path, params: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder/'params.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
    return folder/'params.yaml'


def simulate(folder: Path, days: int, **kw):
    return subprocess.run([MLOPS, 'loop', 'simulate', '--days', str(days), '--params', str(folder/'params.yaml'), '--root', str(folder)],
                          capture_output=True, text=True, timeout=900, **kw)


def history(folder: Path) -> list[dict]:
    return json.loads((folder/'loop'/'state.json').read_text())['history']


def summary(folder: Path) -> list[tuple]:
    "What must not depend on interruptions: per day the version served, the decision, the retrain's version and fate."
    return [(r['day'], r['version'], r['rows'], r['decision']['retrain'], r['decision']['reason'],
             (r.get('retrain') or {}).get('version'), (r.get('retrain') or {}).get('status'), r['champion_after'],
             round(r['signals'].get('realised') or -1, 6), round(r['signals'].get('estimated') or -1, 6)) for r in history(folder)]


@pytest.fixture(scope='module')
def drift_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp('loop')
    write_params(folder, drift_params())
    # days 10..21, abrupt drift from day 13, detected that day: the window then starts on day 13 (window.since_drift),
    # and with labels 2 days late the retrain waits for two labelled days of the new world (day 16); the new champion
    # serves the days after its promotion
    got = simulate(folder, DAYS)
    assert got.returncode == 0, got.stderr[-3000:]
    return folder


def test_abrupt_drift_alert_retrain_promotion_new_version_served(drift_run):
    from mlops_nb.registry import Registry
    h = history(drift_run)
    assert [r['day'] for r in h] == list(range(10, 10 + DAYS))
    assert not any(r['signals']['data_drift'] for r in h if r['day'] < 13)           # no alert before the drift
    first_alert = min(r['day'] for r in h if r['signals']['data_drift'])
    assert first_alert == 13                                                           # detected on the onset day
    assert all(r['drift_onset'] == 13 for r in h if r['day'] >= 13) and all(r['drift_onset'] is None for r in h if r['day'] < 13)
    waiting = [r['decision'] for r in h if r['day'] in (13, 14, 15)]      # 0, 0 and 1 labelled day since the onset
    assert [d['blocked'] for d in waiting] == ['min_days_since_drift'] * 3, waiting
    assert [d['reason'].split(' labelled day(s) since the drift began on day 13')[0] for d in waiting] == ['0', '0', '1'], waiting
    retrains = [r for r in h if r['decision']['retrain']]
    assert retrains and retrains[0]['day'] == 16 and retrains[0]['retrain']['window'] == [13, 2]
    promoted = [r for r in retrains if r['retrain']['promoted']]
    assert promoted, [r['retrain'] for r in retrains]
    p = promoted[0]
    new = p['retrain']['version']
    after = [r for r in h if r['day'] > p['day']]
    assert after and after[0]['version'] == new                                        # the service answered with it (x-model-version)
    import pandas as pd
    served = pd.read_parquet(drift_run/'loop'/'days'/f"d{after[0]['day']:04d}.parquet")
    assert set(served['version']) == {new}
    reg = Registry(drift_run/'loop'/'registry')
    info = reg.info(new)
    loop = info['loop']
    assert loop['day'] == p['day'] and loop['decision']['retrain'] and loop['window']['first_day'] == 13
    assert info['git'] is not None and info['params']['train']['search']['n_iter'] == 1
    assert any(h_['version'] == new for h_ in reg.history('champion'))
    # the estimate is recorded beside the realised metric; after the drift the realised one falls below it
    post = [r for r in h if r['day'] in (15, 16) and r['version'] == 'v0001' and r['signals'].get('realised') is not None]
    assert all(r['signals']['estimated'] - r['signals']['realised'] > 0.02 for r in post)
    # labels were posted to the service's /feedback, each day's once the delay passed
    from mlops_nb.capture import read_feedback
    fb = read_feedback(drift_run/'loop'/'captures')
    assert set(fb['request_id'].str.split(':').str[0]) == {f'd{d:04d}' for d in range(10, 10 + DAYS - 2)}


def test_simulate_writes_the_timeline_table_and_figure(drift_run):
    import pandas as pd
    from matplotlib.image import imread
    h = history(drift_run)
    tl = pd.read_csv(drift_run/'loop'/'timeline.csv')
    assert tl['day'].tolist() == [r['day'] for r in h] and tl['version'].tolist() == [r['version'] for r in h]
    assert tl['retrain'].tolist() == [r['decision']['retrain'] for r in h]
    assert tl['data_drift'].tolist() == [r['signals']['data_drift'] for r in h]
    assert tl['promoted'].tolist() == [bool((r.get('retrain') or {}).get('promoted')) for r in h]
    assert tl.loc[tl['retrain'], 'retrain_version'].tolist() == [r['retrain']['version'] for r in h if r['decision']['retrain']]
    for col in ('realised', 'estimated'):
        want = [r['signals'].get(col) for r in h]
        got = tl[col].tolist()
        assert [w is None for w in want] == pd.isna(got).tolist() and all(abs(g - w) < 1e-9 for g, w in zip(got, want) if w is not None)
    img = imread(drift_run/'loop'/'timeline.png')
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500 and img.std() > 0


def _days_done(folder: Path) -> int:
    try: return len(history(folder))
    except (FileNotFoundError, ValueError, KeyError): return 0      # not written yet (or being replaced)


def test_kill_and_resume_gives_the_uninterrupted_run(drift_run, tmp_path):
    write_params(tmp_path, drift_params())
    # kill points by progress, not by the clock (a loaded machine must not turn a kill into none): during the initial
    # retrain, then at random moments of random later days, each a SIGKILL of the whole `loop simulate` process
    rng = random.Random(15)
    targets = [0] + sorted(rng.sample(range(1, DAYS - 1), 2))
    kills = 0
    for target in targets:
        proc = subprocess.Popen([MLOPS, 'loop', 'simulate', '--days', str(DAYS - _days_done(tmp_path)), '--params', str(tmp_path/'params.yaml'),
                                 '--root', str(tmp_path)], stdout=subprocess.DEVNULL, stderr=open(tmp_path/f'kill{kills}.log', 'w'))
        end = time.monotonic() + 600
        while proc.poll() is None and _days_done(tmp_path) < target and time.monotonic() < end: time.sleep(0.05)
        # somewhere inside the next day's work (or the retrain), but before that day commits: days take about a second
        # on a quick machine, so a plain sleep could outlast every day left and kill a run that had nothing left to do
        until = time.monotonic() + rng.uniform(0.5, 4)
        while time.monotonic() < until and _days_done(tmp_path) <= target and proc.poll() is None: time.sleep(0.01)
        assert proc.poll() is None, f"loop simulate ended before kill {kills} (day {_days_done(tmp_path)}, exit {proc.returncode}): " \
                                    + (tmp_path/f'kill{kills}.log').read_text()[-3000:]
        proc.send_signal(signal.SIGKILL); proc.wait(); kills += 1
    left = DAYS - _days_done(tmp_path)
    assert left > 0
    got = simulate(tmp_path, left)
    assert got.returncode == 0, got.stderr[-3000:]
    assert kills == 3
    assert summary(tmp_path) == summary(drift_run)
    from mlops_nb.registry import Registry
    a, b = Registry(tmp_path/'loop'/'registry'), Registry(drift_run/'loop'/'registry')
    assert a.versions() == b.versions() and a.aliases() == b.aliases()
    assert [(h['previous'], h['version']) for h in a.history('champion')] == [(h['previous'], h['version']) for h in b.history('champion')]
    assert [a.info(v)['metrics']['pr_auc'] for v in a.versions()] == [b.info(v)['metrics']['pr_auc'] for v in b.versions()]
    # nothing doubled: a day sent again after a kill replaces its captures; every served row is read once, as uninterrupted
    from mlops_nb.capture import read_captures, read_feedback
    caps, ref = read_captures(tmp_path/'loop'/'captures'), read_captures(drift_run/'loop'/'captures')
    assert caps['request_id'].is_unique and len(caps) == sum(r['rows'] for r in history(tmp_path)) == len(ref)
    assert sorted(caps['request_id']) == sorted(ref['request_id'])
    assert caps.set_index('request_id').sort_index()['prediction'].round(9).tolist() == ref.set_index('request_id').sort_index()['prediction'].round(9).tolist()
    fb = read_feedback(tmp_path/'loop'/'captures')
    assert sorted(fb['request_id']) == sorted(read_feedback(drift_run/'loop'/'captures')['request_id'])


def test_no_drift_never_retrains(tmp_path):
    p = small_params(); p['sim']['drift'] = dict(day=13, schedule='none', amount_scale=1.6)
    write_params(tmp_path, p)
    got = subprocess.run([MLOPS, 'loop', 'simulate', '--days', '7', '--params', str(tmp_path/'params.yaml'), '--root', str(tmp_path),
                          '--baselines', '--schedules', 'never'], capture_output=True, text=True, timeout=900)
    assert got.returncode == 0, got.stderr[-3000:]
    h = history(tmp_path)
    assert len(h) == 7 and not any(r['decision']['retrain'] for r in h) and {r['version'] for r in h} == {'v0001'}
    # the never-retrained baseline scores the same traffic in-process with the same model: the same daily metric
    m = json.loads((tmp_path/'loop'/'metrics.json').read_text())
    assert set(m['schedules']) == {'loop', 'never'} and m['schedules']['loop']['onsets'] == [] and m['schedules']['loop']['retrains'] == 0
    assert m['schedules']['loop']['quiet_days'] == 7 and m['schedules']['loop']['days_to_recovery'] is None
    assert abs(m['schedules']['loop']['metric_mean'] - m['schedules']['never']['metric_mean']) < 1e-3   # ONNX in the service


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
    # a floor no model reaches (pr_auc >= 0.99) beside a rule comparing with the champion: the comparison decides...
    p['deploy']['gates']['pr_auc'] = dict(threshold=0.99, min_absolute_change=-1.0)
    write_params(tmp_path, p)
    got = simulate(tmp_path, 2)                       # every 2 days: one scheduled retrain
    assert got.returncode == 0, got.stderr[-3000:]
    last = [r for r in history(tmp_path)[-2:] if r['decision']['retrain']]
    assert len(last) == 1 and last[0]['retrain']['status'] == 'accepted' and last[0]['retrain']['promoted'], last
    # ...unless loop.champion_over_threshold is off: then the floor holds
    p['loop']['champion_over_threshold'] = False
    write_params(tmp_path, p)
    got = simulate(tmp_path, 3)                       # the new champion needs its own labelled rows first (min_labelled_rows)
    assert got.returncode == 0, got.stderr[-3000:]
    late = [r for r in history(tmp_path)[-3:] if r['decision']['retrain']]
    assert late and all(r['retrain']['status'] == 'rejected' for r in late)
    gate = json.loads((tmp_path/'loop'/'runs'/f"d{late[0]['day']:04d}"/'gate.json').read_text())
    assert len(gate['failed']) == 1 and gate['failed'][0].startswith('pr_auc ') and gate['failed'][0].endswith('< threshold 0.99'), gate['failed']


def reproduce(folder: Path, *args):
    return subprocess.run([MLOPS, 'models', 'reproduce', *args], capture_output=True, text=True, timeout=600, cwd=folder)


def test_reproduce_a_loop_version_from_its_registry_entry(drift_run):
    from mlops_nb.registry import Registry
    reg = Registry(drift_run/'loop'/'registry')
    promoted = [r['retrain']['version'] for r in history(drift_run) if r['decision']['retrain'] and r['retrain']['promoted']][0]
    assert reg.info(promoted)['loop']['sim'] == drift_params()['sim']       # the stream is recorded with the window
    for v in ('v0001', promoted):
        got = reproduce(drift_run, v, '--registry', 'loop/registry', '--params', 'nowhere.yaml', '--json')   # the entry alone suffices
        assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
        r = json.loads(got.stdout)
        assert r['match'] and r['data']['same'] and r['tolerance'] == 0
        rec = {m['metric']: m for m in r['metrics']}
        assert rec['pr_auc']['recorded'] == rec['pr_auc']['reproduced'] == reg.info(v)['metrics']['pr_auc']
        assert 'latency_ms' not in rec
    # another seed trains another model on the same data: a non-zero exit and the differing metrics named
    got = reproduce(drift_run, promoted, '--registry', 'loop/registry', '--seed', '3')
    assert got.returncode == 1, got.stdout[-2000:] + got.stderr[-2000:]
    assert 'data sha256 matches' in got.stdout and 'MISMATCH' in got.stdout and 'DIFFERS' in got.stdout


def test_reproduce_a_main_pipeline_version_from_its_data_hash(tmp_path):
    import contextlib
    from mlops_nb import steps
    p = small_params()
    p['collect'] = dict(start_day=0, days=6, sources=[{'type': 'simulator'}])
    p['deploy'] = dict(p['deploy'], registry='registry')
    with contextlib.chdir(tmp_path):          # relative paths, as dvc.yaml's stages run them
        steps.run_collect(p, 'data/raw')
        steps.run_prepare(p, 'data/raw', 'data/prepared', 'metrics/data_quality.json')
        steps.run_train(p, 'data/prepared', 'models/candidate', 'metrics/train.json')
        steps.run_evaluate(p, 'data/prepared', 'models/candidate', 'metrics/evaluate.json', 'plots/evaluate', 'data/predictions/test.parquet')
        assert steps.run_deploy(p, 'data/prepared', 'models/candidate', 'metrics/evaluate.json', 'plots/evaluate/figures', 'metrics/gate.json').version == 'v0001'
    got = reproduce(tmp_path, 'v0001', '--registry', 'registry')
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
    assert 'MATCH' in got.stdout and 'prepared data data/prepared' in got.stdout
    # other prepared data (another commit's): refused, with the way to get the right data
    import pandas as pd
    f = tmp_path/'data'/'prepared'/'test.parquet'
    pd.read_parquet(f).iloc[:-1].to_parquet(f, index=False)
    got = reproduce(tmp_path, 'v0001', '--registry', 'registry')
    assert got.returncode == 2 and 'is not the data v0001 was trained on' in got.stderr and 'dvc checkout' in got.stderr, got.stderr[-2000:]


def test_baselines_on_the_days_and_traffic_of_the_loop(drift_run, tmp_path):
    import shutil
    import pandas as pd
    from matplotlib.image import imread
    shutil.copytree(drift_run/'loop', tmp_path/'loop'); shutil.copy(drift_run/'params.yaml', tmp_path/'params.yaml')
    got = subprocess.run([MLOPS, 'loop', 'baselines', '--params', str(tmp_path/'params.yaml'), '--root', str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert got.returncode == 0, got.stderr[-3000:]
    assert 'never' in got.stdout and 'weekly' in got.stdout
    h = history(tmp_path)
    m = json.loads((tmp_path/'loop'/'metrics.json').read_text())
    s = m['schedules']
    assert set(s) == {'loop', 'never', 'daily', 'weekly'} and m['days'] == [10, 10 + DAYS - 1] and m['metric'] == 'pr_auc'
    assert (s['never']['retrains'], s['daily']['retrains'], s['weekly']['retrains']) == (0, DAYS - 1, 1)
    assert s['loop']['retrains'] == sum(r['decision']['retrain'] for r in h) and s['loop']['retrain_wall_seconds'] > 0
    assert s['loop']['onsets'] == [13] and s['loop']['days_to_detection'] == 0 and s['loop']['missed_detections'] == 0
    assert s['never']['days_to_detection'] is None                               # a baseline has no detector
    # the never-retrained baseline stays below its level before the drift
    assert s['never']['metric_mean_after_onset'] < s['never']['metric_before_drift'] - 0.1
    tab = pd.read_csv(tmp_path/'loop'/'schedules.csv')
    wide = tab.pivot(index='day', columns='schedule', values='metric')
    # until the first promotion the loop served v0001: the baseline scoring the same days in-process gets the same metric
    # (to the float precision of the service's ONNX scores)
    first = min(r['day'] for r in h if r['decision']['retrain'] and r['retrain']['promoted'])
    assert (wide.loc[:first, 'loop'] - wide.loc[:first, 'never']).abs().max() < 1e-3
    assert (wide.loc[first + 1:, 'loop'] - wide.loc[first + 1:, 'never']).abs().max() > 1e-2
    tl = pd.read_csv(tmp_path/'loop'/'timeline.csv')
    for k in s: assert (tl[f'pr_auc_{k}'].to_numpy() == wide.loc[tl['day'], k].to_numpy()).all()
    assert imread(tmp_path/'loop'/'timeline.png').shape[0] >= 750                 # the third panel: the schedules


def test_the_loop_can_redeploy_through_a_canary(tmp_path):
    "loop.redeploy: canary: a retrain that passes the gate becomes champion through a rollout, every step in the registry."
    p = small_params(triggers=dict(data_drift=False, realised_drop=0, estimated_drop=0, schedule_days=2), min_days_between_retrains=1,
                     redeploy='canary', canary=dict(steps=[50, 100], bake_seconds=0.5,
                                                    guardrails=dict(min_rows=20, p99_floor_ms=5000, drift=100)))   # the plumbing, not the guardrails
    p['sim']['drift'] = None
    p['deploy']['gates'] = dict(roc_auc=dict(threshold=0.5))
    write_params(tmp_path, p)
    got = simulate(tmp_path, 3)                       # the first champion (direct: there is none to compare with), then a retrain on day 12
    assert got.returncode == 0, got.stderr[-3000:]
    from mlops_nb.registry import Registry
    reg = Registry(tmp_path/'loop'/'registry')
    r = [r for r in history(tmp_path) if r['decision']['retrain']][0]['retrain']
    assert r['status'] == 'accepted' and r['rollout'] == 'promoted' and r['promoted'], r
    assert [(h['action'], h['share']) for h in reg.history() if h.get('alias') == 'canary'] == \
        [('rollout-start', 50), ('rollout-advance', 100), ('rollout-finish', 100)]
    assert reg.aliases()['champion'] == r['version'] == history(tmp_path)[-1]['champion_after']


# --- the policy's other triggers and the window kinds, on the functions themselves (no simulation)

def test_realised_drop_and_prediction_drift_triggers_fire():
    from mlops_nb.loop import decide, settings
    cfg = settings(small_params()['loop'])                       # realised_drop 0.1; prediction_drift off by default
    fired = decide(20, dict(realised_drop=0.15, metric='roc_auc'), cfg, 10, 5000)
    assert fired['retrain'] and fired['triggers'] == ["realised roc_auc 0.150 below the champion's evaluation (limit 0.1)"]
    assert not decide(20, dict(realised_drop=0.05, metric='roc_auc'), cfg, 10, 5000)['retrain']      # within the limit
    assert not decide(20, dict(realised_drop=float('nan')), cfg, 10, 5000)['retrain']                  # no labels yet: no drop
    assert decide(20, dict(realised_drop=0.15), cfg, 18, 5000)['blocked'] == 'min_days_between_retrains'
    assert not decide(20, dict(prediction_drift=True), cfg, 10, 5000)['retrain']
    on = settings(small_params(triggers=dict(data_drift=False, prediction_drift=True))['loop'])
    d = decide(20, dict(prediction_drift=True, data_drift=True), on, 10, 5000)
    assert d['retrain'] and d['triggers'] == ['prediction drift'] and d['reason'] == 'prediction drift'
    assert not decide(20, dict(prediction_drift=False), on, 10, 5000)['retrain']


def test_expanding_window_keeps_its_first_day_and_grows(tmp_path):
    from mlops_nb.core import MlopsError
    from mlops_nb.loop import Loop, settings
    exp = Loop(small_params(window=dict(kind='expanding', days=8)), tmp_path/'e')
    sld = Loop(small_params(window=dict(kind='sliding', days=8)), tmp_path/'s')
    # start_day 10, labels 2 days late: the first champion trains on days 2..9 either way
    assert exp.window(10) == sld.window(10) == (2, 8)
    # later the sliding window keeps 8 labelled days; the expanding one keeps day 2 and grows by a day a day
    assert [exp.window(d) for d in (12, 13, 20)] == [(2, 9), (2, 10), (2, 17)]
    assert [sld.window(d) for d in (12, 13, 20)] == [(3, 8), (4, 8), (11, 8)]
    assert exp.window(20, drift_onset=15) == (15, 4)                                   # window.since_drift narrows both
    with pytest.raises(MlopsError, match='loop.window.kind: expected sliding or expanding'):
        settings(dict(window=dict(kind='rolling')))


# --- suspected concept drift: realised outside the estimate's interval on the same labelled rows

def test_concept_drift_flags_realised_outside_the_estimate():
    import numpy as np
    import pandas as pd
    from mlops_nb.loop import concept_drift, timeline
    from mlops_nb.estimate import CBPE
    rng = np.random.default_rng(1)
    s = rng.random(6000); y = (rng.random(6000) < s).astype(int)          # the reference: calibrated scores
    cb = CBPE().fit(y[:3000], s[:3000])
    same = pd.DataFrame(dict(score=s[3000:4500], is_fraud=y[3000:4500]))
    shifted = same[same['score'] > 0.3]                                     # covariate shift: the estimate follows it
    changed = same.assign(is_fraud=(rng.random(len(same)) < 0.5).astype(int))   # labels no longer follow the scores
    a, b, c = (concept_drift(cb, f, 'is_fraud') for f in (same, shifted, changed))
    assert a['concept_drift'] is False and b['concept_drift'] is False and c['concept_drift'] is True
    assert c['concept_gap'] < -0.2 and abs(a['concept_gap']) < 0.05
    # recorded per day in the history, a column of the timeline
    h = [dict(day=d, version='v0001', signals=dict(data_drift=False, concept_drift=f), decision=dict(retrain=False)) for d, f in ((10, None), (11, False), (12, True))]
    assert timeline(h)['concept_drift'].tolist() == [None, False, True]


def test_the_drift_run_records_concept_drift_per_day(drift_run):
    import pandas as pd
    h = history(drift_run)
    # before the changed fraud pattern reaches the labelled window (day 13 + 2 days of delay) no concept drift;
    # the days v0001 judges the drifted labels, the realised metric leaves its estimate's interval
    assert all(r['signals'].get('concept_drift') in (False, None) for r in h if r['day'] < 15)
    assert any(r['signals'].get('concept_drift') for r in h if r['day'] >= 15 and r['version'] == 'v0001')
    tl = pd.read_csv(drift_run/'loop'/'timeline.csv')
    want = [r['signals'].get('concept_drift') for r in h]
    assert [None if pd.isna(v) else str(v) == 'True' for v in tl['concept_drift']] == want


# --- lineage: each retrain's report, recorded in its version

def test_each_retrain_writes_its_report_and_its_version_records_it(drift_run):
    from mlops_nb.registry import Registry
    reg = Registry(drift_run/'loop'/'registry')
    assert reg.versions()
    for v in reg.versions():
        got = subprocess.run([MLOPS, 'models', 'show', v, '--registry', 'loop/registry', '--json'], capture_output=True, text=True, timeout=120, cwd=drift_run)
        assert got.returncode == 0, got.stderr[-2000:]
        paths = json.loads(got.stdout)['loop']['reports']
        assert sorted(Path(p).suffix for p in paths) == ['.html', '.md'] and all((drift_run/p).is_file() for p in paths), paths
    promoted = [r for r in history(drift_run) if r['decision']['retrain'] and r['retrain']['promoted']][0]
    info = reg.info(promoted['retrain']['version'])
    md = (drift_run/[p for p in info['loop']['reports'] if p.endswith('.md')][0]).read_text()
    assert f"# Loop retrain of day {promoted['day']}: {info['version']} accepted" in md and 'promoted to champion' in md
    first, n = promoted['retrain']['window']
    assert f'| first day | {first} |' in md and f'| days | {n} |' in md and first >= 13            # the window (since the drift)
    assert f"**Reason:** {promoted['decision']['reason']}" in md                                 # the decision
    assert any(l.startswith('| train.search | ') and 'n_iter=1' in l for l in md.splitlines())  # the params
    assert f"| roc_auc | " in md and '## Gate' in md and '**Gate:** passed' in md               # evaluate and gate metrics
    html = (drift_run/[p for p in info['loop']['reports'] if p.endswith('.html')][0]).read_text()
    assert html.startswith('<!doctype html>') and '<table>' in html and 'promoted to champion' in html
    text = subprocess.run([MLOPS, 'models', 'show', info['version'], '--registry', 'loop/registry'], capture_output=True, text=True, timeout=120, cwd=drift_run).stdout
    assert f"loop: day {promoted['day']}, {promoted['decision']['reason']}; report {', '.join(info['loop']['reports'])}" in text, text   # the text view says it too
    card = (reg.version_dir(info['version'])/'card.md').read_text()
    assert '## Continuous improvement' in card and f"| retrained on day | {promoted['day']} |" in card and info['loop']['reports'][0] in card, card


# --- `loop run`: every due day, caught up in order

def run_loop(folder: Path, *args):
    return subprocess.run([MLOPS, 'loop', 'run', '--params', str(folder/'params.yaml'), '--root', str(folder), *args],
                          capture_output=True, text=True, timeout=900)


def test_loop_run_catches_up_missed_days_in_order(tmp_path):
    import datetime as dt
    from mlops_nb.capture import read_captures, read_feedback
    p = small_params(); p['sim']['drift'] = None
    # day d is the date start_date + d; with the stream begun 12 days ago, the last complete day is day 11
    p['sim']['start_date'] = str(dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=12))
    write_params(tmp_path, p)
    got = run_loop(tmp_path)                          # the first cron run: the first champion, then days 10 and 11
    assert got.returncode == 0, got.stderr[-3000:]
    assert [r['day'] for r in history(tmp_path)] == [10, 11]
    got = run_loop(tmp_path, '--until', '11')         # run again the same day: nothing is due, nothing doubled
    assert got.returncode == 0 and 'up to date: the next day to walk is 12' in got.stdout, got.stdout + got.stderr[-3000:]
    assert [r['day'] for r in history(tmp_path)] == [10, 11]
    got = run_loop(tmp_path, '--until', '15')         # down for four days: 12..15 caught up, in order, in one run
    assert got.returncode == 0, got.stderr[-3000:]
    assert got.stdout.startswith('walking days 12 to 15 (4 due'), got.stdout   # what is due, said before the walk
    assert [l.split(':')[0] for l in got.stdout.splitlines() if l.startswith('day ')] == [f'day {d}' for d in range(12, 16)]
    h = history(tmp_path)
    assert [r['day'] for r in h] == list(range(10, 16))
    assert json.loads((tmp_path/'loop'/'state.json').read_text())['next_day'] == 16
    caps = read_captures(tmp_path/'loop'/'captures')
    assert caps['request_id'].is_unique and len(caps) == sum(r['rows'] for r in h)
    assert set(caps['request_id'].str.split(':').str[0]) == {f'd{d:04d}' for d in range(10, 16)}
    fb = read_feedback(tmp_path/'loop'/'captures')                     # labels 2 days late: days 10..13 are in
    assert fb['request_id'].is_unique and set(fb['request_id'].str.split(':').str[0]) == {f'd{d:04d}' for d in range(10, 14)}
    assert [r.get('labels_posted') for r in h] == [None, None] + [r['rows'] for r in h[:4]]
