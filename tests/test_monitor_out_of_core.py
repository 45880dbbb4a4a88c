"""The monitor stage out of core (`monitor.out_of_core`): on a window that fits, the verdicts of the in-memory monitor;
under a memory cap several times smaller than the window, the stage still runs and finds the drift; the same numbers on
a 2-worker Dask cluster as in one process."""
import contextlib, json, os, subprocess, sys, textwrap
from pathlib import Path

import numpy as np, pandas as pd, pytest, yaml

from mlops_nb import steps
from mlops_nb.distributed import use_out_of_core_monitor
from conftest import ROOT, SMALL, merge

@pytest.fixture(scope='module')
def champion(tmp_path_factory):
    "A small simulator project with a registered champion, and a drifted window of Parquet files beside it."
    d = tmp_path_factory.mktemp('mooc')
    params = merge(yaml.safe_load((ROOT/'params.yaml').read_text()), SMALL)
    with contextlib.chdir(d):
        steps.run_collect(params); steps.run_prepare(params); steps.run_train(params); steps.run_evaluate(params)
        assert steps.run_deploy(params).promoted_to == 'champion'
        day = params['sim']['drift']['day']
        w = steps.current_window(merge(params, {'sim': {'transactions_per_day': 2500}}),
                                 dict(source='simulator', start_day=day - 3, days=7))     # drift from the 4th day on
    w = w.reset_index(drop=True)
    w.loc[w.index % 9 == 0, 'customer_avg_amount'] = np.nan                               # a quality breach: null rate
    window(w, d/'window', 4)
    return d, params, w

def window(df:pd.DataFrame, folder:Path, files:int, row_group:int=2000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(df)), files)):
        df.iloc[part].to_parquet(folder/f'part-{i:03d}.parquet', index=False, row_group_size=row_group)
    return folder

def run(d:Path, params:dict, name:str, **monitor):
    p = merge(params, {'monitor': {'current': {'source': 'file', 'path': str(d/'window'), 'days': 0}, 'alerts': {'min_rows': 100}} | monitor})
    with contextlib.chdir(d):
        mo = steps.run_monitor(p, metrics_path=f'{name}/monitor.json', status_path=f'{name}/status.json', plots_dir=f'{name}/plots')
    out = d/name
    return mo, json.loads((out/'monitor.json').read_text()), json.loads((out/'status.json').read_text()), \
           pd.read_csv(out/'plots'/'drift.csv'), pd.read_csv(out/'plots'/'quality.csv')

def test_out_of_core_monitor_gives_the_in_memory_verdicts(champion):
    d, params, w = champion
    mem, mm, ms, md, mq = run(d, params, 'mem', out_of_core=False)
    ooc, om, os_, od, oq = run(d, params, 'ooc', out_of_core=True, memory_budget_mb=0.5)
    assert os_['window']['out_of_core']['partitions'] > 8 and 'out_of_core' not in ms['window']
    assert len(w) > 10_000 and mm['rows_current'] == om['rows_current'] == len(w)      # past the exact-values path: the sketch
    for k in ('dataset_drift', 'drifted_features', 'tested_features', 'drift_share', 'quality_breaches', 'alert', 'retrain',
              'prediction_drift', 'performance', 'estimated'):
        assert om[k] == mm[k], k
    assert om.keys() == mm.keys() and mm['drifted_features'] >= 2 and mm['quality_breaches'] >= 1
    assert {c: v['drift'] for c, v in om['features'].items()} == {c: v['drift'] for c, v in mm['features'].items()}
    assert [a['rule'] for a in os_['alerts']] == [a['rule'] for a in ms['alerts']] and os_['recommendation'] == ms['recommendation']
    assert ooc.result.breaches == mem.result.breaches
    pd.testing.assert_frame_equal(oq, mq)
    # the scores: exact (KS, PSI, chi-square, Jensen-Shannon), Wasserstein within its stated bound
    assert list(od.columns) == list(md.columns) + ['wasserstein_error']
    pd.testing.assert_frame_equal(od[md.columns].drop(columns=['score', 'wasserstein', 'wasserstein_norm']),
                                  md.drop(columns=['score', 'wasserstein', 'wasserstein_norm']))
    err = od['wasserstein_error'].fillna(0)
    assert ((od['score'] - md['score']).abs() <= err + 1e-9).all() and (od['wasserstein_norm'] - md['wasserstein_norm']).abs().max() <= err.max() + 1e-9
    assert 0 < err.max() < 0.01          # in reference standard deviations; the threshold is 0.1
    # what the report notebook draws: the distributions from a sample of the window, no per-day drift out of core
    from mlops_nb import monitor as mon
    from mlops_nb.estimate import estimation_line
    assert 500 < len(ooc.current) < len(w) and mon.plot_distributions(ooc.reference, ooc.current, ooc.result.drift.drifted) is not None
    assert ooc.drift_over_time is None and not (d/'ooc'/'plots'/'drift_over_time.csv').exists() and (d/'ooc'/'plots'/'figures'/'drift.png').exists()
    assert ooc.result.class_rates.equals(mem.result.class_rates) and estimation_line(ooc.result) == estimation_line(mem.result)
    derived = od.loc[od['source'] == 'derived feature'].set_index('column')['n_cur']
    assert len(derived) == 4 and (derived > 0).all(), derived                             # derived features added per partition

def test_auto_switches_on_the_window_size(champion, tmp_path):
    d, params, w = champion
    p = merge(params, {'monitor': {'current': {'source': 'file', 'path': str(d/'window')}}})
    assert not use_out_of_core_monitor(p) and use_out_of_core_monitor(merge(p, {'prepare': {'memory_budget_mb': 0.5}}))
    assert use_out_of_core_monitor(merge(p, {'monitor': {'memory_budget_mb': 0.5}}))
    assert not use_out_of_core_monitor(merge(p, {'monitor': {'memory_budget_mb': 0.5, 'out_of_core': False}}))
    w.head(100).to_csv(tmp_path/'w.csv', index=False)      # not Parquet: auto stays in memory, true says why not
    c = merge(p, {'monitor': {'current': {'path': str(tmp_path/'w.csv')}, 'out_of_core': True}})
    with pytest.raises(Exception, match='monitor.out_of_core: true needs a current window of Parquet files'): use_out_of_core_monitor(c)
    with pytest.raises(Exception, match="monitor.out_of_core: expected true, false or auto, got 'yes'"):
        use_out_of_core_monitor(merge(p, {'monitor': {'out_of_core': 'yes'}}))

def test_newest_rows_out_of_core(champion):
    "monitor.current.source newest over data/raw: the same rows (the newest by time) as in memory."
    d, params, _ = champion
    res = []
    for name, mode in (('nmem', False), ('nooc', True)):
        p = merge(params, {'monitor': {'current': {'source': 'newest', 'rows': 1500}, 'alerts': {'min_rows': 100}, 'out_of_core': mode}})
        with contextlib.chdir(d):
            steps.run_monitor(p, metrics_path=f'{name}/monitor.json', status_path=f'{name}/status.json', plots_dir=f'{name}/plots')
        res.append(json.loads((d/name/'monitor.json').read_text()))
    assert res[0]['rows_current'] == res[1]['rows_current'] == 1500
    assert res[0]['features'] == res[1]['features'] and res[0]['performance'] == res[1]['performance']   # under 10,000 values: exact

def test_out_of_core_monitor_on_a_cluster_gives_the_same_numbers(champion):
    distributed = pytest.importorskip('distributed')
    d, params, _ = champion
    _, m1, s1, d1, q1 = run(d, params, 'local', out_of_core=True, memory_budget_mb=0.5)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=':0') as c, \
         distributed.Client(c) as client:
        _, m2, s2, d2, q2 = run(d, merge(params, {'dask': {'scheduler': c.scheduler_address}}), 'cluster', out_of_core=True, memory_budget_mb=0.5)
        ran = client.run(lambda: 'mlops_nb.distributed' in __import__('sys').modules)
    assert len(ran) == 2 and all(ran.values())     # both workers ran the partitions
    assert m1 == m2 and s1['alerts'] == s2['alerts'] and s1['window'] == s2['window']
    pd.testing.assert_frame_equal(d1, d2); pd.testing.assert_frame_equal(q1, q2)

# Under a cap: RLIMIT_DATA at the warm process's size plus HEADROOM (see test_out_of_core.py for why this limit and
# these environment settings). The window is several times the headroom; reading it in memory fails under the cap.
# The headroom is larger than prepare's: the monitor holds the per-row columns (scores, labels, target, time: 32 bytes a
# row) and computes the realised and estimated performance on them.
HEADROOM = 96 << 20
CAPPED = textwrap.dedent('''
    import contextlib, json, re, resource, sys
    from pathlib import Path
    import pandas as pd, pyarrow as pa
    from mlops_nb import steps
    pa.set_io_thread_count(1); pa.set_cpu_count(1)
    p, d, small, big, headroom = json.loads(sys.argv[1]), *sys.argv[2:]
    def monitor(path, name):
        q = dict(p, monitor=dict(p['monitor'], current=dict(p['monitor']['current'], path=path)))
        with contextlib.chdir(d):
            return steps.run_monitor(q, metrics_path=f'{name}/monitor.json', status_path=f'{name}/status.json', plots_dir=f'{name}/plots')
    monitor(small, 'warm')                                       # warm up: imports, pools, arenas
    vm = lambda k: int(re.search(k + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024
    cap = vm('VmData') + int(headroom)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    res = monitor(big, 'capped')
    out = dict(cap=cap, drifted=res.result.drift.drifted, rows=res.result.drift.rows_current, sample=len(res.current))
    try: [pd.read_parquet(f) for f in sorted(Path(big).glob('*.parquet'))]; out['in_memory'] = 'loaded'   # the control
    except MemoryError as e: out['in_memory'] = type(e).__name__
    print(json.dumps(out))
''')

def test_out_of_core_monitor_under_a_memory_cap(champion):
    d, params, w = champion
    g = np.random.default_rng(5)
    before = w[pd.to_datetime(w['timestamp']) < pd.to_datetime(w['timestamp']).min() + pd.Timedelta(days=3)].reset_index(drop=True)
    big = pd.concat([before] * 24, ignore_index=True)                       # 180k rows of the days before the drift ...
    big['amount'] = big['amount'] * 3 * g.uniform(0.9, 1.1, len(big))      # ... with an injected drift of amount,
    big = pd.concat([big, pd.DataFrame(g.normal(size=(len(big), 200)), columns=[f'extra_{j}' for j in range(200)])], axis=1)   # and columns the model does not use
    size = int(big.memory_usage(deep=True).sum())
    assert size > 3 * HEADROOM, size
    window(big, d/'big', 12, row_group=5000); window(big.head(3000), d/'small', 2)
    del big
    p = merge(params, {'monitor': {'current': {'source': 'file', 'path': '', 'days': 0}, 'out_of_core': True, 'memory_budget_mb': 32,
                                   'alerts': {'min_rows': 100}}})
    env = dict(os.environ, ARROW_DEFAULT_MEMORY_POOL='system', MALLOC_ARENA_MAX='1', MALLOC_MMAP_THRESHOLD_='131072',
               OPENBLAS_NUM_THREADS='1', OMP_NUM_THREADS='1')
    script = d/'capped.py'; script.write_text(CAPPED)
    r = subprocess.run([sys.executable, str(script), json.dumps(p), str(d), str(d/'small'), str(d/'big'), str(HEADROOM)],
                       capture_output=True, text=True, timeout=600, env=env, cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res['in_memory'] in ('MemoryError', 'ArrowMemoryError'), 'the cap must be too small for the in-memory path'
    assert res['rows'] == 24 * len(before) and 0 < res['sample'] < 40_000
    assert 'amount' in res['drifted'] and 'log_amount' in res['drifted'], res   # the raw input and its derived feature
    s = json.loads((d/'capped'/'status.json').read_text())
    assert s['window']['out_of_core']['partitions'] >= 12 and 'amount' in s['summary']['drifted']
