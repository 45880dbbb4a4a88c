"""Out-of-core drift and data quality over Parquet: equal to the in-memory monitor where exact, within the stated
error bounds where sketched, identical at 1, 2 and 4 workers, with a peak memory growth far below the data size."""
import json, os, subprocess, sys, textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq, pytest

from mlops_nb import distributed as D, monitor as M

def make(folder:Path, n_files:int, rows:int, shift:float, seed:int, n_num:int=4) -> Path:
    "Parquet files of `n_files` x `rows`: x0 shifted by `shift`, x1 with nulls, k discrete-ish, cat (+ 'new' when shifted)."
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_files):
        df = pd.DataFrame({f'x{j}': rng.normal(shift if j == 0 else 0, 1 + (j == 2) * shift, rows) for j in range(n_num)})
        df['x1'] = df['x1'].where(rng.random(rows) > 0.02 + shift / 5)
        df['k'] = rng.integers(0, 20, rows) * 1.5
        df['cat'] = rng.choice(['a', 'b', 'c'] + (['new'] if shift else []), rows)
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), folder/f'part-{i:03d}.parquet', row_group_size=max(rows // 2, 1))
    return folder

@pytest.fixture(scope='module')
def windows(tmp_path_factory):
    d = tmp_path_factory.mktemp('win')
    return make(d/'ref', 3, 20_000, 0.0, 1), make(d/'cur', 2, 20_000, 0.3, 2)

def check_against_memory(out:dict, ref:pd.DataFrame, cur:pd.DataFrame):
    "The out-of-core result against the in-memory monitor on the same rows."
    prof = M.Profile.of(ref)
    qm, bm = M.quality_drift(prof, cur)
    pd.testing.assert_frame_equal(out['quality'], qm)                      # exact: counts, null rates, ranges, categories
    assert out['breaches'] == bm
    mem = M.data_drift(prof, cur).table.set_index('column')
    tab = out['drift'].table.set_index('column')
    assert tab['method'].tolist() == mem['method'].tolist() and tab['drift'].tolist() == mem['drift'].tolist()
    for c, row in tab.iterrows():
        m = mem.loc[c]
        if row['kind'] == 'cat':
            for k in ('chi2_stat', 'chi2_pvalue', 'jensenshannon'): assert row[k] == pytest.approx(m[k], rel=1e-12, abs=1e-15)
            assert row['new_categories'] == m['new_categories']
            continue
        assert abs(row['wasserstein_norm'] - m['wasserstein_norm']) <= row['wasserstein_error'] + 1e-12
        r = np.sort(ref[c].dropna().to_numpy()); x = np.sort(cur[c].dropna().to_numpy())
        d = M.ks_statistic(r, x)
        assert row['ks_stat'] - 1e-12 <= d <= row['ks_stat'] + row['ks_error'] + 1e-12
        same_edges = replace(prof.columns[c], edges=row['psi_edges'])          # PSI on the same fixed edges: exact
        assert row['psi'] == pytest.approx(M.numeric_scores(same_edges, x, ks=False)['psi'], rel=1e-12)
    assert out['drift'].summary() == M.data_drift(prof, cur).summary()

def test_parquet_drift_matches_in_memory(windows):
    ref_dir, cur_dir = windows
    out = D.parquet_drift(ref_dir, cur_dir)
    ref, cur = pd.read_parquet(ref_dir), pd.read_parquet(cur_dir)
    check_against_memory(out, ref, cur)
    s = out['drift'].summary()
    assert 'x0' in s['drifted'] and 'cat' in s['drifted'] and 'x3' not in s['drifted']   # the injected drift is found
    assert [b['rule'] for b in out['breaches']] == ['null_rate', 'new_categories']

def wide(folder:Path, cols:int, shift:float, seed:int) -> Path:
    folder.mkdir(parents=True); rng = np.random.default_rng(seed)
    for i in range(2):
        pq.write_table(pa.table({f'f{j:03d}': rng.normal(shift * (j % 10 == 0), 1, 2000) for j in range(cols)}), folder/f'p{i}.parquet')
    return folder

def test_identical_at_1_2_4_workers(windows, tmp_path):
    distributed = pytest.importorskip('distributed')
    local = D.parquet_drift(*windows, column_chunk=2)
    # 120 columns: a histogram grid of 2 MB, which must reach the worker processes whole (it once failed there)
    wide_windows = wide(tmp_path/'wref', 120, 0.0, 1), wide(tmp_path/'wcur', 120, 0.5, 2)
    wide_local = D.parquet_drift(*wide_windows)
    for n in (1, 2, 4):
        # 2 worker processes: everything a task needs is pickled and shipped, as on a real cluster
        with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=(n == 2), dashboard_address=':0') as c, \
             distributed.Client(c) as client:
            out = D.parquet_drift(*windows, column_chunk=2, client=client)
            if n == 2:
                w = D.parquet_drift(*wide_windows, client=client)
                pd.testing.assert_frame_equal(w['drift'].table.drop(columns='psi_edges'), wide_local['drift'].table.drop(columns='psi_edges'), check_exact=True)
                assert sorted(w['drift'].summary()['drifted']) == [f'f{j:03d}' for j in range(0, 120, 10)]
        pd.testing.assert_frame_equal(out['drift'].table.drop(columns='psi_edges'), local['drift'].table.drop(columns='psi_edges'), check_exact=True)
        pd.testing.assert_frame_equal(out['quality'], local['quality'], check_exact=True)

def test_bad_input_names_the_file(tmp_path, windows):
    with pytest.raises(D.MlopsError, match='no such Parquet file or folder'): D.parquet_drift(tmp_path/'nope', windows[1])
    with pytest.raises(D.MlopsError, match=r"column\(s\) \['zz'\] not in the Parquet schema"): D.parquet_drift(*windows, columns=['zz'])

PEAK = textwrap.dedent('''
    import json, resource, sys
    from mlops_nb import distributed as D
    D.parquet_drift(sys.argv[2], sys.argv[3])           # warm up: imports, thread pools, allocator arenas
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = D.parquet_drift(sys.argv[1], sys.argv[4], column_chunk=2)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(growth=after - before, drifted=out['drift'].summary()['drifted'],
                          rows=[out['drift'].rows_reference, out['drift'].rows_current])))
''')

def test_out_of_core_peak_memory_is_a_fraction_of_the_data(tmp_path, windows):
    big_ref = make(tmp_path/'big_ref', 6, 200_000, 0.0, 11)      # 1.2M rows x 7 columns: ~60 MB as a frame
    big_cur = make(tmp_path/'big_cur', 4, 200_000, 0.3, 12)      # 0.8M rows
    frame_bytes = int(pd.read_parquet(big_ref).memory_usage(deep=True).sum())
    script = tmp_path/'peak.py'; script.write_text(PEAK)
    p = subprocess.run([sys.executable, str(script), str(big_ref), *map(str, windows), str(big_cur)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res['rows'] == [1_200_000, 800_000]
    # the peak resident memory grows by far less than one window would take in memory
    assert res['growth'] < frame_bytes / 4, (res['growth'], frame_bytes)
    # the same verdicts as the in-memory monitor on a sample that fits: one file of each window
    sample = D.parquet_drift(big_ref/'part-000.parquet', big_cur/'part-000.parquet')
    check_against_memory(sample, pd.read_parquet(big_ref/'part-000.parquet'), pd.read_parquet(big_cur/'part-000.parquet'))
    assert res['drifted'] == sample['drift'].summary()['drifted']

def test_grid_binning_equals_searchsorted():
    rng = np.random.default_rng(5)
    for _ in range(20):
        a = rng.normal() * 10; b = a + rng.uniform(1e-6, 50)
        e = np.linspace(a, b, int(rng.integers(2, 4000)))
        v = np.concatenate([rng.uniform(a, b, 20000), e, np.nextafter(e, -np.inf), np.nextafter(e, np.inf)]).clip(a, b)
        np.testing.assert_array_equal(D._bin_index(v, e), np.searchsorted(e[1:-1], v, side='left'))
