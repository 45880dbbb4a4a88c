"""The registered version is the whole prediction function: raw records in, through every way of scoring.

Two real lifecycles (the default fraud model with a time column, and a regression model on a file without one) are run
by the library's steps in temporary folders; then real `mlops-nb serve` processes (ONNX and skops runtimes) and
`mlops-nb predict` score raw records from `data/raw/` and must agree with the offline pipeline."""
import csv, io, json, os, subprocess, sys, textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SMALL, VENV_BIN, merge           # noqa: E402
from test_serve import MLOPS, Server                    # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

BUILD = textwrap.dedent('''
    import json, sys, yaml
    from mlops_nb import steps
    params = json.loads(sys.argv[1])
    steps.run_collect(params); steps.run_prepare(params); steps.run_train(params); steps.run_evaluate(params)
    print(steps.run_deploy(params, project_dir='.').version)
''')

def lifecycle(root:Path, over:dict, replace:dict|None=None) -> Path:
    "Run collect..deploy in `root` with the project's params + `over`, then `replace` (`'section.key'` -> whole value); return `root`."
    import yaml
    root.mkdir(parents=True, exist_ok=True)
    params = merge(merge(yaml.safe_load((ROOT/'params.yaml').read_text()), SMALL), over)
    for k, v in (replace or {}).items():
        sec, key = k.split('.'); params[sec][key] = v
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", MPLBACKEND='Agg')
    p = subprocess.run([sys.executable, '-c', BUILD, json.dumps(params)], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return root

def skops_only_copy(root:Path, name:str='registry-skops') -> Path:
    "A registry holding the same fitted pipeline without an ONNX file, so the server runs it on the skops runtime."
    from mlops_nb.data import Schema
    from mlops_nb.registry import Registry
    src = Registry(root/'registry')
    info = src.info('v0001')
    reg = Registry(root/name)
    v = reg.register(src.load('v0001'), features=info['features'], task=info['task'], schema=Schema.load(src.version_dir('v0001')/'schema.json'),
                     threshold=info['threshold'], extra=dict(feature_step=info['feature_step']))
    reg.promote(v, 'champion', reason='test: skops runtime')
    return root/name

def raw_frame(root:Path, n:int|None=None) -> pd.DataFrame:
    "The raw rows of the last collected batch (as the sources delivered them), less the target."
    files = sorted((root/'data/raw').glob('*.parquet'))
    df = pd.read_parquet(files[-1])
    return df.head(n) if n else df

def records(df:pd.DataFrame, offsets:bool=False) -> list[dict]:
    "JSON records of `df`; datetimes as ISO-8601 text, every other row with a +02:00 offset when `offsets`."
    out = []
    for i, r in enumerate(df.to_dict('records')):
        rec = {}
        for k, v in r.items():
            if isinstance(v, pd.Timestamp):
                v = (v + pd.Timedelta(hours=2)).isoformat() + '+02:00' if offsets and i % 2 else v.isoformat()
            elif isinstance(v, float) and np.isnan(v): v = None
            elif isinstance(v, np.integer): v = int(v)
            rec[k] = v
        out.append(rec)
    return out

def offline(root:Path, df:pd.DataFrame, classification:bool) -> np.ndarray:
    "The scores of the registered scikit-learn pipeline (loaded through skops) for the raw rows `df`."
    from mlops_nb.registry import Registry
    reg = Registry(root/'registry')
    model, info = reg.load('v0001'), reg.info('v0001')
    X = df[info['features']]
    return model.predict_proba(X)[:, 1] if classification else model.predict(X)


@pytest.fixture(scope='module')
def fraud(tmp_path_factory):
    root = lifecycle(tmp_path_factory.mktemp('fraud'), {})
    srv = Server(root, root/'registry', '--no-capture')
    sk = Server(root, skops_only_copy(root), '--no-capture')
    yield dict(root=root, srv=srv, sk=sk)
    srv.stop(); sk.stop()


def _no_time_data(folder:Path) -> Path:
    "A regression data set without a time column: a zero denominator, negative values for the log, a null category."
    rng = np.random.default_rng(3)
    n = 1500
    x1, x2 = rng.gamma(2, 10, n), rng.integers(0, 5, n).astype(float)
    cat = rng.choice(['a', 'b', 'c'], n).astype(object)
    cat[::37] = None
    y = 3 * np.log1p(x1) + np.where(x2 != 0, x1 / np.where(x2 == 0, 1, x2), 0) * 0.1 + (cat == 'b') + rng.normal(0, 0.1, n)
    df = pd.DataFrame({'row_id': [f'r{i}' for i in range(n)], 'x1': x1 - 3, 'x2': x2, 'cat': cat, 'y': y})
    folder.mkdir(parents=True)
    df.to_csv(folder/'data.csv', index=False)
    return folder/'data.csv'


@pytest.fixture(scope='module')
def regression(tmp_path_factory):
    root = tmp_path_factory.mktemp('regression')
    path = _no_time_data(root/'external')
    over = {'task': {'type': 'regression', 'target': 'y', 'time_column': '', 'id_columns': ['row_id']},
            'collect': {'sources': [{'type': 'file', 'path': str(path)}], 'days': 0},
            'train': {'estimator': 'ridge'},
            'evaluate': {'importance_repeats': 1, 'importance_max_rows': 300},
            'monitor': {'performance': {'metric': 'rmse'}, 'alerts': {'features': []}}}    # a regression metric; no simulator columns
    root = lifecycle(root, over, {'prepare.features': {'log': ['x1'], 'ratios': {'x1_per_x2': ['x1', 'x2']}}, 'train.estimator_params': {},
                                  'train.search': {'n_iter': 1, 'cv_splits': 2, 'scoring': 'r2', 'space': {}}, 'deploy.gates': {}})
    srv = Server(root, root/'registry', '--no-capture')
    sk = Server(root, skops_only_copy(root), '--no-capture')
    yield dict(root=root, srv=srv, sk=sk)
    srv.stop(); sk.stop()


def scores_by_every_route(srv, df:pd.DataFrame, id_col:str, classification:bool) -> dict:
    "Scores of the raw rows `df` via /invocations JSON (records, ISO text with offsets) and CSV, and v2 infer."
    out = {}
    recs = records(df, offsets=True)
    st, body, _ = srv.post('/invocations?output=score', {'dataframe_records': recs})
    assert st == 200, body
    assert body['ids'][id_col] == df[id_col].tolist()     # id columns are echoed beside the predictions
    out['json'] = np.array(body['predictions'])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(recs[0])); w.writeheader()
    w.writerows([{k: ('' if v is None else v) for k, v in r.items()} for r in records(df)])
    st, body, _ = srv.request('POST', '/invocations?output=score', buf.getvalue().encode(), {'Content-Type': 'text/csv'})
    assert st == 200, body
    out['csv'] = np.array(body['predictions'])
    cols = {k: [r[k] for r in recs] for k in recs[0]}
    inputs = [{'name': k, 'shape': [len(df)], 'datatype': 'BYTES' if isinstance(next((x for x in v if x is not None), ''), str) else 'FP64', 'data': v}
              for k, v in cols.items()]
    st, body, _ = srv.post('/v2/models/model/infer', {'inputs': inputs})
    assert st == 200, body
    out['v2'] = np.array(next(o['data'] for o in body['outputs'] if o['name'] == 'predict'))
    return out


def predict_cli(root:Path, registry:Path, inp:Path, tmp:Path) -> pd.DataFrame:
    out = tmp/f'scored-{registry.name}.parquet'
    p = subprocess.run([MLOPS, 'predict', '--registry', str(registry), '--input', str(inp), '--output', str(out), '--no-capture'],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return pd.read_parquet(out)


@pytest.mark.parametrize('case', ['fraud', 'regression'])
def test_raw_records_score_the_same_everywhere(case, request, tmp_path):
    w = request.getfixturevalue(case)
    root, classification = w['root'], case == 'fraud'
    from mlops_nb.registry import Registry
    info = Registry(root/'registry').info('v0001')
    tol, id_col = info['onnx']['tolerance'], info['feature_step']['id_columns'][0]
    assert info['onnx']['kept'], info['onnx']
    batch = raw_frame(root) if case == 'fraud' else pd.read_csv(root/'external/data.csv')
    target = 'is_fraud' if classification else 'y'
    batch = batch.drop(columns=[target]).head(300)
    ref = offline(root, batch, classification)
    one = batch.head(1)
    for srv, exact in ((w['srv'], False), (w['sk'], True)):
        got = scores_by_every_route(srv, batch, id_col, classification)
        got1 = scores_by_every_route(srv, one, id_col, classification)
        for route, s in {**got, **{f'{k}-one': v for k, v in got1.items()}}.items():
            r = ref if not route.endswith('-one') else ref[:1]
            if exact: np.testing.assert_array_equal(s, r, err_msg=f'skops {route}')
            else: np.testing.assert_allclose(s, r, rtol=0, atol=tol, err_msg=f'onnx {route}')
    inp = tmp_path/'raw.parquet'
    batch.to_parquet(inp)
    scored = predict_cli(root, root/'registry', inp, tmp_path)
    np.testing.assert_allclose(scored['prediction'], ref, rtol=0, atol=tol)
    assert scored[id_col].tolist() == batch[id_col].tolist()
    np.testing.assert_array_equal(predict_cli(root, root/'registry-skops', inp, tmp_path)['prediction'], ref)


def test_schema_is_the_raw_record(fraud):
    srv = fraud['srv']
    st, meta = srv.get('/metadata')
    c = meta['schema']['columns']
    cols = set(c) if isinstance(c, dict) else {x['name'] for x in c}
    assert 'timestamp' in cols and 'amount' in cols and 'log_amount' not in cols and 'timestamp_hour' not in cols, cols
    st, spec = srv.get('/openapi.json')
    assert 'timestamp' in json.dumps(spec) and 'log_amount' not in json.dumps(spec)
    # an extra column that is not an id is refused (serve.unknown_columns: error) naming it
    rec = records(raw_frame(fraud['root'], 1).drop(columns=['is_fraud']))[0] | {'colour': 'red'}
    st, body, _ = srv.post('/invocations', {'dataframe_records': [rec]})
    assert st == 422 and body['rule'] == 'unknown_column' and body['field'] == 'colour', body


def test_unknown_columns_flag_ignores_extras(fraud):
    root = fraud['root']
    srv = Server(root, root/'registry', '--no-capture', '--unknown-columns', 'ignore')
    try:
        rec = records(raw_frame(root, 1).drop(columns=['is_fraud']))[0] | {'colour': 'red'}
        st, body, _ = srv.post('/invocations', {'dataframe_records': [rec]})
        assert st == 200, body
    finally: srv.stop()


def test_readme_request_example_is_answered(fraud):
    "README's curl example is a complete raw record: pasted as it is, it is answered, with the ids echoed."
    import re
    readme = (ROOT/'README.md').read_text()
    m = re.search(r"curl -s localhost:8080/invocations -H 'Content-Type: application/json' -d '(\{.*?\})'\n", readme)
    assert m, 'no request example in README.md'
    body = json.loads(m.group(1))
    st, got, _ = fraud['srv'].post('/invocations', body)
    assert st == 200, got
    assert got['predictions'] in ([0], [1]) and got['ids'] == {'transaction_id': ['t0039-000001'], 'customer_id': ['c00711']}, got


def test_monitor_labels_raw_inputs_and_derived_features(fraud):
    "Drift is reported on the raw inputs and on the features the model builds, each labelled as such."
    import yaml
    root = fraud['root']
    params = merge(merge(yaml.safe_load((ROOT/'params.yaml').read_text()), SMALL),
                   {'monitor': {'current': {'source': 'simulator', 'start_day': 12, 'days': 2}}})
    code = 'import json, sys\nfrom mlops_nb import steps\nsteps.run_monitor(json.loads(sys.argv[1]))'
    p = subprocess.run([sys.executable, '-c', code, json.dumps(params)], cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    t = pd.read_csv(root/'plots/monitor/drift.csv').set_index('column')['source']
    assert t['amount'] == 'raw input' and t['merchant_category'] == 'raw input', t
    assert t['log_amount'] == 'derived feature' and t['timestamp_hour'] == 'derived feature', t


SERVE_AND_LOOK = textwrap.dedent('''
    import json, os, signal, sys, threading, time, urllib.request
    from mlops_nb.cli import main
    port, rec, out = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    def client():   # once the server answers: one raw record, then what this very process has imported
        url = f'http://127.0.0.1:{port}'
        for _ in range(600):
            try: urllib.request.urlopen(url + '/health', timeout=5); break
            except OSError: time.sleep(0.1)
        req = urllib.request.Request(url + '/invocations?output=score', json.dumps({'dataframe_records': [rec]}).encode(),
                                     {'Content-Type': 'application/json'})
        with urllib.request.urlopen(req, timeout=30) as r: body = json.loads(r.read())
        meta = json.loads(urllib.request.urlopen(url + '/metadata', timeout=5).read())
        json.dump(dict(body=body, runtime=meta.get('runtime'), modules=sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn')), open(out, 'w'))
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=client, daemon=True).start()
    sys.exit(main(['serve', '--registry', sys.argv[4], '--port', str(port), '--no-capture', '--no-access-log']))
''')

def test_onnx_serving_imports_no_scikit_learn(fraud, tmp_path):
    "A real `mlops-nb serve` on the ONNX runtime answers a raw record (the feature pre-step runs in numpy) without importing scikit-learn."
    from test_serve import free_port
    root = fraud['root']
    rec = records(raw_frame(root, 1).drop(columns=['is_fraud']), offsets=True)[0]
    out = tmp_path/'seen.json'
    p = subprocess.run([sys.executable, '-c', SERVE_AND_LOOK, str(free_port()), json.dumps(rec), str(out), str(root/'registry')],
                       cwd=root, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    seen = json.loads(out.read_text())
    assert seen['runtime'] == 'onnxruntime' and len(seen['body']['predictions']) == 1, seen['body']
    assert seen['modules'] == [], f"the ONNX serving path imports scikit-learn: {seen['modules'][:10]}"


def test_batch_files_with_time_text_score_as_with_timestamps(fraud, tmp_path):
    """`mlops-nb predict` on raw records whose time is ISO-8601 text (every other row with a UTC offset), from Parquet and CSV,
    gives the scores of the same rows with arrow timestamps, on both runtimes; a chunk whose text the vectorised parser
    refuses (seven fraction digits) is read value by value, with the same result."""
    root = fraud['root']
    batch = raw_frame(root).drop(columns=['is_fraud']).head(600).reset_index(drop=True)
    batch.to_parquet(tmp_path/'ts.parquet')
    text = batch.assign(timestamp=[r['timestamp'] for r in records(batch, offsets=True)])
    text.loc[250, 'timestamp'] = batch.timestamp[250].strftime('%Y-%m-%dT%H:%M:%S.%f') + '0'
    text.to_parquet(tmp_path/'text.parquet'); text.to_csv(tmp_path/'text.csv', index=False)
    for reg in (root/'registry', root/'registry-skops'):
        got = {}
        for name in ('ts.parquet', 'text.parquet', 'text.csv'):
            out = tmp_path/f'{reg.name}-{name}.parquet'
            p = subprocess.run([MLOPS, 'predict', '--registry', str(reg), '--input', str(tmp_path/name), '--output', str(out),
                                '--no-capture', '--chunk-rows', '100'], cwd=root, capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, p.stderr[-2000:]
            got[name] = pd.read_parquet(out)['prediction'].to_numpy()
        np.testing.assert_array_equal(got['text.parquet'], got['ts.parquet'], err_msg=reg.name)
        np.testing.assert_array_equal(got['text.csv'], got['ts.parquet'], err_msg=reg.name)


def test_encoded_path_answers_as_the_whole_graph_and_old_versions_keep_it(fraud, tmp_path):
    """The server feeds the estimator's own graph (`estimator.onnx`) from the numpy encoder; its scores are scikit-learn's,
    nulls and unseen categories included, and a version registered before the encoded path (no `estimator.onnx`, no
    `onnx.encoder`) is served through its whole graph with the same answers."""
    import shutil
    from mlops_nb.core import read_json, write_json
    from mlops_nb.registry import Registry
    from mlops_nb.serve import LoadedModel
    root = fraud['root']
    reg = Registry(root/'registry')
    vdir, info = reg.version_dir('v0001'), reg.info('v0001')
    assert info['onnx']['encoded']['kept'] and 'estimator.onnx' in read_json(vdir/'manifest.json')['files'], info['onnx'].get('encoded')
    batch = raw_frame(root).drop(columns=['is_fraud']).head(200).reset_index(drop=True)
    num = [c for c in info['onnx']['encoder']['numeric']['columns'] if c in batch.columns]
    cat = [c['column'] for c in info['onnx']['encoder']['categorical']]
    batch.loc[::7, num[0]] = np.nan; batch.loc[::5, cat[0]] = None; batch.loc[3::11, cat[1]] = 'never-seen'
    ref, tol = offline(root, batch, True), info['onnx']['tolerance']
    def scores(d):
        m = LoadedModel(d)   # columns as the validator hands them over (it refuses nulls the training data had not: bypassed here)
        X = {c: batch[c].to_numpy(dtype='datetime64[us]') if c == 'timestamp' else batch[c].to_numpy(dtype=object) if c in cat
             else batch[c].to_numpy(dtype='float64', na_value=np.nan) for c in m.schema.columns}
        return m, m.predict(X)[0]
    new, got = scores(vdir)
    assert new.encoder is not None and [i.name for i in new.session.get_inputs()] == ['encoded']
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol)
    old = tmp_path/'v0001'
    shutil.copytree(vdir, old)
    (old/'estimator.onnx').unlink()
    meta = read_json(old/'model.json'); meta['onnx'].pop('encoder'); meta['onnx'].pop('encoded')
    write_json(old/'model.json', meta)
    was, got_old = scores(old)
    assert was.encoder is None and len(was.session.get_inputs()) > 1
    np.testing.assert_allclose(got_old, ref, rtol=0, atol=tol)
    np.testing.assert_allclose(got_old, got, rtol=0, atol=1e-7)


def test_large_calls_run_on_threads_with_the_same_scores(fraud):
    """A call of ORT_WIDE_ROWS rows or more runs on a second session with several ONNX Runtime threads (by default
    this worker's share of the cores); every row's score is the same bits as one row at a time on one thread, for the
    encoded path and for the whole graph (off the event loop). One thread per worker when the workers take the cores."""
    from mlops_nb.core import MlopsError
    from mlops_nb.registry import Registry
    from mlops_nb.serve import ORT_WIDE_ROWS, LoadedModel, ServeConfig, wide_threads
    root = fraud['root']
    vdir = Registry(root/'registry').version_dir('v0001')
    batch = raw_frame(root).drop(columns=['is_fraud']).head(300).reset_index(drop=True)
    m = LoadedModel(vdir, ServeConfig(intra_op_threads=2))
    assert m.wide is not m.session and m.wide.get_session_options().intra_op_num_threads == 2
    assert m.session.get_session_options().intra_op_num_threads == 1
    X = {c: batch[c].to_numpy(dtype='datetime64[us]') if c == 'timestamp' else batch[c].to_numpy(dtype=object)
         if m.schema.columns[c].kind == 'categorical' else batch[c].to_numpy(dtype='float64', na_value=np.nan) for c in m.schema.columns}
    one = np.concatenate([m.predict({k: v[i:i + 1] for k, v in X.items()})[0] for i in range(len(batch))])
    for n in (ORT_WIDE_ROWS, 300):
        np.testing.assert_array_equal(m.predict({k: v[:n] for k, v in X.items()})[0], one[:n])
    np.testing.assert_array_equal(m.predict(X, off_loop=True)[0], np.concatenate(
        [m.predict({k: v[i:i + 1] for k, v in X.items()}, off_loop=True)[0] for i in range(len(batch))]))
    cores = len(os.sched_getaffinity(0))
    assert wide_threads(ServeConfig()) == cores and wide_threads(ServeConfig(workers=cores)) == 1
    single = LoadedModel(vdir, ServeConfig(intra_op_threads=1))
    assert single.wide is single.session
    with pytest.raises(MlopsError, match="intra_op_threads"): ServeConfig.resolve({'intra_op_threads': -1})
