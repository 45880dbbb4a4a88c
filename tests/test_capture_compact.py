"""`mlops-nb captures compact`: each closed day of the capture store becomes one file; reads are row-for-row the same,
a reader during compaction sees every row exactly once, and a server writing today's parts meanwhile loses nothing."""
import json, os, subprocess, sys, threading, time
from pathlib import Path

import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq

from mlops_nb.capture import CaptureWriter, compact_captures, compact_day, read_captures, write_part

FEATS = dict(amount='numeric', country='categorical')
DAY0 = 86400 * (int(time.time() // 86400) - 5)          # five days ago, UTC midnight

def add(w, i:int, ts:float):
    w.add(f'r{i}', ts, 'v0001', 1.0, dict(amount=np.array([float(i)]), country=['FR' if i % 2 else None]), np.array([i / 1000]), np.array([i % 2]))

def store(root:Path, days:int=3, per_day:int=40) -> Path:
    with CaptureWriter(root, FEATS, flush_rows=5, flush_seconds=60) as w:
        for i in range(days * per_day):
            add(w, i, DAY0 + 86400 * (i // per_day) + i)
            if i % 5 == 4: w.flush()
        ids = [f'r{i}' for i in range(0, days * per_day, 3)]
        w.add_labels(ids, [1.0] * len(ids), ts=DAY0 + 60)
    return root

def test_compaction_keeps_every_row_and_leaves_one_file_a_day(tmp_path):
    root = store(tmp_path/'cap')
    before = read_captures(root)
    n_parts = len(list((root/'predictions').rglob('part-*.parquet')))
    assert n_parts == 24
    p = subprocess.run([str(Path(sys.executable).with_name('mlops-nb')), 'captures', 'compact', '--capture-dir', str(root)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout)
    assert res['days'] == 3 and res['rows'] == 120 and res['parts'] == 24, res   # the label parts were one per day
    for d in (root/'predictions').glob('date=*'): assert len(list(d.glob('part-*.parquet'))) == 1
    assert not [p for p in root.rglob('.*')]                                     # nothing left behind
    pd.testing.assert_frame_equal(read_captures(root), before, check_exact=True)
    assert compact_captures(root, '0') == []                                     # again: nothing to do

def test_recent_days_are_left_alone(tmp_path):
    root = store(tmp_path/'cap', days=2)
    now = DAY0 + 86400 + 3600                      # one hour into the second day
    done = compact_captures(root, '1d', now=now)
    assert [Path(d['day']).name for d in done] == []             # the first day ended 1 h ago: not 1 d
    done = compact_captures(root, '30m', now=now)
    assert [Path(d['day']).name for d in done] == [min(d.name for d in (root/'predictions').glob('date=*'))]   # the first day only

def test_a_late_part_written_during_compaction_is_kept(tmp_path, monkeypatch):
    "A part a late writer puts into the old folder after its parts were listed is moved into the compacted folder."
    import mlops_nb.capture as C
    root = store(tmp_path/'cap', days=1)
    day = next((root/'predictions').glob('date=*'))
    late = pq.read_table(next(day.glob('part-*.parquet'))).slice(0, 1)
    late = late.set_column(late.schema.get_field_index('request_id'), 'request_id', pa.array(['late-0']))   # a new request, not a retry
    real = C._exchange
    def exchange(a, b):                            # the late write lands just before the exchange
        write_part(day, late); real(a, b)
    monkeypatch.setattr(C, '_exchange', exchange)
    before = len(read_captures(root, with_labels=False))
    compact_day(day)
    assert len(read_captures(root, with_labels=False)) == before + 1 and len(list(day.glob('part-*.parquet'))) == 2

def test_readers_and_a_writer_during_compaction_lose_nothing(tmp_path):
    root = store(tmp_path/'cap', days=4, per_day=60)
    want = read_captures(root, with_labels=False)
    stop, seen, errors = threading.Event(), [], []
    def reader():                                  # every read sees each closed-day row exactly once
        while not stop.is_set():
            try:
                got = read_captures(root, end=pd.Timestamp(DAY0 + 4 * 86400, unit='s', tz='UTC'), with_labels=False)
                seen.append(len(got) == len(want) and sorted(got.request_id) == sorted(want.request_id))
            except Exception as e: errors.append(repr(e))
    written = []
    def writer():                                  # a server writing today's parts meanwhile
        with CaptureWriter(root, FEATS, flush_rows=3, flush_seconds=0.01) as w:
            i = 10_000
            while not stop.is_set(): add(w, i, time.time()); written.append(i); i += 1; time.sleep(0.001)
    threads = [threading.Thread(target=reader), threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads: t.start()
    try:
        time.sleep(0.3)
        done = compact_captures(root, '1d')
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads: t.join(30)
    assert len(done) == 4 and not errors, errors[:3]
    assert seen and all(seen), f'{seen.count(False)} of {len(seen)} reads saw a different set of rows'
    today = read_captures(root, start=pd.Timestamp(DAY0 + 5 * 86400, unit='s', tz='UTC'), with_labels=False)
    assert sorted(today.request_id) == sorted(f'r{i}' for i in written)       # the writer lost nothing
    pd.testing.assert_frame_equal(read_captures(root, end=pd.Timestamp(DAY0 + 4 * 86400, unit='s', tz='UTC'), with_labels=False), want)
