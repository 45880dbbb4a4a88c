#!/usr/bin/env bash
# Creates .venv (Python >= 3.11) and installs mlops-nb with everything it needs, pinned by constraints.txt.
# Idempotent: does nothing when settings.ini, setup.py, pyproject.toml and constraints.txt are unchanged since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || { echo "setup: $PY is not Python >= 3.11; set PYTHON=/path/to/python3.11 or newer" >&2; exit 1; }
# A .venv made by another or a too-old Python, or left broken, is rebuilt rather than patched.
if [ -e .venv ] && ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: .venv is broken or older than Python 3.11; rebuilding it"
  rm -rf .venv
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.mlops-nb-installed
want=$(cat settings.ini setup.py pyproject.toml constraints.txt 2>/dev/null | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing mlops-nb and its dependencies into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
  # constraints.txt pins the versions the project is tested with; a Python they do not fit (e.g. an older 3.11.x
  # that a pinned package refuses) falls back to the ranges declared in settings.ini.
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,postgres]"; then
    echo "setup: the pinned versions do not install on $(.venv/bin/python --version); using settings.ini's ranges"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,postgres]"
  fi
  # The kernel papermill and JupyterLab use is this environment's Python.
  .venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mlops-nb)" >/dev/null
  echo "$want" > "$stamp"
fi
# JupyterLab as README starts it (`.venv/bin/jupyter lab`) runs as root too (containers, CI): this environment's own
# Jupyter config allows it; nothing outside .venv changes.
mkdir -p .venv/etc/jupyter
printf '{"ServerApp": {"allow_root": true}}\n' > .venv/etc/jupyter/jupyter_server_config.json
# DVC needs a git repository; a downloaded archive is not one.
[ -d .git ] || git init -q -b main   # the release branch (deploy.release_branch)
# Nothing here installs system packages: the main job needs none. The tests' system packages (Chromium, PostgreSQL)
# are installed by scripts/test.sh (scripts/system_packages.sh).
