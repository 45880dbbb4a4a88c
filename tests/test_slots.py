"""Several named models in one server, and shadow traffic, as real `mlops-nb serve` processes on 127.0.0.1: each model
answered on its own routes and swapped on its own, its metrics labelled and its captures in its own folder; a shadow
version that scores a copy of the traffic without changing a byte of the answers, its captures complete, its share
sampled by request id, its failures kept from the client; and the agreement report against a hand computation."""
import json, subprocess, sys, time

import numpy as np, pandas as pd, pytest
from sklearn.linear_model import LogisticRegression

from conftest import VENV_BIN
from test_serve import Server, TOKEN
from test_named_models import _register, _data
from mlops_nb.capture import read_captures
from mlops_nb.registry import Registry
from mlops_nb.slots import sampled

ROWS = [{'a': float(a), 'b': float(b)} for a, b in zip(np.linspace(-2, 2, 40), np.linspace(1.5, -1.5, 40))]


def raw(srv, path, body, rid):
    "POST `body`; the status, the exact body bytes and the headers (but the date, which differs by the second)."
    c = srv.conn()
    c.request('POST', path, body=json.dumps(body).encode(), headers={'Content-Type': 'application/json', 'X-Request-ID': rid})
    r = c.getresponse(); data = r.read(); c.close()
    return r.status, data, sorted((k.lower(), v) for k, v in r.getheaders() if k.lower() != 'date')

def admin(srv, path):
    st, obj, _ = srv.request('POST', path, b'', {'Authorization': f'Bearer {TOKEN}'})
    assert st == 200, obj
    return obj

def metric_samples(srv) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    c = srv.conn(); c.request('GET', '/metrics'); text = c.getresponse().read().decode(); c.close()
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != 'pid'))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}

def wait_for(cond, what, seconds=20):
    for _ in range(int(seconds * 10)):
        if cond(): return
        time.sleep(0.1)
    raise AssertionError(f'timed out waiting for {what}')


def test_deterministic_sampler():
    ids = [f'r{i}' for i in range(5000)]
    picked = [i for i in ids if sampled(i, 0.3)]
    assert 0.27 < len(picked) / len(ids) < 0.33
    # the same choice in another process (no per-process hash seed), so every worker and server mirrors the same requests
    code = "import json, sys; from mlops_nb.slots import sampled; print(json.dumps([i for i in json.load(sys.stdin) if sampled(i, 0.3)]))"
    out = subprocess.run([str(VENV_BIN/'python'), '-c', code], input=json.dumps(ids), capture_output=True, text=True, check=True,
                         env={'PYTHONHASHSEED': '123', 'PATH': ''})
    assert json.loads(out.stdout) == picked
    assert all(sampled(i, 1.0) for i in ids) and not any(sampled(i, 0.0) for i in ids)


# ---- two named models in one process -------------------------------------------------------------------------------------
def test_two_named_models_in_one_server(tmp_path):
    root = tmp_path/'registry'
    fraud, churn = Registry(root, 'fraud'), Registry(root, 'churn')
    _register(fraud, 1); _register(fraud, 2); _register(churn, 3); _register(churn, 4)
    fraud.promote('v0001'); churn.promote('v0001')
    srv = Server(tmp_path, root, '--model', 'fraud', '--model', 'churn@champion', '--capture-dir', str(tmp_path/'caps'), '--shadow-share', '0')
    try:
        body = {'dataframe_records': ROWS[:3]}
        answers = {}
        rids = {'/invocations': 'default', '/models/fraud/invocations': 'fraud1', '/models/churn/invocations': 'churn1'}
        for path, rid in rids.items():
            st, out, hdr = srv.post(path + '?output=score', body, headers={'X-Request-ID': rid})
            assert st == 200, out
            answers[path] = (hdr['x-model-version'], out['predictions'])
        assert answers['/invocations'] == answers['/models/fraud/invocations']              # the first model is the default
        assert answers['/models/fraud/invocations'][1] != answers['/models/churn/invocations'][1]
        # v2 selects the model by its name
        v2 = {'inputs': [{'name': k, 'shape': [2], 'datatype': 'FP64', 'data': [r[k] for r in ROWS[:2]]} for k in ('a', 'b')]}
        st, out, _ = srv.post('/v2/models/churn/infer', v2, headers={'X-Request-ID': 'v2churn'})
        assert st == 200 and out['model_name'] == 'churn' and np.allclose(out['outputs'][0]['data'], answers['/models/churn/invocations'][1][:2]), out
        assert srv.get('/v2/models/fraud/ready') == (200, {'name': 'fraud', 'ready': True})
        assert srv.get('/models/churn/metadata')[1]['name'] == 'churn'
        # an unknown name: 404 naming the models served, on every route family
        for method, path in (('POST', '/models/nope/invocations'), ('GET', '/v2/models/nope/ready'), ('GET', '/models/nope/metadata')):
            st, out, _ = srv.request(method, path, body if method == 'POST' else None)
            assert st == 404 and out['rule'] == 'unknown_model' and "'fraud'" in out['message'] and "'churn'" in out['message'], (path, out)
        # promote churn: churn swaps, fraud keeps its version
        churn.promote('v0002', reason='better')
        wait_for(lambda: srv.get('/models/churn/metadata')[1]['version'] == 'v0002', 'churn to swap')
        assert srv.get('/models/fraud/metadata')[1]['version'] == 'v0001' and srv.get('/metadata')[1]['version'] == 'v0001'
        st, out, hdr = srv.post('/models/churn/invocations', body, headers={'X-Request-ID': 'after-swap'})
        assert st == 200 and hdr['x-model-version'] == 'v0002'
        assert srv.get('/ready')[1]['models'] == {'fraud': 'v0001', 'churn': 'v0002'}
        # metrics: every model's series carry its name
        m = metric_samples(srv)
        key = lambda ep, model: ('mlops_nb_requests_total', (('endpoint', ep), ('method', 'POST'), ('model', model), ('status', '200')))
        assert m[key('/invocations', 'fraud')] == 1 and m[key('/models/{name}/invocations', 'fraud')] == 1
        assert m[key('/models/{name}/invocations', 'churn')] == 2 and m[key('/v2/models/{name}/infer', 'churn')] == 1
        assert m[('mlops_nb_model_swaps_total', (('model', 'churn'),))] == 1 and m[('mlops_nb_model_swaps_total', (('model', 'fraud'),))] == 0
        assert m[('mlops_nb_predicted_rows_total', (('model', 'churn'),))] == 3 + 2 + 3 and m[('mlops_nb_predicted_rows_total', (('model', 'fraud'),))] == 6
        assert m[('mlops_nb_requests_total', (('endpoint', '/models/{name}/invocations'), ('method', 'POST'), ('status', '404')))] == 1
        # captures: one folder per model
        admin(srv, '/admin/flush')
        f, c = read_captures(tmp_path/'caps'/'fraud'), read_captures(tmp_path/'caps'/'churn')
        req = lambda df: df.groupby('model_version').request_id.apply(lambda s: sorted(set(s.str.split(':').str[0]))).to_dict()
        assert req(f) == {'v0001': ['default', 'fraud1']}
        assert req(c) == {'v0001': ['churn1', 'v2churn'], 'v0002': ['after-swap']}
        assert not (tmp_path/'caps'/'predictions').exists()
    finally:
        assert srv.stop() == 0


def test_model_all_serves_every_name(tmp_path):
    root = tmp_path/'registry'
    for name, seed in (('fraud', 1), ('churn', 2)):
        reg = Registry(root, name); _register(reg, seed); reg.promote('v0001')
    srv = Server(tmp_path, root, '--model', 'all', '--no-capture')
    try:
        assert srv.get('/ready')[1]['models'] == {'fraud': 'v0001', 'churn': 'v0001'}
        assert srv.post('/models/churn/invocations', {'dataframe_records': ROWS[:1]})[0] == 200
    finally:
        assert srv.stop() == 0


# ---- shadow traffic ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def shadow_world(tmp_path_factory):
    root = tmp_path_factory.mktemp('shadow')
    reg = Registry(root/'registry')
    _register(reg, 1); _register(reg, 2)
    X, y = _data(5); X = X.assign(c=X.a * 0.5)                          # v0003 needs a column the requests do not have
    reg.register(LogisticRegression().fit(X, y), features=['a', 'b', 'c'], task='classification', X_test=X.iloc[:50])
    reg.promote('v0001')
    return root, reg


def test_shadow_answers_nothing_changes_and_every_request_is_captured(shadow_world, tmp_path):
    root, reg = shadow_world
    reg.promote('v0002', alias='shadow')
    on = Server(tmp_path, root/'registry', '--capture-dir', str(tmp_path/'on'))
    off = Server(tmp_path, root/'registry', '--capture-dir', str(tmp_path/'off'), '--shadow-share', '0')
    try:
        assert on.get('/metadata')[1]['shadow']['version'] == 'v0002' and off.get('/metadata')[1]['shadow'] is None
        reqs = [('/invocations?output=both', {'dataframe_records': ROWS[i:i + 1 + i % 3]}, f'r{i}') for i in range(30)]
        v2 = {'inputs': [{'name': k, 'shape': [3], 'datatype': 'FP64', 'data': [r[k] for r in ROWS[:3]]} for k in ('a', 'b')]}
        reqs.append(('/v2/models/model/infer', v2, 'r-v2'))
        for path, body, rid in reqs:
            a, b = raw(on, path, body, rid), raw(off, path, body, rid)
            assert a == b and a[0] == 200, (rid, a, b)                 # status, body bytes and headers: the same
        admin(on, '/admin/flush'); admin(off, '/admin/flush')
        both = read_captures(tmp_path/'on', role=None, with_labels=False)
        prim, sh = both[both.role == 'primary'], both[both.role == 'shadow']
        assert len(prim) == len(sh) == sum(1 + i % 3 for i in range(30)) + 3
        assert sorted(prim.request_id) == sorted(sh.request_id)        # every request (every row) has its shadow row
        assert set(prim.model_version) == {'v0001'} and set(sh.model_version) == {'v0002'}
        assert read_captures(tmp_path/'on').role.eq('primary').all() and len(read_captures(tmp_path/'on')) == len(prim)
        off_caps = read_captures(tmp_path/'off', role=None)
        assert set(off_caps.role) == {'primary'} and sorted(off_caps.request_id) == sorted(prim.request_id)
        # the shadow's scores are v0002's
        j = prim.merge(sh, on='request_id', suffixes=('_p', '_s'))
        expect = reg.load('v0002').predict_proba(j[['a_s', 'b_s']].set_axis(['a', 'b'], axis=1))[:, 1]
        assert np.allclose(j.prediction_s, expect, atol=1e-6)
        m = metric_samples(on)
        assert m[('mlops_nb_shadow_requests_total', ())] == 31 and m[('mlops_nb_shadow_errors_total', ())] == 0
        assert m[('mlops_nb_shadow_dropped_total', ())] == 0

        # the agreement report, against a hand computation on the captured files
        from mlops_nb.monitor import shadow_report
        rep = shadow_report(tmp_path/'on', threshold=0.4)
        parts = pd.concat([pd.read_parquet(f) for f in sorted((tmp_path/'on'/'predictions').rglob('part-*.parquet'))])
        hp, hs = parts[parts.role == 'primary'].set_index('request_id'), parts[parts.role == 'shadow'].set_index('request_id')
        hj = hp.join(hs, how='inner', suffixes=('_p', '_s'))
        d = (hj.prediction_s - hj.prediction_p).abs()
        assert rep['compared'] == len(hj) == len(hp) and rep['missing'] == 0
        assert rep['label_agreement'] == round(((hj.prediction_p >= 0.4) == (hj.prediction_s >= 0.4)).mean(), 6)
        assert rep['score_abs_diff'] == {'mean': round(d.mean(), 6), 'p50': round(d.quantile(0.5), 6), 'p95': round(d.quantile(0.95), 6)}
        assert rep['latency_ms'] == {'primary': {'p50': round(hj.latency_ms_p.quantile(0.5), 6), 'p99': round(hj.latency_ms_p.quantile(0.99), 6)},
                                     'shadow': {'p50': round(hj.latency_ms_s.quantile(0.5), 6), 'p99': round(hj.latency_ms_s.quantile(0.99), 6)}}
        assert rep['versions'] == {'primary': ['v0001'], 'shadow': ['v0002']}
        # the command: the primary version's threshold from the registry, the server's counters
        out = subprocess.run([str(VENV_BIN/'mlops-nb'), 'shadow', '--captures', str(tmp_path/'on'), '--registry', str(root/'registry'),
                              '--server', f'http://127.0.0.1:{on.port}', '--json'], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        cli = json.loads(out.stdout)
        assert cli['threshold'] == 0.5 and cli['label_agreement'] == round(((hj.prediction_p >= 0.5) == (hj.prediction_s >= 0.5)).mean(), 6)
        assert (cli['shadow_errors'], cli['shadow_dropped']) == (0, 0)
    finally:
        assert on.stop() == 0 and off.stop() == 0


def test_shadow_share_and_a_failing_shadow(shadow_world, tmp_path):
    root, reg = shadow_world
    reg.promote('v0002', alias='shadow')
    srv = Server(tmp_path, root/'registry', '--capture-dir', str(tmp_path/'caps'), '--shadow-share', '0.5')
    try:
        ids = [f's{i}' for i in range(80)]
        for rid in ids: assert srv.post('/invocations', {'dataframe_records': ROWS[:1]}, headers={'X-Request-ID': rid})[0] == 200
        admin(srv, '/admin/flush')
        sh = read_captures(tmp_path/'caps', role='shadow')
        assert sorted(sh.request_id) == sorted(i for i in ids if sampled(i, 0.5)) and 0 < len(sh) < len(ids)
        # a shadow that fails on every request (it needs column c): every request still answered, errors counted, nothing captured
        reg.promote('v0003', alias='shadow')
        wait_for(lambda: (srv.get('/metadata')[1]['shadow'] or {}).get('version') == 'v0003', 'the shadow to move to v0003')
        bad = [f'f{i}' for i in range(40)]
        for rid in bad:
            st, out, hdr = srv.post('/invocations', {'dataframe_records': ROWS[:2]}, headers={'X-Request-ID': rid})
            assert st == 200 and hdr['x-model-version'] == 'v0001', out
        admin(srv, '/admin/flush')
        assert not set(read_captures(tmp_path/'caps', role='shadow').request_id) & {f'{i}:{k}' for i in bad for k in (0, 1)}
        m = metric_samples(srv)
        assert m[('mlops_nb_shadow_errors_total', ())] == sum(sampled(i, 0.5) for i in bad) > 0
        assert len(read_captures(tmp_path/'caps')) == len(ids) + 2 * len(bad)
        # the alias removed: no shadow
        aliases = reg.aliases(); aliases.pop('shadow')
        (reg.aliases_path).write_text(json.dumps(aliases))
        wait_for(lambda: srv.get('/metadata')[1]['shadow']['version'] is None, 'the shadow to stop')
    finally:
        assert srv.stop() == 0


def test_serve_settings_for_several_models_and_the_shadow(tmp_path):
    from mlops_nb.params import params_problems
    from mlops_nb.serve import ServeConfig
    assert params_problems({'serve': {'model': ['fraud', 'churn'], 'shadow_share': 0.2, 'shadow_queue': 10}}) == []
    assert params_problems({'serve': {'shadow_share': 2}}) == ['serve.shadow_share: 2 is greater than the maximum of 1']
    root = tmp_path/'registry'
    for name, seed in (('fraud', 1), ('churn', 2)): _register(Registry(root, name), seed)
    cfg = ServeConfig.resolve({'model': ['fraud', 'churn@v0001']}, env={}, registry=str(root))
    assert cfg.model_refs() == ['fraud@champion', 'churn@v0001']              # a bare model name is its champion
    assert ServeConfig(registry=str(root), model='all').model_refs() == ['fraud@champion', 'churn@champion']
    assert ServeConfig(registry=str(root), model='challenger').model_refs() == ['challenger']   # else an alias of the root model


# ---- a canary of one named model, in a server of two models with two workers ----------------------------------------------
def test_canary_of_one_named_model_with_two_workers(tmp_path):
    "Every worker applies the model's rollout.json alike: a key keeps one version on any connection; the other model is untouched."
    root = tmp_path/'registry'
    fraud, churn = Registry(root, 'fraud'), Registry(root, 'churn')
    _register(fraud, 1); _register(fraud, 2); _register(churn, 3)
    fraud.promote('v0001'); churn.promote('v0001')
    srv = Server(tmp_path, root, '--model', 'fraud', '--model', 'churn', '--workers', '2', '--capture-dir', str(tmp_path/'caps'), '--no-access-log')
    keys = [f'customer-{i}' for i in range(60)]
    def versions(path):
        "Each key's versions over 3 rounds, each request on a new connection (the kernel spreads them over the workers)."
        seen = {}
        for _ in range(3):
            for k in keys:
                st, out, hdr = srv.post(path, {'dataframe_records': ROWS[:1]}, headers={'X-Rollout-Key': k})
                assert st == 200, out
                seen.setdefault(k, set()).add(hdr['x-model-version'])
        return seen
    try:
        fraud.start_rollout('v0002', [50, 100], 60, {'header': 'x-rollout-key'}, actor='test')
        # both workers see the split: wait until the canary answers, then until the split is stable over every connection
        wait_for(lambda: any(v == {'v0002'} for v in versions('/models/fraud/invocations').values()), 'the canary to answer', 30)
        time.sleep(1.0)                                            # every worker polled rollout.json (every 0.2 s)
        seen = versions('/models/fraud/invocations')
        assert all(len(v) == 1 for v in seen.values()), {k: v for k, v in seen.items() if len(v) > 1}   # sticky across workers
        on_canary = sum(v == {'v0002'} for v in seen.values())
        assert 15 <= on_canary <= 45, on_canary                  # about half of the keys
        assert {frozenset(v) for v in versions('/models/churn/invocations').values()} == {frozenset({'v0001'})}   # churn is not rolled out
        assert versions('/invocations') == seen                                    # /invocations is fraud's, with the same split
        # a rollback: every key of every worker back on the champion
        fraud.rollback_rollout('test: rolled back by hand', actor='test')
        time.sleep(1.0)
        assert {frozenset(v) for v in versions('/models/fraud/invocations').values()} == {frozenset({'v0001'})}
        # /ready reports both workers' models as served (each process answers for itself)
        assert srv.get('/ready')[1]['models'] == {'fraud': 'v0001', 'churn': 'v0001'}
    finally:
        assert srv.stop() == 0


def test_a_canary_and_the_champion_in_one_micro_batch_answer_each_with_its_own_model(tmp_path):
    """Requests for both versions that the server predicts in one micro-batch (their features built once, each version
    reading its rows as views) get their own version's score, row for row, under concurrent load."""
    from concurrent.futures import ThreadPoolExecutor
    from mlops_nb.serve import LoadedModel
    root = tmp_path/'registry'
    reg = Registry(root)
    _register(reg, 1); _register(reg, 9)                                  # two different fits of the same features
    reg.promote('v0001')
    reg.start_rollout('v0002', [50, 100], 600, {'header': 'x-rollout-key'}, actor='test')
    models = {v: LoadedModel(reg.version_dir(v)) for v in ('v0001', 'v0002')}
    rows = [{'a': float(a), 'b': float(b)} for a, b in zip(np.linspace(-3, 3, 240), np.cos(np.linspace(0, 9, 240)))]
    expect = {v: m.predict(m.validator.columns({k: [r[k] for r in rows] for k in ('a', 'b')}, len(rows)))[0] for v, m in models.items()}
    assert (np.abs(expect['v0001'] - expect['v0002']) > 1e-3).mean() > 0.9   # a row answered by the wrong version would show
    srv = Server(tmp_path, root, '--no-access-log')
    try:
        wait_for(lambda: any(srv.post('/invocations', {'dataframe_records': rows[:1]}, headers={'X-Rollout-Key': f'k{i}'})[2]['x-model-version'] == 'v0002'
                             for i in range(20)), 'the canary to answer')
        def worker(part):
            c, out = srv.conn(), []
            for i in part:
                st, obj, hdr = srv.request('POST', '/invocations?output=score', {'dataframe_records': [rows[i]]}, {'X-Rollout-Key': f'k{i}'}, conn=c)
                out.append((i, st, obj, hdr['x-model-version']))
            c.close(); return out
        parts = [list(range(j, len(rows), 16)) for j in range(16)]
        for _ in range(3):
            with ThreadPoolExecutor(16) as ex: got = [r for rs in ex.map(worker, parts) for r in rs]
            assert all(st == 200 for _, st, _, _ in got), [o for _, st, o, _ in got if st != 200][:3]
            assert {v for *_, v in got} == {'v0001', 'v0002'}
            wrong = [(i, v, obj['predictions'][0], expect[v][i]) for i, _, obj, v in got if abs(obj['predictions'][0] - expect[v][i]) > 1e-9]
            assert not wrong, wrong[:5]
        shared = sum(v for (name, _), v in metric_samples(srv).items() if name == 'mlops_nb_shared_feature_batches_total')
        assert shared > 0                                                   # the load did mix both versions in batches
    finally:
        assert srv.stop() == 0
