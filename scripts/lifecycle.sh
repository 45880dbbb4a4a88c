#!/usr/bin/env bash
# Installs the project (first run only) and runs the whole lifecycle on the built-in data with `dvc repro`.
# Extra arguments go to `dvc repro` (e.g. `bash scripts/lifecycle.sh evaluate` or `--force`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
start=$(date +%s)
dvc repro "$@"
echo
echo "Lifecycle done in $(( $(date +%s) - start )) s."
dvc metrics show                 # the key numbers of each stage (metrics/key/); full results beside them in metrics/
mlops-nb gate --from metrics/gate.json || true
cat <<MSG

Where things are:
  reports (executed notebooks)  reports/01_collect.ipynb ... reports/06_monitor.ipynb (each stage's log: reports/NN_stage.log)
  reports as pages, no code     .venv/bin/jupyter nbconvert --to html --no-input reports/*.ipynb
  metrics (DVC metrics)         metrics/key/*.json: one line a stage (dvc metrics show, dvc exp show --only-changed --drop 'Created|.*/')
  full results                  metrics/data_quality.json, metrics/train.json, metrics/evaluate.json, metrics/gate.json, metrics/monitor.json
  plots (DVC plots)             plots/evaluate/, plots/monitor/  (dvc plots show: dvc_plots/index.html, drawn offline)
  alerts (monitor)              monitor/status.json  (mlops-nb monitor --help)
  docs site                     .venv/bin/mlops-nb docs build  (into _site/)
  model                         models/candidate/model.skops (+ schema.json, model.json)
  registry (versions, champion) registry/  (mlops-nb models list, mlops-nb models show champion)
  data                          data/raw/, data/prepared/, data/predictions/test.parquet
Open them in JupyterLab:        .venv/bin/jupyter lab
MSG
