#!/usr/bin/env bash
# Installs the project (first run only) and the system packages the tests need (Chromium, PostgreSQL: announced,
# as root with apt-get; scripts/system_packages.sh), and runs every test: notebook/package sync, nbdev_test over nbs/, pytest over tests/.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k schema`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system_packages.sh
export PATH="$PWD/.venv/bin:$PATH"
bash scripts/check_sync.sh
mlops-nb docs readme --check   # README.md is generated from nbs/index.ipynb
mlops-nb docs execute --check  # the notebooks hold their examples' outputs (the docs show them): else run `mlops-nb docs execute`
nbdev_test --n_workers 2
python -m pytest "$@"
