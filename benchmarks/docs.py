"""Benchmark of the documentation site build (`mlops-nb docs build`), in fresh copies of the project.

    .venv/bin/python benchmarks/docs.py [--repeats 3] [--reports reports] [--with-execute] [--write-readme]

The site shows the notebooks' stored outputs and the reports of a run: those in --reports (default: the project's
reports/), or, when there are none, those of a `dvc repro` with the default params.yaml run first in a copy.
Measures, quoting medians of --repeats:
  * from scratch: a fresh copy of the project (as a clone: no _docs_cache/, no _proc/, no Sphinx doctrees), one build;
  * incremental: one notebook of nbs/ edited (a sentence added), then a build;
  * a rebuild with nothing changed;
  * with --with-execute, once: `mlops-nb docs execute` (refreshing every notebook's stored outputs, 2 at a time);
  * side by side, the plain alternative: `jupyter nbconvert --to html` on the same notebooks and reports (one page per
    notebook: no navigation, search, API entries or report index), and how many of its pages load from a CDN.
Results go to benchmarks/results/docs.json; --write-readme puts the table into nbs/index.ipynb and README.md.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FILES = ['dvc.yaml', 'params.yaml', 'settings.ini', 'setup.py', 'pyproject.toml', 'pipelines', 'mlops_nb', 'nbs', '.dvc/config', '.dvc/.gitignore', '.gitignore', 'reports/.gitkeep']
ENV = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
TARGET_S = 60

def sh(cmd, cwd) -> float:
    "Run `cmd` in `cwd`; return its wall time in seconds."
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=ENV)
    if p.returncode: raise SystemExit(f"`{cmd}` failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t

def fresh_copy(dst:Path, reports:list) -> Path:
    "A copy of the project's tracked sources and `reports`, as a fresh clone has them (no caches)."
    for name in FILES:
        if not (ROOT/name).exists(): continue
        (dst/name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT/name).is_dir(): shutil.copytree(ROOT/name, dst/name, ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints', '.*.executed.ipynb*'))
        else: shutil.copy2(ROOT/name, dst/name)
    (dst/'reports').mkdir(exist_ok=True)
    for r in reports: shutil.copy2(r, dst/'reports'/r.name)
    return dst

def edit_a_notebook(proj:Path, i:int):
    "Add a sentence to the last markdown cell of nbs/00_core.ipynb, as an author would."
    p = proj/'nbs/00_core.ipynb'
    nb = json.loads(p.read_text())
    c = [c for c in nb['cells'] if c['cell_type'] == 'markdown'][-1]
    c['source'] = ''.join(c['source']) + f'\n\nEdit number {i}.'
    p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--reports', default=str(ROOT/'reports'))
    ap.add_argument('--with-execute', action='store_true', help='also time `mlops-nb docs execute` once')
    ap.add_argument('--write-readme', action='store_true')
    a = ap.parse_args()
    from mlops_nb.docs import offline_problems, missing_outputs
    nbs = sorted((ROOT/'nbs').glob('*.ipynb'))
    if missing_outputs(nbs): raise SystemExit("the notebooks in nbs/ lack stored outputs: run `mlops-nb docs execute` first")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reports = sorted(Path(a.reports).glob('*.ipynb'))
        if not reports:
            print('no reports: running the lifecycle first (dvc repro)', flush=True)
            run = fresh_copy(tmp/'lifecycle', [])
            sh('git init -q -b main && git add -A && git -c user.name=b -c user.email=b@b commit -qm init && dvc repro', run)
            reports = sorted((run/'reports').glob('*.ipynb'))
        scratch, incremental, noop = [], [], []
        for i in range(a.repeats):
            proj = fresh_copy(tmp/f'proj{i}', reports)
            scratch.append(sh('mlops-nb docs build', proj))
            edit_a_notebook(proj, i)
            incremental.append(sh('mlops-nb docs build', proj))
            noop.append(sh('mlops-nb docs build', proj))
            print(f'run {i + 1}/{a.repeats}: from scratch {scratch[-1]:.1f} s, one notebook edited {incremental[-1]:.1f} s, '
                  f'nothing changed {noop[-1]:.1f} s', flush=True)
        pages = len(list((proj/'_site').rglob('*.html')))
        library = len([p for p in (proj/'nbs').glob('*.ipynb') if p.name != 'index.ipynb'])
        execute = None
        if a.with_execute:
            ex = fresh_copy(tmp/'execute', [])
            execute = sh('mlops-nb docs execute', ex)
            print(f'mlops-nb docs execute: {execute:.1f} s', flush=True)
        # The plain alternative: nbconvert's HTML export of the same notebooks (with their stored outputs) and reports.
        plain = tmp/'plain'; plain.mkdir()
        for nb in sorted((proj/'nbs').glob('*.ipynb')) + sorted((proj/'reports').glob('*.ipynb')):
            shutil.copy2(nb, plain/(nb.stem + ('-report' if nb.parent.name == 'reports' else '') + '.ipynb'))
        nbconvert = []
        for i in range(a.repeats):
            nbconvert.append(sh(f'jupyter nbconvert --to html --log-level ERROR --output-dir html {plain}/*.ipynb', plain))
        cdn_pages = len({p.split(':')[0] for p in offline_problems(plain/'html')})
        cdn_ours = len(offline_problems(proj/'_site'))
        n_plain = len(list((plain/'html').glob('*.html')))
    med = statistics.median
    res = dict(repeats=a.repeats, reports=len(reports), site_pages=pages, library_pages=library, from_scratch_s=med(scratch), from_scratch_runs_s=scratch,
               incremental_s=med(incremental), incremental_runs_s=incremental, nothing_changed_s=med(noop), target_s=TARGET_S,
               met=med(scratch) < TARGET_S, execute_s=execute, nbconvert_s=med(nbconvert), nbconvert_pages=n_plain,
               nbconvert_pages_loading_from_cdn=cdn_pages, site_loads_from_cdn=cdn_ours,
               machine=dict(cpus=os.cpu_count(), python=sys.version.split()[0], load_avg=os.getloadavg()[0]))
    out = ROOT/'benchmarks/results/docs.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + '\n')
    table = render(res)
    print(table)
    if a.write_readme:
        from mlops_nb.docs import write_bench
        write_bench('docs', table, ROOT)

def render(r:dict) -> str:
    ex = r.get('execute_s')
    return '\n'.join([
        f"Measured by `.venv/bin/python benchmarks/docs.py --repeats {r['repeats']}{' --with-execute' if ex else ''}` on {r['machine']['cpus']} cores "
        f"(load average {r['machine']['load_avg']:.1f}), medians of {r['repeats']} runs, each in a fresh copy of the project; the site: "
        f"{r['site_pages']} HTML pages ({r['library_pages']} library notebooks rendering their stored outputs, "
        f"{r['reports']} reports of a run, home, search, index):", '',
        '| build | time | target |', '|---|---|---|',
        f"| `mlops-nb docs build` from scratch (fresh clone: no caches; nbdev processing + Sphinx) | {r['from_scratch_s']:.1f} s | "
        f"< {r['target_s']} s: **{'met' if r['met'] else 'not met'}** |",
        f"| `mlops-nb docs build` after editing one notebook | {r['incremental_s']:.1f} s | |",
        f"| `mlops-nb docs build`, nothing changed | {r['nothing_changed_s']:.1f} s | |",
        *([f"| `mlops-nb docs execute`: refresh every notebook's stored outputs (2 at a time; not part of a build) | {ex:.1f} s | |"] if ex else []),
        f"| `jupyter nbconvert --to html` on the same notebooks (pages only: no navigation, API entries, search) | {r['nbconvert_s']:.1f} s | |",
        f"| pages that load scripts from a CDN: our site / nbconvert's {r['nbconvert_pages']} pages | {r['site_loads_from_cdn']} / {r['nbconvert_pages_loading_from_cdn']} | 0 |", ''])

if __name__ == '__main__':
    main()
