"""Partitioned batch scoring on a real 2-worker LocalCluster: the output equals single-process scoring (`predict_file`),
every row is captured, each worker loads the model once, the alias is resolved once, and a bad partition is named."""
import json, os, subprocess, sys, textwrap
from pathlib import Path

import numpy as np, pandas as pd, pytest

from mlops_nb import distributed as D
from mlops_nb.capture import read_captures
from mlops_nb.serve import LoadedModel, predict_file
from test_raw_record import lifecycle, skops_only_copy

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "A real lifecycle's registry (the champion is the whole prediction function: raw records in), its raw records in partitions."
    root = lifecycle(tmp_path_factory.mktemp('score'), {})
    from mlops_nb.registry import Registry
    reg = Registry(root/'registry')
    skops = skops_only_copy(root)                      # the same pipeline without ONNX: served from model.skops
    data = pd.concat([pd.read_parquet(f) for f in sorted((root/'data'/'raw').rglob('*.parquet'))], ignore_index=True)
    data.to_parquet(root/'all.parquet', row_group_size=2000)
    for i, part in enumerate(np.array_split(np.arange(len(data)), 6)):      # six partitions, hive-style folders
        (root/'in'/f'day={i}').mkdir(parents=True)
        data.iloc[part].to_parquet(root/'in'/f'day={i}'/'part.parquet', index=False)
    return dict(root=root, reg=reg, versions=[reg.resolve('champion'), Registry(skops).resolve('champion')], skops=skops, rows=len(data))

def test_partitioned_scoring_on_a_cluster_equals_single_process(world, tmp_path):
    distributed = pytest.importorskip('distributed')
    root, reg = world['root'], world['reg']
    single = predict_file(root/'all.parquet', tmp_path/'single.parquet', LoadedModel(reg.version_dir('champion')), chunk_rows=1000)
    want = pd.read_parquet(tmp_path/'single.parquet')
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=':0') as c, distributed.Client(c) as client:
        res = D.score_partitions(root/'in', tmp_path/'out', registry=root/'registry', client=client,
                                 capture_dir=tmp_path/'cap', chunk_rows=1000)
    assert res['model_version'] == single['model_version'] == world['versions'][0]        # the champion, resolved once
    assert res['partitions'] == 6 and res['rows'] == world['rows'] and res['captured'] == world['rows']
    assert res['processes'] == 2 and res['model_loads'] == 2, res                          # once per worker, not per partition
    parts = sorted((tmp_path/'out').rglob('*.parquet'))
    assert [p.relative_to(tmp_path/'out').as_posix() for p in parts] == [f'day={i}/part.parquet' for i in range(6)]
    got = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    pd.testing.assert_frame_equal(got, want, check_exact=True)                              # single-process scoring, bit for bit
    cap = read_captures(tmp_path/'cap', with_labels=False)
    assert len(cap) == world['rows'] and set(cap['model_version']) == {res['model_version']}
    np.testing.assert_array_equal(np.sort(cap['prediction'].to_numpy()), np.sort(want['prediction'].to_numpy()))
    assert len(list((tmp_path/'cap').rglob('*.parquet'))) <= 2 * 6                          # few, large capture files
    manifest = json.loads((tmp_path/'out'/'_scoring.json').read_text())
    assert manifest['model_version'] == res['model_version'] and sum(f['rows'] for f in manifest['files']) == world['rows']
    # the same tasks without a cluster: the same files
    local = D.score_partitions(root/'in', tmp_path/'out_local', registry=root/'registry')
    assert local['processes'] == 1 and local['model_loads'] == 1 and local['captured'] == 0
    pd.testing.assert_frame_equal(pd.concat([pd.read_parquet(p) for p in sorted((tmp_path/'out_local').rglob('*.parquet'))], ignore_index=True), want)

def test_a_bad_partition_stops_the_job_naming_file_column_and_rule(world, tmp_path):
    root = world['root']
    bad = tmp_path/'in'; (bad/'a').mkdir(parents=True); (bad/'b').mkdir()
    df = pd.read_parquet(root/'in'/'day=0'/'part.parquet')
    df.to_parquet(bad/'a'/'part.parquet')
    col = df.columns[3]; df.loc[df.index[17], col] = None
    df.to_parquet(bad/'b'/'part.parquet')
    with pytest.raises(D.MlopsError, match=rf"b/part.parquet.*{col}.*null_not_allowed|null_not_allowed.*{col}") as e:
        D.score_partitions(bad, tmp_path/'out', registry=root/'registry')
    assert 'row 17' in str(e.value)
    with pytest.raises(D.MlopsError, match="'nope' is not set"): D.score_partitions(bad, tmp_path/'o2', registry=root/'registry', model='nope')
    with pytest.raises(D.MlopsError, match='must not be the input folder'): D.score_partitions(bad, bad/'out', registry=root/'registry')

def test_serving_a_skops_model_imports_no_dask(world, tmp_path):
    "skops's trusted-type discovery walks all of scikit-learn, whose array-API shim imports dask.array when installed."
    pytest.importorskip('dask')
    root = world['root']
    code = textwrap.dedent(f"""
        import sys
        from mlops_nb.serve import LoadedModel, predict_file
        m = LoadedModel({str(world['skops']/'versions'/world['versions'][1])!r})
        assert m.runtime == 'skops', m.runtime
        predict_file({str(root/'in'/'day=0'/'part.parquet')!r}, {str(tmp_path/'o.parquet')!r}, m)
        bad = sorted(k for k in sys.modules if k.split('.')[0] in ('dask', 'distributed'))
        assert not bad, bad[:10]
        import dask.array                                   # and Dask still imports where it is wanted
    """)
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]

def test_predict_cli_scores_partitions_on_the_configured_cluster(world, tmp_path):
    "`mlops-nb predict` with a scheduler in the environment: partitions scored on a real 2-worker cluster, as single-process predict scores them."
    distributed = pytest.importorskip('distributed')
    root, cli = world['root'], str(Path(sys.executable).with_name('mlops-nb'))
    base = dict(os.environ); [base.pop(k, None) for k in D.ENV_VARS]
    run = lambda env, *a: subprocess.run([cli, 'predict', '--registry', str(root/'registry'), '--chunk-rows', '1000', '--params', str(tmp_path/'none.yaml'), *a],
                                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    one = run(base, '--input', str(root/'all.parquet'), '--output', str(tmp_path/'single.parquet'), '--capture-dir', str(tmp_path/'cap1'))
    assert one.returncode == 0, one.stderr[-3000:]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=':0') as c:
        p = run(dict(base, MLOPS_NB_DASK_SCHEDULER=c.scheduler_address), '--input', str(root/'in'/'day=*'), '--output', str(tmp_path/'out'),
                '--capture-dir', str(tmp_path/'cap2'))
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res['workers'] == 2 and res['processes'] == 2 and res['model_loads'] == 2 and res['partitions'] == 6, res
    got = pd.concat([pd.read_parquet(f) for f in sorted((tmp_path/'out').rglob('*.parquet'))], ignore_index=True)
    pd.testing.assert_frame_equal(got, pd.read_parquet(tmp_path/'single.parquet'), check_exact=True)
    a, b = read_captures(tmp_path/'cap1', with_labels=False), read_captures(tmp_path/'cap2', with_labels=False)
    assert len(a) == len(b) == world['rows'] and set(a['model_version']) == set(b['model_version']) == {res['model_version']}
    np.testing.assert_array_equal(np.sort(a['prediction'].to_numpy()), np.sort(b['prediction'].to_numpy()))
