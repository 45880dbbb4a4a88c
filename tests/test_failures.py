"""A failed stage leaves the last good artefacts in place, through the real `dvc repro`: DVC deletes a stage's outs
before running it unless they are `persist: true`; collect validates a new window before it replaces data/raw; every
collect failure (a params problem included) is recorded in metrics/data_quality.json."""
import json

import pandas as pd, pytest

from test_data_contract import checksum, regression_project

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A project on the regression CSV, run up to train."
    proj = regression_project(tmp_path_factory.mktemp('fail')/'proj')
    proj.run('dvc repro train')
    return proj

def kept(proj) -> dict:
    return checksum(proj.path/'models', proj.path/'data/raw', proj.path/'data/prepared') | \
           {f: checksum(proj.path/'metrics')[str(proj.path/'metrics'/f)] for f in ('train.json',)}

@pytest.mark.e2e
def test_a_failed_train_keeps_the_last_model_and_its_metrics(trained):
    proj, good = trained, kept(trained)
    assert (proj.path/'models/candidate/model.skops').exists()
    saved = proj.path/'params.yaml'
    original = saved.read_text()
    try:
        proj.set_params({'train': {'estimator': 'ridgee'}})            # a typo
        r = proj.run('dvc repro train', check=False)
        assert r.returncode != 0 and "train.estimator: unknown estimator 'ridgee'; regression estimators: ridge" in r.stdout + r.stderr
        assert kept(proj) == good                                       # models/ and metrics/train.json as they were
        saved.write_text(original)
        proj.set_params({'train': {'search': {'scoring': 'roc_auc'}}})  # a classification scorer on a regression task
        r = proj.run('dvc repro train', check=False)
        assert r.returncode != 0 and "train.search.scoring: 'roc_auc' is a classification scorer but task.type is 'regression'" in r.stdout + r.stderr
        assert 'AttributeError' not in r.stdout + r.stderr and kept(proj) == good
    finally: saved.write_text(original)

@pytest.mark.e2e
def test_a_rejected_window_never_replaces_data_raw_and_collect_failures_are_recorded(trained):
    proj = trained
    good = kept(proj)
    src = proj.path/'houses.csv'
    original_csv, original = src.read_text(), (proj.path/'params.yaml').read_text()
    try:
        df = pd.read_csv(src, dtype=str, keep_default_na=False)
        df.loc[df.index[-30:], 'size_m2'] = 'abc'                       # text in a number column, in the newest rows
        df.to_csv(src, index=False)
        r = proj.run('dvc repro prepare', check=False)               # the sources stage sees the file changed: collect reruns
        out = r.stdout + r.stderr
        assert r.returncode != 0 and "Running stage 'collect'" in r.stdout and "houses.csv: column 'size_m2' breaks rule 'wrong_dtype'" in out, out[-3000:]
        assert kept(proj) == good                                       # data/raw, data/prepared, models, metrics kept
        q = json.loads((proj.path/'metrics/data_quality.json').read_text())
        assert q['ok'] is False and q['stage'] == 'collect' and q['failed_batches'] == 1
        rej = json.loads((proj.path/'data/quarantine/file_houses.json').read_text())   # the rejected batch, kept aside
        assert rej['violations'][0]['rule'] == 'wrong_dtype' and (proj.path/'data/quarantine/file_houses.parquet').exists()
        # a params problem in collect is recorded too, not left as the last run's ok: true
        src.write_text(original_csv)
        (proj.path/'params.yaml').write_text(original)
        proj.run('dvc repro prepare')
        assert json.loads((proj.path/'metrics/data_quality.json').read_text())['ok'] is True
        proj.set_params({'collect': {'sources': []}})
        r = proj.run('dvc repro prepare', check=False)
        assert r.returncode != 0 and 'collect.sources: must not be empty' in r.stdout + r.stderr
        q = json.loads((proj.path/'metrics/data_quality.json').read_text())
        assert q['ok'] is False and q['stage'] == 'sources' and 'collect.sources: must not be empty' in q['error']['message']   # collect's first step
        assert kept(proj) == good
    finally:
        src.write_text(original_csv); (proj.path/'params.yaml').write_text(original)
