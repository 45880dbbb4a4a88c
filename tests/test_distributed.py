"""Dask: the search on a real 2-worker LocalCluster, its trial store across a killed run, and Dask kept off the local
and serving paths."""
import json, os, signal, subprocess, sys, time, textwrap
from pathlib import Path

import numpy as np, pandas as pd, pytest

from mlops_nb import distributed as D
from mlops_nb.train import make_estimator, make_pipeline, search

ROOT = Path(__file__).resolve().parents[1]
SPACE = {'learning_rate': [0.05, 0.1, 0.2], 'max_leaf_nodes': [7, 15], 'l2_regularization': [0.0, 1.0]}

def _data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({'a': rng.normal(size=n), 'b': rng.normal(size=n), 'c': rng.choice(['x', 'y', 'z'], n)})
    y = pd.Series((X.a + 0.5 * (X.c == 'x') + rng.normal(size=n) > 1).astype(int), name='y')
    return X, y

def _pipe(max_iter=20):
    return make_pipeline(['a', 'b'], ['c'], make_estimator('hist_gradient_boosting', 'classification', {'max_iter': max_iter}, 0))

@pytest.fixture(scope='module')
def cluster():
    distributed = pytest.importorskip('distributed')
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=':0') as c:
        yield c

def test_search_on_cluster_equals_local(cluster, tmp_path):
    X, y = _data()
    m_local, t_local = search(_pipe(), X, y, SPACE, n_iter=4, scoring='average_precision', seed=3)
    with D.joblib_backend(cluster.scheduler_address) as client:
        assert client is not None and len(client.scheduler_info()['workers']) == 2
        m_dask, t_dask, info = D.search(_pipe(), X, y, SPACE, n_iter=4, scoring='average_precision', seed=3, n_jobs=-1,
                                        trials=tmp_path/'trials.jsonl')
    assert info == dict(candidates=4, from_store=0, ran=4)
    pd.testing.assert_frame_equal(t_local, t_dask)                       # same candidates, fold scores, ranks
    assert m_local.get_params()['model__learning_rate'] == m_dask.get_params()['model__learning_rate']
    np.testing.assert_array_equal(m_local.predict_proba(X), m_dask.predict_proba(X))   # same refit model
    # a rerun takes every trial from the store, and a change of data makes new keys
    _, t_again, info = D.search(_pipe(), X, y, SPACE, n_iter=4, scoring='average_precision', seed=3, trials=tmp_path/'trials.jsonl')
    assert info['from_store'] == 4 and info['ran'] == 0
    pd.testing.assert_frame_equal(t_local, t_again)
    X2 = X.copy(); X2.loc[0, 'a'] += 1
    assert D.search(_pipe(), X2, y, SPACE, n_iter=4, scoring='average_precision', seed=3, trials=tmp_path/'trials.jsonl')[2]['ran'] == 4

RUNNER = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {tests!r})
    from test_distributed import _data, _pipe, SPACE
    from mlops_nb import distributed as D
    X, y = _data(3000)
    with D.joblib_backend(D.scheduler_address()):
        _, table, info = D.search(_pipe(60), X, y, SPACE, n_iter=8, scoring='average_precision', seed=1, n_jobs=-1, trials=sys.argv[1])
    print(json.dumps(dict(info, best=table.iloc[0].to_dict())))
''')

def _lines(p:Path): return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []

def test_killed_search_resumes_without_rerunning_completed_trials(cluster, tmp_path):
    script, store = tmp_path/'run.py', tmp_path/'trials.jsonl'
    script.write_text(RUNNER.format(tests=str(ROOT/'tests')))
    env = dict(os.environ, MLOPS_NB_DASK_SCHEDULER=cluster.scheduler_address, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, str(script), str(store)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not _lines(store) and time.time() < deadline and p.poll() is None: time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.wait()
    first = _lines(store)
    assert 1 <= len(first) < 8, f"the kill should land mid-search; the store has {len(first)} trials"
    out = subprocess.run([sys.executable, str(script), str(store)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info['candidates'] == 8 and info['from_store'] == len(first) and info['ran'] == 8 - len(first)
    keys = [r['key'] for r in _lines(store)]
    assert len(keys) == 8 == len(set(keys)), "a completed trial was run (and stored) again"
    X, y = _data(3000)    # the resumed result is the uninterrupted local search's
    _, t = search(_pipe(60), X, y, SPACE, n_iter=8, scoring='average_precision', seed=1)
    assert info['best']['mean_score'] == t.iloc[0]['mean_score'] and info['best']['learning_rate'] == t.iloc[0]['learning_rate']

def test_no_dask_without_a_scheduler(tmp_path):
    code = textwrap.dedent(f'''
        import sys, os
        for v in {D.ENV_VARS!r}: os.environ.pop(v, None)
        import mlops_nb.serve
        assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')], 'the server imports Dask'
        sys.path.insert(0, {str(ROOT/'tests')!r})
        from test_distributed import _data, _pipe, SPACE
        from mlops_nb import distributed as D
        X, y = _data(500)
        with D.joblib_backend(D.scheduler_address({{'scheduler': '', 'trial_store': 'x'}})) as c: assert c is None
        D.search(_pipe(5), X, y, SPACE, n_iter=2, seed=0, trials={str(tmp_path/'t.jsonl')!r})
        # no client, no cluster, no dask.dataframe; (scikit-learn's array-API shim, loaded by skops's estimator
        # discovery, imports dask.array whenever Dask is installed: that is not ours to switch off)
        bad = sorted(m for m in sys.modules if m.split('.')[0] == 'distributed' or m.startswith(('dask.dataframe', 'dask.bag', 'dask.distributed')))
        assert not bad, bad
    ''')
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stderr[-3000:]

def test_scheduler_settings_and_errors(monkeypatch):
    for v in D.ENV_VARS: monkeypatch.delenv(v, raising=False)
    assert D.scheduler_address({}) is None and D.scheduler_address({'scheduler': ''}) is None
    monkeypatch.setenv('DASK_SCHEDULER_ADDRESS', 'tcp://127.0.0.1:1')
    assert D.scheduler_address({}) == 'tcp://127.0.0.1:1'
    monkeypatch.setenv('MLOPS_NB_DASK_SCHEDULER', 'tcp://127.0.0.1:2')
    assert D.scheduler_address({}) == 'tcp://127.0.0.1:2'
    assert D.scheduler_address({'scheduler': 'tcp://127.0.0.1:3'}) == 'tcp://127.0.0.1:3'
    with pytest.raises(D.MlopsError, match=r"dask: unknown key\(s\) \['schedular'\]"): D.scheduler_address({'schedular': 'x'})
    with pytest.raises(D.MlopsError, match="cannot connect to 'tcp://127.0.0.1:1'"):
        with D.joblib_backend('tcp://127.0.0.1:1'): pass

def test_trial_store_skips_a_torn_line(tmp_path):
    s = D.TrialStore(tmp_path/'t.jsonl')
    s.add('k1', {'a': 1}, [0.5, 0.25])
    with open(s.path, 'a') as f: f.write('{"key": "k2", "par')          # a crash mid-write
    s.add('k3', {'a': np.int64(3)}, [np.float64(0.1)])
    assert sorted(s.load()) == ['k1', 'k3'] and s.load()['k3']['scores'] == [0.1]

def test_dvc_repro_with_a_scheduler_set_searches_on_the_cluster_with_the_same_result(cluster, tmp_path):
    "Outgrowing one machine is a setting: the same `dvc repro` with MLOPS_NB_DASK_SCHEDULER set runs train's search on the cluster."
    from conftest import copy_project
    local, remote = copy_project(tmp_path/'local'), copy_project(tmp_path/'remote')
    local.run('dvc repro -q train')
    before = cluster.scheduler.transition_counter
    remote.run(f'MLOPS_NB_DASK_SCHEDULER={cluster.scheduler_address} dvc repro -q train')
    assert cluster.scheduler.transition_counter > before           # the search's fits went through the cluster's scheduler
    a, b = (json.loads((p.path/'metrics'/'train.json').read_text()) for p in (local, remote))
    assert a['best_params'] == b['best_params'] and a['candidates'] == b['candidates'] == 2
    assert a['cv_best_score'] == pytest.approx(b['cv_best_score'], abs=1e-12)
