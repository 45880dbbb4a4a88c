"""Every kind of bad batch stops collect (before data/raw is replaced) and prepare with an error naming source, column,
rule and counts; the last good raw and prepared data stay as they were and the quality report records what was seen."""
import json, shutil, sqlite3
from pathlib import Path

import numpy as np, pandas as pd, pytest

from mlops_nb.core import DataError
from mlops_nb.sim import simulate
from mlops_nb.steps import run_collect, run_prepare
from conftest import SMALL, merge, ROOT
from test_data_contract import kept_tree
import yaml

PARAMS = merge(yaml.safe_load((ROOT/'params.yaml').read_text()), SMALL)

@pytest.fixture(scope='module')
def good(tmp_path_factory):
    "A good collect + prepare; its schema is then pinned, as a team does once it has reviewed it."
    d = tmp_path_factory.mktemp('good')
    run_collect(PARAMS, d/'data/raw')
    run_prepare(PARAMS, d/'data/raw', d/'data/prepared', d/'metrics/data_quality.json')
    return d

def project_from(good:Path, folder:Path) -> dict:
    "A project folder holding `good`'s data/ and metrics/; its own registry/ (none: no champion), for params deploy.registry."
    shutil.copytree(good/'data', folder/'data'); shutil.copytree(good/'metrics', folder/'metrics')
    return {'deploy': {'registry': str(folder/'registry')}}

def recent_rows(n=300) -> pd.DataFrame:
    "Rows as the simulator makes them, from the last day of the window, with their own ids."
    df = simulate(start_day=PARAMS['collect']['days'] - 1, days=1, seed=7, **PARAMS['sim']).head(n).copy()
    df['transaction_id'] = 'ext-' + df['transaction_id']
    return df

def breaks(kind:str, df:pd.DataFrame) -> pd.DataFrame:
    "Damage `df` the way `kind` says."
    df = df.copy()
    n = len(df)
    if kind == 'missing_column': return df.drop(columns=['merchant_category'])
    if kind == 'wrong_dtype': df['amount'] = df['amount'].astype(str); df.loc[df.index[:40], 'amount'] = 'abc'; return df
    if kind == 'out_of_range': df.loc[df.index[:60], 'amount'] = 1e9; return df
    if kind == 'unseen_categories': df.loc[df.index[:45], 'country'] = 'ZZ'; return df
    if kind == 'too_many_nulls': df.loc[df.index[:n // 2], 'distance_from_home_km'] = np.nan; return df
    raise ValueError(kind)

@pytest.mark.parametrize('kind,column,count', [
    ('missing_column', 'merchant_category', None), ('wrong_dtype', 'amount', 40), ('out_of_range', 'amount', 60),
    ('unseen_categories', 'country', 45), ('too_many_nulls', 'distance_from_home_km', 150)])
def test_bad_batch_stops_collect_and_prepare(good, tmp_path, kind, column, count):
    from mlops_nb.data import collect, write_batches
    prepared, raw, quality = tmp_path/'data/prepared', tmp_path/'data/raw', tmp_path/'metrics/data_quality.json'
    own = project_from(good, tmp_path)
    before = kept_tree(tmp_path)
    bad_file = tmp_path/f'{kind}.csv'
    breaks(kind, recent_rows()).to_csv(bad_file, index=False)
    params = merge(PARAMS, merge(own, {'collect': {'sources': [{'type': 'simulator'}, {'type': 'file', 'path': str(bad_file)}]},
                                       'prepare': {'schema': str(good/'data/prepared'/'schema.json')}}))
    with pytest.raises(DataError) as e: run_collect(params, raw, quality)
    msg = str(e.value)
    assert kept_tree(tmp_path) == before                   # collect refused it: data/raw keeps the last good batches, nothing else changed
    assert json.loads(quality.read_text())['stage'] == 'collect'
    write_batches(collect(params['collect']['sources'], 0, PARAMS['collect']['days'], PARAMS['seed'], PARAMS['sim'], 'timestamp'), raw)
    before = kept_tree(tmp_path)                           # the bad batches now in data/raw, as if written there by hand
    with pytest.raises(DataError) as e2:                   # prepare applies the same checks to what is in data/raw
        run_prepare(params, raw, prepared, quality)
    assert str(e2.value) == msg
    assert str(bad_file) in msg and f"column '{column}'" in msg and f"rule '{kind}'" in msg, msg
    if count is not None: assert f'{count} of 300 rows' in msg, msg
    assert kept_tree(tmp_path) == before                   # the last good data is untouched
    q = json.loads(quality.read_text())                    # and the report says what was seen
    assert q['stage'] == 'prepare'
    assert q['ok'] is False and q['failed_batches'] == 1
    seen = [v for b in q['per_batch'] for v in b['violations'] if v['severity'] == 'error']
    assert [(v['source'], v['column'], v['rule']) for v in seen][0] == (str(bad_file), column, kind)
    kept = sorted(p.name for p in (tmp_path/'data/quarantine').iterdir())   # the rejected batch is kept aside with its report
    assert kept == [f'file_{kind}.json', f'file_{kind}.parquet'], kept
    qr = json.loads((tmp_path/'data/quarantine'/f'file_{kind}.json').read_text())
    assert qr['source'] == str(bad_file) and qr['violations'][0]['rule'] == kind
    assert len(pd.read_parquet(tmp_path/'data/quarantine'/f'file_{kind}.parquet')) == 300

def test_a_good_external_batch_passes(good, tmp_path):
    f = tmp_path/'fine.parquet'
    recent_rows().to_parquet(f)
    params = merge(PARAMS, {'collect': {'sources': [{'type': 'simulator'}, {'type': 'file', 'path': str(f)}]},
                            'prepare': {'schema': str(good/'data/prepared'/'schema.json')}})
    run_collect(params, tmp_path/'raw')
    res = run_prepare(params, tmp_path/'raw', tmp_path/'prepared', tmp_path/'quality.json')
    assert res.ok and sum(len(s) for s in res.splits.values()) == 12 * 400 + 300

@pytest.mark.parametrize('kind', ['empty_file', 'unreadable_file', 'sql_unreachable'])
def test_bad_source_stops_collect(good, tmp_path, kind):
    raw, quality = tmp_path/'data/raw', tmp_path/'metrics/data_quality.json'
    own = project_from(good, tmp_path)
    before = kept_tree(tmp_path)
    if kind == 'empty_file':
        (tmp_path/'empty.csv').write_text(''); src = {'type': 'file', 'path': str(tmp_path/'empty.csv')}; name = 'empty.csv'
    elif kind == 'unreadable_file':
        (tmp_path/'broken.parquet').write_bytes(b'PAR1 this is not parquet'); src = {'type': 'file', 'path': str(tmp_path/'broken.parquet')}; name = 'broken.parquet'
    else:
        src = {'type': 'sql', 'url': f'sqlite:///{tmp_path}/no_such_dir/tx.sqlite', 'table': 'transactions'}; name = 'no_such_dir/tx.sqlite'
    params = merge(PARAMS, merge(own, {'collect': {'sources': [{'type': 'simulator'}, src]}}))
    with pytest.raises(DataError) as e: run_collect(params, raw, quality)
    assert name in str(e.value) and f"rule '{kind}'" in str(e.value), str(e.value)
    assert kept_tree(tmp_path) == before
    q = json.loads(quality.read_text())
    assert q['ok'] is False and q['stage'] == 'collect' and q['error']['rule'] == kind, q

def test_sqlite_source_combines_with_the_simulator(good, tmp_path):
    db = tmp_path/'tx.sqlite'
    rows = recent_rows(300)
    with sqlite3.connect(db) as con: rows.to_sql('transactions', con, index=False)
    params = merge(PARAMS, {'collect': {'sources': [{'type': 'simulator'}, {'type': 'sql', 'url': f'sqlite:///{db}', 'table': 'transactions'}]},
                            'prepare': {'schema': str(good/'data/prepared'/'schema.json')}})
    summary = run_collect(params, tmp_path/'raw')
    assert summary.rows.sum() == 12 * 400 + 300 and summary.source.str.contains('tx.sqlite').sum() == 1
    res = run_prepare(params, tmp_path/'raw', tmp_path/'prepared', tmp_path/'quality.json')
    got = pd.concat(res.splits.values())
    assert got.transaction_id.str.startswith('ext-').sum() == 300
