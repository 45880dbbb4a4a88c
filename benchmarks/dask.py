"""Benchmarks of mlops_nb.distributed: the search on a 2-worker LocalCluster against one process, out-of-core drift at
the size where Evidently gives up (with Evidently on a tenth of the shape, side by side), and partitioned batch scoring.

    .venv/bin/python benchmarks/dask.py [--only search,drift,score] [--workers 2]
        [--search-rows 20000] [--search-iter 8]
        [--drift-rows 3300000] [--drift-ref-rows N] [--drift-cols 1000] [--drift-rows-per-file 110000] [--drift-dtype float64]
        [--evidently-fraction 0.1] [--skip-evidently]
        [--score-rows 8000000] [--score-partitions 32] [--score-repeats 5]
        [--omp-threads N] [--out FILE] [--smoke]     # --smoke: tiny sizes, to check the script runs (figures mean nothing)

* search: `train.search` in one process against `distributed.search` through joblib's Dask backend on a
  `LocalCluster` of --workers single-threaded worker processes; same candidates, same folds: the tables must be equal.
* drift: reference and current windows of --drift-rows x --drift-cols float columns as Parquet (files of
  --drift-rows-per-file rows, one row group each), drift injected in known columns (a mean shift of 0.5 std in 2 %
  of them, a scale change of 1.5x in 2 %, every 50th column from the first); `distributed.parquet_drift` on the
  LocalCluster. Wall time and the peak resident memory of the whole process tree (client, scheduler, workers; sampled
  every 0.2 s with psutil) are measured; the drifted columns are compared with the injected ones.
  --drift-ref-rows makes the reference bigger (the 10M-row reference case); --drift-dtype float32 stores the columns
  as float32 (half the disk: a 10M + 3.3M x 1,000 pair is ~53 GB instead of ~106 GB).
  Evidently (0.7, DataDriftPreset, in benchmarks/.venv-evidently, created on first use by benchmarks/monitor.py's
  helper) runs on the same generator at --evidently-fraction of the rows and of the columns, and ours runs on
  exactly that data too (one process, in memory, `monitor.data_drift`, and out of core), so the ratio is measured.
* score: --score-rows rows of the built-in transaction stream in --score-partitions Parquet files, a registered
  HistGradientBoosting model (ONNX); `distributed.score_partitions` without a cluster once, then on 1 and 2 workers,
  alternated --score-repeats times: median rows/s, and every output must equal the single-process output. The workers
  start with scoring's modules imported (Dask's `preload`), as this process has them; loading the model stays inside
  the timing. At the old default of 2,000,000 rows (a job of 3 to 5 s) the cluster's fixed costs showed in the ratio.

Results: a table on stdout, benchmarks/results/dask.json (or dask-smoke.json with --smoke, or --out).
"""
import argparse, importlib.util, json, os, shutil, subprocess, sys, tempfile, textwrap, threading, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# this file is named dask.py: its folder must not be on sys.path, or `import dask` would import it
sys.path[:] = [p for p in sys.path if Path(p or '.').resolve() != ROOT/'benchmarks']

def ensure_evidently() -> Path:
    "benchmarks/monitor.py's Evidently venv (created on first use)."
    spec = importlib.util.spec_from_file_location('bench_monitor', ROOT/'benchmarks'/'monitor.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod.ensure_evidently()

def tree_rss(pid:int) -> int:
    "Resident bytes of the process `pid` and all its descendants."
    import psutil
    try:
        p = psutil.Process(pid); procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess: return 0
    total = 0
    for q in procs:
        try: total += q.memory_info().rss
        except psutil.NoSuchProcess: pass
    return total

class PeakMemory:
    "Sample the resident memory of this process tree every `every` seconds; `.peak` in bytes."
    def __init__(self, every=0.2): self.every, self.peak, self._stop = every, 0, threading.Event()
    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid())); self._stop.wait(self.every)
    def __enter__(self):
        self.peak = tree_rss(os.getpid()); self._t = threading.Thread(target=self._run, daemon=True); self._t.start(); return self
    def __exit__(self, *a): self._stop.set(); self._t.join()

def cluster(n:int, preload:tuple[str, ...]=()):
    """A LocalCluster of `n` single-threaded worker processes. `preload`: modules each worker imports as it starts
    (Dask's `preload`), as the workers of a long-running cluster have them imported from its first job on."""
    from distributed import Client, LocalCluster
    c = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=':0', memory_limit='auto',
                     preload=list(preload))
    return c, Client(c)

# ---- search ---------------------------------------------------------------------------------------------------------
def bench_search(a) -> dict:
    import numpy as np, pandas as pd
    from mlops_nb import distributed as D
    from mlops_nb.train import make_estimator, make_pipeline, search
    rng = np.random.default_rng(0); n = a.search_rows
    X = pd.DataFrame({f'x{i}': rng.normal(size=n) for i in range(8)} | {'c': rng.choice(list('abcde'), n)})
    y = pd.Series((X.x0 + 0.5 * X.x1 * X.x2 + (X.c == 'a') + rng.normal(size=n) > 1).astype(int))
    pipe = make_pipeline([f'x{i}' for i in range(8)], ['c'], make_estimator('hist_gradient_boosting', 'classification', {'max_iter': 100}, 0))
    space = {'learning_rate': [0.05, 0.1, 0.2], 'max_leaf_nodes': [15, 31], 'l2_regularization': [0.0, 1.0], 'min_samples_leaf': [20, 50]}
    t = time.perf_counter(); _, local = search(pipe, X, y, space, n_iter=a.search_iter, scoring='average_precision', seed=1); t_local = time.perf_counter() - t
    c, client = cluster(a.workers)
    try:
        with D.joblib_backend(c.scheduler_address):
            t = time.perf_counter()
            _, dist, _ = D.search(pipe, X, y, space, n_iter=a.search_iter, scoring='average_precision', seed=1, n_jobs=-1)
            t_dist = time.perf_counter() - t
    finally: client.close(); c.close()
    same = local.equals(dist)
    return dict(rows=n, candidates=a.search_iter, folds=3, one_process_s=round(t_local, 2), cluster_s=round(t_dist, 2),
                workers=a.workers, speedup=round(t_local / t_dist, 2), same_result=bool(same),
                best=dict(local.iloc[0][[k for k in local.columns if k in space or k == 'mean_score']]))

# ---- drift ----------------------------------------------------------------------------------------------------------
def drifted_columns(cols:int) -> dict[str, str]:
    "Which columns get which drift: every 50th from 0 a mean shift, every 50th from 25 a scale change."
    out = {f'f{j:04d}': 'shift' for j in range(0, cols, 50)}
    out |= {f'f{j:04d}': 'scale' for j in range(25, cols, 50)}
    return out

def _write_file(path:Path, n:int, names:list[str], kinds:dict, seed:list[int], dtype:str) -> None:
    "One Parquet file of `n` rows: standard normal columns, drifted as `kinds` says, stored as `dtype`."
    import numpy as np, pyarrow as pa, pyarrow.parquet as pq
    rng = np.random.default_rng(seed)
    arrays = []
    for c in names:
        x = rng.standard_normal(n)
        k = kinds.get(c)
        if k == 'shift': x += 0.5
        elif k == 'scale': x *= 1.5
        arrays.append(pa.array(x.astype(dtype, copy=False)))
    # no dictionary encoding: random floats gain nothing from it, and its pages cost a quarter more disk (float64) or
    # two fifths (float32), which the 10M-row reference cannot spare here
    pq.write_table(pa.Table.from_arrays(arrays, names=names), path, row_group_size=n, compression='snappy', write_statistics=False,
                   use_dictionary=False)

def write_window(folder:Path, rows:int, cols:int, per_file:int, seed:int, drift:bool, dtype:str='float64', jobs:int=1) -> Path:
    """Parquet files of `per_file` rows (one row group each) of `dtype` columns, written by `jobs` processes; the same
    data for any `jobs` (each file has its own seed)."""
    from concurrent.futures import ProcessPoolExecutor
    folder.mkdir(parents=True, exist_ok=True)
    kinds = drifted_columns(cols) if drift else {}
    names = [f'f{j:04d}' for j in range(cols)]
    files = [(folder/f'part-{i:04d}.parquet', min(per_file, rows - start), names, kinds, [seed, i], dtype)
             for i, start in enumerate(range(0, rows, per_file))]
    if jobs <= 1:
        for f in files: _write_file(*f)
    else:
        with ProcessPoolExecutor(jobs) as ex: list(ex.map(_write_file, *zip(*files)))
    return folder

EVID = textwrap.dedent('''
    import json, resource, sys, time, warnings
    warnings.filterwarnings('ignore')
    import pandas as pd
    from evidently import Report, Dataset, DataDefinition
    from evidently.presets import DataDriftPreset
    ref, cur = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
    dd = DataDefinition(numerical_columns=list(ref.columns), categorical_columns=[])
    t = time.perf_counter()
    snap = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur, data_definition=dd), Dataset.from_pandas(ref, data_definition=dd))
    d = snap.dict()
    seconds = time.perf_counter() - t
    drifted = []
    for m in d['metrics']:
        c = m['config']
        if c.get('type', '').endswith('ValueDrift'):
            pvalue = 'distance' not in c['method'].lower() and 'psi' not in c['method'].lower()
            v = float(m['value'])
            if (v < c['threshold']) if pvalue else (v >= c['threshold']): drifted.append(c['column'])
    print(json.dumps(dict(seconds=seconds, peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, drifted=sorted(drifted))))
''')

OURS_SMALL = textwrap.dedent('''
    import json, resource, sys, time
    import pandas as pd
    from mlops_nb import distributed as D, monitor as M
    t = time.perf_counter(); ref, cur = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2]); read = time.perf_counter() - t
    t = time.perf_counter(); rep = M.data_drift(ref, cur); mem = time.perf_counter() - t
    t = time.perf_counter(); ooc = D.parquet_drift(sys.argv[1], sys.argv[2]); ooc_s = time.perf_counter() - t
    print(json.dumps(dict(in_memory_s=mem, out_of_core_s=ooc_s, read_s=read, peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          drifted=sorted(rep.summary()['drifted']), drifted_out_of_core=sorted(ooc['drift'].summary()['drifted']))))
''')

def score(found:list[str], injected:dict) -> dict:
    tp = len(set(found) & set(injected))
    return dict(found=len(found), injected=len(injected), true_positives=tp, false_positives=len(set(found) - set(injected)))

def bench_drift(a, work:Path) -> dict:
    from mlops_nb import distributed as D
    ref_rows = a.drift_ref_rows or a.drift_rows
    t = time.perf_counter()
    jobs = len(os.sched_getaffinity(0))
    ref = write_window(work/'ref', ref_rows, a.drift_cols, a.drift_rows_per_file, 1, False, a.drift_dtype, jobs)
    cur = write_window(work/'cur', a.drift_rows, a.drift_cols, a.drift_rows_per_file, 2, True, a.drift_dtype, jobs)
    gen_s = time.perf_counter() - t
    disk = sum(p.stat().st_size for p in work.rglob('*.parquet'))
    c, client = cluster(a.workers)
    try:
        with PeakMemory() as pm:
            base = pm.peak
            t = time.perf_counter(); out = D.parquet_drift(ref, cur, client=client); seconds = time.perf_counter() - t
    finally: client.close(); c.close()
    injected = drifted_columns(a.drift_cols)
    res = dict(ref_rows=ref_rows, cur_rows=a.drift_rows, cols=a.drift_cols, dtype=a.drift_dtype, parquet_gb=round(disk / 1e9, 2), generate_s=round(gen_s, 1),
               seconds=round(seconds, 1), peak_gb=round(pm.peak / 1e9, 2), baseline_gb=round(base / 1e9, 2), workers=a.workers,
               in_memory_gb=round((ref_rows + a.drift_rows) * a.drift_cols * (4 if a.drift_dtype == 'float32' else 8) / 1e9, 1),
               **score(out['drift'].summary()['drifted'], injected),
               max_ks_error=float(out['drift'].table['ks_error'].max()), max_wasserstein_error=float(out['drift'].table['wasserstein_error'].max()))
    shutil.rmtree(work/'ref'); shutil.rmtree(work/'cur')
    # Evidently and ours on a tenth of the shape (rows and columns), the same data for both
    f = a.evidently_fraction
    rows, cols = max(int(a.drift_rows * f), 1000), max(int(a.drift_cols * f), 10)
    sref = write_window(work/'sref', rows, cols, a.drift_rows_per_file, 1, False)
    scur = write_window(work/'scur', rows, cols, a.drift_rows_per_file, 2, True)
    small = dict(rows=rows, cols=cols, injected=len(drifted_columns(cols)))
    p = subprocess.run([sys.executable, '-c', OURS_SMALL, str(sref), str(scur)], capture_output=True, text=True)
    if p.returncode: raise SystemExit(p.stderr[-3000:])
    ours = json.loads(p.stdout.strip().splitlines()[-1])
    small |= dict(ours_in_memory_s=round(ours['in_memory_s'], 2), ours_out_of_core_s=round(ours['out_of_core_s'], 2), ours_peak_mb=round(ours['peak_mb']),
                  ours_true_positives=score(ours['drifted'], drifted_columns(cols))['true_positives'],
                  ours_false_positives=score(ours['drifted'], drifted_columns(cols))['false_positives'],
                  out_of_core_same_verdicts=ours['drifted'] == ours['drifted_out_of_core'])
    if not a.skip_evidently:
        py = ensure_evidently()
        p = subprocess.run([str(py), '-c', EVID, str(sref), str(scur)], capture_output=True, text=True)
        if p.returncode: small['evidently_error'] = p.stderr.strip().splitlines()[-1][:300]
        else:
            ev = json.loads(p.stdout.strip().splitlines()[-1])
            small |= dict(evidently_s=round(ev['seconds'], 2), evidently_peak_mb=round(ev['peak_mb']),
                          evidently_true_positives=score(ev['drifted'], drifted_columns(cols))['true_positives'],
                          evidently_false_positives=score(ev['drifted'], drifted_columns(cols))['false_positives'],
                          speedup_in_memory=round(ev['seconds'] / ours['in_memory_s'], 1))
    res['tenth'] = small
    return res

# ---- batch scoring --------------------------------------------------------------------------------------------------
def bench_score(a, work:Path) -> dict:
    import numpy as np, pandas as pd
    from mlops_nb import distributed as D
    from mlops_nb.features import add_features, clean, feature_columns
    from mlops_nb.registry import Registry
    from mlops_nb.sim import simulate
    from mlops_nb.train import make_estimator, make_pipeline
    df = simulate(0, 20, 42, transactions_per_day=1000, n_customers=2000)
    df = add_features(clean(df, 'is_fraud', 'timestamp', ['transaction_id', 'customer_id']),
                      {'time_parts': ['hour', 'dayofweek'], 'log': ['amount'], 'ratios': {'amount_to_customer_avg': ['amount', 'customer_avg_amount']}}, 'timestamp')
    num, cat = feature_columns(df, 'is_fraud', exclude=['transaction_id', 'customer_id', 'timestamp'])
    X = df[num + cat]
    reg = Registry(work/'registry')
    pipe = make_pipeline(num, cat, make_estimator('hist_gradient_boosting', 'classification', {'max_iter': 100}, 0)).fit(X, df['is_fraud'])
    v = reg.register(pipe, features=num + cat, task='classification', X_test=X.head(2000), metrics={})
    reg.promote(v, 'champion', reason='benchmark', actor='benchmark')
    per = a.score_rows // a.score_partitions
    for i in range(a.score_partitions):
        (work/'in'/f'part={i:03d}').mkdir(parents=True)
        X.sample(per, replace=True, random_state=i).reset_index(drop=True).to_parquet(work/'in'/f'part={i:03d}'/'data.parquet', index=False)
    import statistics
    labels = {0: 'one process', 1: '1 worker', a.workers: f'{a.workers} workers'}
    times, outs, loads = {n: [] for n in labels}, {}, {}
    # one process once, then the cluster runs alternated --score-repeats times (a noisy moment hits both sizes alike)
    for n in [0] + [1, a.workers] * a.score_repeats:
        c = client = None
        # warm workers, like the one process here: scoring's modules imported before the clock starts (each worker
        # still loads the model itself, inside the timing)
        if n: c, client = cluster(n, preload=('mlops_nb.serve', 'onnxruntime'))
        shutil.rmtree(work/f'out{n}', ignore_errors=True)
        try: r = D.score_partitions(work/'in', work/f'out{n}', registry=work/'registry', client=client, chunk_rows=50_000)
        finally:
            if client: client.close(); c.close()
        outs[n] = pd.concat([pd.read_parquet(p, columns=['prediction']) for p in sorted((work/f'out{n}').rglob('*.parquet'))], ignore_index=True)
        times[n].append(r['seconds']); loads[n] = r['model_loads']
    runs = [dict(run=label, rows=a.score_rows, seconds=statistics.median(times[n]), seconds_each=times[n],
                 rows_per_second=round(a.score_rows / statistics.median(times[n]), 1), model_loads=loads[n],
                 same_as_one_process=bool(outs[n].equals(outs[0]))) for n, label in labels.items()]
    one, two = runs[1]['rows_per_second'], runs[2]['rows_per_second']
    return dict(rows=a.score_rows, partitions=a.score_partitions, runtime=reg.info(v).get('onnx', {}).get('kept') and 'onnxruntime' or 'skops',
                repeats=a.score_repeats, runs=runs, speedup_2_vs_1=round(two / one, 2) if one else None,
                speedup_each=[round(x / y, 2) for x, y in zip(times[1], times[a.workers])])

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--only', default='search,drift,score')
    ap.add_argument('--omp-threads', type=int, default=0,
                    help="OpenMP/BLAS threads of this process (0: the libraries' default, all cores); Dask's workers use 1 each")
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--search-rows', type=int, default=20_000); ap.add_argument('--search-iter', type=int, default=8)
    ap.add_argument('--drift-rows', type=int, default=3_300_000); ap.add_argument('--drift-ref-rows', type=int, default=0)
    ap.add_argument('--drift-dtype', choices=('float64', 'float32'), default='float64',
                    help="the windows' stored column type (float32: the 10M-row reference fits on this machine's disk)")
    ap.add_argument('--drift-cols', type=int, default=1000); ap.add_argument('--drift-rows-per-file', type=int, default=110_000)
    ap.add_argument('--evidently-fraction', type=float, default=0.1); ap.add_argument('--skip-evidently', action='store_true')
    ap.add_argument('--score-rows', type=int, default=8_000_000); ap.add_argument('--score-partitions', type=int, default=32)
    ap.add_argument('--score-repeats', type=int, default=5, help='cluster runs of each size, alternated; medians reported')
    ap.add_argument('--work', default='', help='scratch folder (default: a temporary one; the drift data needs ~55 GB at full size)')
    ap.add_argument('--out', default='', help='results file (default: benchmarks/results/dask.json, or dask-smoke.json with --smoke)')
    ap.add_argument('--smoke', action='store_true', help='tiny sizes: checks that the script runs; the figures mean nothing')
    a = ap.parse_args()
    if a.smoke:
        a.search_rows, a.search_iter, a.drift_rows, a.drift_cols, a.drift_rows_per_file = 3000, 4, 60_000, 100, 20_000
        a.score_rows, a.score_partitions, a.score_repeats = 60_000, 6, 1
    if a.omp_threads:   # before scikit-learn's OpenMP runtime starts (it is imported lazily, in the benchmarks)
        for v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ[v] = str(a.omp_threads)
    only = set(a.only.split(','))
    work = Path(a.work or tempfile.mkdtemp(prefix='mlops-nb-dask-bench-')); work.mkdir(parents=True, exist_ok=True)
    res = dict(cores=len(os.sched_getaffinity(0)), smoke=a.smoke, args=vars(a))
    try:
        if 'search' in only:
            res['search'] = s = bench_search(a)
            print(f"\nsearch: {s['candidates']} candidates x {s['folds']} folds on {s['rows']:,} rows\n"
                  f"| one process | {s['workers']}-worker LocalCluster | speedup | same result |\n|---|---|---|---|\n"
                  f"| {s['one_process_s']} s | {s['cluster_s']} s | {s['speedup']}x | {s['same_result']} |", flush=True)
        if 'drift' in only:
            res['drift'] = d = bench_drift(a, work/'drift')
            t = d['tenth']
            print(f"\ndrift: {d['ref_rows']:,} + {d['cur_rows']:,} rows x {d['cols']} float columns ({d['parquet_gb']} GB Parquet, {d['in_memory_gb']} GB in memory as {d['dtype']})\n"
                  f"| tool | rows x cols | time | peak memory | drifted found / injected | false positives |\n|---|---|---|---|---|---|\n"
                  f"| mlops-nb out of core, {d['workers']} workers | {d['cur_rows']:,} x {d['cols']} | {d['seconds']} s | {d['peak_gb']} GB | {d['true_positives']} / {d['injected']} | {d['false_positives']} |\n"
                  f"| mlops-nb in memory | {t['rows']:,} x {t['cols']} | {t['ours_in_memory_s']} s | {t['ours_peak_mb']} MB | {t['ours_true_positives']} / {t['injected']} | {t['ours_false_positives']} |\n"
                  f"| mlops-nb out of core, 1 process | {t['rows']:,} x {t['cols']} | {t['ours_out_of_core_s']} s | | same verdicts: {t['out_of_core_same_verdicts']} | |"
                  + (f"\n| Evidently DataDriftPreset | {t['rows']:,} x {t['cols']} | {t['evidently_s']} s | {t['evidently_peak_mb']} MB | {t['evidently_true_positives']} / {t['injected']} | {t['evidently_false_positives']} |"
                     if 'evidently_s' in t else f"\n| Evidently | skipped or failed: {t.get('evidently_error', 'skipped')} | | | | |"), flush=True)
        if 'score' in only:
            res['score'] = s = bench_score(a, work/'score')
            print(f"\nbatch scoring: {s['rows']:,} rows in {s['partitions']} partitions ({s['runtime']})\n| run | seconds | rows/s | model loads | output = one process |\n|---|---|---|---|---|\n"
                  + '\n'.join(f"| {r['run']} | {r['seconds']} | {r['rows_per_second']:,.0f} | {r['model_loads']} | {r['same_as_one_process']} |" for r in s['runs'])
                  + f"\n2 workers vs 1 (medians of {s['repeats']} alternated runs): {s['speedup_2_vs_1']}x; each pair: {s['speedup_each']}", flush=True)
    finally:
        if not a.work: shutil.rmtree(work, ignore_errors=True)
    out = Path(a.out) if a.out else ROOT/'benchmarks'/'results'/('dask-smoke.json' if a.smoke else 'dask.json')
    out.write_text(json.dumps(res, indent=2, default=str) + '\n')
    print(f"\nwritten {out}")

if __name__ == '__main__': main()
