"""The prediction service and batch scoring, as real processes on 127.0.0.1: payload formats, bad input, a fuzz run,
hot swap under load, admin token, capture after SIGTERM, feedback, and batch scoring with bounded memory."""
import http.client, json, os, signal, socket, subprocess, sys, threading, time
from pathlib import Path

import numpy as np, pandas as pd, pytest

from conftest import VENV_BIN

MLOPS = str(VENV_BIN/'mlops-nb')
TOKEN = 'test-admin-token'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


# ---- a registry with two good versions and one whose files were tampered with ----------------------------------------
def _frame(days=8, seed=42):
    from mlops_nb.sim import simulate
    from mlops_nb.features import clean, add_features
    df = simulate(0, days, seed, transactions_per_day=300, n_customers=800)
    df = clean(df, 'is_fraud', 'timestamp', ['transaction_id', 'customer_id'])
    return add_features(df, {'time_parts': ['hour', 'dayofweek'], 'log': ['amount'],
                             'ratios': {'amount_to_customer_avg': ['amount', 'customer_avg_amount']}}, 'timestamp')

def tree_pipeline(num, cat, max_iter):
    """One-hot categories + raw numbers + HistGradientBoosting: its ONNX graph matches scikit-learn (a StandardScaler in front
    of the trees would not: float32 scaling flips splits, and the registry then keeps no ONNX file)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder
    cp = Pipeline([('impute', SimpleImputer(strategy='most_frequent')),
                   ('onehot', OneHotEncoder(handle_unknown='ignore', min_frequency=0.01, sparse_output=False))])
    pre = ColumnTransformer([('num', SimpleImputer(strategy='median'), num), ('cat', cp, cat)])
    return Pipeline([('preprocess', pre), ('model', HistGradientBoostingClassifier(max_iter=max_iter, random_state=0))])

def build_registry(root:Path):
    """v0001: served with ONNX Runtime; v0002: the project's pipeline, registered without ONNX -> served by the skops
    fallback; v0003: registered, then its model file damaged. Champion: v0001."""
    from mlops_nb.features import feature_columns
    from mlops_nb.train import make_estimator, make_pipeline
    from mlops_nb.registry import Registry
    df = _frame()
    num, cat = feature_columns(df, 'is_fraud', exclude=['transaction_id', 'customer_id', 'timestamp'])
    X, y = df[num + cat], df['is_fraud']
    reg = Registry(root)
    pipes = [tree_pipeline(num, cat, 20), make_pipeline(num, cat, make_estimator('hist_gradient_boosting', 'classification', {'max_iter': 30}, seed=0)),
             tree_pipeline(num, cat, 30)]
    from mlops_nb.data import Schema
    # v0002 is registered without test rows, so no ONNX export is made or kept: the server must use the skops fallback.
    data = [dict(X_test=X), dict(X_test=None, schema=Schema.infer(X)), dict(X_test=X)]
    versions = [reg.register(p.fit(X, y), features=num + cat, task='classification', threshold=0.3, **d,
                             metrics={'pr_auc': 0.5}, params={'i': i}) for i, (p, d) in enumerate(zip(pipes, data))]
    assert (reg.version_dir(versions[0])/'model.onnx').exists() and not (reg.version_dir(versions[1])/'model.onnx').exists()
    reg.promote(versions[0], 'champion', reason='test', actor='test')
    (reg.version_dir(versions[2])/'model.onnx').write_bytes(b'not an onnx model')   # no longer matches its manifest
    return reg, versions, X


class Server:
    "`mlops-nb serve` in a subprocess on a free port."
    def __init__(self, cwd:Path, registry:Path, *args, token=TOKEN):
        self.port = free_port()
        env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
        env.pop('MLOPS_NB_ADMIN_TOKEN', None)
        if token: env['MLOPS_NB_ADMIN_TOKEN'] = token
        self.err = open(cwd/f'server-{self.port}.log', 'wb')
        self.proc = subprocess.Popen([MLOPS, 'serve', '--registry', str(registry), '--port', str(self.port), '--poll-seconds', '0.2', *args],
                                     cwd=cwd, env=env, stdout=self.err, stderr=subprocess.STDOUT)
        self.log = cwd/f'server-{self.port}.log'
        for _ in range(600):
            if self.proc.poll() is not None: raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if self.get('/health')[0] == 200: break
            except OSError: pass
            time.sleep(0.1)
        else: raise AssertionError('server did not start in 60 s')

    def conn(self): return http.client.HTTPConnection('127.0.0.1', self.port, timeout=30)

    def request(self, method, path, body=None, headers=None, conn=None):
        c = conn or self.conn()
        if isinstance(body, (dict, list)): body = json.dumps(body).encode(); headers = {'Content-Type': 'application/json', **(headers or {})}
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        if conn is None: c.close()
        try: obj = json.loads(data) if data.strip() else None
        except ValueError: obj = data.decode(errors='replace')
        return r.status, obj, dict(r.getheaders())

    def get(self, path, **kw): return self.request('GET', path, **kw)[:2]
    def post(self, path, body, **kw): return self.request('POST', path, body, **kw)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try: self.proc.wait(timeout)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        self.err.close()
        return self.proc.returncode


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp('serve')
    reg, versions, X = build_registry(root/'registry')
    srv = Server(root, root/'registry', '--capture-dir', str(root/'captures'))
    yield dict(root=root, reg=reg, versions=versions, X=X, srv=srv)
    srv.stop()


def records(X, n=3, start=0):
    return json.loads(X.iloc[start:start + n].to_json(orient='records'))


# ---- every payload format --------------------------------------------------------------------------------------------
def test_payload_formats_agree_with_the_pipeline(world):
    srv, X, reg = world['srv'], world['X'], world['reg']
    rows = records(X, 5)
    cols = list(rows[0])
    split = {'columns': cols, 'data': [[r[c] for c in cols] for r in rows]}
    bodies = {
        'dataframe_records': ({'dataframe_records': rows}, 'application/json'),
        'dataframe_split': ({'dataframe_split': split}, 'application/json'),
        'instances (records)': ({'instances': rows}, 'application/json'),
        'instances (lists)': ({'instances': split['data']}, 'application/json'),
        'inputs (columns)': ({'inputs': {c: [r[c] for r in rows] for c in cols}}, 'application/json'),
        'inputs (records)': ({'inputs': rows}, 'application/json'),
        'csv': (X.iloc[:5].to_csv(index=False).encode(), 'text/csv'),
    }
    scores = {}
    for name, (body, ctype) in bodies.items():
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        status, obj, hdr = srv.request('POST', '/invocations?output=score', raw, {'Content-Type': ctype})
        assert status == 200, (name, obj)
        assert hdr['x-model-version'] == world['versions'][0] and hdr['x-request-id']
        scores[name] = obj['predictions']
    ref = reg.load(world['versions'][0]).predict_proba(X.iloc[:5])[:, 1]
    for name, s in scores.items(): np.testing.assert_allclose(s, ref, atol=1e-4, err_msg=name)
    # default output: labels at the version's threshold, like mlflow's sklearn flavour; 'both' gives label and score
    status, obj, _ = srv.post('/invocations', {'dataframe_records': rows})
    assert status == 200 and obj['predictions'] == [int(s >= 0.3) for s in ref]
    status, obj, _ = srv.post('/invocations?output=both', {'dataframe_records': rows})
    assert [p['label'] for p in obj['predictions']] == [int(s >= 0.3) for s in ref]
    # Open Inference Protocol v2
    kinds = {c: ('BYTES' if isinstance(rows[0][c], str) else 'FP64') for c in cols}
    v2 = {'id': 'abc', 'inputs': [{'name': c, 'shape': [5, 1], 'datatype': kinds[c], 'data': [r[c] for r in rows]} for c in cols]}
    status, obj, _ = srv.post('/v2/models/model/infer', v2)
    assert status == 200 and obj['id'] == 'abc' and obj['model_version'] == world['versions'][0]
    np.testing.assert_allclose(obj['outputs'][0]['data'], ref, atol=1e-4)
    assert srv.get('/v2/health/live')[0] == 200 and srv.get('/v2/health/ready')[0] == 200
    status, meta = srv.get('/v2/models/model')
    assert status == 200 and {i['name'] for i in meta['inputs']} == set(cols)


def test_health_metadata_metrics_docs(world):
    srv = world['srv']
    assert srv.get('/ping')[0] == 200 and srv.get('/health') == (200, {'status': 'ok'})
    assert srv.get('/ready')[1]['version'] == world['versions'][0]
    assert srv.get('/version')[1]['model_version'] == world['versions'][0]
    status, meta = srv.get('/metadata')
    assert status == 200 and meta['version'] == world['versions'][0] and meta['runtime'] == 'onnxruntime'
    assert [c['name'] for c in meta['schema']['columns']] == list(world['X'].columns) and meta['loaded_at'] > 0
    spec = srv.get('/openapi.json')[1]
    assert '/invocations' in spec['paths'] and spec['openapi'].startswith('3.')
    c = srv.conn(); c.request('GET', '/docs'); r = c.getresponse(); assert r.status == 200 and b'openapi.json' in r.read()
    c.request('GET', '/metrics'); r = c.getresponse(); text = r.read().decode()
    assert r.status == 200 and r.getheader('content-type').startswith('text/plain')
    for name in ('mlops_nb_requests_total{endpoint="/invocations",method="POST",status="200"}', 'mlops_nb_request_latency_seconds_bucket',
                 'mlops_nb_predictions_by_class_total', 'mlops_nb_prediction_score_bucket', f'mlops_nb_model_info{{pid=',
                 f'version="{world["versions"][0]}"'):
        assert name in text, name


# ---- every bad input: a 4xx naming the field and the rule, never a 5xx ------------------------------------------------
def bad_cases(X):
    good = records(X, 1)[0]
    num = next(c for c in good if isinstance(good[c], float))
    intcol = next((c for c in good if isinstance(good[c], int) and not isinstance(good[c], bool)), None)
    cat = next(c for c in good if isinstance(good[c], str))
    without = {k: v for k, v in good.items() if k != cat}
    J = 'application/json'
    cases = [
        ('missing column', {'dataframe_records': [without]}, J, 422, 'missing_column', cat),
        ('unknown column', {'dataframe_records': [dict(good, surprise=1)]}, J, 422, 'unknown_column', 'surprise'),
        ('text for a number', {'dataframe_records': [dict(good, **{num: 'abc'})]}, J, 422, 'wrong_type', num),
        ('bool for a number', {'dataframe_records': [dict(good, **{num: True})]}, J, 422, 'wrong_type', num),
        ('list for a number', {'dataframe_records': [dict(good, **{num: [1, 2]})]}, J, 422, 'wrong_type', num),
        ('number for a category', {'dataframe_records': [dict(good, **{cat: 7})]}, J, 422, 'wrong_type', cat),
        ('null number', {'dataframe_records': [dict(good, **{num: None})]}, J, 422, 'null_not_allowed', num),
        ('null category', {'dataframe_records': [dict(good, **{cat: None})]}, J, 422, 'null_not_allowed', cat),
        ('NaN in CSV', f"{','.join(good)}\n{','.join('nan' if k == num else str(v) for k, v in good.items())}\n".encode(), 'text/csv', 422, 'null_not_allowed', num),
        ('Infinity in CSV', f"{','.join(good)}\n{','.join('inf' if k == num else str(v) for k, v in good.items())}\n".encode(), 'text/csv', 422, 'not_finite', num),
        ('empty body', b'', J, 400, 'empty_payload', 'body'),
        ('no rows', {'dataframe_records': []}, J, 400, 'empty_payload', 'dataframe_records'),
        ('malformed JSON', b'{"dataframe_records": [', J, 400, 'malformed_json', 'body'),
        # bare NaN (what MLflow's client and pandas write for a missing value) is a null, then the schema's null rules apply
        ('NaN literal in JSON', json.dumps({'dataframe_records': [dict(good, **{num: float('nan')})]}).encode(), J, 422, 'null_not_allowed', num),
        ('Infinity literal in JSON', json.dumps({'dataframe_records': [dict(good, **{num: float('inf')})]}).encode(), J, 422, 'not_finite', num),
        ('text "12.5" for a number', {'dataframe_records': [dict(good, **{num: '12.5'})]}, J, 422, 'wrong_type', num),
        ('text "1_000" for a number', {'dataframe_records': [dict(good, **{num: '1_000'})]}, J, 422, 'wrong_type', num),
        ('"1_000" in CSV', f"{','.join(good)}\n{','.join('1_000' if k == num else str(v) for k, v in good.items())}\n".encode(), 'text/csv', 422, 'wrong_type', num),
        ('CSV field over 131072 characters', f"{','.join(good)}\n{','.join('x' * 131_073 if k == cat else str(v) for k, v in good.items())}\n".encode(), 'text/csv', 400, 'malformed_csv', 'body'),
        ('gzip body', json.dumps({'dataframe_records': [good]}).encode(), J, 415, 'unsupported_media_type', 'content-encoding'),
        ('no known key', {'rows': [good]}, J, 400, 'wrong_format', 'body'),
        ('two keys', {'instances': [good], 'inputs': [good]}, J, 400, 'wrong_format', 'body'),
        ('a string body', '"hello"'.encode(), J, 400, 'wrong_shape', 'body'),
        ('ragged split', {'dataframe_split': {'columns': list(good), 'data': [list(good.values())[:-1]]}}, J, 400, 'wrong_shape', 'dataframe_split.data'),
        ('ragged columns', {'inputs': {k: [v, v] if k == num else [v] for k, v in good.items()}}, J, 400, 'ragged_columns', 'inputs'),
        ('wrong content type', json.dumps({'dataframe_records': [good]}).encode(), 'text/plain', 415, 'unsupported_media_type', 'content-type'),
        ('no content type', json.dumps({'dataframe_records': [good]}).encode(), None, 415, 'unsupported_media_type', 'content-type'),
        ('not UTF-8 CSV', b'a,b\n\xff\xfe,1\n', 'text/csv', 400, 'malformed_csv', 'body'),
        ('too many rows', {'dataframe_records': [good] * 10_001}, J, 413, 'too_many_rows', None),
        ('body too large', b'{"dataframe_records": [' + b' ' * 10_000_001 + b']}', J, 413, 'payload_too_large', 'body'),
        ('bad output parameter', {'dataframe_records': [good]}, J, 400, 'bad_parameter', 'output'),
        # an integer no float64 can hold (JSON allows any length): was an uncaught OverflowError, a 500
        ('400-digit integer for a number', b'{"dataframe_records": [' + json.dumps(dict(good, **{num: 7})).replace(f'"{num}": 7', f'"{num}": ' + '9' * 400).encode() + b']}',
         J, 422, 'out_of_range', num),
    ]
    if intcol:
        cases.append(('fraction for an integer', {'dataframe_records': [dict(good, **{intcol: 1.5})]}, J, 422, 'wrong_type', intcol))
        # integers int64 cannot hold (they were captured as -9223372036854775808)
        cases.append(('integer above int64', b'{"dataframe_records": [' + json.dumps(good).replace(f'"{intcol}": {good[intcol]}', f'"{intcol}": 18446744073709551615').encode() + b']}',
                      J, 422, 'out_of_range', intcol))
        cases.append(('1e300 for an integer', {'dataframe_records': [dict(good, **{intcol: 1e300})]}, J, 422, 'out_of_range', intcol))
    return cases


def test_every_bad_input_is_a_4xx_naming_field_and_rule(world):
    srv = world['srv']
    for name, body, ctype, status, rule, field in bad_cases(world['X']):
        raw = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        path = '/invocations?output=maybe' if name == 'bad output parameter' else '/invocations'
        hdrs = ({'Content-Type': ctype} if ctype else {}) | ({'Content-Encoding': 'gzip'} if name == 'gzip body' else {})
        got, obj, _ = srv.request('POST', path, raw, hdrs)
        assert (got, obj.get('rule'), obj.get('field')) == (status, rule, field), (name, got, obj)
        assert obj['message'] and obj['error_code']
    for path in ('/invocations', '/v2/models/model/infer'):   # a 405 names the method to use
        got, _, hdr = srv.request('GET', path)
        assert got == 405 and hdr.get('allow') == 'POST', (path, got, hdr)
    # feedback validation
    for body, rule in (({'feedback': [{'label': 1}]}, 'missing_field'), ({'feedback': [{'request_id': 'x', 'label': 'yes'}]}, 'wrong_type'),
                       ({'feedback': []}, 'empty_payload'), (b'{', 'malformed_json')):
        got, obj, _ = srv.post('/feedback', body if isinstance(body, dict) else body, headers={'Content-Type': 'application/json'})
        assert got in (400, 422) and obj['rule'] == rule, (body, obj)
    assert srv.get('/health')[0] == 200
    assert '5' not in ''.join(str(k) for k in _statuses(srv))


def _statuses(srv):
    c = srv.conn(); c.request('GET', '/metrics'); text = c.getresponse().read().decode()
    return {line.split('status="')[1][0] for line in text.splitlines() if line.startswith('mlops_nb_requests_total')}


# ---- a fuzz run: random bodies, random types in valid shapes, random content types ------------------------------------
def test_fuzz_never_5xx(world):
    from hypothesis import given, settings, strategies as st, HealthCheck
    srv, X = world['srv'], world['X']
    good = records(X, 1)[0]
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=20))
    json_any = st.recursive(scalars, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=8), ch, max_size=4), max_leaves=12)
    record = st.fixed_dictionaries({k: st.one_of(st.just(v), scalars, json_any) for k, v in good.items()})
    body = st.one_of(
        st.builds(lambda r: {'dataframe_records': r}, st.lists(record, max_size=3)),
        st.builds(lambda r: {'instances': r}, st.lists(record, max_size=3)),
        st.builds(lambda r: {'dataframe_split': {'columns': list(good), 'data': [list(x.values()) for x in r]}}, st.lists(record, max_size=3)),
        st.builds(lambda r: {'inputs': r}, json_any),
        st.builds(lambda r: {'feedback': r}, json_any),
        json_any)
    conn = srv.conn()
    seen = []

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=body, raw=st.one_of(st.none(), st.binary(max_size=64)),
           ctype=st.sampled_from(['application/json', 'text/csv', 'application/x-www-form-urlencoded', 'application/json; charset=utf-8']),
           path=st.sampled_from(['/invocations', '/invocations', '/v2/models/model/infer', '/feedback', '/invocations?output=score']))
    def run(body, raw, ctype, path):
        data = raw if raw is not None else json.dumps(body).encode()
        status, obj, _ = srv.request('POST', path, data, {'Content-Type': ctype}, conn=conn)
        seen.append(status)
        assert status < 500, (path, ctype, data[:300], obj)
        if status >= 400: assert isinstance(obj, dict) and obj.get('rule'), obj
    run()
    assert len(seen) >= 400 and 200 in seen and any(400 <= s < 500 for s in seen)
    assert srv.get('/health')[0] == 200


# ---- admin token ------------------------------------------------------------------------------------------------------
def test_admin_endpoints_need_the_token(world):
    srv = world['srv']
    assert srv.post('/admin/reload', b'')[0] == 401
    assert srv.post('/admin/reload', b'', headers={'Authorization': 'Bearer wrong'})[0] == 401
    status, obj, _ = srv.post('/admin/reload', b'', headers={'Authorization': f'Bearer {TOKEN}'})
    assert status == 200 and obj['version'] == world['versions'][0], obj
    assert srv.post('/admin/flush', b'', headers={'Authorization': f'Bearer {TOKEN}'})[0] == 200


# ---- hot swap: promote, a broken version refused, rollback — under continuous load, zero failed requests --------------
def test_promote_and_rollback_under_load(world):
    srv, reg, (v1, v2, v3), X = world['srv'], world['reg'], world['versions'], world['X']
    body = json.dumps({'dataframe_records': records(X, 2)}).encode()
    stop, failures, count = threading.Event(), [], [0]
    seen = {i: [] for i in range(3)}          # per connection: the versions that answered, in order, without repeats

    def load(i):
        versions_seen, conn = seen[i], srv.conn()
        while not stop.is_set():
            try:
                status, obj, hdr = srv.request('POST', '/invocations', body, {'Content-Type': 'application/json'}, conn=conn)
                count[0] += 1
                if status != 200: failures.append((status, obj))
                elif not versions_seen or versions_seen[-1] != hdr['x-model-version']: versions_seen.append(hdr['x-model-version'])
            except Exception as e:
                failures.append(repr(e)); conn = srv.conn()
    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads: t.start()

    def wait_version(v, timeout=60):
        for _ in range(int(timeout * 10)):
            if srv.get('/metadata')[1]['version'] == v: return
            time.sleep(0.1)
        raise AssertionError(f"/metadata never showed {v}")
    try:
        time.sleep(0.5)
        reg.promote(v2, 'champion', reason='test promote', actor='test'); wait_version(v2)
        assert srv.get('/metadata')[1]['runtime'] == 'skops'            # v0002 has no ONNX file: the skops fallback serves it
        time.sleep(0.5)
        reg.rollback(alias='champion', reason='test rollback', actor='test'); wait_version(v1)
        time.sleep(0.5)
        # the registry refuses to promote a damaged version, so point aliases.json at it by hand (another tool, a bad copy)
        (reg.root/'.aliases.tmp').write_text(json.dumps({'champion': v3})); os.replace(reg.root/'.aliases.tmp', reg.root/'aliases.json')
        for _ in range(100):
            meta = srv.get('/metadata')[1]
            if v3 in meta['refused']: break
            time.sleep(0.1)
        assert v3 in meta['refused'] and meta['version'] == v1, meta   # refused, the old one keeps serving
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads: t.join()
        (reg.root/'.aliases.tmp').write_text(json.dumps({'champion': v1})); os.replace(reg.root/'.aliases.tmp', reg.root/'aliases.json')
    assert failures == [], failures[:5]
    assert count[0] > 50 and all(v == [v1, v2, v1] for v in seen.values()), (count, seen)
    c = srv.conn(); c.request('GET', '/metrics'); text = c.getresponse().read().decode()
    assert 'mlops_nb_model_swaps_total 2.0' in text and 'mlops_nb_model_load_failures_total 1.0' in text


# ---- concurrent requests: metrics counted in bulk, capture per micro-batch -----------------------------------------------
def _metric_samples(text:str) -> dict:
    "Prometheus text into {'name{labels}': value} (comments dropped)."
    out = {}
    for line in text.splitlines():
        if line and not line.startswith('#'):
            k, v = line.rsplit(' ', 1); out[k] = float(v)
    return out

def test_concurrent_requests_metrics_and_capture(world):
    """Requests from 8 connections at once (so the server may predict several in one model call): the score histogram,
    class counts and row count in /metrics grow by exactly what was answered, and every request's rows are captured under
    its own id with the score it was sent."""
    from mlops_nb.capture import read_captures
    from mlops_nb.serve import SCORE_BUCKETS
    srv, X = world['srv'], world['X']
    def metrics():
        c = srv.conn(); c.request('GET', '/metrics'); return _metric_samples(c.getresponse().read().decode())
    before = metrics()
    answers, errors = {}, []
    def client(t):
        conn = srv.conn()
        for i in range(25):
            rid = f'conc-{t}-{i}'
            rows = records(X, 1 + (t + i) % 4, start=(t * 25 + i) % 500)
            status, obj, hdr = srv.request('POST', '/invocations?output=both', json.dumps({'dataframe_split': {
                'columns': list(rows[0]), 'data': [list(r.values()) for r in rows]}}).encode(),
                {'Content-Type': 'application/json', 'X-Request-ID': rid}, conn=conn)
            if status != 200: errors.append((status, obj)); continue
            answers[rid] = obj['predictions']
    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert errors == [] and len(answers) == 200
    after = metrics()
    scores = np.array([p['score'] for ps in answers.values() for p in ps])
    labels = np.array([p['label'] for ps in answers.values() for p in ps])
    d = lambda k: after.get(k, 0) - before.get(k, 0)
    assert d('mlops_nb_predicted_rows_total') == len(scores)
    assert d('mlops_nb_predictions_by_class_total{label="1"}') == labels.sum()
    assert d('mlops_nb_predictions_by_class_total{label="0"}') == len(labels) - labels.sum()
    assert d('mlops_nb_requests_total{endpoint="/invocations",method="POST",status="200"}') == 200
    for b in SCORE_BUCKETS:                                        # cumulative buckets, as Prometheus defines them
        assert d(f'mlops_nb_prediction_score_bucket{{le="{b}"}}') == (scores <= b).sum(), b
    assert d('mlops_nb_prediction_score_bucket{le="+Inf"}') == d('mlops_nb_prediction_score_count') == len(scores)
    assert abs(d('mlops_nb_prediction_score_sum') - scores.sum()) < 1e-6
    assert srv.post('/admin/flush', b'', headers={'Authorization': f'Bearer {TOKEN}'})[0] == 200
    df = read_captures(world['root']/'captures', with_labels=False)
    df = df[df.request_id.str.startswith('conc-')].set_index('request_id')
    for rid, ps in answers.items():
        ids = [rid] if len(ps) == 1 else [f'{rid}:{i}' for i in range(len(ps))]
        np.testing.assert_allclose(df.loc[ids, 'prediction'].to_numpy(), [p['score'] for p in ps], err_msg=rid)
        assert df.loc[ids, 'predicted_label'].tolist() == [p['label'] for p in ps], rid
    assert len(df) == len(scores) and (df.latency_ms > 0).all()


# ---- capture: everything on disk after SIGTERM; feedback joined; policies ---------------------------------------------
def test_capture_after_sigterm_and_feedback(world, tmp_path):
    from mlops_nb.capture import read_captures
    X = world['X']
    cap = tmp_path/'captures'
    # a second server with a long flush interval: nothing reaches disk before SIGTERM unless shutdown flushes it
    srv = Server(tmp_path, world['root']/'registry', '--capture-dir', str(cap), '--unseen-categories', 'error', '--max-rows', '50',
                 '--capture-flush-seconds', '3600')
    try:
        conn = srv.conn()
        sent = {}
        for i in range(60):
            rows = records(X, 1 + i % 3, start=i * 3)
            status, obj, hdr = srv.request('POST', '/invocations?output=score', json.dumps({'dataframe_records': rows}).encode(),
                                           {'Content-Type': 'application/json', 'X-Request-ID': f'req-{i}'}, conn=conn)
            assert status == 200 and hdr['x-request-id'] == f'req-{i}'
            sent[f'req-{i}'] = (rows, obj['predictions'])
        good = records(X, 1)[0]
        cat = next(c for c in good if isinstance(good[c], str))
        status, obj, _ = srv.post('/invocations', {'dataframe_records': [dict(good, **{cat: 'never-seen'})]})
        assert (status, obj['rule'], obj['field']) == (422, 'unseen_category', cat)
        assert srv.post('/invocations', {'dataframe_records': [good] * 51})[1]['rule'] == 'too_many_rows'
        status, obj, _ = srv.post('/feedback', {'feedback': [{'request_id': 'req-0', 'label': 1}, {'request_id': 'req-1:1', 'label': 0},
                                                             {'request_id': 'req-0', 'label': 0}]})
        assert status == 200 and obj['stored'] == 3
        assert not (cap/'predictions').exists()                      # all still queued in memory
    finally:
        code = srv.stop(signal.SIGTERM)
    assert code == 0, srv.log.read_text()[-2000:]
    df = read_captures(cap)
    n_rows = sum(len(r) for r, _ in sent.values())
    assert len(df) == n_rows
    assert set(df.model_version) == {world['versions'][0]} and (df.latency_ms > 0).all()
    one = df[df.request_id == 'req-3'].iloc[0]                     # a single-row request keeps its id
    rows, preds = sent['req-3']
    for k, v in rows[0].items(): assert one[k] == v, k
    assert abs(one.prediction - preds[0]) < 1e-9 and one.predicted_label == int(preds[0] >= 0.3)
    multi = df[df.request_id.str.startswith('req-1:')]            # a multi-row request: one id per row, <id>:<row>
    assert sorted(multi.request_id) == ['req-1:0', 'req-1:1']
    assert df.set_index('request_id').label.get('req-0') == 0.0    # the latest label wins
    assert df.set_index('request_id').label.get('req-1:1') == 0.0
    assert df.label.notna().sum() == 2
    assert list(df.columns[:6]) == ['request_id', 'ts', 'model_version', 'latency_ms', 'prediction', 'predicted_label']
    assert str(df.ts.dtype).startswith('datetime64') and 'UTC' in str(df.ts.dtype)
    files = list((cap/'predictions').glob('date=*/part-*.parquet'))
    assert files and all(f.parent.name == f"date={pd.Timestamp.now('UTC').date()}" for f in files)


def test_server_without_token_or_champion(world, tmp_path):
    "Admin endpoints are off without a token; a registry with no champion starts not ready and answers 503, not 500."
    (tmp_path/'empty'/'versions').mkdir(parents=True)
    srv = Server(tmp_path, tmp_path/'empty', '--no-capture', token=None)
    try:
        assert srv.post('/admin/reload', b'', headers={'Authorization': 'Bearer x'})[0] == 403
        assert srv.get('/ready')[0] == 503 and srv.get('/health')[0] == 200
        status, obj, _ = srv.post('/invocations', {'dataframe_records': records(world['X'], 1)})
        assert status == 503 and obj['rule'] == 'no_model'
    finally: srv.stop()


# ---- batch scoring: same validation, streaming, bounded memory --------------------------------------------------------
def _predict(cwd, *args):
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([MLOPS, 'predict', *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_batch_scoring_streams_with_bounded_memory(world, tmp_path):
    import pyarrow as pa, pyarrow.parquet as pq
    X, reg = world['X'], world['reg']
    reg_dir = str(world['root']/'registry')
    small = X.iloc[:2000].reset_index(drop=True)
    small.to_csv(tmp_path/'in.csv', index=False)
    r = _predict(tmp_path, '--input', 'in.csv', '--output', 'out.parquet', '--registry', reg_dir, '--model', world['versions'][0],
                 '--chunk-rows', '300', '--capture-dir', 'cap')
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res['rows'] == 2000 and res['chunks'] == 7
    out = pd.read_parquet(tmp_path/'out.parquet')
    ref = reg.load(world['versions'][0]).predict_proba(small)[:, 1]
    np.testing.assert_allclose(out.prediction, ref, atol=1e-4)
    assert list(out.columns[:len(X.columns)]) == list(X.columns)
    from mlops_nb.capture import read_captures
    assert len(read_captures(tmp_path/'cap')) == 2000
    # bounded memory: 16x the rows, same chunk size -> about the same peak memory
    big = pa.Table.from_pandas(pd.concat([X] * (400_000 // len(X) + 1), ignore_index=True).iloc[:400_000], preserve_index=False)
    pq.write_table(big.slice(0, 25_000), tmp_path/'25k.parquet', row_group_size=10_000)
    pq.write_table(big, tmp_path/'400k.parquet', row_group_size=10_000)
    rss = {}
    for name in ('25k', '400k'):
        r = _predict(tmp_path, '--input', f'{name}.parquet', '--output', f'{name}.out.csv', '--registry', reg_dir, '--chunk-rows', '10000', '--no-capture')
        assert r.returncode == 0, r.stderr
        rss[name] = json.loads(r.stdout.strip().splitlines()[-1])['max_rss_mb']
    assert sum(1 for _ in open(tmp_path/'400k.out.csv')) == 400_001
    assert rss['400k'] < rss['25k'] + 60, rss          # 16x the data, at most 60 MB more (the whole file would be ~150 MB)
    # bad input: exit 2, a message naming file, column and rule; the old output stays
    bad = small.copy(); bad.loc[1234, bad.columns[3]] = None
    num = bad.columns[3]
    bad.to_parquet(tmp_path/'bad.parquet')
    before = (tmp_path/'out.parquet').read_bytes()
    r = _predict(tmp_path, '--input', 'bad.parquet', '--output', 'out.parquet', '--registry', reg_dir, '--no-capture', '--chunk-rows', '500')
    assert r.returncode == 2 and 'bad.parquet' in r.stderr and num in r.stderr and 'null_not_allowed' in r.stderr and 'row 1234' in r.stderr, r.stderr
    assert (tmp_path/'out.parquet').read_bytes() == before
    r = _predict(tmp_path, '--input', 'missing.csv', '--output', 'x.csv', '--registry', reg_dir)
    assert r.returncode == 2 and 'file_not_found' in r.stderr


# ---- every real client: tritonclient.http, MLflow's ScoringServerClient ------------------------------------------------
def _triton_inputs(th, meta, df, binary):
    "tritonclient InferInputs for the rows `df`, typed as the server's v2 metadata says."
    out = []
    for i in meta['inputs']:
        a = df[i['name']].to_numpy()
        a = a.astype(object) if i['datatype'] == 'BYTES' else a.astype({'INT64': 'int64', 'BOOL': bool}.get(i['datatype'], 'float64'))
        t = th.InferInput(i['name'], [len(df)], i['datatype'])
        t.set_data_from_numpy(a, binary_data=binary)
        out.append(t)
    return out

def test_tritonclient_http(world):
    "tritonclient.http as it comes (no Content-Type, binary tensors by default): readiness, metadata, infer, outputs, errors."
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException
    srv, X, reg, v1 = world['srv'], world['X'], world['reg'], world['versions'][0]
    c = th.InferenceServerClient(f'127.0.0.1:{srv.port}')
    assert c.is_server_live() and c.is_server_ready()
    assert c.get_server_metadata()['name'] == 'mlops-nb'
    assert c.is_model_ready('model') and c.is_model_ready('model', v1) and c.is_model_ready('champion')
    assert not c.is_model_ready('no-such-model') and not c.is_model_ready('model', 'v9999')
    meta = c.get_model_metadata('model')
    assert [i['name'] for i in meta['inputs']] == list(X.columns) and meta['versions'] == [v1]
    assert c.get_model_metadata('model', v1)['name'] == 'model'
    df = X.iloc[:7]
    ref = reg.load(v1).predict_proba(df)[:, 1]
    for binary in (False, True):
        r = c.infer('model', _triton_inputs(th, meta, df, binary), request_id='r-1')
        np.testing.assert_allclose(r.as_numpy('predict'), ref, atol=1e-4, err_msg=f'binary={binary}')
        assert r.as_numpy('label').tolist() == [int(s >= 0.3) for s in ref] and r.get_response()['id'] == 'r-1'
    r = c.infer('model', _triton_inputs(th, meta, df, False), model_version=v1, outputs=[th.InferRequestedOutput('label', binary_data=False)])
    assert [o['name'] for o in r.get_response()['outputs']] == ['label']      # the outputs asked for, only those
    with pytest.raises(InferenceServerException, match="model 'no-such-model' is not served here"):
        c.infer('no-such-model', _triton_inputs(th, meta, df, False))
    with pytest.raises(InferenceServerException, match="output 'proba' is not an output"):
        c.infer('model', _triton_inputs(th, meta, df, False), outputs=[th.InferRequestedOutput('proba')])
    bad = _triton_inputs(th, meta, df, False)
    num = next(i for i, m in enumerate(meta['inputs']) if m['datatype'] == 'FP64')
    bad[num] = th.InferInput(meta['inputs'][num]['name'], [7], 'BYTES'); bad[num].set_data_from_numpy(np.array(['x'] * 7, dtype=object), binary_data=False)
    with pytest.raises(InferenceServerException, match=f"input '{meta['inputs'][num]['name']}' is declared BYTES, but the model's column is numeric"):
        c.infer('model', bad)
    c.close()

def test_v2_shapes_datatypes_and_errors(world):
    "The v2 route checks each tensor's shape and datatype and answers errors as the protocol's {'error': ...}."
    srv, X = world['srv'], world['X']
    rows = records(X, 3)
    kinds = {c: ('BYTES' if isinstance(rows[0][c], str) else 'INT64' if isinstance(rows[0][c], int) else 'FP64') for c in rows[0]}
    def body(**change):
        ins = [{'name': c, 'shape': [3], 'datatype': kinds[c], 'data': [r[c] for r in rows]} for c in rows[0]]
        ins[0].update(change)
        return json.dumps({'inputs': ins}).encode()
    first = list(rows[0])[0]
    for change, status, rule in (({'shape': [2]}, 400, 'shape_mismatch'), ({'shape': [3, 2]}, 400, 'bad_shape'), ({'shape': 'x'}, 400, 'bad_shape'),
                                 ({'datatype': 'FLOAT'}, 400, 'bad_datatype'), ({'datatype': 'BYTES', 'data': ['a', 'b', 'c']}, 422, 'wrong_type'),
                                 ({'data': ['1.5', '2', '3']}, 422, 'wrong_type')):
        got, obj, _ = srv.request('POST', '/v2/models/model/infer', body(**change))        # no Content-Type, as tritonclient sends
        assert (got, obj['rule'], obj['field']) == (status, rule, first) and obj['error'] == obj['message'], (change, got, obj)
    assert srv.request('POST', '/v2/models/model/infer', body())[0] == 200
    assert srv.request('POST', '/v2/models/model/versions/v0001/infer', body())[0] == 200
    got, obj, _ = srv.request('POST', '/v2/models/other/infer', body())
    assert got == 404 and obj['rule'] == 'unknown_model' and 'other' in obj['error']
    assert srv.request('POST', '/v2/models/model/versions/v0042/infer', body())[0] == 404
    for path in ('/v2/models/other', '/v2/models/other/ready', '/v2/models/model/versions/v0042/ready', '/v2/models/model/nonsense'):
        got, obj = srv.get(path)
        assert got == 404 and obj['error'], (path, got, obj)
    assert srv.get('/v2/models/model/versions/v0001/ready') == (200, {'name': 'model', 'ready': True})
    st, meta = srv.get('/v2')
    assert st == 200 and meta['name'] == 'mlops-nb' and 'version' in meta


MLFLOW_CLIENT = Path(__file__).resolve().parents[1]/'benchmarks'/'.venv-mlflow-client'
MLFLOW_CLIENT_PINS = ['mlflow-skinny==3.17.2', 'pandas==3.1.1', 'numpy==2.4.6', 'scipy']   # the benchmark's mlflow, without the server parts

def mlflow_python() -> Path:
    """A Python with MLflow's client: the benchmark's MLflow venv if it is there, else a small venv of mlflow-skinny made
    once (mlflow pins importlib_metadata<10, which the project's own environment is past, so it cannot live in .venv)."""
    from filelock import FileLock
    for venv in (MLFLOW_CLIENT.parent/'.venv-mlflow', MLFLOW_CLIENT):
        py = venv/'bin'/'python'
        if py.exists() and subprocess.run([str(py), '-c', 'import mlflow.pyfunc.scoring_server.client, pandas, scipy'], capture_output=True).returncode == 0:
            return py
    with FileLock(f'{MLFLOW_CLIENT}.lock'):
        py = MLFLOW_CLIENT/'bin'/'python'
        if not py.exists() or subprocess.run([str(py), '-c', 'import mlflow.pyfunc.scoring_server.client, scipy'], capture_output=True).returncode:
            subprocess.run([sys.executable, '-m', 'venv', '--clear', str(MLFLOW_CLIENT)], check=True)
            subprocess.run([str(py), '-m', 'pip', 'install', '-q', *MLFLOW_CLIENT_PINS], check=True, timeout=900)
    return py

MLFLOW_CALL = '''
import json, sys
import numpy as np, pandas as pd
from mlflow.pyfunc.scoring_server.client import ScoringServerClient
port, rows = int(sys.argv[1]), json.loads(sys.argv[2])
c = ScoringServerClient('127.0.0.1', port)
c.wait_server_ready(timeout=30)
df = pd.DataFrame(rows)
df.loc[1, sys.argv[3]] = np.nan                      # a missing value: MLflow's client writes a bare NaN
out = {'ok': c.invoke(df).get_predictions().iloc[:, 0].tolist()}
try: c.invoke(pd.DataFrame(rows).assign(**{sys.argv[4]: np.nan}))
except Exception as e: out['error'] = str(e)
print(json.dumps(out))
'''

@pytest.fixture(scope='module')
def nullable(world, tmp_path_factory):
    "A registry whose model was trained with missing amounts (so a null amount is allowed), served."
    from mlops_nb.registry import Registry
    root = tmp_path_factory.mktemp('nullable')
    X = world['X'].copy()
    X.loc[X.index[::20], 'amount'] = np.nan
    y = (world['X']['amount'] > world['X']['amount'].median()).astype(int)
    reg = Registry(root/'registry')
    cat = [c for c in X.columns if X[c].dtype == object or str(X[c].dtype) == 'str']
    v = reg.register(tree_pipeline([c for c in X.columns if c not in cat], cat, 10).fit(X, y), features=list(X.columns), task='classification',
                     X_test=X, threshold=0.5, metrics={'pr_auc': 0.5})
    reg.promote(v, 'champion', reason='test', actor='test')
    srv = Server(root, root/'registry', '--no-capture', '--output', 'score')
    yield dict(root=root, reg=reg, X=X, srv=srv)
    srv.stop()

def test_mlflow_scoring_server_client(nullable):
    "MLflow's own client on a DataFrame with a missing value: answered (NaN is a null); a null where none is allowed: its message."
    srv, X, reg = nullable['srv'], nullable['X'], nullable['reg']
    rows = records(X.dropna(), 4)
    other = next(c for c in X.columns if c != 'amount' and X[c].dtype.kind == 'f')
    p = subprocess.run([str(mlflow_python()), '-c', MLFLOW_CALL, str(srv.port), json.dumps(rows), 'amount', other],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    df = pd.DataFrame(rows); df.loc[1, 'amount'] = np.nan
    np.testing.assert_allclose(out['ok'], reg.load('champion').predict_proba(df[X.columns])[:, 1], atol=1e-4)
    assert 'error code 422' in out['error'] and 'null_not_allowed' in out['error'] and other in out['error'], out


# ---- a refused ?output= is neither predicted nor captured --------------------------------------------------------------
def test_bad_output_parameter_is_refused_before_predicting(world):
    srv, X = world['srv'], world['X']
    def rows_predicted():
        c = srv.conn(); c.request('GET', '/metrics'); return _metric_samples(c.getresponse().read().decode())['mlops_nb_predicted_rows_total']
    before = rows_predicted()
    for _ in range(3):
        assert srv.post('/invocations?output=maybe', {'dataframe_records': records(X, 2)})[0] == 400
    assert rows_predicted() == before


# ---- limits: /feedback's length checked first; trickling clients timed out; a cap on requests in progress ---------------
def _raw(port, data:bytes, timeout=10) -> bytes:
    "Send `data` on a fresh socket; what the server answers before closing (or within `timeout`)."
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as s:
        s.sendall(data)
        out = b''
        try:
            while chunk := s.recv(65536): out += chunk
        except socket.timeout: pass
        return out

def test_feedback_checks_content_length_first(world):
    srv = world['srv']
    t = time.time()
    got = _raw(srv.port, b'POST /feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 300000000\r\nConnection: close\r\n\r\n{"feedback": [', timeout=5)
    assert got.startswith(b'HTTP/1.1 413') and b'payload_too_large' in got and time.time() - t < 4, got[:300]
    # a body without a declared length (chunked) is counted as it streams in, and refused past serve.max_bytes
    c = srv.conn()
    c.putrequest('POST', '/feedback'); c.putheader('Content-Type', 'application/json'); c.putheader('Transfer-Encoding', 'chunked'); c.endheaders()
    try:
        for _ in range(12): c.send(b'%x\r\n%s\r\n' % (1_000_000, b' ' * 1_000_000))
        c.send(b'0\r\n\r\n')
    except OSError: pass
    r = c.getresponse()
    assert r.status == 413 and json.loads(r.read())['rule'] == 'payload_too_large'

def test_read_timeout_and_concurrency_cap(world, tmp_path):
    "serve.read_timeout closes connections whose headers or body trickle in; serve.limit_concurrency answers 503 above it."
    (tmp_path/'params.yaml').write_text('serve:\n  read_timeout: 1.0\n  limit_concurrency: 3\n')
    srv = Server(tmp_path, world['root']/'registry', '--no-capture')
    try:
        def trickle(head:bytes, parts:list[bytes]) -> float:
            "Seconds until the server closes a connection that sends `head`, then one of `parts` every 0.3 s."
            t = time.time()
            with socket.create_connection(('127.0.0.1', srv.port), timeout=10) as s:
                s.sendall(head)
                for p in parts:
                    time.sleep(0.3)
                    try: s.sendall(p)
                    except OSError: break
                    s.settimeout(0.01)
                    try:
                        if s.recv(1024) == b'': break
                    except socket.timeout: pass
                    except OSError: break
                return time.time() - t
        assert trickle(b'POST /invocations HTTP/1.1\r\nHost: x\r\n', [b'X-A: b\r\n'] * 30) < 3        # headers trickling
        assert trickle(b'POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{',
                       [b' '] * 30) < 3                                                              # body trickling
        idle = [socket.create_connection(('127.0.0.1', srv.port)) for _ in range(3)]                # connections in progress
        try:
            time.sleep(0.2)
            assert _raw(srv.port, b'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n').startswith(b'HTTP/1.1 503')
        finally:
            for s in idle: s.close()
        time.sleep(0.3)
        assert srv.get('/health')[0] == 200
    finally: srv.stop()


# ---- /metrics: bounded label values; several workers never make a counter go backwards ------------------------------
def test_metrics_unmatched_routes_one_label(world):
    import uuid
    from prometheus_client.parser import text_string_to_metric_families
    srv = world['srv']
    conn = srv.conn()
    for _ in range(200): assert srv.request('GET', f'/no/such/{uuid.uuid4().hex}', conn=conn)[0] == 404
    c = srv.conn(); c.request('GET', '/metrics'); fams = list(text_string_to_metric_families(c.getresponse().read().decode()))
    endpoints = {s.labels['endpoint'] for f in fams for s in f.samples if 'endpoint' in s.labels}
    assert 'unmatched' in endpoints and not any(e.startswith('/no/') for e in endpoints), endpoints
    assert endpoints <= {'unmatched', '/invocations', '/v2/models/{name}/infer', '/v2/models/{name}', '/v2/models/{name}/ready', '/metrics', '/metadata',
                         '/health', '/ready', '/ping', '/version', '/openapi.json', '/docs', '/feedback', '/admin/reload', '/admin/flush',
                         '/v2', '/v2/health/live', '/v2/health/ready', '/'}, endpoints

def test_metrics_with_two_workers_never_go_backwards(world, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families
    srv = Server(tmp_path, world['root']/'registry', '--no-capture', '--workers', '2')
    try:
        body = json.dumps({'dataframe_records': records(world['X'], 1)}).encode()
        last, pids = {}, set()
        for i in range(400):                                         # until both workers answered scrapes (accepts are uneven)
            if i >= 40 and len(pids) == 2: break
            for _ in range(1 + i % 3): assert srv.request('POST', '/invocations', body, {'Content-Type': 'application/json'})[0] == 200
            c = srv.conn(); c.request('GET', '/metrics'); text = c.getresponse().read().decode(); c.close()
            for f in text_string_to_metric_families(text):
                if f.type not in ('counter', 'histogram'): continue
                for s in f.samples:
                    assert 'pid' in s.labels, s                      # every series says which worker counted it
                    pids.add(s.labels['pid'])
                    k = (s.name, tuple(sorted(s.labels.items())))
                    assert s.value >= last.get(k, 0), (k, last.get(k), s.value)
                    last[k] = s.value
        assert len(pids) == 2, pids
    finally: srv.stop()


# ---- a version refused once is retried when the alias moves again; /ready says when the alias is not served --------
def test_refused_version_retried_after_repair(world, tmp_path):
    import shutil
    from prometheus_client.parser import text_string_to_metric_families
    v1, v2 = world['versions'][:2]
    reg_dir = tmp_path/'registry'
    shutil.copytree(world['root']/'registry', reg_dir)
    (reg_dir/'aliases.json').write_text(json.dumps({'champion': v1}))
    srv = Server(tmp_path, reg_dir, '--no-capture')
    def point(v):   # what a promote writes (a new file replacing the old), here done by hand: the version is damaged
        (reg_dir/'.aliases.tmp').write_text(json.dumps({'champion': v})); os.replace(reg_dir/'.aliases.tmp', reg_dir/'aliases.json')
    def mismatch():
        c = srv.conn(); c.request('GET', '/metrics'); text = c.getresponse().read().decode()
        return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == 'mlops_nb_model_reference_mismatch')
    try:
        model = reg_dir/'versions'/v2/'model.skops'
        good = model.read_bytes()
        model.write_bytes(good[:100])                                  # still being copied, say
        point(v2)
        for _ in range(100):
            if v2 in srv.get('/metadata')[1]['refused']: break
            time.sleep(0.1)
        st, obj = srv.get('/ready')
        assert st == 503 and obj['rule'] == 'reference_not_served' and v2 in obj['message'], obj
        assert srv.get('/metadata')[1]['version'] == v1 and mismatch() == 1
        model.write_bytes(good)                                        # repaired; promoted again
        point(v2)
        for _ in range(100):
            if srv.get('/metadata')[1]['version'] == v2: break
            time.sleep(0.1)
        assert srv.get('/metadata')[1]['version'] == v2 and srv.get('/ready')[0] == 200 and mismatch() == 0
    finally: srv.stop()


# ---- promotion load-checks a version -----------------------------------------------------------------------------------
def test_promote_refuses_a_version_no_server_can_load(world, tmp_path):
    "A crafted version (an untrusted type in model.skops, manifest rewritten to match) is refused by `models promote`."
    import shutil, skops.io as sio
    from sklearn.preprocessing import FunctionTransformer
    from mlops_nb.registry import sha256_file
    v1, v2 = world['versions'][:2]
    reg_dir = tmp_path/'registry'
    shutil.copytree(world['root']/'registry', reg_dir)
    (reg_dir/'aliases.json').write_text(json.dumps({'champion': v1}))
    d = reg_dir/'versions'/v2
    sio.dump(FunctionTransformer(func=os.system), d/'model.skops')
    man = json.loads((d/'manifest.json').read_text())
    man['files']['model.skops'] = {**man['files']['model.skops'], 'size': (d/'model.skops').stat().st_size, 'sha256': sha256_file(d/'model.skops')}
    (d/'manifest.json').write_text(json.dumps(man))
    p = subprocess.run([MLOPS, 'models', 'promote', v2, '--registry', str(reg_dir), '--reason', 'test'], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and 'untrusted type' in p.stderr and 'system' in p.stderr, (p.returncode, p.stderr)
    assert json.loads((reg_dir/'aliases.json').read_text()) == {'champion': v1}


# ---- the small ones: landing page, OpenAPI, the URL in the log, a one-line start-up refusal ---------------------------
def test_landing_openapi_url_and_startup_refusal(world, tmp_path):
    import shutil
    srv = world['srv']
    st, page, hdr = srv.request('GET', '/')
    assert st == 200 and 'href="/docs"' in page and 'href="/metadata"' in page
    spec = srv.get('/openapi.json')[1]
    for p in ('/admin/reload', '/admin/flush', '/v2/models/{name}/ready', '/docs', '/', '/v2'):
        assert p in spec['paths'], p
    assert spec['paths']['/admin/reload']['post']['security'] == [{'bearer': []}]
    assert spec['components']['securitySchemes']['bearer'] == {'type': 'http', 'scheme': 'bearer', 'description': spec['components']['securitySchemes']['bearer']['description']}
    body = spec['paths']['/feedback']['post']['requestBody']['content']['application/json']['schema']['properties']['feedback']
    assert body['minItems'] == 1 and body['items']['properties']['request_id']['minLength'] == 1
    assert f'http://127.0.0.1:{srv.port}/' in srv.log.read_text()                # serve says where it listens
    # a champion that cannot be loaded: the one-line message the CLI gives elsewhere, exit 2, no traceback
    reg_dir = tmp_path/'registry'
    shutil.copytree(world['root']/'registry', reg_dir)
    (reg_dir/'aliases.json').write_text(json.dumps({'champion': world['versions'][2]}))   # v0003: damaged after registration
    p = subprocess.run([MLOPS, 'serve', '--registry', str(reg_dir), '--port', str(free_port()), '--no-capture'], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and 'Traceback' not in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().count('\n') == 0 and p.stderr.startswith('mlops-nb serve: error: cannot serve') and 'manifest says' in p.stderr, p.stderr
