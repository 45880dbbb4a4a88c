"""Out-of-core validation and drift over Parquet: `parquet_validate` equals `data.validate`, and both out-of-core passes
run under a hard memory cap several times smaller than the data, with the verdicts of the in-memory code on a sample."""
import json, os, subprocess, sys, textwrap
from pathlib import Path

import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq, pytest

from mlops_nb import data as Dt, distributed as D, monitor as M
from test_distributed_drift import check_against_memory

def batch(n:int, seed:int, shift:float=0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({'amount': rng.gamma(2, 30 * (1 + 4 * shift), n), 'n_items': rng.integers(1, 9, n).astype('float64'),
                       'channel': rng.choice(['web', 'pos', 'app'][:2 + (shift > 0)], n, p=[.5, .5] if not shift else [.45, .45, .1]),
                       'is_new': rng.random(n) < 0.3, 'ts': pd.Timestamp('2026-01-01') + pd.to_timedelta(rng.integers(0, 86400 * 30, n), 's')})
    df['amount'] = df['amount'].where(rng.random(n) > 0.01 + shift / 4)
    if shift: df.loc[df.index[:7], 'n_items'] = 2.5                          # fractional values in an integer column
    return df

def test_parquet_validate_equals_validate(tmp_path):
    schema = Dt.Schema.infer(batch(4000, 0).astype({'n_items': 'int64'}), time_column='ts')
    assert schema.columns['n_items'].kind == 'integer'
    d = tmp_path/'batch'; d.mkdir()
    for i in range(3): batch(3000, 10 + i, shift=0.6 * (i == 2)).to_parquet(d/f'part-{i}.parquet', row_group_size=700)
    pd.DataFrame({'amount': ['12.5', 'n/a', 'x', 'n/a'] * 50}).to_parquet(tmp_path/'text.parquet')   # numbers stored as text
    full = pd.read_parquet(d)
    for rules in (None, dict(max_unseen_category_rate=0.2, range_margin=0.0)):
        for workers in (None, 2):
            if workers: pytest.importorskip('distributed')
            if workers:
                import distributed
                with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=':0') as c, distributed.Client(c) as cl:
                    got = D.parquet_validate(d, schema, 'batch', rules, client=cl, column_chunk=2)
            else: got = D.parquet_validate(d, schema, 'batch', rules)
            want = Dt.validate(full, schema, 'batch', rules)
            assert got.rows == want.rows == 9000 and got.violations == want.violations
    assert {(v['column'], v['rule']) for v in want.violations} >= {('n_items', 'wrong_dtype'), ('amount', 'too_many_nulls'), ('amount', 'out_of_range')}
    text = D.parquet_validate(tmp_path/'text.parquet', schema, 'text')
    assert text.violations == Dt.validate(pd.read_parquet(tmp_path/'text.parquet'), schema, 'text').violations
    assert text.violations[0]['rule'] == 'wrong_dtype' and "'n/a' (100)" in text.violations[0]['detail']
    with pytest.raises(D.MlopsError, match='no such Parquet file or folder'): D.parquet_validate(tmp_path/'nope', schema)
    with pytest.raises(D.MlopsError, match=r'unknown validation rules: max_nul'): D.parquet_validate(d, schema, rules={'max_nul': 1})

# The cap: RLIMIT_DATA (private writable memory: heap, anonymous mmaps), set once the process is warm, at its current
# size plus HEADROOM. Not RLIMIT_AS: address space counts what is reserved, not used — Arrow's mimalloc/jemalloc pool
# alone reserves about 1 GB of address space it never touches, and every thread's stack counts — so an AS cap either
# sits far above the real use or fails at random in thread creation. Arrow is pointed at the system allocator (whose
# allocations RLIMIT_DATA sees), glibc at one arena (each thread's own arena reserves 64 MB heaps), and Arrow's and
# BLAS's pools at one thread started during the warm-up (a thread's 8 MB stack counts too, and a thread started
# lazily under the cap fails to launch): so what is measured is what the code allocates, and the test cannot hang.
HEADROOM = 32 << 20
ROW_GROUP = 25_000
CAPPED = textwrap.dedent('''
    import json, re, resource, sys
    import pandas as pd, pyarrow as pa
    from mlops_nb import data as Dt, distributed as D
    pa.set_io_thread_count(1); pa.set_cpu_count(1)     # Arrow's pools start threads lazily: keep them to the warm-up's
    ref, cur, small_ref, small_cur, schema_path, headroom = sys.argv[1:]
    schema = Dt.Schema.load(schema_path)
    D.parquet_drift(small_ref, small_cur); D.parquet_validate(small_cur, schema)      # warm up: imports, pools, arenas
    vm = lambda k: int(re.search(k + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024
    cap = vm('VmData') + int(headroom)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    out = D.parquet_drift(ref, cur)
    rep = D.parquet_validate(cur, schema, 'cur')
    res = dict(cap=cap, drifted=out['drift'].summary()['drifted'], rows=[out['drift'].rows_reference, out['drift'].rows_current],
               breaches=sorted((b['column'], b['rule']) for b in out['breaches']),
               violations=sorted((v['column'], v['rule']) for v in rep.violations), rows_validated=rep.rows)
    try: pd.read_parquet(ref); res['in_memory'] = 'loaded'                              # the control: the cap bites
    except MemoryError as e: res['in_memory'] = type(e).__name__
    print(json.dumps(res))
''')

def windows(folder:Path, files:int, rows:int, shift:float, seed:int, cols:int=8) -> Path:
    "`files` Parquet files of `rows` x `cols` floats (x0, x1 shifted by `shift`) and a category ('new' when shifted)."
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    cats = pa.array(['a', 'b', 'c', 'new'])
    for i in range(files):
        t = {f'x{j}': rng.normal(shift if j < 2 else 0.0, 1.0, rows) for j in range(cols)}
        t['cat'] = pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, 3 + (shift > 0), rows, dtype='int8')), cats)
        pq.write_table(pa.table(t), folder/f'part-{i:02d}.parquet', row_group_size=ROW_GROUP)
    return folder

def test_out_of_core_under_a_memory_cap_matches_in_memory_on_a_sample(tmp_path):
    ref = windows(tmp_path/'ref', 6, 400_000, 0.0, 1)            # 2.4M rows x 9 columns: ~160 MB as a frame
    cur = windows(tmp_path/'cur', 4, 400_000, 0.5, 2)            # 1.6M rows: ~100 MB
    sample_ref, sample_cur = pd.read_parquet(ref/'part-00.parquet'), pd.read_parquet(cur/'part-00.parquet')
    frame_bytes = int(pd.read_parquet(ref).memory_usage(deep=True).sum())
    assert frame_bytes > 4 * HEADROOM
    schema = Dt.Schema.infer(sample_ref); schema.save(tmp_path/'schema.json')
    small = tmp_path/'small'; small.mkdir(); sample_cur.iloc[:2000].to_parquet(small/'s.parquet')
    script = tmp_path/'capped.py'; script.write_text(CAPPED)
    env = dict(os.environ, ARROW_DEFAULT_MEMORY_POOL='system', MALLOC_ARENA_MAX='1', OPENBLAS_NUM_THREADS='1', OMP_NUM_THREADS='1')
    p = subprocess.run([sys.executable, str(script), str(ref), str(cur), str(small/'s.parquet'), str(small/'s.parquet'),
                        str(tmp_path/'schema.json'), str(HEADROOM)], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res['in_memory'] in ('MemoryError', 'ArrowMemoryError'), "the cap must be too small for the in-memory path"
    assert res['rows'] == [2_400_000, 1_600_000] and res['rows_validated'] == 1_600_000
    # the verdicts of the in-memory code on a sample that fits (one file of each window)
    prof = M.Profile.of(sample_ref)
    mem = M.data_drift(prof, sample_cur).summary()
    assert sorted(res['drifted']) == sorted(mem['drifted']) == ['cat', 'x0', 'x1']
    assert res['breaches'] == sorted([b['column'], b['rule']] for b in M.quality_drift(prof, sample_cur)[1])
    assert res['violations'] == sorted([v['column'], v['rule']] for v in Dt.validate(sample_cur, schema, 'cur').violations)
    assert ['cat', 'unseen_categories'] in res['violations']
    # and on the sample the out-of-core numbers are the in-memory ones (exact, or within the stated bounds)
    check_against_memory(D.parquet_drift(ref/'part-00.parquet', cur/'part-00.parquet'), sample_ref, sample_cur)
