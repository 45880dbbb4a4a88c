#!/usr/bin/env bash
# Fails when nbdev_export would change mlops_nb/ or nbdev_clean would change a notebook (nbs/ or pipelines/).
# Works on a scratch copy, so uncommitted work is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
cp -r settings.ini setup.py pyproject.toml nbs pipelines mlops_nb "$scratch"/
( cd "$scratch" && nbdev_export >/dev/null && nbdev_clean >/dev/null && nbdev_clean --fname pipelines >/dev/null )
status=0
if ! diff -r -q -x __pycache__ mlops_nb "$scratch/mlops_nb"; then
  echo "check_sync: nbdev_export would change mlops_nb/ (edit nbs/, run nbdev_export, commit both)"; status=1; fi
for d in nbs pipelines; do
  if ! diff -r -q -x .ipynb_checkpoints "$d" "$scratch/$d"; then
    echo "check_sync: nbdev_clean would change notebooks in $d/ (run nbdev_clean)"; status=1; fi
done
[ $status = 0 ] && echo "check_sync: notebooks and package in sync, notebooks clean"
exit $status
