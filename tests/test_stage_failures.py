"""A failed evaluate, deploy or monitor stage leaves the last good artefacts in place, through the real `dvc repro`:
every out of these stages is `persist: true` and written atomically, and registry/ is written only through
mlops_nb.registry. On a small project run through the whole lifecycle once (the regression CSV, a champion in registry/),
each stage is made to fail the way a user could meet it, with params.yaml valid: the error names what is wrong, data/,
models/, registry/, metrics/, plots/ and monitor/ stay byte-identical (but for the file damaged on purpose), and the
project recovers once the cause is put right."""
import contextlib, json
from pathlib import Path

import pandas as pd, pytest

from test_data_contract import checksum, regression_project

FOLDERS = ('data', 'models', 'registry', 'metrics', 'plots', 'monitor')

@pytest.fixture(scope='module')
def lifecycle(tmp_path_factory):
    "A project on the regression CSV, run through every stage once: v0001 is the registry's champion."
    # min_rows 100: the 120 newest rows are judged, so the monitor draws its figures too
    proj = regression_project(tmp_path_factory.mktemp('stagefail')/'proj', monitor={'alerts': {'min_rows': 100}})
    proj.run('dvc repro', timeout=900)
    assert json.loads((proj.path/'registry/aliases.json').read_text()) == {'champion': 'v0001'}
    return proj

def artefacts(proj) -> dict:
    "sha256 of every file of the stages' artefacts, by path inside the project."
    return {Path(f).relative_to(proj.path).as_posix(): h for f, h in checksum(*(proj.path/d for d in FOLDERS)).items()}

def without(sums:dict, *paths:str) -> dict: return {k: v for k, v in sums.items() if k not in paths}

def changed(before:dict, after:dict) -> list[str]:
    "The files that differ, appeared or disappeared (for the assertion's message)."
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))

def up_to_date(proj) -> dict:
    "Run whatever an earlier test left to run, then the artefacts' checksums: the last good state."
    proj.run('dvc repro', timeout=900)
    return artefacts(proj)

@contextlib.contextmanager
def damaged(path:Path, data:bytes|None):
    "Replace the file `path` by `data` (`None`: delete it); its original bytes are put back afterwards."
    original = path.read_bytes()
    try:
        if data is None: path.unlink()
        else: path.write_bytes(data)
        yield
    finally: path.write_bytes(original)

def fails_in(proj, stage:str, cmd:str='dvc repro') -> str:
    "Run `cmd`, which must fail inside `stage` itself (not in an earlier stage, not in DVC); its stdout + stderr."
    r = proj.run(cmd, check=False, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and f"Running stage '{stage}'" in r.stdout and f"failed to reproduce '{stage}'" in r.stderr, out[-4000:]
    return out

@pytest.mark.e2e
def test_a_failed_evaluate_keeps_its_metrics_plots_and_predictions(lifecycle):
    proj = lifecycle
    good = up_to_date(proj)
    assert {'metrics/evaluate.json', 'metrics/key/evaluate.json', 'data/predictions/test.parquet', 'plots/evaluate/importance.csv',
            'plots/evaluate/curves/rec.csv', 'plots/evaluate/figures/residuals.png'} <= set(good), sorted(good)
    # Both causes are files of upstream outs: a plain `dvc repro evaluate` would rerun train / prepare first (their outs
    # changed) and so repair them; `--single-item` runs evaluate alone on the files as they are.
    model = 'models/candidate/model.skops'
    with damaged(proj.path/model, b'not a model\n'):                    # e.g. a copy cut short, a file replaced by hand
        out = fails_in(proj, 'evaluate', 'dvc repro --single-item evaluate')
        assert f'{model}: not a readable skops model file' in out, out[-3000:]
        now = artefacts(proj)
        # excluded: the model file damaged here; metrics/evaluate.json, the plots and the predictions are as they were
        assert without(now, model) == without(good, model), changed(good, now)
    test = 'data/prepared/test.parquet'
    with damaged(proj.path/test, (proj.path/test).read_bytes()[:300]):    # the test split cut short: no Parquet footer
        out = fails_in(proj, 'evaluate', 'dvc repro --single-item evaluate')
        assert f"{test}: not a readable Parquet split (" in out and 'the file is corrupted' in out, out[-3000:]   # the file, then pyarrow's reason
        now = artefacts(proj)
        assert without(now, test) == without(good, test), changed(good, now)   # excluded: the split damaged here
    # recovered: evaluate runs for real on the restored files, and writes the same artefacts again
    r = proj.run('dvc repro --force --single-item evaluate', timeout=900)
    assert "Running stage 'evaluate'" in r.stdout
    now = artefacts(proj)
    assert now == good, changed(good, now)

@pytest.mark.e2e
def test_a_failed_deploy_registers_no_version_and_moves_no_alias(lifecycle):
    proj = lifecycle
    good = up_to_date(proj)
    reg = proj.path/'registry'
    versions = sorted(p.name for p in (reg/'versions').iterdir())
    assert 'metrics/gate.json' in good and 'registry/aliases.json' in good and (reg/'versions/v0001').is_dir(), sorted(good)
    saved = proj.path/'params.yaml'
    original = saved.read_text()
    try:
        proj.set_params({'deploy': {'latency_rows': 40}})   # a valid change of deploy's params: a plain `dvc repro` reruns deploy
        aliases = 'registry/aliases.json'
        with damaged(proj.path/aliases, b'{"champion": "v00'):           # a hand edit of the aliases left unfinished
            out = fails_in(proj, 'deploy')
            assert f'{aliases}: not valid JSON' in out, out[-3000:]
            now = artefacts(proj)
            # excluded: the aliases file damaged here; no version folder, history line or gate.json was written
            assert without(now, aliases) == without(good, aliases), changed(good, now)
        # the candidate missing (deleted, or a train run elsewhere that never wrote it); --single-item: a plain `dvc repro`
        # would rerun train first (its out models/candidate changed) and so write a new one
        model = 'models/candidate/model.skops'
        with damaged(proj.path/model, None):
            out = fails_in(proj, 'deploy', 'dvc repro --single-item deploy')
            assert f'{model}: model file not found' in out, out[-3000:]
            now = artefacts(proj)
            assert without(now, model) == without(good, model), changed(good, now)   # excluded: the model file deleted here
        assert sorted(p.name for p in (reg/'versions').iterdir()) == versions       # no new version, no unfinished one left
        # recovered: deploy runs again; the candidate is the champion's own model, so it is registered as rejected and
        # champion stays v0001
        r = proj.run('dvc repro', timeout=900)
        assert "Running stage 'deploy'" in r.stdout
        gate = json.loads((proj.path/'metrics/gate.json').read_text())
        assert gate['version'] == 'v0002' and gate['status'] == 'rejected' and gate['champion_after'] == 'v0001', gate
        assert artefacts(proj)[aliases] == good[aliases]
    finally: saved.write_text(original)

@pytest.mark.e2e
def test_a_failed_monitor_keeps_its_metrics_plots_and_status(lifecycle):
    proj = lifecycle
    good = up_to_date(proj)
    assert {'metrics/monitor.json', 'metrics/key/monitor.json', 'monitor/status.json', 'plots/monitor/drift.csv',
            'plots/monitor/figures/drift.png', 'plots/monitor/figures/performance.png'} <= set(good), sorted(good)
    saved = proj.path/'params.yaml'
    original = saved.read_text()
    incoming = proj.path/'incoming'   # the current window, delivered as a file (outside the artefacts: nothing excluded below)
    try:
        proj.set_params({'monitor': {'current': {'source': 'file', 'path': 'incoming/week.csv'}}})
        out = fails_in(proj, 'monitor')                                  # the week's file not delivered (yet)
        assert "incoming/week.csv: breaks rule 'file_not_found'" in out, out[-3000:]
        now = artefacts(proj)
        assert now == good, changed(good, now)                           # metrics/monitor*.json, the status and plots kept
        incoming.mkdir()
        week = pd.read_csv(proj.path/'houses.csv').tail(200)
        week.to_parquet(incoming/'week.parquet', index=False)
        data = (incoming/'week.parquet').read_bytes()
        (incoming/'week.parquet').write_bytes(data[:len(data)//2])      # a download cut short
        proj.set_params({'monitor': {'current': {'path': 'incoming/week.parquet'}}})
        out = fails_in(proj, 'monitor')
        assert "incoming/week.parquet: breaks rule 'unreadable_file'" in out and 'Parquet magic bytes not found' in out, out[-3000:]
        now = artefacts(proj)
        assert now == good, changed(good, now)
        # recovered: the whole file delivered, the monitor judges that window
        (incoming/'week.parquet').write_bytes(data)
        r = proj.run('dvc repro', timeout=900)
        assert "Running stage 'monitor'" in r.stdout
        assert json.loads((proj.path/'monitor/status.json').read_text())['window']['rows'] == 200
    finally: saved.write_text(original)
