"""The prepare stage out of core (`prepare.out_of_core`): the same quality report, features and splits as the in-memory
prepare, on tricky data (duplicates, repeated ids, missing targets, infinities, gaps in one batch's integer column)."""
import json, os, subprocess, sys, textwrap
from pathlib import Path

import numpy as np, pandas as pd, pytest

from mlops_nb.core import DataError
from mlops_nb.data import Batch, write_batches
from mlops_nb.steps import run_prepare, use_out_of_core

def params(tmp:Path, ids=True, **prep) -> dict:
    return dict(seed=0, task=dict(type='classification', target='y', time_column='ts', id_columns=['id'] if ids else []),
                prepare=dict(features=dict(time_parts=['hour'], log=['amount'], ratios={'amount_per_item': ['amount', 'n']}),
                             split=dict(valid_fraction=0.2, test_fraction=0.2)) | prep,
                deploy=dict(registry=str(tmp/'no-registry')))

def frame(n:int, seed:int, nulls:bool=False, inf:bool=True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({'id': rng.integers(0, 3 * n, n), 'ts': pd.Timestamp('2026-01-01') + pd.to_timedelta(rng.integers(0, 500, n) * 600, 's'),
                       'amount': rng.gamma(2, 30, n).round(1), 'n': rng.integers(0, 6, n), 'channel': rng.choice(['web', 'pos', None], n),
                       'flag': rng.random(n) < 0.3, 'y': (rng.random(n) < 0.1).astype('float64')})
    if inf: df.loc[df.index[::97], 'amount'] = np.inf                                 # clean: infinities become missing
    df.loc[df.index[::53], 'y'] = np.nan                                       # ... rows without a target are dropped
    if nulls: df['n'] = df['n'].astype('float64').where(rng.random(n) > 0.05)  # an integer column with gaps in one batch only
    return pd.concat([df, df.iloc[:40]], ignore_index=True)                    # ... and full-row duplicates

def raw(tmp:Path, bad:bool=False) -> Path:
    frames = [frame(2500, 1, inf=not bad), frame(2000, 2, nulls=True, inf=not bad), frame(3000, 3, inf=not bad)]
    if bad: frames[1]['amount'] = frames[1]['amount'].astype(str).where(np.arange(len(frames[1])) % 3 > 0, 'oops')
    return write_batches([Batch(f'day{i}', f'src{i}', f) for i, f in enumerate(frames)], tmp/'raw')

def both(tmp:Path, p:dict):
    mem = run_prepare(p | dict(prepare=p['prepare'] | dict(out_of_core=False)), tmp/'raw', tmp/'mem', tmp/'mem.json')
    ooc = run_prepare(p | dict(prepare=p['prepare'] | dict(out_of_core=True, memory_budget_mb=0.05)), tmp/'raw', tmp/'ooc', tmp/'ooc.json')
    return mem, ooc

@pytest.mark.parametrize('ids', [True, False])
def test_out_of_core_prepare_equals_in_memory(tmp_path, ids):
    raw(tmp_path)
    mem, ooc = both(tmp_path, params(tmp_path, ids))
    assert ooc.splits == {} and len(list((tmp_path/'ooc'/'train.parquet').iterdir())) > 1   # written part by part
    assert json.loads((tmp_path/'ooc.json').read_text()) == json.loads((tmp_path/'mem.json').read_text())
    for f in ('features.json', 'schema.json'): assert (tmp_path/'ooc'/f).read_text() == (tmp_path/'mem'/f).read_text()
    for name in ('train', 'valid', 'test'): pd.testing.assert_frame_equal(pd.read_parquet(tmp_path/'ooc'/f'{name}.parquet'), mem.splits[name])
    assert ooc.summary == mem.summary and (ooc.numeric, ooc.categorical) == (mem.numeric, mem.categorical)
    q = mem.quality
    assert q['rows'] == 7620 and sum(v['rows'] for v in mem.summary.values()) < 7500   # duplicates, repeated ids, no target dropped

def test_out_of_core_prepare_rejects_as_in_memory(tmp_path):
    raw(tmp_path, bad=True)
    errs = []
    for mode, out in ((False, 'mem'), (True, 'ooc')):
        p = params(tmp_path, out_of_core=mode, memory_budget_mb=0.05)
        with pytest.raises(DataError) as e: run_prepare(p, tmp_path/'raw', tmp_path/out, tmp_path/f'{out}.json')
        errs.append(str(e.value)); assert not (tmp_path/out).exists()
    assert errs[0] == errs[1] and "column 'amount' breaks rule 'wrong_dtype'" in errs[0]
    assert json.loads((tmp_path/'ooc.json').read_text()) == json.loads((tmp_path/'mem.json').read_text())
    assert sorted(p.name for p in (tmp_path/'quarantine').iterdir()) == ['day1.json', 'day1.parquet']

def test_auto_and_refusals(tmp_path):
    raw(tmp_path)
    assert not use_out_of_core({}, tmp_path/'raw') and use_out_of_core(dict(memory_budget_mb=0.01), tmp_path/'raw')
    with pytest.raises(Exception, match='null_tokens: not supported by the out-of-core'):
        run_prepare(params(tmp_path, null_tokens=['NA'], out_of_core=True), tmp_path/'raw', tmp_path/'o', tmp_path/'q.json')
    with pytest.raises(Exception, match="prepare.out_of_core: expected true, false or auto, got 'yes'"):
        use_out_of_core(dict(out_of_core='yes'), tmp_path/'raw')

# Under a cap: RLIMIT_DATA at the warm process's size plus HEADROOM (see test_out_of_core.py for why this limit and
# these environment settings; large arrays are mmapped so freed memory goes back). The data is several times the
# headroom; reading it in memory fails under the cap.
HEADROOM = 64 << 20
CAPPED = textwrap.dedent('''
    import json, re, resource, sys
    from pathlib import Path
    import pandas as pd, pyarrow as pa
    from mlops_nb.steps import run_prepare
    pa.set_io_thread_count(1); pa.set_cpu_count(1)
    p, raw, small, out, headroom = json.loads(sys.argv[1]), *sys.argv[2:]
    run_prepare(p, small, out + '.warm', out + '.warm.json')                 # warm up: imports, pools, arenas
    vm = lambda k: int(re.search(k + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024
    cap = vm('VmData') + int(headroom)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    res = run_prepare(p, raw, out, out + '.json')
    out = dict(cap=cap, rows={k: v['rows'] for k, v in res.summary.items()})
    try: [pd.read_parquet(f) for f in sorted(Path(raw).glob('*.parquet'))]; out['in_memory'] = 'loaded'   # the control
    except MemoryError as e: out['in_memory'] = type(e).__name__
    print(json.dumps(out))
''')

def big(folder:Path, batches:int, rows:int, cols:int) -> Path:
    "Day batches in time order; 1000 ids repeat; floats with few distinct values."
    out, ids = [], np.random.default_rng(99).permutation(batches * rows) % (batches * rows - 1000)
    for b in range(batches):
        rng = np.random.default_rng(b)
        df = pd.DataFrame({'id': ids[b * rows:(b + 1) * rows],
                           'ts': pd.Timestamp('2026-01-01') + pd.to_timedelta(b * 86400 + np.sort(rng.integers(0, 86400, rows)), 's'),
                           'amount': rng.gamma(2, 30, rows).round(0), 'n': rng.integers(1, 6, rows),
                           **{f'x{j}': rng.normal(0, 1, rows).round(1) for j in range(cols)}, 'y': rng.random(rows) < 0.05})
        out.append(Batch(f'b{b}', f'src{b}', df))
    return write_batches(out, folder)

def test_out_of_core_prepare_under_a_memory_cap(tmp_path):
    big(tmp_path/'raw', 3, 100_000, 80); big(tmp_path/'small', 2, 3000, 80)      # 300k rows x 85 columns: ~200 MB as a frame
    size = int(pd.concat([pd.read_parquet(f) for f in sorted((tmp_path/'raw').glob('*.parquet'))]).memory_usage(deep=True).sum())
    assert size > 3 * HEADROOM
    p = params(tmp_path, out_of_core=True, memory_budget_mb=24)
    p['prepare']['features'] = dict(log=['amount'])
    env = dict(os.environ, ARROW_DEFAULT_MEMORY_POOL='system', MALLOC_ARENA_MAX='1', MALLOC_MMAP_THRESHOLD_='131072',
               OPENBLAS_NUM_THREADS='1', OMP_NUM_THREADS='1')
    script = tmp_path/'capped.py'; script.write_text(CAPPED)
    r = subprocess.run([sys.executable, str(script), json.dumps(p), str(tmp_path/'raw'), str(tmp_path/'small'), str(tmp_path/'ooc'), str(HEADROOM)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res['in_memory'] in ('MemoryError', 'ArrowMemoryError'), 'the cap must be too small for the in-memory path'
    # the in-memory prepare of the same data, here without a cap: the same quality report
    mem = run_prepare(p | dict(prepare=p['prepare'] | dict(out_of_core=False)), tmp_path/'raw', tmp_path/'mem', tmp_path/'mem.json')
    assert json.loads((tmp_path/'ooc.json').read_text()) == json.loads((tmp_path/'mem.json').read_text())
    assert res['rows'] == {k: len(v) for k, v in mem.splits.items()} and sum(res['rows'].values()) == 300_000 - 1000
