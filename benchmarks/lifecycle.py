"""Benchmark of the lifecycle on the default params (the built-in data), in a temporary copy of the project.

    .venv/bin/python benchmarks/lifecycle.py [--repeats 3] [--write-readme]

Measures, repeating each and quoting medians:
  * a clean `dvc repro` (every stage) and a second `dvc repro` with nothing changed (a no-op);
  * which stages rerun after changing only a training param (`dvc exp run -S train.search.n_iter=...`);
  * per stage: the wall time of the stage's papermill command, the time its cells spent working (papermill's per-cell
    durations in the executed report), and the same step run as a plain Python script (the baseline without
    papermill and a kernel). Overhead = papermill wall time - cell time. The stages run with the project's papermill
    engine (`--engine mlops_nb`, nbs/14_engine.ipynb); each is also timed with papermill's default engine
    (`--engine nbclient`), alternating which goes first, to show what the engine saves;
  * reproducibility: two clean runs give byte-identical metrics files and identical test predictions.
Results go to benchmarks/results/lifecycle.json; --write-readme puts the table between markers into nbs/index.ipynb and README.md.
"""
import argparse, hashlib, json, os, re, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import nbformat, yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FILES = ['dvc.yaml', 'params.yaml', 'settings.ini', 'pipelines', 'mlops_nb', '.dvc/config', '.dvc/.gitignore', '.gitignore', 'reports/.gitkeep']
STAGES = {'collect': '01_collect', 'prepare': '02_prepare', 'train': '03_train', 'evaluate': '04_evaluate', 'deploy': '05_deploy',
          'monitor': '06_monitor'}
PLAIN = {  # the same step as a plain script: the baseline without papermill and a Jupyter kernel
    'collect': "run_collect(P, 'data/raw')",
    'prepare': "run_prepare(P, 'data/raw', 'data/prepared', 'metrics/data_quality.json')",
    'train': "run_train(P, 'data/prepared', 'models/candidate', 'metrics/train.json')",
    'evaluate': "run_evaluate(P, 'data/prepared', 'models/candidate', 'metrics/evaluate.json', 'plots/evaluate', 'data/predictions/test.parquet')",
    'deploy': "run_deploy(P, 'data/prepared', 'models/candidate', 'metrics/evaluate.json', 'plots/evaluate/figures', 'metrics/gate.json')",
    'monitor': "run_monitor(P, 'data/prepared', 'models/candidate', 'data/predictions/test.parquet', 'metrics/evaluate.json', 'metrics/monitor.json', 'monitor/status.json', 'plots/monitor')",
}
ENV = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", MPLBACKEND='Agg')

def sh(cmd, cwd):
    "Run `cmd`; return (seconds, stdout)."
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=ENV)
    if p.returncode: raise SystemExit(f"`{cmd}` failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t, p.stdout

def copy_project(dst:Path) -> Path:
    for name in FILES:
        (dst/name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT/name).is_dir() else shutil.copy2)(ROOT/name, dst/name)
    sh('git init -q -b main && git add -A && git -c user.name=b -c user.email=b@b commit -qm init', dst)
    return dst

def stage_cmds(proj:Path) -> dict:
    "The stage commands exactly as DVC runs them (vars interpolated)."
    spec = yaml.safe_load((proj/'dvc.yaml').read_text())
    pm = spec['vars'][0]['pm']
    return {s: spec['stages'][s]['cmd'].replace('${pm}', pm) for s in STAGES}

def cell_seconds(report:Path) -> float:
    "The time the report's cells ran, from the timings the stage engine keeps beside it (`reports/NN_stage.timing.json`)."
    t = json.loads(report.with_suffix('.timing.json').read_text())
    return sum(c.get('duration') or 0 for c in t['cells'])

def digest(path:Path) -> str: return hashlib.sha256(path.read_bytes()).hexdigest()

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--write-readme', action='store_true')
    a = ap.parse_args()
    runs = dict(clean=[], noop=[]); per_stage = {s: dict(wall=[], cells=[], plain=[], default_wall=[], default_cells=[]) for s in STAGES}
    rerun_after_train_change, fingerprints = None, []
    for i in range(a.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            proj = copy_project(Path(tmp)/'proj')
            t, out = sh('dvc repro', proj); runs['clean'].append(t)
            fingerprints.append({f: digest(proj/f) for f in ['metrics/evaluate.json', 'metrics/train.json', 'metrics/data_quality.json']}
                                | {'predictions': hashlib.sha256(json.dumps(__import__('pandas').read_parquet(proj/'data/predictions/test.parquet').to_dict('list'), default=str).encode()).hexdigest()})
            t, out = sh('dvc repro', proj); runs['noop'].append(t)
            assert 'Data and pipelines are up to date' in out, out
            # Each stage's own command, timed alone (DVC is not in the way), then the same step as a plain script.
            for s, cmd in stage_cmds(proj).items():
                report = proj/'reports'/f'{STAGES[s]}.ipynb'
                runs_of = [('', cmd), ('default_', cmd.replace('--engine mlops_nb', '--engine nbclient'))]
                for prefix, c in (runs_of if i % 2 == 0 else runs_of[::-1]):
                    t, _ = sh(c, proj); per_stage[s][prefix + 'wall'].append(t)
                    per_stage[s][prefix + 'cells'].append(cell_seconds(report))
                code = ("from mlops_nb.core import load_params; from mlops_nb.steps import *; import matplotlib; matplotlib.use('Agg'); "
                        f"P = load_params('params.yaml'); {PLAIN[s]}")
                t, _ = sh(f'python -c "{code}"', proj); per_stage[s]['plain'].append(t)
            if i == 0:
                sh('git add -A && git -c user.name=b -c user.email=b@b commit -qm run', proj)
                n = yaml.safe_load((proj/'params.yaml').read_text())['train']['search']['n_iter']
                _, out = sh(f'dvc exp run -S train.search.n_iter={max(1, n - 1)}', proj)
                rerun_after_train_change = [s for s in STAGES if f"Running stage '{s}'" in out]
        print(f'run {i + 1}/{a.repeats}: clean {runs["clean"][-1]:.1f} s, no-op {runs["noop"][-1]:.2f} s', flush=True)
    med = statistics.median
    res = dict(repeats=a.repeats, clean_repro_s=med(runs['clean']), noop_repro_s=med(runs['noop']),
               clean_runs_s=runs['clean'], noop_runs_s=runs['noop'],
               rerun_after_train_param_change=rerun_after_train_change,
               identical_across_clean_runs=all(f == fingerprints[0] for f in fingerprints),
               stages={s: dict(papermill_wall_s=med(v['wall']), cells_s=med(v['cells']),
                               overhead_s=med([w - c for w, c in zip(v['wall'], v['cells'])]),
                               default_engine_overhead_s=med([w - c for w, c in zip(v['default_wall'], v['default_cells'])]),
                               plain_script_s=med(v['plain']), papermill_over_plain=med(v['wall']) / med(v['plain']))
                       for s, v in per_stage.items()},
               machine=dict(cpus=os.cpu_count(), python=sys.version.split()[0]))
    out = ROOT/'benchmarks/results/lifecycle.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + '\n')
    table = render(res)
    print(table)
    if a.write_readme:   # README.md is generated from nbs/index.ipynb: the figures go into the notebook, then README
        from mlops_nb.docs import write_bench
        write_bench('lifecycle', table, ROOT)

def render(r:dict) -> str:
    lines = [f"Measured by `.venv/bin/python benchmarks/lifecycle.py --repeats {r['repeats']}` on {r['machine']['cpus']} cores, "
             f"medians of {r['repeats']} runs, default `params.yaml` (40 days × 1,000 transactions):", '',
             '| what | result | target |', '|---|---|---|',
             f"| whole lifecycle, clean `dvc repro` (all {len(r['stages'])} stages: collect … evaluate, deploy, monitor) | {r['clean_repro_s']:.1f} s | < 90 s |",
             f"| second `dvc repro`, nothing changed | {r['noop_repro_s']:.2f} s (no-op) | < 3 s |",
             f"| stages rerun after `dvc exp run -S train.search.n_iter=…` | {', '.join(r['rerun_after_train_param_change'] or [])} | train, evaluate and what follows them; not collect, prepare |",
             f"| two clean runs: metrics files and test predictions | {'identical' if r['identical_across_clean_runs'] else 'DIFFERENT'} | identical |", '',
             '| stage | papermill command | cells (work) | overhead (papermill + kernel), target < 3 s | overhead with papermill\'s default engine | same step as a plain script | papermill / plain |',
             '|---|---|---|---|---|---|---|']
    for s, v in r['stages'].items():
        lines.append(f"| {s} | {v['papermill_wall_s']:.2f} s | {v['cells_s']:.2f} s | {v['overhead_s']:.2f} s | {v['default_engine_overhead_s']:.2f} s | {v['plain_script_s']:.2f} s | {v['papermill_over_plain']:.2f}x |")
    return '\n'.join(lines) + '\n'

if __name__ == '__main__':
    main()
