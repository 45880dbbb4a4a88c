"""A real PostgreSQL source: a throwaway server (Debian's postgresql: initdb + pg_ctl in a temporary folder, on a free
port), a table and a query collected, a table that grows between runs, the password only ever in the environment."""
import contextlib, glob, json, os, shutil, socket, subprocess, time
from pathlib import Path

import numpy as np, pandas as pd, pytest, yaml

from mlops_nb.core import DataError
from mlops_nb.data import sql_batches
from mlops_nb.steps import run_collect, run_prepare


@pytest.fixture(scope='module', autouse=True)
def _in_own_folder(tmp_path_factory):
    "The steps run in this process read `deploy.registry` relative to the working folder: never the project's own registry."
    with contextlib.chdir(tmp_path_factory.mktemp('cwd')): yield
from conftest import ROOT, merge, copy_project

SECRET = 'Pw-planted-7f3a9c'   # must never appear in a file the pipeline or the docs build writes

def _bin(name:str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f'/usr/lib/postgresql/*/bin/{name}'), reverse=True)), None)
    if not found: pytest.fail(f"PostgreSQL's {name} not found: install Debian's postgresql (apt-get install postgresql; scripts/test.sh does it)")
    return found

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture(scope='module')
def server():
    "A PostgreSQL server of its own, with user `ann` whose password is SECRET; stopped and removed at the end."
    import tempfile
    d = Path(tempfile.mkdtemp(prefix='mlops-nb-pg-'))   # not under pytest's root-only folder: the server runs as postgres
    data, port = d/'data', _free_port()
    as_user = ['runuser', '-u', 'postgres', '--'] if os.geteuid() == 0 else []   # initdb refuses to run as root
    if as_user: shutil.chown(d, 'postgres')
    (d/'pw').write_text(SECRET); shutil.chown(d/'pw', 'postgres') if as_user else None
    r = subprocess.run(as_user + [_bin('initdb'), '-D', str(data), '-U', 'ann', '--pwfile', str(d/'pw'), '-A', 'scram-sha-256', '--no-sync'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (d/'pw').unlink()
    subprocess.run(as_user + [_bin('pg_ctl'), '-D', str(data), '-l', str(d/'log'), '-w', '-o', f"-p {port} -k {d} -c listen_addresses=127.0.0.1", 'start'],
                   check=True, capture_output=True)
    os.environ['PGPASSWORD'] = SECRET
    try: yield port
    finally:
        subprocess.run(as_user + [_bin('pg_ctl'), '-D', str(data), '-m', 'immediate', 'stop'], capture_output=True)
        os.environ.pop('PGPASSWORD', None)
        shutil.rmtree(d, ignore_errors=True)

def url(port) -> str: return f'postgresql+psycopg://ann:${{PGPASSWORD}}@127.0.0.1:{port}/postgres'

def sales(n:int, start:int=0, seed:int=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({'sale_id': [f's{i}' for i in range(start, start + n)],
                         'sold_at': pd.date_range('2026-05-01', periods=start + n, freq='h')[start:],
                         'units': rng.integers(1, 20, n), 'store': rng.choice(['a', 'b', 'c'], n),
                         'revenue': rng.normal(100, 10, n).round(2)})

def write_table(port, df, replace=True):
    import sqlalchemy as sa
    eng = sa.create_engine(f'postgresql+psycopg://ann:{SECRET}@127.0.0.1:{port}/postgres')
    with eng.begin() as c: df.to_sql('sales', c, index=False, if_exists='replace' if replace else 'append')
    eng.dispose()

PARAMS = merge(yaml.safe_load((ROOT/'params.yaml').read_text()),
               {'task': {'type': 'regression', 'target': 'revenue', 'time_column': 'sold_at', 'id_columns': ['sale_id']},
                'collect': {'days': 0}, 'train': {'estimator': 'ridge', 'search': {'scoring': 'r2'}},
                'monitor': {'performance': {'metric': 'rmse'}}})
PARAMS['deploy']['gates'] = {'r2': {'threshold': -10.0}}
PARAMS['prepare']['features'] = {}

def test_table_and_query_sources_and_a_growing_table(server, tmp_path):
    write_table(server, sales(300))
    p = merge(PARAMS, {})
    p['collect']['sources'] = [{'type': 'sql', 'url': url(server), 'table': 'sales'},
                               {'type': 'sql', 'url': url(server), 'query': "SELECT * FROM sales WHERE store = 'a'", 'name': 'store_a'}]
    s = run_collect(p, tmp_path/'raw')
    n_a = int((sales(300).store == 'a').sum())
    assert s.rows.tolist() == [300, n_a] and 'ann:***@127.0.0.1' in s.source[0] and not any(SECRET in x for x in s.source)
    write_table(server, sales(50, start=300, seed=1), replace=False)   # new rows arrive
    s = run_collect(p, tmp_path/'raw')
    assert s.rows.iloc[0] == 350
    raw = pd.read_parquet(sorted((tmp_path/'raw').glob('000_*.parquet'))[0])
    assert raw.sale_id.iloc[-1] == 's349'
    res = run_prepare(p, tmp_path/'raw', tmp_path/'prepared', tmp_path/'quality.json')
    assert res.ok and res.schema.columns['units'].kind == 'integer'

def test_unreachable_server_and_missing_password_are_named(server):
    with pytest.raises(DataError) as e: sql_batches(f'postgresql+psycopg://ann:${{PGPASSWORD}}@127.0.0.1:{_free_port()}/postgres', table='sales')
    assert "rule 'sql_unreachable'" in str(e.value) and SECRET not in str(e.value) and 'ann:***@127.0.0.1' in str(e.value), str(e.value)
    with pytest.raises(DataError) as e: sql_batches(f'postgresql+nosuchdriver://ann:${{PGPASSWORD}}@127.0.0.1:{server}/postgres', table='sales')
    assert "rule 'sql_driver_missing'" in str(e.value) and SECRET not in str(e.value), str(e.value)
    saved = os.environ.pop('PGPASSWORD')
    try:
        with pytest.raises(Exception, match='environment variable PGPASSWORD is not set'): sql_batches(url(server), table='sales')
    finally: os.environ['PGPASSWORD'] = saved

def test_missing_driver_is_not_unreachable(tmp_path):
    "psycopg hidden from the interpreter: the error says the driver is missing, not that the server is unreachable."
    (tmp_path/'psycopg.py').write_text("raise ImportError('No module named psycopg (hidden for this test)')\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from mlops_nb.data import sql_batches\n"
            "try: sql_batches('postgresql+psycopg://ann:x@127.0.0.1:1/postgres', table='t')\n"
            "except Exception as e: print(e)\n")
    out = subprocess.run([os.sys.executable, '-c', code, str(tmp_path)], capture_output=True, text=True).stdout
    assert "rule 'sql_driver_missing'" in out and "pip install 'mlops-nb[postgres]'" in out, out

@pytest.mark.e2e
def test_the_password_is_in_no_file_the_pipeline_and_the_docs_build_write(server, tmp_path):
    "Every stage (collect to monitor) and the docs build run with the password in the environment; no file they write holds it."
    from conftest import run
    write_table(server, sales(400))
    proj = copy_project(tmp_path/'proj')
    p = merge(proj.params, {k: v for k, v in PARAMS.items() if k in ('task', 'train', 'monitor')})
    p['deploy']['gates'], p['prepare']['features'] = PARAMS['deploy']['gates'], {}
    p['train']['estimator_params'], p['train']['search']['space'] = {}, {'alpha': [1.0]}
    p['collect'] = dict(p['collect'], days=0, sources=[{'type': 'sql', 'url': url(server), 'table': 'sales'}])
    sales(200, start=400, seed=2).to_csv(proj.path/'current.csv', index=False)   # the monitored window: newer rows
    p['monitor']['current'] = {'source': 'file', 'path': 'current.csv', 'days': 0}
    p['monitor']['alerts'] = dict(p['monitor']['alerts'], features=['units'], min_rows=50)
    (proj.path/'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))
    proj.run('dvc repro', timeout=1200)
    assert json.loads((proj.path/'metrics/gate.json').read_text())['version'] == 'v0001' and (proj.path/'metrics/monitor.json').exists()
    # a password written into params.yaml is refused, and the report of that refused run does not hold it either
    plain = 'Plain-pw-2b8e41'
    proj.set_params({'collect': {'sources': [{'type': 'sql', 'url': f'postgresql+psycopg://ann:{plain}@127.0.0.1:{server}/postgres', 'table': 'sales'}]}})
    r = proj.run('dvc repro collect', check=False)
    assert r.returncode != 0 and 'collect.sources[0].url: holds a password in plain text' in r.stdout + r.stderr
    assert plain not in r.stdout + r.stderr
    run(f'mlops-nb docs build --out {tmp_path}/site --reports {proj.path}/reports --workers 1', ROOT, timeout=900)
    assert (tmp_path/'site').is_dir()
    written = [f for d in ('reports', 'metrics', 'models', 'registry', 'data', 'plots', 'monitor') for f in (proj.path/d).rglob('*')]
    written += [*(proj.path/'dvc.lock',), *(tmp_path/'site').rglob('*')]
    assert len([f for f in written if f.suffix == '.ipynb']) >= 6 and any(f.suffix == '.html' for f in written)
    leaks = [str(f) for f in written if f.is_file() and (SECRET.encode() in f.read_bytes() or plain.encode() in f.read_bytes())]
    assert leaks == []
    assert '${PGPASSWORD}' in (proj.path/'reports/02_prepare.ipynb').read_text()   # the report holds the variable's name only
    assert 'ann:***@127.0.0.1' in (proj.path/'reports/01_collect.ipynb').read_text()  # the refused run's URL, masked
    assert len(pd.read_parquet(next((proj.path/'data/raw').glob('*.parquet')))) == 400

@pytest.mark.e2e
def test_dvc_reruns_collect_when_the_query_result_changes(server, tmp_path):
    "The `sources` stage (always run, cheap) notices new rows in the table; collect reruns then, and only then."
    write_table(server, sales(300))
    proj = copy_project(tmp_path/'proj')
    p = merge(proj.params, {k: v for k, v in PARAMS.items() if k in ('task', 'train', 'monitor')})
    p['deploy']['gates'], p['prepare']['features'] = PARAMS['deploy']['gates'], {}
    p['collect'] = dict(p['collect'], days=0, sources=[{'type': 'sql', 'url': url(server), 'query': 'SELECT * FROM sales'}])
    (proj.path/'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))
    rows = lambda: sum(len(pd.read_parquet(f)) for f in (proj.path/'data/raw').glob('*.parquet'))
    proj.run('dvc repro collect')
    assert rows() == 300
    r = proj.run('dvc repro collect')                       # nothing changed in the database: collect is not rerun
    assert "Stage 'collect' didn't change" in r.stdout and rows() == 300, r.stdout
    write_table(server, sales(50, start=300, seed=1), replace=False)
    r = proj.run('dvc repro collect')                       # new rows: the fingerprint changed, collect reruns
    assert "Running stage 'collect'" in r.stdout and rows() == 350, r.stdout
    fp = json.loads((proj.path/'data/sources.json').read_text())
    assert fp[0]['rows'] == 350 and fp[0]['newest'].startswith('2026-05-15') and SECRET not in json.dumps(fp)
