"""The real lifecycle: `dvc repro` runs every stage's notebook through papermill in a copy of the project."""
import json, shutil, subprocess
from pathlib import Path

import nbformat, numpy as np, pandas as pd, pytest, yaml

from mlops_nb.train import load_model
from conftest import ROOT, Project, run

pytestmark = pytest.mark.e2e
STAGES = ['01_collect', '02_prepare', '03_train', '04_evaluate']

def errors_in(report:Path) -> list[str]:
    "The error outputs of an executed notebook."
    nb = nbformat.read(report, as_version=4)
    return [o.get('ename', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []) if o.output_type == 'error']

STALE = ("the committed dvc.lock/metrics are stale: run `bash scripts/lifecycle.sh` in a fresh clone and commit dvc.lock "
         "and metrics/ (and monitor/status.json)")

def clone_of_worktree(dst:Path) -> Project:
    """What a fresh clone of this commit holds, with the worktree's uncommitted changes too (a `git clone` of HEAD would
    miss them): every tracked file (`git ls-files`) copied and committed on `main`, the release branch."""
    tracked = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split('\0')
    for name in filter(None, tracked):
        if not (ROOT/name).is_file(): continue          # deleted in the worktree, not yet committed
        (dst/name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT/name, dst/name)
    run('git init -q -b main && git add -A && git commit -qm clone', dst)
    return Project(dst)

def test_repro_runs_the_lifecycle_and_caches_it(tmp_path):
    # The main job of a fresh clone (README's `bash scripts/lifecycle.sh` is set-up + `dvc repro`), on the committed
    # params.yaml: it must leave `git status` clean, i.e. the committed dvc.lock and metrics are what a clean run writes.
    project = clone_of_worktree(tmp_path/'clone')
    out = project.run('dvc repro', timeout=1800).stdout
    changed = project.run('git status --porcelain').stdout
    assert changed == '', f"{STALE}.\ngit status --porcelain:\n{changed}\n{project.run('git diff --stat').stdout}"
    for stage in ['collect', 'prepare', 'train', 'evaluate']: assert f"Running stage '{stage}'" in out
    p = project.path
    for s in STAGES:
        assert (p/'reports'/f'{s}.ipynb').exists() and errors_in(p/'reports'/f'{s}.ipynb') == []
    m = json.loads((p/'metrics/evaluate.json').read_text())
    assert m['roc_auc'] > 0.7 and 0 < m['pr_auc'] <= 1 and 0 <= m['brier'] < 0.1 and 0 < m['threshold'] < 1
    q = json.loads((p/'metrics/data_quality.json').read_text())
    assert q['ok'] and q['failed_batches'] == 0 and q['batches'] == project.params['collect']['days']
    schema = json.loads((p/'data/prepared/schema.json').read_text())
    assert {'amount', 'merchant_category', 'timestamp', 'is_fraud'} <= {c['name'] for c in schema['columns']}
    splits = {k: pd.read_parquet(p/f'data/prepared/{k}.parquet') for k in ['train', 'valid', 'test']}
    assert splits['train'].timestamp.max() <= splits['valid'].timestamp.min() <= splits['test'].timestamp.min()
    model = load_model(p/'models/candidate/model.skops')
    spec = json.loads((p/'data/prepared/features.json').read_text())
    preds = pd.read_parquet(p/'data/predictions/test.parquet')
    scores = model.predict_proba(splits['test'][spec['inputs']])[:, 1]
    assert len(preds) == len(splits['test']) and abs(preds.score.to_numpy() - scores).max() < 1e-12
    for f in ['roc.csv', 'pr.csv', 'calibration.csv', 'importance.csv', 'curves/roc.csv', 'figures/roc.png', 'figures/confusion.png']:
        assert (p/'plots/evaluate'/f).stat().st_size > 0
    plots = json.loads(project.run('dvc plots show --json').stdout)
    assert not plots.get('errors') and {f'plots/evaluate/curves/{c}.csv' for c in ('roc', 'pr', 'calibration')} <= set(plots['data'])
    assert any(k.endswith('figures/confusion.png') for k in plots['data'])
    shown = json.loads(project.run('dvc metrics show --json').stdout)
    assert any('metrics/key/evaluate.json' in str(v) for v in shown.values())
    assert 'metrics/evaluate.json' not in json.dumps(shown)       # the full result is a plain output, not a DVC metric

    # Nothing changed: nothing runs but the look at the sources (always_changed), which finds them unchanged.
    again = project.run('dvc repro').stdout
    assert "Running stage 'sources'" in again and 'Running stage' not in again.replace("Running stage 'sources'", ''), again
    assert project.run('git status --porcelain').stdout == '', STALE

    # A training param changed: train and evaluate run again, collect and prepare do not.
    n_iter = project.params['train']['search']['n_iter']
    out = project.run('dvc exp run -S train.search.n_iter=1 evaluate', timeout=1200).stdout
    assert "Running stage 'train'" in out and "Running stage 'evaluate'" in out
    assert "Running stage 'collect'" not in out and "Running stage 'prepare'" not in out
    diff = json.loads(project.run('dvc params diff --json').stdout)
    assert (diff['params.yaml']['train.search.n_iter']['old'], diff['params.yaml']['train.search.n_iter']['new']) == (n_iter, 1)
    mdiff = json.loads(project.run('dvc metrics diff --json').stdout)
    assert all(f.startswith('metrics/key/') for f in mdiff), mdiff   # only the key metrics, none of the full results
    assert json.loads((project.path/'metrics/train.json').read_text())['candidates'] == 1

def report_content(path:Path) -> dict:
    "An executed report without the times papermill and nbclient record (when each cell ran and for how long)."
    nb = json.loads(path.read_text())
    nb['metadata'].pop('papermill', None)
    for c in nb['cells']:
        for k in ('papermill', 'execution'): c['metadata'].pop(k, None)
    return nb

def test_two_clean_runs_are_identical(project, tmp_path):
    # Up to evaluate: what follows (deploy's latency figures, the registry's timestamps) is measured, not derived.
    r = project.run('dvc repro evaluate')
    assert 'unknown parameter' not in r.stdout + r.stderr, r.stderr[-2000:]   # every params.yaml section is a declared parameter
    files = ['metrics/evaluate.json', 'metrics/train.json', 'metrics/data_quality.json', 'models/candidate/model.json',
             'models/candidate/model.skops',
             'plots/evaluate/roc.csv', 'plots/evaluate/figures/roc.png',
             'metrics/key/evaluate.json', 'metrics/key/train.json', 'metrics/key/prepare.json']
    first = {f: (project.path/f).read_bytes() for f in files}
    first_reports = {s: report_content(project.path/f'reports/{s}.ipynb') for s in STAGES}
    first_preds = pd.read_parquet(project.path/'data/predictions/test.parquet')
    project.run('rm -rf data models metrics plots reports/*.ipynb reports/.history .dvc/cache && dvc repro evaluate')
    for f, content in first.items(): assert (project.path/f).read_bytes() == content, f
    for s, nb in first_reports.items():   # the reports read the same, down to the bytes of their tables and figures
        again = report_content(project.path/f'reports/{s}.ipynb')
        diff = [i for i, (a, b) in enumerate(zip(nb['cells'], again['cells'])) if a != b]
        first_diff = [(k, str(nb['cells'][i].get(k))[:300], str(again['cells'][i].get(k))[:300]) for i in diff[:1]
                      for k in nb['cells'][i] if nb['cells'][i].get(k) != again['cells'][i].get(k)]
        assert diff == [] and len(nb['cells']) == len(again['cells']), (s, diff, first_diff)
    pd.testing.assert_frame_equal(pd.read_parquet(project.path/'data/predictions/test.parquet'), first_preds)

def test_a_bad_batch_stops_dvc_repro_before_data_raw_is_replaced(project):
    project.run('dvc repro prepare')   # the stages up to prepare are what this test is about
    p = project.path
    (p/'data/schema.json').write_bytes((p/'data/prepared/schema.json').read_bytes())  # the team pins the reviewed schema
    project.set_params({'prepare': {'schema': 'data/schema.json'}})
    project.run('dvc repro prepare')
    project.commit('pinned schema')
    before = {f.name: f.read_bytes() for f in (p/'data/prepared').iterdir()}
    raw_before = {f.name: f.read_bytes() for f in (p/'data/raw').iterdir()}
    bad = pd.read_parquet(sorted((p/'data/raw').glob('*.parquet'))[-1]).drop(columns=['country'])
    bad['transaction_id'] = 'ext-' + bad['transaction_id']
    (p/'data/external').mkdir(parents=True)
    bad.to_csv(p/'data/external/late.csv', index=False)
    project.set_params({'collect': {'sources': [{'type': 'simulator'}, {'type': 'file', 'path': 'data/external/late.csv'}]}})
    r = project.run('dvc repro', check=False)
    assert r.returncode != 0
    assert "data/external/late.csv: column 'country' breaks rule 'missing_column'" in r.stdout + r.stderr
    assert "Running stage 'train'" not in r.stdout
    assert {f.name: f.read_bytes() for f in (p/'data/prepared').iterdir()} == before
    assert {f.name: f.read_bytes() for f in (p/'data/raw').iterdir()} == raw_before   # collect refused the window
    assert errors_in(p/'reports/01_collect.ipynb') == ['DataError']
    q = json.loads((p/'metrics/data_quality.json').read_text())
    assert not q['ok'] and q['failed_batches'] == 1

def test_same_pipeline_on_a_regression_csv(project):
    from sklearn.datasets import load_diabetes
    p = project.path
    df = load_diabetes(as_frame=True).frame
    df['sex'] = np.where(df['sex'] > 0, 'male', 'female')   # one categorical column
    df['patient'] = [f'p{i:04d}' for i in range(len(df))]
    (p/'data/external').mkdir(parents=True)
    df.to_csv(p/'data/external/diabetes.csv', index=False)
    params = project.params
    params['task'] = {'type': 'regression', 'target': 'target', 'time_column': '', 'id_columns': ['patient']}
    params['collect'] = {'sources': [{'type': 'file', 'path': 'data/external/diabetes.csv'}], 'start_day': 0, 'days': 0}
    params['prepare']['features'] = {}
    params['train'] = {'estimator': 'ridge', 'search': {'method': 'grid', 'cv_splits': 3, 'scoring': 'neg_root_mean_squared_error',
                                                       'space': {'alpha': [0.1, 1.0, 10.0]}}}
    params['deploy']['gates'] = {'r2': {'threshold': 0.2}, 'latency_ms': {'threshold': 250}}   # regression metrics (params check)
    params['monitor']['performance']['metric'] = 'rmse'
    params['monitor']['alerts']['features'] = ['bmi', 'sex']   # the simulator's alert columns are not in this data (an error)
    (p/'params.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
    project.run('dvc repro')
    m = json.loads((p/'metrics/evaluate.json').read_text())
    assert {'mae', 'rmse', 'r2'} <= set(m) and m['r2'] > 0.2 and m['rmse'] > m['mae'] > 0
    for s in STAGES: assert errors_in(p/'reports'/f'{s}.ipynb') == []
    assert (p/'plots/evaluate/figures/residuals.png').stat().st_size > 0
    spec = json.loads((p/'data/prepared/features.json').read_text())
    assert spec['categorical'] == ['sex'] and 'patient' not in spec['numeric']
