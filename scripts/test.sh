#!/usr/bin/env bash
# Installs the project (first run only) and runs every test: notebook/package sync, nbdev_test over nbs/, pytest over tests/.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k schema`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# The PostgreSQL source's test starts a throwaway server with Debian's postgresql (initdb, pg_ctl).
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "test: PostgreSQL's initdb not found; installing Debian's postgresql (apt-get) for the PostgreSQL source test"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
      || { echo "test: apt-get could not install postgresql; install it (apt-get install postgresql) and rerun" >&2; exit 1; }
  else
    echo "test: cannot install postgresql here (needs root and apt-get); install it (apt-get install postgresql) and rerun" >&2; exit 1
  fi
fi
bash scripts/check_sync.sh
mlops-nb docs readme --check   # README.md is generated from nbs/index.ipynb
mlops-nb docs execute --check  # the notebooks hold their examples' outputs (the docs show them): else run `mlops-nb docs execute`
nbdev_test --n_workers 2
python -m pytest "$@"
