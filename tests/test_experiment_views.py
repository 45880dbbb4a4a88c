"""Experiment views a person reads: after a real `dvc repro` and two real `dvc exp run`s in a temporary copy,
`dvc metrics show` and `dvc exp show --only-changed` fit a terminal, `dvc metrics diff` shows only real change, and
the page of `dvc plots show` draws every plot in headless Chromium with the network cut off."""
import json, os, re, time

import pytest

from conftest import copy_project
from test_docs import browser   # headless Debian Chromium + chromedriver (a module fixture)

pytestmark = pytest.mark.e2e
WIDE = 'COLUMNS=1000 '     # let DVC draw its whole table, then measure it


@pytest.fixture(scope='module')
def experimented(tmp_path_factory):
    p = copy_project(tmp_path_factory.mktemp('views')/'proj')
    p.set_params({'deploy': {'gates': {'latency_ms': {'threshold': 60000}}}})
    p.commit('test params')
    p.run('dvc repro')
    p.commit('first run')
    p.run('dvc exp run -S train.search.n_iter=1')
    p.run('dvc exp run -S evaluate.threshold=0.5')
    return p

def widest(text:str) -> int: return max(len(l.rstrip()) for l in text.splitlines())

def test_dvc_metrics_show_is_one_short_line_per_stage(experimented):
    out = experimented.run(WIDE + 'dvc metrics show').stdout
    rows = {l.split()[0] for l in out.splitlines()[1:] if l.strip()}
    assert rows == {f'metrics/key/{s}.json' for s in ('prepare', 'train', 'evaluate', 'deploy', 'monitor')}, out
    assert widest(out) <= 160, out
    header = out.splitlines()[0].split()
    assert {'roc_auc', 'pr_auc', 'f1', 'recall', 'cv_score', 'passed', 'promoted', 'alert', 'drift_share', 'drifted', 'live_roc_auc'} <= set(header)
    assert not [h for h in header if re.search(r'latency|seconds|_lo$|_hi$|^features\.', h)], header
    for f in experimented.path.glob('metrics/key/*.json'):     # 4 significant digits at most
        for k, v in json.loads(f.read_text()).items():
            if isinstance(v, float): assert len(f'{v:.15g}'.lstrip('-0.').replace('.', '')) <= 4, (f.name, k, v)

def test_dvc_exp_show_only_changed_fits_with_the_recipe(experimented):
    out = experimented.run(WIDE + "dvc exp show --only-changed --drop 'Created|.*/' --no-pager").stdout
    assert widest(out) <= 160, out
    assert 'train.search.n_iter' in out and 'evaluate.threshold' in out and 'roc_auc' in out and 'f1' in out, out
    assert not re.search(r'\b[0-9a-f]{32}\b', out), out          # no dependency md5s

def test_dvc_metrics_diff_shows_no_machine_noise(experimented):
    p = experimented
    p.run('git checkout -q HEAD -- . && dvc checkout -q')       # back to the committed run
    p.run('dvc repro --force --single-item deploy')             # the same model again: its latency is measured anew
    out = json.loads(p.run('dvc metrics diff --json').stdout)
    assert all(f.startswith('metrics/key/') for f in out), out
    changed = {k for f in out.values() for k in f}
    assert not {k for k in changed if re.search('latency|seconds|_ms$', k)}, out
    assert not (changed - {'passed', 'promoted'}), out          # no number moves; only the decision (a tie never promotes)


MONITOR_FIGURES = {f'plots/monitor/figures/{n}.png' for n in ('drift', 'drift_over_time', 'performance')}   # dvc.yaml plots: plots/monitor/figures

DATA_PIXELS = 600   # coloured pixels a chart's data draws at least (its legend swatch alone: about 270; a 10-bin line: about 850)

def html_id(plot:str) -> str:
    "The id of the element DVC draws `plot` in (dvc_render's `remove_special_chars`): 'plots/a.csv' -> 'plots_a_csv'."
    return plot.translate({ord(c): '_' for c in r"!@#$%^&*()[]{};,<>?\/:.|`~=_+ "})

def draw_offline(browser, page, n_charts:int) -> tuple[dict, list]:
    """Open the `dvc plots show` page `page` with the browser's network off and wait until its `n_charts` Vega charts have marks.
    Returns ({'charts': {element id: marked pixels or SVG marks}, 'colored': {element id: coloured pixels, the data's marks},
    'images': [[element id, src, natural width]]}, every URL fetched)."""
    # no network at all: the browser's only route out is a proxy on a closed port
    browser.execute_cdp_cmd('Network.enable', {})
    browser.execute_cdp_cmd('Network.emulateNetworkConditions', dict(offline=True, latency=0, downloadThroughput=-1, uploadThroughput=-1))
    try:
        browser.get(page.as_uri())
        drawn = None
        for _ in range(100):          # vega-embed draws asynchronously
            drawn = browser.execute_script("""
                const out = {}, colored = {};
                for (const div of document.querySelectorAll('.vega-embed')) {
                    const c = div.querySelector('canvas.marks'), s = div.querySelector('svg.marks');
                    let marks = 0, hue = 0;   // pixels drawn; of them, coloured ones (the data: axes, grid and text are grey)
                    if (c && c.width > 0) {
                        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) {
                            marks++;
                            if (Math.max(d[i-3], d[i-2], d[i-1]) - Math.min(d[i-3], d[i-2], d[i-1]) > 40) hue++;
                        }
                    } else if (s) marks = s.querySelectorAll('path, rect, line, symbol').length;
                    out[div.parentElement.id || div.id] = marks; colored[div.parentElement.id || div.id] = hue;
                }
                return {charts: out, colored: colored, images: [...document.images].map(i => [(i.closest('div[id]') || {}).id, i.getAttribute('src'), i.complete && i.naturalWidth])};""")
            if len(drawn['charts']) >= n_charts and all(v > 500 for v in drawn['charts'].values()): break
            time.sleep(0.2)
        fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    finally:
        browser.execute_cdp_cmd('Network.emulateNetworkConditions', dict(offline=False, latency=0, downloadThroughput=-1, uploadThroughput=-1))
    return drawn, fetched

def plots_page(p, out='offline_plots'):
    "Write the `dvc plots show` page of project `p`; return (page, its plots by kind: vega, image) after checking it loads no script from outside."
    shown = p.run(f'dvc plots show -o {out}').stdout
    page = p.path/out/'index.html'
    assert page.is_file(), shown
    html = page.read_text()
    assert 'cdn.jsdelivr' not in html and not re.search(r'<script[^>]+src=', html)   # every script is in the page
    kinds = json.loads(p.run('dvc plots show --json').stdout)['data']
    return page, {t: [k for k, v in kinds.items() if v and v[0]['type'] == t] for t in ('vega', 'image')}

def test_dvc_plots_show_draws_every_plot_offline(experimented, browser, tmp_path):
    page, kinds = plots_page(experimented)
    vega, images = kinds['vega'], kinds['image']
    assert {'plots/evaluate/curves/roc.csv', 'plots/evaluate/curves/pr.csv', 'plots/evaluate/curves/calibration.csv', 'plots/evaluate/importance.csv', 'plots/monitor/drift.csv'} <= set(vega), vega
    assert len(images) >= 5, images
    assert MONITOR_FIGURES <= set(images), images                    # the monitor's drift, drift-over-time and performance figures
    drawn, fetched = draw_offline(browser, page, len(vega))
    assert len(drawn['charts']) == len(vega), drawn                  # one drawn chart per Vega plot
    assert all(v > 500 for v in drawn['charts'].values()), drawn     # each has marks on its canvas (axes, lines, bars)
    assert all(v > DATA_PIXELS for v in drawn['colored'].values()), drawn['colored']   # and its data drawn: coloured lines, bars
    assert len(drawn['images']) >= len(images) and all(w for _, _, w in drawn['images']), drawn   # and every PNG figure loaded
    on_page = {i: w for i, _, w in drawn['images']}
    assert all(on_page.get(html_id(f), 0) > 100 for f in MONITOR_FIGURES), (sorted(MONITOR_FIGURES), drawn['images'])   # each monitor figure drawn, by name
    assert not [u for u in fetched if not u.startswith('file:')], fetched
    browser.save_screenshot(str(tmp_path/'plots.png'))
