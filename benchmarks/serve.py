"""Benchmark: `mlops-nb serve` against `mlflow models serve` and BentoML serving the same raw-record model, with wrk.

    .venv/bin/python benchmarks/serve.py [--repeats 3] [--duration 10] [--batch-rows 5000000] [--write-readme]
                                         [--rollout none,canary50,shadow]

What it does:
1. trains the project's default prediction function on the simulator's raw transactions: the feature step
   (`features.FeatureBuilder`: time parts, logs, ratios), median imputer + StandardScaler, mode imputer + one-hot,
   HistGradientBoosting with params.yaml's estimator parameters. It registers it in a fresh registry (which exports and
   parity-checks `model.onnx` with the feature step as its numpy pre-step) and promotes it to champion;
2. saves the very same fitted pipeline as an MLflow model, in MLflow's own venv `benchmarks/.venv-mlflow`, and as a
   BentoML service in BentoML's own venv `benchmarks/.venv-bentoml` (both created here, never in the project's
   requirements), served once without and once with BentoML's adaptive batching;
3. starts the floor of our stack too: Starlette + uvicorn + orjson + ONNX Runtime running the same numpy feature step,
   numpy encoder and estimator graph, with no validation, capture or metrics (`benchmarks/floor_app.py`);
4. starts every server on 127.0.0.1 with one worker and one thread for the numeric libraries (OMP/MKL/OpenBLAS = 1:
   with OpenMP on the 2 cores MLflow served a fifth fewer requests here, single rows and 100 rows alike, as its trees
   are predicted a few rows at a time); ours and the floor run ONNX Runtime's own pool, one thread for a call of fewer
   than 64 rows and the worker's cores from 64; ours with validation, capture and metrics on; every client sends the same raw record (the
   columns the sources deliver, less the target and the ids);
5. runs wrk (Debian's `wrk`; installed with apt-get when missing) for single-row requests at 1, 8 and 32 connections and
   100-row requests at 8 connections, rotating the servers' order run by run, `--repeats` times; reports medians;
6. measures the resident memory of each serving worker, and batch scoring (`mlops-nb predict`) on a raw file of
   `--batch-rows` rows: peak memory and rows/s, beside a file of a tenth of the rows;
7. writes the table between the `<!-- bench:serve -->` markers of nbs/performance.ipynb (with `--write-readme`);
8. with `--rollout`, also runs ours during a rollout, single rows at 8 connections beside the same run's others:
   `canary50` a 50 % canary of a second version (sticky by request id: wrk sends no key), `shadow` a second version under
   the `shadow` alias scoring a copy of every request; each in a registry of its own, the same model registered twice;
   `again` a second server with no rollout, the A/A control whose run-by-run spread against the first is the noise.
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT/'.venv'/'bin'
MLFLOW_VENV = ROOT/'benchmarks'/'.venv-mlflow'
COMMON_PINS = ['scikit-learn==1.9.1', 'numpy==2.4.6', 'pandas==3.1.1', 'skops==0.16.0']   # the project's own versions
MLFLOW_PINS = ['mlflow==3.17.2', *COMMON_PINS]
BENTOML_VENV = ROOT/'benchmarks'/'.venv-bentoml'
BENTOML_PINS = ['bentoml==1.4.40', *COMMON_PINS]
WORK = ROOT/'benchmarks'/'.work'/'serve'
THREADS = {k: '1' for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'NUMEXPR_NUM_THREADS')}


def sh(cmd, **kw):
    print('+', cmd if isinstance(cmd, str) else ' '.join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def load_avg() -> str:
    return ', '.join(f'{x:.2f}' for x in os.getloadavg())


def ensure_wrk() -> str:
    if shutil.which('wrk'): return shutil.which('wrk')
    sh(['apt-get', 'install', '-y', '-q', 'wrk'], stdout=subprocess.DEVNULL)
    return shutil.which('wrk')


def ensure_venv(venv:Path, pins:list[str], probe:str) -> Path:
    "The python of a rival's own venv, created with `pins` when missing (the rival never enters the project's requirements)."
    py = venv/'bin'/'python'
    ok = py.exists() and subprocess.run([str(py), '-c', f'import {probe}, sklearn, skops'], capture_output=True).returncode == 0
    if not ok:
        sh([sys.executable, '-m', 'venv', str(venv)])
        sh([str(py), '-m', 'pip', 'install', '-q', '--disable-pip-version-check', *pins])
    return py


# ---- the model ---------------------------------------------------------------------------------------------------------
def build_model(work:Path, second:bool=False):
    """Train the project's default prediction function (`train.make_pipeline` with params.yaml's `prepare.features` as its
    feature step) on raw records, register it in a fresh registry (which exports and parity-checks `model.onnx`) and promote
    it; return (registry, version, raw input frame, model.skops path)."""
    sys.path.insert(0, str(ROOT))
    from mlops_nb.core import load_params
    from mlops_nb.params import resolve
    from mlops_nb.sim import simulate
    from mlops_nb.features import add_features, clean, feature_columns
    from mlops_nb.feature_step import derived_columns, source_columns
    from mlops_nb.train import make_estimator, make_pipeline
    from mlops_nb.registry import Registry
    P = resolve(load_params(ROOT/'params.yaml'))          # `auto` values as the stages resolve them
    df = simulate(0, 30, P['seed'], transactions_per_day=P['sim']['transactions_per_day'], n_customers=P['sim']['n_customers'])
    t, fspec = P['task'], P['prepare']['features']
    df = clean(df, t['target'], t['time_column'], t['id_columns'])
    exclude = [*t['id_columns'], t['time_column']]
    used = set(source_columns(fspec, t['time_column']))
    inputs = [c for c in df.columns if c != t['target'] and (c not in exclude or c in used)]     # what prepare calls the raw record
    num, cat = feature_columns(add_features(df, fspec, t['time_column']), t['target'], exclude=exclude)
    X, y = df[inputs], df[t['target']]
    est = make_estimator(P['train']['estimator'], t['type'], P['train']['estimator_params'], seed=0)
    pipe = make_pipeline(num, cat, est, fspec, t['time_column']).fit(X, y)
    steps = [type(s).__name__ for s in pipe.named_steps['preprocess'].named_transformers_['num']] + [type(est).__name__]
    if steps != ['SimpleImputer', 'StandardScaler', 'HistGradientBoostingClassifier']: raise SystemExit(f"unexpected default pipeline {steps}")
    reg = Registry(work/'registry')
    step = dict(spec=fspec, time_column=t['time_column'], inputs=inputs, derived=derived_columns(fspec, t['time_column']),
                id_columns=t['id_columns'])
    v = reg.register(pipe, features=inputs, task='classification', threshold=0.5, X_test=X.tail(5000), metrics={},
                     params=P['train']['estimator_params'], extra=dict(numeric=num, categorical=cat, feature_step=step))
    info = reg.info(v)
    if not info['onnx'].get('kept'): raise SystemExit(f"the registry kept no ONNX file: {info['onnx']}")
    if second:   # the candidate of the rollout scenarios: the same model, a version of its own
        reg.register(pipe, features=inputs, task='classification', threshold=0.5, X_test=X.tail(5000), metrics={},
                     params=P['train']['estimator_params'], extra=dict(numeric=num, categorical=cat, feature_step=step))
    reg.promote(v, 'champion', reason='benchmark', actor='benchmark')
    return reg, v, X, reg.version_dir(v)/'model.skops'


MLFLOW_SAVE = r'''
import sys, json, shutil, pandas as pd
from skops.io import load, get_untrusted_types
import mlflow.sklearn
skops_path, out, example, code = sys.argv[1:5]
sys.path.insert(0, code)
pipe = load(skops_path, trusted=get_untrusted_types(file=skops_path))   # our own file, written by the registry
shutil.rmtree(out, ignore_errors=True)
mlflow.sklearn.save_model(pipe, out, serialization_format='cloudpickle', input_example=pd.read_json(example, orient='records').head(2),
                         code_paths=[code + '/mlops_nb'])   # the feature step's class travels with the model, as MLflow's docs advise
'''

# BentoML's service as its users write one (bentoml 1.4 "services" API): the fitted pipeline loaded once, JSON records in.
# (Records, not a `pd.DataFrame` parameter: with adaptive batching on, BentoML 1.4.40's dispatcher fails on DataFrame
# inputs, `TypeError: unsupported operand type(s) for +: 'int' and 'tuple'`; the same form serves both runs.)
BENTO_SERVICE = r'''
import os, numpy as np, pandas as pd, bentoml
from skops.io import load, get_untrusted_types
PATH, BATCH = os.environ['BENCH_MODEL'], os.environ.get('BENCH_BATCHING') == '1'

@bentoml.service(workers=1, traffic={'timeout': 30})
class Fraud:
    def __init__(self):
        self.model = load(PATH, trusted=get_untrusted_types(file=PATH))   # our own file, written by the registry

    @bentoml.api(batchable=BATCH)   # BentoML's defaults: batches of up to 100, latency budget 60 s
    def predict(self, records: list[dict]) -> list[float]:
        df = pd.DataFrame(records)
        return self.model.predict_proba(df)[:, 1].tolist()
'''


# ---- servers -----------------------------------------------------------------------------------------------------------
class Proc:
    def __init__(self, name, cmd, port, env, cwd, log):
        self.name, self.port = name, port
        self.log = open(log, 'wb')
        self.p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, path, timeout=240):
        import http.client
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.p.poll() is not None: raise SystemExit(f"{self.name} exited {self.p.returncode}; see {self.log.name}")
            try:
                c = http.client.HTTPConnection('127.0.0.1', self.port, timeout=2); c.request('GET', path)
                if c.getresponse().status == 200: return
            except OSError: pass
            time.sleep(0.5)
        raise SystemExit(f"{self.name} not ready after {timeout} s")

    def workers_rss_mb(self) -> dict:
        "Resident memory of the process tree: the total, and of the largest process (the worker that holds the model)."
        import psutil
        root = psutil.Process(self.p.pid)
        procs = [root] + root.children(recursive=True)
        rss = [p.memory_info().rss / 2**20 for p in procs if p.is_running()]
        return dict(total=round(sum(rss), 1), worker=round(max(rss), 1), processes=len(rss))

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try: self.p.wait(30)
            except subprocess.TimeoutExpired: os.killpg(self.p.pid, signal.SIGKILL); self.p.wait()
        self.log.close()


def lua(body:str, path:Path, url_path:str='/invocations') -> Path:
    path.write_text(f'wrk.method = "POST"\nwrk.path = "{url_path}"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[' + body + ']==]\n'
                    # count non-2xx answers: a benchmark of errors is no benchmark
                    'done = function(summary, latency, requests)\n  io.write(string.format("ERRORS %d %d\\n", summary.errors.status, summary.requests))\nend\n')
    return path


def _ms(s:str) -> float:
    m = re.match(r'([\d.]+)(us|ms|s)', s)
    v = float(m[1]); return v / 1000 if m[2] == 'us' else v * 1000 if m[2] == 's' else v


def run_wrk(wrk, port, script, conns, duration) -> dict:
    out = subprocess.run([wrk, '-t1', f'-c{conns}', f'-d{duration}s', '--latency', '--timeout', '10s', '-s', str(script),
                          f'http://127.0.0.1:{port}'], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r'Requests/sec:\s+([\d.]+)', out)[1])
    p50 = _ms(re.search(r'\s50%\s+(\S+)', out)[1]); p99 = _ms(re.search(r'\s99%\s+(\S+)', out)[1])
    errs, total = map(int, re.search(r'ERRORS (\d+) (\d+)', out).groups())
    sock = re.search(r'Socket errors: (.*)', out)
    return dict(rps=rps, p50_ms=p50, p99_ms=p99, non2xx=errs, requests=total, socket_errors=sock[1] if sock else '')


# ---- batch scoring -----------------------------------------------------------------------------------------------------
def batch(work:Path, X, registry:Path, rows:int) -> list[dict]:
    import pyarrow as pa, pyarrow.parquet as pq
    base = pa.Table.from_pandas(X.reset_index(drop=True), preserve_index=False)
    out = []
    for n in (rows // 10, rows):
        path = work/f'batch-{n}.parquet'
        if not path.exists():
            with pq.ParquetWriter(path, base.schema) as w:
                done = 0
                while done < n:
                    t = base.slice(0, min(len(base), n - done)); w.write_table(t, row_group_size=100_000); done += len(t)
        env = dict(os.environ, **THREADS, PATH=f"{VENV}{os.pathsep}{os.environ['PATH']}")
        t0 = time.time()
        r = subprocess.run([str(VENV/'mlops-nb'), 'predict', '--input', str(path), '--output', str(work/f'scored-{n}.parquet'),
                            '--registry', str(registry), '--chunk-rows', '100000', '--no-capture'],
                           capture_output=True, text=True, env=env, cwd=work)
        if r.returncode: raise SystemExit(r.stderr)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res.update(wall=round(time.time() - t0, 1), file_mb=round(path.stat().st_size / 2**20, 1))
        res.pop('input', None); res.pop('output', None)   # this machine's paths: not part of the result
        (work/f'scored-{n}.parquet').unlink()
        out.append(res); print('batch', res, flush=True)
    return out


# ---- report ------------------------------------------------------------------------------------------------------------
SCENARIOS = [('single row, 1 connection', 'one', 1), ('single row, 8 connections', 'one', 8),
             ('single row, 32 connections', 'one', 32), ('100 rows, 8 connections', 'hundred', 8)]
# name -> what the table calls it; the rivals are judged against ours, the floor shows what our features cost
SERVERS = {'ours': 'mlops-nb', 'mlflow': 'MLflow', 'bentoml': 'BentoML', 'bentoml_batching': 'BentoML, adaptive batching',
           'floor': 'bare stack'}
# Targets: ratios to MLflow measured in the same run, and our p99 at 8 connections.
TARGETS = {'single row, 8 connections': dict(ratio=100, p99_ms=5.0),
           'single row, 32 connections': dict(ratio=100),
           '100 rows, 8 connections': dict(ratio=30)}


ROLLOUTS = {'none': 'no rollout', 'again': 'no rollout, a second server (A/A: the noise of the run)', 'canary50': 'a 50 % canary',
            'shadow': 'a shadow on every request'}
ROLLOUT_SCENARIO = 'single row, 8 connections'


def setup_rollouts(work:Path, rollouts:list[str]):
    """A copy of the registry per rollout scenario: v0002 as a 50 % canary (no controller: the share stays), or under
    `shadow`; `again` is a plain copy, served by a second server with no rollout, whose spread against the first is the
    noise a rollout's cost is judged against."""
    from mlops_nb.registry import Registry
    for r in rollouts:
        root = work/f'registry-{r}'
        shutil.copytree(work/'registry', root)
        reg = Registry(root)
        if r == 'canary50': reg.start_rollout('v0002', [50, 100], 1e9, {'header': 'x-rollout-key'}, reason='benchmark', actor='benchmark')
        elif r == 'shadow': reg.promote('v0002', 'shadow', reason='benchmark', actor='benchmark')


def per_run(res, n:str) -> list[float]:
    "Server `n`'s requests/s over ours with no rollout, run by run (the runs of one repeat are next to each other)."
    return [a['rps'] / b['rps'] for a, b in zip(res[n][ROLLOUT_SCENARIO], res['ours'][ROLLOUT_SCENARIO])]

def rollout_report(res) -> str:
    """Ours with no rollout, a 50 % canary and a shadow, beside MLflow, single rows at 8 connections (medians, and each
    run's ratio to no rollout). With the A/A control, the noise is the largest distance from 1 of its per-run ratios: a
    canary is within noise when its median ratio is no further from 1."""
    med = lambda n, k: statistics.median(r[k] for r in res[n][ROLLOUT_SCENARIO])
    rows = [('ours', f"mlops-nb, {ROLLOUTS['none']}")] + [(f'ours_{r}', f"mlops-nb, {ROLLOUTS[r]}") for r in ROLLOUTS if f'ours_{r}' in res]
    base, ml = med('ours', 'rps'), med('mlflow', 'rps')
    lines = ['', f"| {ROLLOUT_SCENARIO} | req/s | p50 / p99 ms | vs no rollout | per run | vs MLflow |", '|---|---|---|---|---|---|']
    for n, label in rows:
        runs = ', '.join(f'{x:.2f}' for x in per_run(res, n))
        lines.append(f"| {label} | {med(n, 'rps'):,.0f} | {med(n, 'p50_ms'):.2f} / {med(n, 'p99_ms'):.2f} | {med(n, 'rps') / base:.2f}x | {runs} | {med(n, 'rps') / ml:.0f}x |")
    lines.append(f"| MLflow | {ml:,.0f} | {med('mlflow', 'p50_ms'):.2f} / {med('mlflow', 'p99_ms'):.2f} | | | 1x |")
    lines += ['', "Targets: a 50 % canary within noise of no rollout; with a shadow on every request, p99 under 5 ms at 8 connections."]
    if 'ours_again' in res and 'ours_canary50' in res:
        noise = max(abs(1 - x) for x in per_run(res, 'ours_again'))
        canary = statistics.median(per_run(res, 'ours_canary50'))
        verdict = 'within noise (met)' if abs(1 - canary) <= noise else 'more than noise (not met)'
        lines.append(f"Noise (A/A): the second server with no rollout ran within {noise:.0%} of the first, run by run; "
                     f"the canary's median ratio is {canary:.2f}x: {verdict}.")
    return '\n'.join(lines)


def target_check(label:str, ours_rps:float, mlflow_rps:float, ours_p99:float) -> tuple[str, str]:
    "The target of a scenario as text, and 'met' or 'not met (what fell short)'."
    t = TARGETS.get(label)
    if t is None: return '', ''
    rows = 100 if label.startswith('100 rows') else 1
    checks = [(f"≥ {t['ratio']}x MLflow" + (' rows/s' if rows > 1 else ''), ours_rps / mlflow_rps >= t['ratio'])]
    if 'p99_ms' in t: checks.append((f"p99 < {t['p99_ms']:g} ms", ours_p99 < t['p99_ms']))
    short = [c for c, ok in checks if not ok]
    return '; '.join(c for c, _ in checks), 'met' if not short else 'not met: ' + ', '.join(short)


def report(res, mem, batches, args, loads) -> str:
    med = lambda name, scen, k: statistics.median(r[k] for r in res[name][scen])
    names = [n for n in SERVERS if n in res]
    lines = [f"Measured by `.venv/bin/python benchmarks/serve.py --repeats {args.repeats} --duration {args.duration}"
             f"{' --batch-rows ' + str(args.batch_rows) if args.batch_rows else ''}"
             f"{' --rollout ' + args.rollout if args.rollout != 'none' else ''} --write-readme` on this 2-core machine "
             f"(load average {loads[0]} before, {loads[1]} after): wrk, 1 thread, against each server on 127.0.0.1, one worker each, "
             f"numeric libraries at 1 thread (ONNX Runtime in ours and the floor: its own pool, on the 2 cores for a call of 64 rows or more); the servers' order rotates run by run; medians of {args.repeats} runs of {args.duration} s. "
             "Every client sends the raw record (the 11 columns the simulator delivers, less the target and the ids); the model is the "
             "project's default prediction function: its feature step (time parts, log, ratio), median imputer + StandardScaler, mode "
             "imputer + one-hot, HistGradientBoosting (150 trees). Ours serves its ONNX export and numpy feature step with validation, "
             "capture to Parquet and Prometheus metrics on; MLflow (`mlflow models serve`, 3.17.2) and BentoML (1.4.40, one worker, "
             "the pipeline in a `@bentoml.service`, without and with its adaptive batching) serve the same fitted scikit-learn pipeline, "
             "each in its own venv. The bare stack is the floor of ours: Starlette + uvicorn + orjson + ONNX Runtime running the same "
             "numpy feature step, numpy encoder and estimator graph in a plain handler, with no validation, capture or metrics (`benchmarks/floor_app.py`).", '',
             '| requests | ' + ' | '.join(f'{SERVERS[n]} req/s' for n in names) + ' | ours / MLflow | ours p50 / p99 ms | target | met? |',
             '|---|' + '---|' * (len(names) + 4)]
    for label, kind, c in SCENARIOS:
        rows = 100 if kind == 'hundred' else 1
        o, m = med('ours', label, 'rps'), med('mlflow', label, 'rps')
        p99 = med('ours', label, 'p99_ms')
        target, met = target_check(label, o, m, p99)
        cells = [f"{med(n, label, 'rps'):,.0f}" + (f" ({med(n, label, 'rps') * rows:,.0f} rows/s)" if rows > 1 else '') for n in names]
        lines.append(f"| {label} | " + ' | '.join(cells) + f" | **{o / m:.0f}x** | {med('ours', label, 'p50_ms'):.2f} / {p99:.2f} | {target} | {met} |")
    lines += ['', '| ours against | ' + ' | '.join(l for l, _, _ in SCENARIOS) + ' |', '|---|' + '---|' * len(SCENARIOS)]
    for n in names[1:]:
        lines.append(f"| {SERVERS[n]} | " + ' | '.join(f"{med('ours', l, 'rps') / med(n, l, 'rps'):.2f}x" for l, _, _ in SCENARIOS) + ' |')
    lines += ['', "p99 in ms: " + '; '.join(f"{SERVERS[n]} " + ' / '.join(f"{med(n, l, 'p99_ms'):.1f}" for l, _, _ in SCENARIOS) for n in names) +
              " (the scenarios in the order of the table)."]
    errs = {n: sum(r['non2xx'] for s in res[n].values() for r in s) for n in names}
    lines += ['', "Targets, judged in the same run: at least 100x MLflow's single-row throughput at 8 connections with our p99 under "
              "5 ms, at least 100x at 32 connections, and at least 30x MLflow's rows/s with 100-row requests.",
              '', "Non-2xx answers during the runs: " + ', '.join(f"{SERVERS[n]} {errs[n]}" for n in names) + ". Resident memory of "
              "the serving worker after the runs: " + ', '.join(f"{SERVERS[n]} {mem[n]['worker']:.0f} MB ({mem[n]['processes']} "
              f"process{'es' if mem[n]['processes'] > 1 else ''}, {mem[n]['total']:.0f} MB in all)" for n in names if n in mem) + '.']
    if batches:
        lines += ['', '| batch scoring of raw records (`mlops-nb predict`, Parquet in, Parquet out, chunks of 100,000 rows) | rows | seconds | rows/s | peak memory (max RSS) |',
                  '|---|---|---|---|---|']
        for b in batches:
            lines.append(f"| {b['file_mb']} MB input | {b['rows']:,} | {b['seconds']:.1f} | {b['rows'] / b['seconds']:,.0f} | {b['max_rss_mb']:.0f} MB |")
    return '\n'.join(lines)


def start_servers(work:Path, version:str, names:list[str]) -> dict:
    "Start the servers in `names` (each on its own free port); return name -> (Proc, readiness path)."
    env = dict(os.environ, **THREADS, PATH=f"{VENV}{os.pathsep}{os.environ['PATH']}")
    out = {}
    for n in names:
        port = free_port()
        if n == 'ours' or n.startswith('ours_'):
            r = '' if n == 'ours' else '-' + n[5:]
            p = Proc(n, [str(VENV/'mlops-nb'), 'serve', '--registry', str(work/f'registry{r}'), '--port', str(port), '--workers', '1',
                         '--capture-dir', str(work/f'captures{r}'), '--no-access-log'], port, env, work, work/f'{n}.log'); ready = '/ready'
        elif n == 'mlflow':
            mlenv = dict(os.environ, **THREADS, PATH=f"{MLFLOW_VENV/'bin'}{os.pathsep}{os.environ['PATH']}", MLFLOW_TRACKING_URI=f'file://{work}/mlruns')
            p = Proc(n, [str(MLFLOW_VENV/'bin'/'mlflow'), 'models', 'serve', '-m', str(work/'mlflow-model'), '-p', str(port), '-h', '127.0.0.1',
                         '--env-manager', 'local', '-w', '1'], port, mlenv, work, work/'mlflow.log'); ready = '/ping'
        elif n.startswith('bentoml'):
            benv = dict(os.environ, **THREADS, BENTOML_DO_NOT_TRACK='True', BENCH_MODEL=str(work/'registry'/'versions'/version/'model.skops'),
                        BENCH_BATCHING='1' if n == 'bentoml_batching' else '0', PYTHONPATH=str(ROOT), PATH=f"{BENTOML_VENV/'bin'}{os.pathsep}{os.environ['PATH']}")
            p = Proc(n, [str(BENTOML_VENV/'bin'/'bentoml'), 'serve', 'bento_service:Fraud', '--host', '127.0.0.1', '--port', str(port)],
                     port, benv, work, work/f'{n}.log'); ready = '/readyz'
        else:
            fenv = dict(env, FLOOR_VERSION_DIR=str(work/'registry'/'versions'/version), PYTHONPATH=str(ROOT))
            p = Proc(n, [str(VENV/'uvicorn'), 'floor_app:app', '--app-dir', str(ROOT/'benchmarks'), '--host', '127.0.0.1', '--port', str(port),
                         '--no-access-log', '--log-level', 'warning'], port, fenv, work, work/'floor.log'); ready = '/ping'
        out[n] = (p, ready)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--duration', type=int, default=10)
    ap.add_argument('--batch-rows', type=int, default=0, help='also time batch scoring on a Parquet file of this many rows')
    ap.add_argument('--servers', default=','.join(SERVERS), help=f"which servers to run (ours and mlflow always), of {','.join(SERVERS)}")
    ap.add_argument('--write-readme', action='store_true')
    ap.add_argument('--rollout', default='none', help=f"ours during a rollout too, of {','.join(ROLLOUTS)} (single rows at 8 connections)")
    ap.add_argument('--from-results', action='store_true', help='render benchmarks/results/serve.json again (same flags as its run) instead of measuring')
    args = ap.parse_args()
    if args.from_results: return publish(args, **json.loads((ROOT/'benchmarks'/'results'/'serve.json').read_text()))
    names = [n for n in SERVERS if n in {'ours', 'mlflow', *args.servers.split(',')}]
    rollouts = [r for r in args.rollout.split(',') if r and r != 'none']
    bad = [r for r in rollouts if r not in ROLLOUTS]
    if bad: raise SystemExit(f"--rollout: unknown scenario(s) {bad}; expected some of {','.join(ROLLOUTS)}")
    loads = [load_avg()]
    print('load average before:', loads[0], flush=True)
    wrk = ensure_wrk()
    mlpy = ensure_venv(MLFLOW_VENV, MLFLOW_PINS, 'mlflow')
    if any(n.startswith('bentoml') for n in names): ensure_venv(BENTOML_VENV, BENTOML_PINS, 'bentoml')
    shutil.rmtree(WORK, ignore_errors=True); WORK.mkdir(parents=True)
    reg, version, X, skops_path = build_model(WORK, second=bool(rollouts))
    setup_rollouts(WORK, rollouts)
    names += [f'ours_{r}' for r in rollouts]
    one, hundred = X.head(1), X.iloc[100:200]
    X.head(100).to_json(WORK/'example.json', orient='records', date_format='iso')
    sh([str(mlpy), '-c', MLFLOW_SAVE, str(skops_path), str(WORK/'mlflow-model'), str(WORK/'example.json'), str(ROOT)], env=dict(os.environ, **THREADS))
    (WORK/'bento_service.py').write_text(BENTO_SERVICE)
    split = lambda f: json.loads(f.to_json(orient='split', index=False, date_format='iso'))
    bodies = {k: {'dataframe_split': split(f)} for k, f in (('one', one), ('hundred', hundred))}
    records = {k: {'records': json.loads(f.to_json(orient='records', date_format='iso'))} for k, f in (('one', one), ('hundred', hundred))}
    scripts = {(srv, k): lua(json.dumps(records[k] if srv.startswith('bentoml') else bodies[k]), WORK/f'{srv}-{k}.lua',
                             '/predict' if srv.startswith('bentoml') else '/invocations') for srv in names for k in ('one', 'hundred')}
    res, mem = {n: {} for n in names}, {}
    servers = start_servers(WORK, version, names)
    try:
        for p, ready in servers.values(): p.wait_ready(ready)
        for n, (p, _) in servers.items(): run_wrk(wrk, p.port, scripts[n, 'one'], 8, 3)   # warm-up
        for rep in range(args.repeats):
            for label, kind, c in SCENARIOS:
                order = names[rep % len(names):] + names[:rep % len(names)]
                for n in order:
                    if n.startswith('ours_') and label != ROLLOUT_SCENARIO: continue   # a rollout: single rows at 8 connections
                    r = run_wrk(wrk, servers[n][0].port, scripts[n, kind], c, args.duration)
                    res[n].setdefault(label, []).append(r)
                    print(rep, n, label, r, flush=True)
        mem = {n: p.workers_rss_mb() for n, (p, _) in servers.items()}
    finally:
        for p, _ in servers.values(): p.stop()
    batches = batch(WORK, X, WORK/'registry', args.batch_rows) if args.batch_rows else []
    loads.append(load_avg())
    (ROOT/'benchmarks'/'results').mkdir(exist_ok=True)
    (ROOT/'benchmarks'/'results'/'serve.json').write_text(json.dumps(dict(runs=res, memory=mem, batch=batches, load=loads), indent=1))
    publish(args, res, mem, batches, loads)


def publish(args, runs, memory, batch, load):
    "Print the report of a run (and put it into the performance page and README with --write-readme)."
    text = report(runs, memory, batch, args, load)
    if any(n.startswith('ours_') for n in runs): text += '\n' + rollout_report(runs)
    print(text)
    if args.write_readme:   # README.md is generated from nbs/index.ipynb: the figures go into the notebook, then README
        from mlops_nb.docs import write_bench
        write_bench('serve', text, ROOT)


if __name__ == '__main__':
    main()
