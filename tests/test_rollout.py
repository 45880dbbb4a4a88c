"""Canary rollouts on real servers on 127.0.0.1 under bounded load: a good candidate goes through every step to
champion; one that raises, one that is slow and one whose scores are shifted are each rolled back with no failed client
request and the history saying why; a key stays on one version; a restarted server resumes the split."""
import http.client, json, os, random, subprocess, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np, pytest

from conftest import VENV_BIN
from test_serve import Server, _frame, tree_pipeline
import rollout_models
from rollout_models import Faulty, TRUSTED

TESTS = Path(__file__).resolve().parent
KEYS = [f'customer-{i}' for i in range(300)]


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "A registry: champion v0001 and good v0002 (ONNX), and three faulty candidates (skops): raising, slow, shifted."
    from mlops_nb.features import feature_columns
    from mlops_nb.registry import Registry
    saved = {k: os.environ.get(k) for k in ('MLOPS_NB_TRUSTED_TYPES', 'PYTHONPATH')}
    os.environ['MLOPS_NB_TRUSTED_TYPES'] = TRUSTED                      # for this process and the servers it starts
    os.environ['PYTHONPATH'] = os.pathsep.join(p for p in (str(TESTS), saved['PYTHONPATH']) if p)
    root = tmp_path_factory.mktemp('rollout')
    df = _frame()
    num, cat = feature_columns(df, 'is_fraud', exclude=['transaction_id', 'customer_id', 'timestamp'])
    X, y = df[num + cat], df['is_fraud']
    reg = Registry(root/'registry')
    v = {}
    v['champion'] = reg.register(tree_pipeline(num, cat, 20).fit(X, y), features=num + cat, task='classification', threshold=0.3, X_test=X)
    v['good'] = reg.register(tree_pipeline(num, cat, 25).fit(X, y), features=num + cat, task='classification', threshold=0.3, X_test=X)
    from mlops_nb.data import Schema
    for name, kw in (('raising', dict(fail_above=float(X['amount'].median()))), ('slow', dict(delay=0.3)), ('shifted', dict(shift=0.45))):
        v[name] = reg.register(Faulty(tree_pipeline(num, cat, 20), **kw).fit(X, y), features=num + cat, task='classification',
                               threshold=0.3, schema=Schema.infer(X), trusted=[TRUSTED])     # no ONNX: served by skops
    reg.promote(v['champion'], reason='test', actor='test')
    rows = json.loads(X.iloc[:400].to_json(orient='records'))
    srv = Server(root, root/'registry', '--capture-dir', str(root/'captures'), '--capture-flush-seconds', '0.1', '--no-access-log')
    yield dict(root=root, reg=reg, v=v, rows=rows, srv=srv, captures=root/'captures')
    srv.stop()
    for k, val in saved.items():
        if val is None: os.environ.pop(k, None)
        else: os.environ[k] = val


class Load:
    "Single-row requests from 4 threads, keys drawn from `KEYS`, until stopped: every answer kept (status, version, key, time sent)."
    def __init__(self, srv, rows, threads=4):
        self.srv, self.rows, self.stop_ = srv, rows, threading.Event()
        self.results, self.lock = [], threading.Lock()
        self.pool = ThreadPoolExecutor(threads)
        self.futs = [self.pool.submit(self._run, i) for i in range(threads)]

    def _run(self, seed):
        rnd, c = random.Random(seed), self.srv.conn()
        while not self.stop_.is_set():
            key, row = rnd.choice(KEYS), rnd.choice(self.rows)
            sent = time.time()
            try:
                c.request('POST', '/invocations', body=json.dumps({'dataframe_records': [row]}),
                          headers={'Content-Type': 'application/json', 'X-Rollout-Key': key})
                r = c.getresponse(); r.read()
                out = (r.status, r.getheader('x-model-version'), key, sent)
            except (OSError, http.client.HTTPException) as e:
                out = (f'{type(e).__name__}', None, key, sent); c.close(); c = self.srv.conn()
            with self.lock: self.results.append(out)

    def stop(self):
        self.stop_.set()
        for f in self.futs: f.result(timeout=60)
        self.pool.shutdown()
        return self.results


def server_events(srv, event):
    return [json.loads(l) for l in srv.log.read_text().splitlines() if l.startswith('{') and f'"event":"{event}"' in l]


def drive(world, candidate, steps, bake, timeout=60, cli=False):
    """Start a rollout of `candidate` and drive it with the controller (in this process, or `mlops-nb models rollout` when
    `cli`) under load; the final state and the answers."""
    from mlops_nb.rollout import Controller
    reg, srv = world['reg'], world['srv']
    load = Load(srv, world['rows'])
    try:
        time.sleep(0.3)
        if cli:
            r = subprocess.run([str(VENV_BIN/'mlops-nb'), 'models', '--registry', str(reg.root), 'rollout', candidate, '--steps', ','.join(map(str, steps)),
                                '--bake', f'{bake}s', '--capture-dir', str(world['captures']), '--min-rows', '20', '--p99-floor-ms', '100',
                                '--sticky-header', 'x-rollout-key'], capture_output=True, text=True, timeout=timeout + 60, env=os.environ, cwd=world['root'])
            assert r.returncode == (0 if reg.rollout()['status'] == 'promoted' else 1), r.stdout + r.stderr
            world['cli_out'] = r.stdout
            st = reg.rollout()
        else:
            reg.start_rollout(candidate, steps, bake, {'header': 'x-rollout-key'}, dict(min_rows=20, p99_floor_ms=100), actor='test')
            st = Controller(reg, world['captures'], poll=0.2).run(timeout=timeout)
        time.sleep(0.6)                                    # the servers apply the end of the rollout (they poll every 0.2 s)
    finally: results = load.stop()
    return st, results


def test_a_good_canary_goes_through_every_step_to_champion(world):
    reg, v = world['reg'], world['v']
    st, results = drive(world, v['good'], [25, 50, 100], 0.5, cli=True)     # mlops-nb models rollout, in the foreground
    assert st['status'] == 'promoted', st
    assert '25 % -> 50 %: guardrails passed' in world['cli_out'] and f"{v['good']} promoted to champion" in world['cli_out']
    assert reg.aliases()['champion'] == v['good']
    assert [r[0] for r in results if r[0] != 200] == []                               # no failed client request
    served = {r[1] for r in results}
    assert served == {v['champion'], v['good']}, served
    h = [e for e in reg.history() if e.get('alias') == 'canary' and e['version'] == v['good']]
    assert [(e['action'], e['share']) for e in h] == [('rollout-start', 25), ('rollout-advance', 50), ('rollout-advance', 100), ('rollout-finish', 100)]
    assert all(e['evidence']['canary']['errors'] == 0 and e['evidence']['canary']['requests'] >= 20 for e in h[1:])
    assert reg.history('champion')[-1]['version'] == v['good']
    card = reg.card(v['good'])
    assert 'Deployment history' in card and 'rollout-advance' in card and 'canary.requests=' in card
    # the rest of the tests roll candidates out against this champion
    world['v']['champion'] = v['good']


@pytest.mark.parametrize('bad, why', [('raising', 'error rate'), ('slow', 'latency'), ('shifted', 'prediction drift')])
def test_a_bad_canary_is_rolled_back_with_no_failed_request(world, bad, why):
    reg, v, srv = world['reg'], world['v'], world['srv']
    champion = reg.aliases()['champion']
    st, results = drive(world, v[bad], [25, 100], 60, timeout=30)          # a bake it cannot pass in time
    assert st['status'] == 'rolled_back' and why in st['reason'], st
    assert reg.aliases()['champion'] == champion
    assert [r[0] for r in results if r[0] != 200] == []                               # every client request answered
    last = reg.history()[-1]
    assert (last['action'], last['version']) == ('rollout-rollback', v[bad]) and why in last['reason']
    if bad == 'raising':                              # the candidate's errors were answered by the champion, and counted
        assert last['evidence']['canary']['errors'] > 0
        assert server_events(srv, 'canary_error')
    if bad == 'slow':                                 # its first two 0.3 s calls moved it off the event loop, where the champion answers
        assert v['slow'] in [e['version'] for e in server_events(srv, 'canary_off_loop')]
    # a request sent after the server applied the rollback never reaches the candidate
    applied = [e for e in server_events(srv, 'rollout') if e.get('status') == 'rolled_back' and e.get('candidate') == v[bad]]
    assert applied, 'the server did not apply the rollback'
    assert not [r for r in results if r[1] == v[bad] and r[3] > applied[-1]['ts'] + 0.05]
    t_end, first = reg.rollout()['ended'], min([r[3] for r in results if r[1] == v[bad]] or [np.nan])
    errs = [e['ts'] for e in server_events(srv, 'canary_error') if e.get('version') == v[bad]]
    print(f"{bad}: first request answered by the candidate sent {first - reg.rollout()['started']:.2f} s after the start; rollback "
          f"written {t_end - first:.2f} s after it" + (f" ({t_end - min(errs):.2f} s after its first error)" if errs else '')
          + f", applied by the server {applied[-1]['ts'] - t_end:.2f} s after it was written")


def test_a_key_stays_on_one_version_and_a_restarted_server_resumes_the_split(world):
    from mlops_nb.slots import rollout_bucket
    reg, v, root = world['reg'], world['v'], world['root']
    cand = next(x for x in reg.versions() if x not in (reg.aliases()['champion'], v['raising'], v['slow'], v['shifted']))
    champion = reg.aliases()['champion']
    reg.start_rollout(cand, [30, 60, 100], 600, {'header': 'x-rollout-key'}, actor='test')
    srv = Server(root, root/'registry', '--capture-dir', str(root/'captures2'), '--no-access-log')
    row = world['rows'][0]
    def versions(server, keys):
        c, out = server.conn(), {}
        for k in keys:
            c.request('POST', '/invocations', body=json.dumps({'dataframe_records': [row]}), headers={'Content-Type': 'application/json', 'X-Rollout-Key': k})
            r = c.getresponse(); r.read(); assert r.status == 200
            out.setdefault(k, set()).add(r.getheader('x-model-version'))
        return out
    try:
        keys = KEYS[:60]
        seen = versions(srv, keys * 3)
        assert all(len(s) == 1 for s in seen.values())                               # each key on one version through the step
        want = {k: cand if rollout_bucket(k, cand) < 30 else champion for k in keys}
        assert {k: s.pop() for k, s in seen.items()} == want
        assert 0 < sum(x == cand for x in want.values()) < len(keys)
        reg.advance_rollout({'by': 'test'}, actor='test'); time.sleep(0.6)           # 30 % -> 60 %
        after = {k: s.pop() for k, s in versions(srv, keys).items()}
        assert all(after[k] == cand for k in keys if want[k] == cand)               # the share grew: no key left the canary
        srv.stop()
        srv = Server(root, root/'registry', '--capture-dir', str(root/'captures2'), '--no-access-log')
        assert {k: s.pop() for k, s in versions(srv, keys).items()} == after         # a restarted server resumes the split
        assert srv.get('/metadata')[1]['rollout']['share'] == 60
        r = subprocess.run([str(VENV_BIN/'mlops-nb'), 'models', '--registry', str(root/'registry'), 'rollout', '--abort', '--reason', 'test over'],
                           capture_output=True, text=True, env=os.environ)
        assert r.returncode == 0 and 'rolled_back' in r.stdout, r.stderr
        time.sleep(0.6)
        assert set(x.pop() for x in versions(srv, keys).values()) == {champion}
    finally: srv.stop()


@pytest.mark.parametrize('point', ['rollout-advance:history-appended', 'rollout-advance:rollout-written'])
def test_a_controller_killed_mid_write_leaves_the_rollout_as_it_was(world, tmp_path, point):
    import shutil, signal, sys
    from mlops_nb.registry import Registry
    root = tmp_path/'registry'
    shutil.copytree(world['reg'].root, root, ignore=shutil.ignore_patterns('.lock'))
    reg = Registry(root)
    if (reg.rollout() or {}).get('status') == 'running': reg.rollback_rollout('test setup', actor='test')
    cand = next(x for x in reg.versions() if x != reg.aliases()['champion'] and reg.info(x, verify=False)['status'] == 'accepted')
    reg.start_rollout(cand, [10, 50, 100], 60, actor='test')
    before, hist = reg.rollout(), reg.history()
    code = f"from mlops_nb.registry import Registry; Registry({str(root)!r}).advance_rollout({{'by': 'killed'}})"
    r = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, MLOPS_NB_KILL_AT=point), capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    assert (reg.rollout(), reg.history()) == (before, hist)          # readers see the rollout as it was
    reg.advance_rollout({'by': 'test'}, actor='test')                 # the next writer cleans up and works
    assert reg.rollout()['share'] == 50 and [h['action'] for h in reg.history()[len(hist):]] == ['rollout-advance']
    assert not list(root.glob('.*.tmp'))


def test_the_rollout_command_refuses_bad_input_in_one_line(world, tmp_path):
    R = [str(VENV_BIN/'mlops-nb'), 'models', '--registry', str(world['reg'].root), 'rollout']
    run = lambda *a: subprocess.run([*R, *a], capture_output=True, text=True, env=os.environ, cwd=tmp_path, timeout=120)
    for args, msg in ((['v0002', '--steps', '5,25'], 'the last step must be 100'), (['v0099'], "unknown version 'v0099'"),
                      (['v0002', '--bake', 'soon'], "duration 'soon'"), (['v0002', '--max-error-rate', '-1'], 'expected a number >= 0')):
        r = run(*args)
        assert r.returncode == 2 and msg in r.stderr and r.stderr.count('\n') == 1, (args, r.returncode, r.stderr)
    if (world['reg'].rollout() or {}).get('status') != 'running':
        r = run('--resume')
        assert r.returncode == 2 and 'no rollout is running' in r.stderr, r.stderr
    assert run('--status').returncode == 0


def test_two_servers_on_one_registry_are_judged_together(world):
    "A second server on the same registry and capture store: both apply the split, the controller sums both's counters."
    from mlops_nb.rollout import Controller
    reg, v, root = world['reg'], world['v'], world['root']
    if (reg.rollout() or {}).get('status') == 'running': reg.rollback_rollout('test setup', actor='test')
    from mlops_nb.rollout import counts_since, read_counts
    other = Server(root, root/'registry', '--capture-dir', str(world['captures']), '--capture-flush-seconds', '0.1', '--no-access-log')
    loads = []
    try:
        reg.start_rollout(v['raising'], [25, 100], 60, {'header': 'x-rollout-key'}, dict(min_rows=20), actor='test')
        for s in (world['srv'], other):      # each server loads the candidate on its own: the controller judges both once they have
            for _ in range(300):
                if (s.get('/metadata')[1].get('rollout') or {}).get('candidate') == v['raising']: break
                time.sleep(0.1)
        ctl = Controller(reg, world['captures'], poll=0.2)
        ctl.check()                          # the step's counters as they stand, before either server routed to the canary
        base = read_counts(world['captures'], reg.name)
        loads = [Load(world['srv'], world['rows'], threads=2), Load(other, world['rows'], threads=2)]
        # judged once both processes have reported canary traffic (on a loaded machine one may report a poll later)
        for _ in range(300):
            if counts_since(read_counts(world['captures'], reg.name), base, v['raising'])['processes'] == 2: break
            time.sleep(0.1)
        st = ctl.run(timeout=30)
        time.sleep(0.6)
    finally:
        results = [r for l in loads for r in l.stop()]
        other.stop()
    assert st['status'] == 'rolled_back' and 'error rate' in st['reason'], st
    assert [r[0] for r in results if r[0] != 200] == []
    assert st['evidence']['canary']['processes'] == 2 and st['evidence']['canary']['errors'] > 0


def test_a_server_applying_a_rollout_imports_no_training_or_controller_code(world, tmp_path):
    import shutil, sys
    from mlops_nb.registry import Registry
    root = tmp_path/'registry'
    shutil.copytree(world['reg'].root, root, ignore=shutil.ignore_patterns('.lock'))
    reg = Registry(root)
    if (reg.rollout() or {}).get('status') == 'running': reg.rollback_rollout('test setup', actor='test')
    cand = next(x for x in reg.versions()[:2] if x != reg.aliases()['champion'])      # both served with ONNX Runtime
    reg.start_rollout(cand, [50, 100], 60, actor='test')
    code = f'''
import asyncio, json, sys
from mlops_nb.serve import ServeConfig, build_app
app = build_app(ServeConfig(registry={str(root)!r}, capture_dir=''), preload=True)
slot = app.service.default
asyncio.run(slot.apply_rollout())
assert slot.canary is not None and slot.canary.model.version == {cand!r}
heavy = ('scipy', 'sklearn', 'matplotlib', 'papermill', 'dask', 'mlops_nb.rollout', 'mlops_nb.monitor', 'mlops_nb.train', 'mlops_nb.steps')
print(json.dumps(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in heavy))))
'''
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
