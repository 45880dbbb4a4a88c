"""Benchmark of the documentation site build (`mlops-nb docs build`), in a temporary copy of the project.

    .venv/bin/python benchmarks/docs.py [--repeats 3] [--reports reports] [--write-readme]

The site shows the reports of a run: those in --reports (default: the project's reports/), or, when there are none,
those of a `dvc repro` with the default params.yaml run first in the copy. Measures, quoting medians of --repeats:
  * from scratch (`--force`): every library notebook executed, processed by nbdev, Sphinx from nothing — once;
  * the usual build: the notebooks' executions cached (nothing in nbs/ or the package changed), nbdev's processing
    and Sphinx from nothing (their caches removed);
  * a rebuild with nothing changed;
  * side by side, the plain alternative: `jupyter nbconvert --to html` on the same executed notebooks (one page per
    notebook: no navigation, search, API entries or report index), and how many of its pages load from a CDN.
Results go to benchmarks/results/docs.json; --write-readme puts the table into nbs/index.ipynb and README.md.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FILES = ['dvc.yaml', 'params.yaml', 'settings.ini', 'pipelines', 'mlops_nb', 'nbs', '.dvc/config', '.dvc/.gitignore', '.gitignore', 'reports/.gitkeep']
ENV = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")

def sh(cmd, cwd) -> float:
    "Run `cmd` in `cwd`; return its wall time in seconds."
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=ENV)
    if p.returncode: raise SystemExit(f"`{cmd}` failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--reports', default=str(ROOT/'reports'))
    ap.add_argument('--write-readme', action='store_true')
    a = ap.parse_args()
    from mlops_nb.docs import offline_problems
    with tempfile.TemporaryDirectory() as tmp:
        proj = Path(tmp)/'proj'
        for name in FILES:
            (proj/name).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (ROOT/name).is_dir() else shutil.copy2)(ROOT/name, proj/name)
        reports = sorted(Path(a.reports).glob('*.ipynb'))
        if reports:
            for r in reports: shutil.copy2(r, proj/'reports'/r.name)
        else:
            print('no reports: running the lifecycle first (dvc repro)', flush=True)
            sh('git init -q && git add -A && git -c user.name=b -c user.email=b@b commit -qm init && dvc repro', proj)
        n_reports = len(list((proj/'reports').glob('*.ipynb')))
        scratch = sh('mlops-nb docs build --force', proj)
        print(f'from scratch: {scratch:.1f} s', flush=True)
        usual, noop = [], []
        for i in range(a.repeats):
            for d in ['_proc', '_docs_cache/src', '_docs_cache/html', '_docs_cache/doctrees', '_site']: shutil.rmtree(proj/d, ignore_errors=True)
            usual.append(sh('mlops-nb docs build', proj))
            noop.append(sh('mlops-nb docs build', proj))
            print(f'run {i + 1}/{a.repeats}: usual {usual[-1]:.1f} s, nothing changed {noop[-1]:.1f} s', flush=True)
        pages = len(list((proj/'_site').rglob('*.html')))
        # The plain alternative: nbconvert's HTML export of the same executed notebooks.
        plain = proj/'plain'; plain.mkdir()
        for nb in sorted((proj/'_docs_cache/nbs').glob('*.ipynb')) + sorted((proj/'reports').glob('*.ipynb')):
            shutil.copy2(nb, plain/(nb.stem + ('-report' if nb.parent.name == 'reports' else '') + '.ipynb'))
        nbconvert = []
        for i in range(a.repeats):
            nbconvert.append(sh(f'jupyter nbconvert --to html --log-level ERROR --output-dir html {plain}/*.ipynb', plain))
        cdn_pages = len({p.split(':')[0] for p in offline_problems(plain/'html')})
        cdn_ours = len(offline_problems(proj/'_site'))
        n_plain = len(list((plain/'html').glob('*.html')))
    med = statistics.median
    res = dict(repeats=a.repeats, reports=n_reports, site_pages=pages, from_scratch_s=scratch, usual_s=med(usual), usual_runs_s=usual,
               nothing_changed_s=med(noop), nbconvert_s=med(nbconvert), nbconvert_pages=n_plain,
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
    return '\n'.join([
        f"Measured by `.venv/bin/python benchmarks/docs.py --repeats {r['repeats']}` on {r['machine']['cpus']} cores shared with other work "
        f"(load average {r['machine']['load_avg']:.1f}), medians of {r['repeats']} runs; the site: {r['site_pages']} HTML pages "
        f"({r['site_pages'] - r['reports'] - 2} library notebooks, {r['reports']} reports of a run, search, index):", '',
        '| build | `mlops-nb docs build` | target |', '|---|---|---|',
        f"| usual: library notebooks already executed (cached), nbdev processing + Sphinx from nothing | {r['usual_s']:.1f} s | < 60 s |",
        f"| nothing changed | {r['nothing_changed_s']:.1f} s | |",
        f"| from scratch (`--force`): executes every example of the library first | {r['from_scratch_s']:.1f} s | |",
        f"| `jupyter nbconvert --to html` on the same executed notebooks (pages only: no navigation, API entries, search) | {r['nbconvert_s']:.1f} s | |",
        f"| pages that load scripts from a CDN: our site / nbconvert's {r['nbconvert_pages']} pages | {r['site_loads_from_cdn']} / {r['nbconvert_pages_loading_from_cdn']} | 0 |", ''])

if __name__ == '__main__':
    main()
