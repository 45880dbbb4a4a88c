"""The collect stage out of core (`prepare.out_of_core`, `steps.use_out_of_core_collect`): file sources read, windowed,
written and checked batch by batch give the raw rows and manifest of the in-memory collect; under a memory cap several
times smaller than the data collect and then prepare succeed where reading the files whole fails; a broken file stops
collect with an error naming it and `data/raw` unchanged."""
import json, os, sqlite3, subprocess, sys, textwrap
from pathlib import Path

import numpy as np, pandas as pd, pyarrow.parquet as pq, pytest

from mlops_nb.core import DataError
from mlops_nb.data import read_table_file
from mlops_nb.steps import run_collect, run_prepare, use_out_of_core_collect

def params(tmp:Path, sources:list, days:int=5, **prep) -> dict:
    return dict(seed=0, task=dict(type='classification', target='y', time_column='ts', id_columns=['id']),
                collect=dict(days=days, sources=sources),
                prepare=dict(features=dict(time_parts=['hour'], log=['amount'], ratios={}), split=dict(valid_fraction=0.2, test_fraction=0.2)) | prep,
                deploy=dict(registry=str(tmp/'no-registry')))

def day_frame(day:int, n:int, seed:int, first_id:int=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({'id': np.arange(first_id, first_id + n), 'ts': pd.Timestamp('2026-01-01') + pd.to_timedelta(day * 86400 + rng.integers(0, 2 * 86400, n), 's'),
                         'amount': rng.gamma(2, 30, n).round(2), 'n': rng.integers(0, 6, n), 'channel': rng.choice(['web', 'pos', 'app'], n),
                         'y': (rng.random(n) < 0.1).astype('int64')})

def sources(tmp:Path) -> list:
    "Parquet files of two days each (days 0-7; the first falls out of a 5-day window, the second in part), a CSV file, a SQL table."
    src = tmp/'src'; src.mkdir()
    for k in range(4): day_frame(2 * k, 1500, k, 1500 * k).to_parquet(src/f'tx{k}.parquet', row_group_size=400)
    csv = day_frame(8, 3000, 9, 9000)
    csv['n'] = csv['n'].astype('float64').where(np.arange(3000) % 700 > 0)       # an integer column with gaps: float64, as in memory
    csv.to_csv(tmp/'late.csv', index=False)
    sql = day_frame(7, 2500, 7, 20_000)
    sql['n'] = sql['n'].astype('float64').where(np.arange(2500) < 2450)           # the gaps only in the last chunk
    with sqlite3.connect(tmp/'tx.sqlite') as con: sql.assign(ts=sql['ts'].astype(str)).to_sql('tx', con, index=False)
    return [dict(type='file', path=str(src)), dict(type='file', path=str(tmp/'late.csv')), dict(type='sql', url=f"sqlite:///{tmp/'tx.sqlite'}", table='tx')]

def raw_rows(raw:Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(raw/m['file']) for m in json.loads((raw/'manifest.json').read_text())]).sort_values('id', ignore_index=True)

def test_out_of_core_collect_equals_in_memory(tmp_path):
    srcs = sources(tmp_path)
    p = params(tmp_path, srcs)
    assert not use_out_of_core_collect(p) and use_out_of_core_collect(p | dict(prepare=dict(memory_budget_mb=0.01)))   # auto: by the file sources' bytes
    mem = run_collect(params(tmp_path, srcs, out_of_core=False), tmp_path/'mem')
    ooc = run_collect(params(tmp_path, srcs, out_of_core='auto', memory_budget_mb=0.05), tmp_path/'ooc')    # auto: the sources exceed the budget
    manifest = json.loads((tmp_path/'ooc'/'manifest.json').read_text())
    assert manifest == json.loads((tmp_path/'mem'/'manifest.json').read_text())
    assert [m['name'] for m in manifest] == ['file_tx1', 'file_tx2', 'file_tx3', 'file_late', 'sql_tx']   # tx0 (days 0-1): before the window
    # written a bounded number of rows at a time (here about 1000): several row groups a batch (the in-memory collect writes one)
    groups = [pq.ParquetFile(tmp_path/'ooc'/m['file']).metadata for m in manifest]
    assert [md.num_row_groups > 1 for md in groups] == [False, True, True, True, True]
    assert max(md.row_group(i).num_rows for md in groups for i in range(md.num_row_groups)) < 2000
    got, want = raw_rows(tmp_path/'ooc'), raw_rows(tmp_path/'mem')
    pd.testing.assert_frame_equal(got, want)
    assert got['n'].dtype == 'float64' and got['amount'].dtype == 'float64' and got['y'].dtype == 'int64'
    # the days window, per source: the 5 calendar days up to its latest time (the folder's 2026-01-08), as in memory;
    # tx1 (days 2-3) in part
    first = pd.to_datetime(got['ts']).min()
    assert first.normalize() == pd.Timestamp('2026-01-04') and pd.to_datetime(got['ts']).max().normalize() == pd.Timestamp('2026-01-10')
    assert 0 < manifest[0]['rows'] < 1500
    assert len(got) < 1500 * 4 + 3000 + 2500 - 1500
    pd.testing.assert_frame_equal(ooc[['batch', 'source', 'rows', 'columns']], mem[['batch', 'source', 'rows', 'columns']])
    assert np.allclose(ooc['target_mean'], mem['target_mean'])
    # prepare reads the out-of-core raw folder in both modes, with the same result as from the in-memory one
    for mode in (False, True):
        a = run_prepare(params(tmp_path, srcs, out_of_core=mode, memory_budget_mb=0.05), tmp_path/'ooc', tmp_path/f'p{mode}', tmp_path/f'q{mode}.json')
        b = run_prepare(params(tmp_path, srcs, out_of_core=mode, memory_budget_mb=0.05), tmp_path/'mem', tmp_path/f'm{mode}', tmp_path/f'r{mode}.json')
        assert json.loads((tmp_path/f'q{mode}.json').read_text()) == json.loads((tmp_path/f'r{mode}.json').read_text())

def test_csv_streamed_with_the_strict_number_rules(tmp_path):
    from mlops_nb.distributed import _CsvSource
    n = 6000
    df = pd.DataFrame({'a': [str(i) for i in range(n)], 'b': [f'{i}.5' for i in range(n)], 'c': [str(i) for i in range(n)],
                       'd': ['1e3'] * n, 'e': [''] * n, 'f': [' 7 '] * n})
    df.loc[n - 1, 'c'] = 'n/a'           # one text value in the last block: the whole column stays text
    df.loc[n - 2, 'a'] = ''              # a gap: numbers, but float64
    df.loc[3, 'd'] = 'inf'               # not a number written as one: text
    f = tmp_path/'t.csv'; df.to_csv(f, index=False)
    src = _CsvSource(f, 2 * 2**20)       # a 64 KB block: several blocks
    assert src.scan(None)[0] == n and src.kind == dict(a='float', b='float', c='text', d='text', e='text', f='int')
    got = pd.concat(list(src.frames()), ignore_index=True)
    assert len(list(src.frames())) > 1
    pd.testing.assert_frame_equal(got, read_table_file(f))

def test_out_of_core_collect_refuses_a_broken_file_and_keeps_raw(tmp_path):
    srcs = sources(tmp_path)
    p = params(tmp_path, srcs, out_of_core=True, memory_budget_mb=0.05)
    run_collect(p, tmp_path/'data'/'raw')
    before = {f.name: f.read_bytes() for f in (tmp_path/'data'/'raw').iterdir()}
    # a column of the wrong type in one file: the window is rejected, the batch goes to quarantine, data/raw is kept
    bad = day_frame(4, 1500, 2, 3000)
    bad['amount'] = bad['amount'].astype(str).where(np.arange(1500) % 3 > 0, 'oops')
    bad.to_parquet(tmp_path/'src'/'tx2.parquet', row_group_size=400)
    with pytest.raises(DataError) as e: run_collect(p, tmp_path/'data'/'raw', tmp_path/'q.json')
    assert f"{tmp_path/'src'/'tx2.parquet'}: column 'amount' breaks rule 'wrong_dtype'" in str(e.value) and "'oops' (500)" in str(e.value)
    assert {f.name: f.read_bytes() for f in (tmp_path/'data'/'raw').iterdir()} == before
    q = json.loads((tmp_path/'q.json').read_text())
    assert not q['ok'] and q['stage'] == 'collect' and [b['source'] for b in q['per_batch'] if not b['ok']] == [str(tmp_path/'src'/'tx2.parquet')]
    quarantined = tmp_path/'data'/'quarantine'/'file_tx2.parquet'
    assert pq.ParquetFile(quarantined).num_row_groups > 1 and len(pd.read_parquet(quarantined)) == 1500   # the batch as collect wrote it
    # an unreadable file: an error naming it, data/raw kept, no temporary folder left
    (tmp_path/'src'/'tx2.parquet').write_bytes(b'PAR1 not a parquet file PAR1')
    with pytest.raises(DataError, match=r"tx2\.parquet.*unreadable_file"): run_collect(p, tmp_path/'data'/'raw')
    assert {f.name: f.read_bytes() for f in (tmp_path/'data'/'raw').iterdir()} == before
    assert sorted(f.name for f in (tmp_path/'data').iterdir()) == ['quarantine', 'raw']
    with pytest.raises(Exception, match='null_tokens: not supported by the out-of-core collect'):
        run_collect(params(tmp_path, srcs, out_of_core=True, null_tokens=['NA']), tmp_path/'data'/'raw')

# Under a cap: RLIMIT_DATA at the warm process's size plus HEADROOM, as tests/test_prepare_out_of_core.py does (see
# tests/test_out_of_core.py for why this limit and these environment settings). The file source is several times the
# headroom; reading its files whole (today's collect, and the control below) fails under the cap.
HEADROOM = 64 << 20
CAPPED = textwrap.dedent('''
    import json, re, resource, sys
    from pathlib import Path
    import pandas as pd, pyarrow as pa
    from mlops_nb.data import file_batches
    from mlops_nb.steps import run_collect, run_prepare
    pa.set_io_thread_count(1); pa.set_cpu_count(1)
    p, small, work, headroom = json.loads(sys.argv[1]), *sys.argv[2:]
    big = p['collect']['sources'][0]['path']
    warm = json.loads(json.dumps(p)); warm['collect']['sources'][0]['path'] = small
    run_collect(warm, work + '/warm/raw'); run_prepare(warm, work + '/warm/raw', work + '/warm/prep', work + '/warm/q.json')   # warm up
    vm = lambda k: int(re.search(k + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024
    cap = vm('VmData') + int(headroom)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    summary = run_collect(p, work + '/data/raw')
    res = run_prepare(p, work + '/data/raw', work + '/data/prepared', work + '/q.json')
    out = dict(cap=cap, collected=int(summary['rows'].sum()), rows={k: v['rows'] for k, v in res.summary.items()})
    try: file_batches(big); out['in_memory'] = 'loaded'   # the control: the files read whole, as the in-memory collect does
    except Exception as e: out['in_memory'] = str(e)      # read_table_file says: unreadable_file (ArrowMemoryError: ...)
    print(json.dumps(out))
''')

def big(folder:Path, files:int, rows:int, cols:int) -> Path:
    "Files of two days each, in row groups of 10 000 rows; ids unique, in no order."
    folder.mkdir(parents=True)
    ids = np.random.default_rng(99).permutation(files * rows)
    for k in range(files):
        rng = np.random.default_rng(k)
        df = pd.DataFrame({'id': ids[k * rows:(k + 1) * rows], 'ts': pd.Timestamp('2026-01-01') + pd.to_timedelta(2 * k * 86400 + np.sort(rng.integers(0, 2 * 86400, rows)), 's'),
                           'amount': rng.gamma(2, 30, rows).round(0), **{f'x{j}': rng.normal(0, 1, rows).round(1) for j in range(cols)},
                           'y': (rng.random(rows) < 0.05).astype('int64')})
        df.to_parquet(folder/f'part{k}.parquet', row_group_size=10_000)
    return folder

def test_out_of_core_collect_then_prepare_under_a_memory_cap(tmp_path):
    big(tmp_path/'big', 4, 80_000, 80); big(tmp_path/'small', 2, 3000, 80)      # 320k rows x 83 columns: ~210 MB as frames
    size = int(pd.read_parquet(tmp_path/'big').memory_usage(deep=True).sum())
    assert size > 3 * HEADROOM
    p = params(tmp_path, [dict(type='file', path=str(tmp_path/'big'))], days=6, out_of_core=True, memory_budget_mb=24)
    p['prepare']['features'] = dict(log=['amount'])
    env = dict(os.environ, ARROW_DEFAULT_MEMORY_POOL='system', MALLOC_ARENA_MAX='1', MALLOC_MMAP_THRESHOLD_='131072',
               OPENBLAS_NUM_THREADS='1', OMP_NUM_THREADS='1')
    script = tmp_path/'capped.py'; script.write_text(CAPPED)
    r = subprocess.run([sys.executable, str(script), json.dumps(p), str(tmp_path/'small'), str(tmp_path), str(HEADROOM)],
                       capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert 'MemoryError' in res['in_memory'], f"the cap must be too small for the in-memory collect: {res['in_memory']}"
    # the window: days 2-7 of 0-7, the first file out; the same rows as the in-memory collect of the same files, without a cap
    assert res['collected'] == sum(res['rows'].values()) == 3 * 80_000
    mem = run_collect(p | dict(prepare=p['prepare'] | dict(out_of_core=False)), tmp_path/'mem')
    assert json.loads((tmp_path/'data'/'raw'/'manifest.json').read_text()) == json.loads((tmp_path/'mem'/'manifest.json').read_text())
    assert mem['rows'].sum() == res['collected']
