"""Monitoring: scores equal scipy's, injected drift is found exactly, false alarms stay near the nominal level, messy
windows are reported, alerts reach a real HTTP receiver, `mlops-nb monitor` exits by the verdict, and the monitor
stage of a real `dvc repro` detects the simulator's drift."""
import json, socket, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np, pandas as pd, pytest
from scipy import stats
from scipy.spatial import distance

from mlops_nb import monitor as mon
from conftest import run, VENV_BIN

# ---------------------------------------------------------------------------------------------------- scores vs scipy
@pytest.mark.parametrize('seed', range(6))
def test_numeric_scores_equal_scipy(seed):
    g = np.random.default_rng(seed)
    n, m = [(40, 70), (300, 300), (900, 4000), (5000, 3001), (20000, 15000), (12000, 12000)][seed]
    a = g.normal(size=n) * g.choice([1, 3]) ; b = g.standard_t(4, size=m) + g.normal(0, 0.3)
    if seed % 2: a, b = a.round(1), b.round(1)                  # ties within and across samples
    a[g.random(n) < 0.05] = np.nan; b[g.random(m) < 0.03] = np.nan; b[:3] = [np.inf, -np.inf, np.nan]
    fa, fb = a[np.isfinite(a)], b[np.isfinite(b)]                # scipy on the finite values, as the monitor drops the rest
    row = mon.column_drift(mon.ColumnProfile.of(pd.Series(a, name='a')), pd.Series(b), dict(mon.DEFAULTS['drift'], num_method='ks'))
    ks = stats.ks_2samp(fa, fb)
    assert abs(row['ks_stat'] - ks.statistic) <= 1e-9 and abs(row['ks_pvalue'] - ks.pvalue) <= 1e-9
    assert abs(row['wasserstein'] - stats.wasserstein_distance(fa, fb)) <= 1e-9
    assert abs(row['wasserstein_norm'] - stats.wasserstein_distance(fa, fb) / max(np.std(fa), 1e-3)) <= 1e-9
    assert (row['n_ref'], row['n_cur']) == (len(fa), len(fb))

@pytest.mark.parametrize('seed', range(5))
def test_categorical_scores_equal_scipy(seed):
    g = np.random.default_rng(100 + seed)
    k = [2, 3, 6, 12, 30][seed]
    ref = pd.Series(g.choice([f'c{i}' for i in range(k)], size=int(g.integers(50, 5000))), dtype=object)
    cur = pd.Series(g.choice([f'c{i}' for i in range(1, k + 2)], size=int(g.integers(50, 5000))), dtype=object)  # c0 gone, c{k}, c{k+1} new
    ref[g.random(len(ref)) < 0.05] = None; cur[g.random(len(cur)) < 0.1] = np.nan
    row = mon.column_drift(mon.ColumnProfile.of(ref.rename('c')), cur)
    cats = sorted(set(ref.dropna()) | set(cur.dropna()))
    rc = ref.value_counts().reindex(cats, fill_value=0).to_numpy(); cc = cur.value_counts().reindex(cats, fill_value=0).to_numpy()
    chi = stats.chi2_contingency(np.vstack([rc, cc]))
    assert abs(row['chi2_stat'] - chi.statistic) <= 1e-9 and abs(row['chi2_pvalue'] - chi.pvalue) <= 1e-9
    assert abs(row['jensenshannon'] - distance.jensenshannon(rc / rc.sum(), cc / cc.sum())) <= 1e-9
    assert row['new_categories'] == [c for c in cats if c not in set(ref.dropna())]

# ---------------------------------------------------------------------------------------------- injected drift, exactly
def _pair(n, seed):
    "Reference and current of one distribution, then drift injected into four known features of the current."
    g = np.random.default_rng(seed)
    def frame(g):
        return pd.DataFrame({
            'mean_shift': g.normal(0, 1, n), 'variance': g.normal(5, 1, n), 'steady_num': g.lognormal(1, 0.5, n),
            'steady_int': g.poisson(20, n), 'freq_change': g.choice(['a', 'b', 'c', 'd'], n, p=[.4, .3, .2, .1]),
            'new_cat': g.choice(['x', 'y', 'z'], n), 'steady_cat': g.choice(['u', 'v', 'w'], n, p=[.5, .3, .2])})
    ref, cur = frame(g), frame(g)
    cur['mean_shift'] += 0.8
    cur['variance'] = 5 + (cur['variance'] - 5) * 2.5
    cur['freq_change'] = g.choice(['a', 'b', 'c', 'd'], n, p=[.1, .2, .3, .4])
    cur.loc[g.random(n) < 0.25, 'new_cat'] = 'brand_new'
    return ref, cur

DRIFTED = ['mean_shift', 'variance', 'freq_change', 'new_cat']

@pytest.mark.parametrize('n,seeds', [(800, range(3)), (20000, range(3))])   # small: KS/chi-square; large: Wasserstein/JS
def test_injected_drift_flags_exactly_those_features(n, seeds):
    for seed in seeds:
        ref, cur = _pair(n, seed)
        rep = mon.data_drift(ref, cur)
        assert sorted(rep.drifted) == sorted(DRIFTED), (n, seed, rep.table[['column', 'method', 'score', 'drift']])
        assert set(rep.table['method']) == ({'ks', 'chi2'} if n <= 1000 else {'wasserstein', 'jensenshannon'})

def test_false_alarm_rate_near_nominal():
    # 1,200 pairs of samples of one distribution, numerical (KS) and categorical (two-sample chi-square), at p < 0.05
    g = np.random.default_rng(7)
    cfg = mon.settings()['drift']
    num = [mon.column_drift(mon.ColumnProfile.of(pd.Series(g.normal(size=150), name='x')), pd.Series(g.normal(size=200)), cfg)['drift']
           for _ in range(600)]
    p = [.5, .3, .15, .05]
    cat = [mon.column_drift(mon.ColumnProfile.of(pd.Series(g.choice(list('abcd'), 150, p=p), name='c')), pd.Series(g.choice(list('abcd'), 200, p=p)), cfg)['drift']
           for _ in range(600)]
    rate_num, rate_cat = np.mean(num), np.mean(cat)
    assert 0.02 <= rate_num <= 0.07, rate_num
    assert 0.02 <= rate_cat <= 0.07, rate_cat
    # Evidently's small-sample chi-square (a goodness-of-fit test that takes the reference shares as exact) alarms far more often
    gof = []
    for _ in range(600):
        r, c = g.choice(4, 150, p=p), g.choice(4, 200, p=p)
        exp = np.bincount(r, minlength=4) / 150 * 200
        gof.append(stats.chisquare(np.bincount(c, minlength=4)[exp > 0], exp[exp > 0]).pvalue < 0.05)
    assert np.mean(gof) > rate_cat + 0.04, (np.mean(gof), rate_cat)

# ---------------------------------------------------------------------------------------------------------- messy data
def test_messy_windows_are_reported_not_crashed():
    ref, cur = _pair(3000, 1)
    ref['const'] = 1.0; ref['with_inf'] = np.where(np.arange(3000) % 100 == 0, np.inf, ref['steady_num'])
    cur = cur.iloc[:1200].copy()                                            # unequal sizes
    cur['const'] = 1.0
    cur['with_inf'] = np.where(np.arange(1200) % 10 == 0, -np.inf, cur['steady_num'])
    cur['steady_int'] = 'n/a'                                               # another dtype
    cur = cur.drop(columns=['steady_cat'])                                  # a missing column
    cur['extra'] = 1                                                        # a column the reference does not have
    res = mon.monitor(ref, cur, {'alerts': {'min_rows': 100}})
    t = res.drift.table.set_index('column')
    assert t.loc['steady_cat', 'status'] == 'missing_in_current' and pd.isna(t.loc['steady_cat', 'drift'])
    assert t.loc['steady_int', 'status'] == 'dtype_changed:str' and pd.isna(t.loc['steady_int', 'drift'])
    assert t.loc['const', 'drift'] == False and t.loc['with_inf', 'n_cur'] == 1080
    rules = {(b['column'], b['rule']) for b in res.breaches}
    assert {('steady_cat', 'missing_column'), ('steady_int', 'wrong_dtype'), ('with_inf', 'infinite_values'), ('new_cat', 'new_categories')} <= rules
    assert 'extra' not in t.index
    # an empty window: no verdicts, a window_too_small alert, no crash
    empty = mon.monitor(ref, cur.iloc[:0], {'alerts': {'min_rows': 100}})
    assert empty.drift.n_tested == 0 and [a['rule'] for a in empty.alerts][0] == 'window_too_small'
    assert empty.recommendation['retrain'] is False
    # a reference column that is entirely missing
    r2 = mon.data_drift(ref.assign(const=np.nan), cur)
    assert r2.table.set_index('column').loc['const', 'status'] == 'empty_reference'

def test_bad_settings_name_the_key():
    with pytest.raises(mon.MlopsError, match=r"monitor.alerts.min_rows: expected a whole number >= 0, got 'ten'"):
        mon.settings({'alerts': {'min_rows': 'ten'}})
    with pytest.raises(mon.MlopsError, match=r"monitor: unknown key 'alert'"):
        mon.settings({'alert': {}})

# ------------------------------------------------------------------------------------------------- alerts and webhook
class _Receiver(BaseHTTPRequestHandler):
    got = []
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        _Receiver.got.append((self.path, self.headers['Content-Type'], json.loads(body)))
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass

@pytest.fixture
def receiver():
    srv = HTTPServer(('127.0.0.1', 0), _Receiver)
    _Receiver.got = []
    th = threading.Thread(target=srv.serve_forever, daemon=True); th.start()
    yield f'http://127.0.0.1:{srv.server_address[1]}/hook', _Receiver.got
    srv.shutdown(); srv.server_close()

def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _write_pair(tmp_path, seed=3, drift=True):
    ref, cur = _pair(5000, seed)
    if not drift: cur = _pair(5000, seed + 50)[0]
    ref.to_parquet(tmp_path/'ref.parquet'); cur.to_parquet(tmp_path/'cur.parquet')
    return tmp_path/'ref.parquet', tmp_path/'cur.parquet'

def test_cli_exit_codes_status_and_webhook(tmp_path, receiver):
    url, got = receiver
    ref, cur = _write_pair(tmp_path)
    status, metrics = tmp_path/'out'/'status.json', tmp_path/'out'/'monitor.json'
    cmd = f'mlops-nb monitor --reference {ref} --current {cur} --params none.yaml --status {status} --metrics {metrics}'
    p = run(f'{cmd} --webhook {url}', tmp_path, check=False)
    assert p.returncode == 1, p.stderr                                   # drift: an alert fires
    s = json.loads(status.read_text())
    assert s['status'] == 'alert' and s['recommendation']['retrain'] is True
    assert sorted(s['summary']['drifted']) == sorted(DRIFTED)
    assert {a['rule'] for a in s['alerts']} == {'dataset_drift', 'data_quality'}
    assert s['webhook']['ok'] is True and s['webhook']['status'] == 204
    assert len(got) == 1 and got[0][0] == '/hook' and got[0][1] == 'application/json' and got[0][2]['status'] == 'alert'
    assert 'monitor ALERT' in p.stderr                                   # the log line
    assert json.loads(metrics.read_text())['drifted_features'] == 4
    # --report-only: same report, exit 0
    assert run(f'{cmd} --report-only', tmp_path, check=False).returncode == 0
    # a webhook that is down: the status is still written, the failure recorded
    p = run(f'{cmd} --webhook http://127.0.0.1:{_free_port()}/down', tmp_path, check=False)
    assert p.returncode == 1 and json.loads(status.read_text())['webhook']['ok'] is False
    # no drift: exit 0, status ok, nothing posted
    ref2, cur2 = _write_pair(tmp_path, seed=11, drift=False)
    p = run(f'mlops-nb monitor --reference {ref2} --current {cur2} --params none.yaml --status {status} --webhook {url}', tmp_path, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(status.read_text())['status'] == 'ok' and len(got) == 1

def test_cli_bad_input_exit_2(tmp_path):
    ref, cur = _write_pair(tmp_path)
    p = run(f'mlops-nb monitor --reference {tmp_path}/nope.parquet --current {cur} --params none.yaml --status {tmp_path}/s.json', tmp_path, check=False)
    assert p.returncode == 2 and 'nope.parquet: file or folder not found' in p.stderr
    p = run(f'mlops-nb monitor --reference {ref} --current {cur} --params none.yaml --columns mean_shift,ghost --status {tmp_path}/s.json', tmp_path, check=False)
    assert p.returncode == 2 and "column(s) ['ghost'] not in the reference" in p.stderr
    p = run(f'mlops-nb monitor --reference champion --current {cur} --params none.yaml --status {tmp_path}/s.json', tmp_path, check=False)
    assert p.returncode == 2 and "champion: file or folder not found (and no model 'model' in the registry at registry" in p.stderr
    (tmp_path/'bad.yaml').write_text('monitor:\n  drift:\n    p_value: high\n')
    p = run(f'mlops-nb monitor --reference {ref} --current {cur} --params bad.yaml --status {tmp_path}/s.json', tmp_path, check=False)
    assert p.returncode == 2 and 'monitor.drift.p_value: expected a number >= 0' in p.stderr
    assert not (tmp_path/'s.json').exists()

def test_saved_profile_gives_the_same_report(tmp_path):
    ref, cur = _pair(4000, 5)
    prof = mon.Profile.of(ref)
    prof.save(tmp_path/'profile')
    a = mon.data_drift(prof, cur).table
    b = mon.data_drift(mon.Profile.load(tmp_path/'profile'), cur).table
    pd.testing.assert_frame_equal(a, b)
    cur.to_parquet(tmp_path/'c.parquet')
    p = run(f'mlops-nb monitor --reference {tmp_path}/profile --current {tmp_path}/c.parquet --params none.yaml '
            f'--status {tmp_path}/s.json --report-only', tmp_path, check=False)
    assert p.returncode == 0, p.stderr
    assert sorted(json.loads((tmp_path/'s.json').read_text())['summary']['drifted']) == sorted(DRIFTED)

# --------------------------------------------------------------------------------------------- the stage, end to end
@pytest.fixture(scope='module')
def repro(tmp_path_factory):
    "One real `dvc repro` of a small project whose monitored window crosses the drift day."
    from conftest import copy_project
    p = copy_project(tmp_path_factory.mktemp('mon')/'proj')
    p.set_params({'monitor': {'current': {'start_day': 58, 'days': 6}}})
    p.commit('monitored window crosses the drift day')
    p.run('dvc repro', timeout=1200)
    return p

@pytest.mark.e2e
def test_monitor_stage_detects_the_simulated_drift(repro):
    m = json.loads((repro.path/'metrics/monitor.json').read_text())
    s = json.loads((repro.path/'monitor/status.json').read_text())
    assert m['rows_current'] == 6 * 400 and m['tested_features'] == 13
    for f in ('amount', 'log_amount', 'merchant_category'): assert m['features'][f]['drift'] is True, (f, m['features'][f])
    for f in ('country', 'timestamp_hour', 'customer_tx_24h'): assert m['features'][f]['drift'] is False, (f, m['features'][f])
    assert s['status'] == 'alert' and s['recommendation']['retrain'] is True
    assert {'feature_drift', 'data_quality'} <= {a['rule'] for a in s['alerts']}
    assert any(b['column'] == 'merchant_category' and b['rule'] == 'new_categories' for a in s['alerts'] for b in a.get('breaches', []))
    perf = pd.read_csv(repro.path/'plots/monitor/performance.csv')
    assert list(perf['window'])[-1] == 'all' and len(perf) == 7 and perf['n'].iloc[-1] == 2400
    assert 'roc_auc_lo' in perf and (perf['roc_auc_lo'] <= perf['roc_auc_hi']).all()
    dot = pd.read_csv(repro.path/'plots/monitor/drift_over_time.csv')
    amount = dot[dot['column'] == 'amount'].set_index('window')['drift']
    assert len(amount) == 6 and amount.iloc[-1] == True                  # the last days are after the drift day
    report = repro.path/'reports/06_monitor.ipynb'
    assert report.stat().st_size < 2_000_000                            # aggregated figures, no raw data
    out = repro.run('dvc metrics show --json').stdout
    assert 'metrics/key/monitor.json' in out
    assert 'monitor' not in repro.run('dvc status').stdout               # up to date after the run

# ----------------------------------------------- the champion as reference; real captures from the real service
def test_monitor_stage_uses_the_champions_saved_profile(repro):
    from mlops_nb.registry import Registry
    reg = Registry(repro.path/'registry')
    champ = reg.aliases()['champion']
    s = json.loads((repro.path/'monitor/status.json').read_text())
    assert s['reference']['source'] == 'registry' and s['reference']['version'] == champ, s['reference']
    files = json.loads((reg.version_dir(champ)/'manifest.json').read_text())['files']
    assert {'profile/profile.json', 'profile/profile.npz'} <= set(files)          # inside the immutable version
    prof = mon.Profile.load(reg.version_dir(champ)/'profile')
    train = pd.read_parquet(repro.path/'data/prepared/train.parquet')
    info = reg.info(champ)     # the raw inputs the model takes (but its time column) and the features it derives
    assert prof.rows == len(train) and sorted(prof.columns) == sorted(info['numeric'] + info['categorical'])
    assert set(info['feature_step']['derived']) <= set(prof.columns) and 'timestamp' not in prof.columns
    test = pd.read_parquet(repro.path/'data/prepared/test.parquet')
    assert prof.outputs['prediction'].rows == len(test)                             # held-out scores, not training ones
    m = json.loads((repro.path/'metrics/monitor.json').read_text())
    assert 'prediction_score' in m                                                  # prediction drift vs the saved scores

def test_champion_without_saved_profile_is_profiled_from_the_prepared_data(repro, tmp_path):
    "A champion registered before profiles existed: the reference is built from data/prepared with the champion's own model."
    from mlops_nb.core import load_params
    from mlops_nb.data import Schema
    from mlops_nb.registry import Registry
    from mlops_nb.steps import monitor_reference
    src = Registry(repro.path/'registry')
    info = src.info('champion')
    train = pd.read_parquet(repro.path/'data/prepared/train.parquet')
    test = pd.read_parquet(repro.path/'data/prepared/test.parquet')
    reg = Registry(tmp_path/'registry')
    v = reg.register(src.load('champion'), features=info['features'], task='classification', metrics=info['metrics'],
                     threshold=info['threshold'], schema=Schema.infer(train[info['features']]))   # no artifacts: no profile
    reg.promote(v, reason='old champion')
    P = load_params(repro.path/'params.yaml')
    ref = monitor_reference(P, repro.path/'data/prepared', registry=tmp_path/'registry')
    assert (ref.source, ref.version) == ('registry', v) and 'registered without a reference profile' in ref.note
    assert sorted(ref.profile.columns) == sorted(info['numeric'] + info['categorical']) and ref.profile.rows == len(train)
    assert ref.profile.outputs['prediction'].rows == len(test)       # the champion's scores on the held-out rows
    saved = mon.Profile.load(src.version_dir('champion')/'profile')
    assert np.allclose(ref.profile.outputs['prediction'].values, saved.outputs['prediction'].values)   # same model, same rows

class _Service:
    "`mlops-nb serve` of the project's registry on a free port, capturing into `captures`."
    def __init__(self, cwd:Path, captures:Path):
        import subprocess, time, http.client
        self.port, self.log = _free_port(), open(cwd/'serve.log', 'wb')
        self.proc = subprocess.Popen([str(VENV_BIN/'mlops-nb'), 'serve', '--registry', 'registry', '--host', '127.0.0.1', '--port', str(self.port),
                                      '--capture-dir', str(captures), '--capture-flush-seconds', '0.2'], cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(600):
            assert self.proc.poll() is None, (cwd/'serve.log').read_text()[-3000:]
            try:
                if self.post_raw('GET', '/health', None)[0] == 200: return
            except OSError: time.sleep(0.1)
        raise AssertionError('service did not start in 60 s')
    def post_raw(self, method, path, body, headers=None):
        import http.client
        c = http.client.HTTPConnection('127.0.0.1', self.port, timeout=60)
        c.request(method, path, body=None if body is None else json.dumps(body).encode(), headers={'Content-Type': 'application/json', **(headers or {})})
        r = c.getresponse(); data = r.read(); c.close()
        return r.status, json.loads(data) if data.strip() else None
    def stop(self):
        import signal
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60); self.log.close()
        return code

@pytest.mark.e2e
def test_monitor_over_real_captures_with_feedback(repro):
    "Post-drift traffic through the real service, labels through /feedback, then `mlops-nb monitor --reference champion --current captures`."
    from mlops_nb.capture import read_captures
    from mlops_nb.features import clean
    from mlops_nb.registry import Registry
    from mlops_nb.sim import simulate
    from sklearn.metrics import roc_auc_score
    p, params = repro.path, repro.params
    info = Registry(p/'registry').info('champion')
    df = simulate(61, 4, params['seed'], **{k: v for k, v in params['sim'].items() if k in ('transactions_per_day', 'n_customers', 'fraud_rate', 'start_date', 'drift')})
    df = clean(df, 'is_fraud', 'timestamp', ['transaction_id', 'customer_id'])
    X, y = df[info['features']], df['is_fraud'].to_numpy()      # raw records: the model builds its features
    labelled = {}
    svc = _Service(p, p/'captures')
    try:
        for b, start in enumerate(range(0, len(X), 200)):
            rows = json.loads(X.iloc[start:start + 200].to_json(orient='records', date_format='iso'))
            status, obj = svc.post_raw('POST', '/invocations', {'dataframe_records': rows}, {'X-Request-ID': f'b{b}'})
            assert status == 200, obj
            for i in range(len(rows)):
                if (start + i) % 5: labelled[f'b{b}:{i}'] = int(y[start + i])   # every 5th row never gets a label
        items = [{'request_id': k, 'label': v} for k, v in labelled.items()]
        for i in range(0, len(items), 500):
            assert svc.post_raw('POST', '/feedback', {'feedback': items[i:i + 500]})[0] == 200
    finally:
        code = svc.stop()
    assert code == 0, (p/'serve.log').read_text()[-2000:]
    cap = read_captures(p/'captures')
    assert len(cap) == len(X) and cap['label'].notna().sum() == len(labelled)
    assert set(cap['model_version']) == {info['version']}
    cmd = f'mlops-nb monitor --reference champion --current captures --status cap/status.json --metrics cap/monitor.json'
    r = repro.run(cmd, check=False)
    assert r.returncode == 1, r.stdout + r.stderr                                   # drift: an alert fires
    s, m = json.loads((p/'cap/status.json').read_text()), json.loads((p/'cap/monitor.json').read_text())
    assert s['reference']['source'] == 'registry' and s['reference']['version'] == info['version']
    assert m['rows_current'] == len(X) and m['tested_features'] == len(info['numeric'] + info['categorical'])
    for f in ('amount', 'log_amount', 'merchant_category'): assert m['features'][f]['drift'] is True, (f, m['features'][f])
    for f in ('country', 'timestamp_hour'): assert m['features'][f]['drift'] is False, (f, m['features'][f])
    assert {'feature_drift', 'data_quality'} <= {a['rule'] for a in s['alerts']}
    assert any(b['column'] == 'merchant_category' and b['rule'] == 'new_categories' for a in s['alerts'] for b in a.get('breaches', []))
    # performance from the joined labels: the same numbers as computed here from the captures
    ok = cap['label'].notna()
    perf = m['performance']
    assert perf['n'] == len(labelled) and perf['positives'] == int(cap.loc[ok, 'label'].sum())
    assert abs(perf['roc_auc'] - roc_auc_score(cap.loc[ok, 'label'], cap.loc[ok, 'prediction'])) < 1e-12
    assert perf['roc_auc_lo'] <= perf['roc_auc'] <= perf['roc_auc_hi']
    assert 'prediction_score' in m                                                  # captured scores vs the champion's saved ones
    assert repro.run(f'{cmd} --report-only', check=False).returncode == 0
    # the stage notices a champion change made outside DVC (registry/aliases.json is one of its deps)
    aliases = (p/'registry/aliases.json').read_bytes()
    repro.run(f"mlops-nb models promote {info['version']} --alias challenger --reason test")
    assert 'monitor' in repro.run('dvc status monitor').stdout
    (p/'registry/aliases.json').write_bytes(aliases)
    assert 'monitor' not in repro.run('dvc status monitor').stdout
