"""Shared fixtures: a throw-away copy of the project where the real `dvc repro` runs."""
import os, shutil, subprocess, sys
from pathlib import Path

import pytest, yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# What a fresh clone holds that a pipeline run needs (no data, no caches, no reports).
PROJECT_FILES = ['dvc.yaml', 'params.yaml', 'settings.ini', 'pipelines', 'mlops_nb', '.dvc/config', '.dvc/plots_offline.html', '.dvc/.gitignore', '.gitignore', 'reports/.gitkeep']

def run(cmd, cwd, check=True, timeout=600):
    "Run a shell command with the project's environment first on PATH; return the CompletedProcess."
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", MPLBACKEND='Agg')
    p = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"`{cmd}` exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}")
    return p

SMALL = {  # a lifecycle small enough for tests: ~5k rows, 2 search candidates
    'collect': {'days': 12},
    'sim': {'transactions_per_day': 400, 'n_customers': 1500},
    'train': {'estimator_params': {'max_iter': 40}, 'search': {'n_iter': 2, 'cv_splits': 2}},
    'evaluate': {'importance_repeats': 1, 'importance_max_rows': 1000},
}

def merge(base:dict, over:dict) -> dict:
    "Deep-merge `over` into a copy of `base`."
    out = dict(base)
    for k, v in over.items(): out[k] = merge(base.get(k) or {}, v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out

class Project:
    "A git + DVC project copied from this repository into a temporary folder."
    def __init__(self, path:Path): self.path = path
    def run(self, cmd, **kw): return run(cmd, self.path, **kw)
    @property
    def params(self) -> dict: return yaml.safe_load((self.path/'params.yaml').read_text())
    def set_params(self, over:dict):
        (self.path/'params.yaml').write_text(yaml.safe_dump(merge(self.params, over), sort_keys=False))
    def commit(self, msg='update'):
        self.run(f'git add -A && git commit -qm "{msg}"')

@pytest.fixture
def project(tmp_path) -> Project:
    "A fresh copy of the project (git repo, DVC initialised, small params) in a temporary folder."
    return copy_project(tmp_path/'proj')

def copy_project(dst:Path) -> Project:
    "Copy the project into `dst` as the `project` fixture does (git repo, small params); for module-scoped fixtures."
    for name in PROJECT_FILES:
        src = ROOT/name
        (dst/name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir(): shutil.copytree(src, dst/name, ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints'))
        else: shutil.copy2(src, dst/name)
    p = Project(dst)
    p.set_params(SMALL)
    p.run('git init -q -b main && git add -A && git commit -qm init')
    return p
