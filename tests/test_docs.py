"""The documentation site: `mlops-nb docs build` on this project's notebooks and a real run's reports, served on
127.0.0.1 and checked in headless Chromium (Selenium + Debian's chromium/chromedriver); README made from nbs/index.ipynb.

Screenshots of the pages go to test-artifacts/docs/ (or $DOCS_ARTIFACTS)."""
import json, os, re, shutil, socket, subprocess, sys, time, urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest, yaml

from conftest import ROOT, PROJECT_FILES, SMALL, merge, run

CHROMIUM, CHROMEDRIVER = shutil.which('chromium'), shutil.which('chromedriver')
ARTIFACTS = Path(os.environ.get('DOCS_ARTIFACTS', ROOT/'test-artifacts'/'docs'))

# ---------------------------------------------------------------- fixtures: a real run, its site, a server, a browser
@pytest.fixture(scope='module')
def proj(tmp_path_factory) -> Path:
    "A copy of the project (with nbs/) after one small real `dvc repro`: reports, and a registry whose champion has a card."
    dst = tmp_path_factory.mktemp('docs')/'proj'
    for name in PROJECT_FILES + ['nbs']:
        (dst/name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT/name).is_dir(): shutil.copytree(ROOT/name, dst/name, ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints'))
        else: shutil.copy2(ROOT/name, dst/name)
    params = yaml.safe_load((dst/'params.yaml').read_text())
    (dst/'params.yaml').write_text(yaml.safe_dump(merge(params, SMALL), sort_keys=False))
    run('git init -q -b main && git add -A && git -c user.name=t -c user.email=t@t commit -qm init && dvc repro', dst, timeout=900)
    assert json.loads((dst/'registry/aliases.json').read_text())['champion'] == 'v0001'   # the deploy stage promoted it
    return dst

@pytest.fixture(scope='module')
def site(proj) -> Path:
    "The site, built by the command README gives: the library pages render the outputs stored in the notebooks."
    out = run('mlops-nb docs build', proj, timeout=600).stdout
    assert re.search(r'\d+ library pages, [5-9] reports, model card v0001', out), out
    return proj/'_site'

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture(scope='module')
def server(site):
    "`python -m http.server` on a free port of 127.0.0.1, serving the site; yields its base URL."
    port = free_port()
    p = subprocess.Popen([sys.executable, '-m', 'http.server', str(port), '--bind', '127.0.0.1', '--directory', str(site)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f'http://127.0.0.1:{port}/'
    for _ in range(100):
        try: urllib.request.urlopen(base, timeout=1); break
        except OSError: time.sleep(0.1)
    yield base
    p.terminate(); p.wait(10)

@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    "Headless Debian Chromium driven by its chromedriver (no driver or browser download)."
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail('chromium and chromedriver are needed: `bash scripts/test.sh` installs them (scripts/system_packages.sh, as root; '
                    'or apt-get install chromium chromium-driver)')
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
              '--disable-sync', '--no-first-run', '--disable-quic', '--window-size=1280,1400',
              f'--user-data-dir={tmp_path_factory.mktemp("chromium")}']:
        opts.add_argument(a)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield d
    d.quit()

def open_page(d, url):
    "Load `url` and wait for the document and its images; return the console messages it produced."
    d.get_log('browser')
    d.get(url)
    wait_loaded(d)
    return d.get_log('browser')

def wait_loaded(d):
    "Wait until the page and all its images have loaded (so the layout no longer moves)."
    for _ in range(200):
        if d.execute_script("return document.readyState === 'complete' && [...document.images].every(i => i.complete)"): return
        time.sleep(0.1)

def click(d, el):
    "Scroll `el` into view at once (the theme scrolls smoothly, which would move it under the pointer) and click it."
    d.execute_script('arguments[0].scrollIntoView({block: "center", behavior: "instant"})', el)
    el.click()
    wait_loaded(d)

def main_text(d) -> str: return d.find_element('css selector', '#furo-main-content').text

def errors(log): return [e for e in log if e['level'] == 'SEVERE']

def shot(d, name):
    "Save a screenshot of the whole page as a test artefact."
    h = d.execute_script('return Math.min(document.documentElement.scrollHeight, 6000)')
    d.set_window_size(1280, max(800, h))
    d.save_screenshot(str(ARTIFACTS/f'{name}.png'))
    d.set_window_size(1280, 1400)
    assert (ARTIFACTS/f'{name}.png').stat().st_size > 10_000

def off_site_requests(d, base):
    "Every resource the page fetched from somewhere other than the site's own server."
    return [u for u in d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") if not u.startswith(base)]

# ---------------------------------------------------------------- the browser test
def test_home_page(browser, server):
    from selenium.webdriver.common.by import By
    log = open_page(browser, server)
    assert browser.find_element(By.TAG_NAME, 'h1').text.strip().startswith('mlops-nb')
    assert 'dvc repro' in main_text(browser)           # README's text
    nav = {a.text.strip(): a.get_attribute('href') for a in browser.find_elements(By.CSS_SELECTOR, '.sidebar-tree a')}
    assert {'core', 'data', 'evaluate', 'registry', 'docs', 'capture', 'serve', '4. Evaluate'} <= set(nav), nav
    assert any(t.startswith('Model card') and t.endswith('v0001') for t in nav), nav
    assert errors(log) == [] and off_site_requests(browser, server) == []
    shot(browser, 'home')

def test_api_page_has_show_doc_entries(browser, server):
    from selenium.webdriver.common.by import By
    log = open_page(browser, server + 'core.html')
    entry = browser.find_element(By.ID, 'atomic-write')                            # show_doc's heading, a section
    assert entry.find_element(By.TAG_NAME, 'h3').text.strip().startswith('atomic_write')
    assert 'def atomic_write(' in entry.find_element(By.CSS_SELECTOR, 'pre').text   # the signature
    assert 'move it over path only if the block succeeds' in entry.text             # the docstring
    assert re.search(r'/mlops_nb/core\.py#L\d+$', entry.find_element(By.LINK_TEXT, 'source').get_attribute('href'))
    assert errors(log) == [] and off_site_requests(browser, server) == []
    shot(browser, 'api-core')

def test_api_page_shows_its_examples_outputs(browser, server):
    "The outputs stored in nbs/05_evaluate.ipynb: the figures of its examples load and have size; its tables are there."
    from selenium.webdriver.common.by import By
    log = open_page(browser, server + 'evaluate.html')
    assert browser.find_elements(By.CSS_SELECTOR, '.sig, h3')                        # an API page: show_doc entries
    imgs = browser.execute_script("return [...document.querySelectorAll('.cell_output img')].map(i => "
                                  "({src: i.src, ok: i.complete, w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width}))")
    assert len(imgs) >= 3, imgs                                                      # ROC, PR, calibration, ... of the example
    for i in imgs: assert i['ok'] and i['w'] > 100 and i['h'] > 100 and i['shown'] > 100, i
    tables = browser.find_elements(By.CSS_SELECTOR, '.cell_output table.dataframe')
    assert tables and any(len(t.find_elements(By.TAG_NAME, 'tr')) > 1 for t in tables)
    assert errors(log) == [] and off_site_requests(browser, server) == []
    shot(browser, 'api-evaluate')
    browser.execute_script("document.querySelector('.cell_output img').scrollIntoView({block: 'start', behavior: 'instant'})")
    browser.save_screenshot(str(ARTIFACTS/'api-evaluate-figures.png'))             # the examples' figures, as a reader sees them

def test_report_page_shows_its_figures(browser, server, proj, site):
    from selenium.webdriver.common.by import By
    log = open_page(browser, server + 'reports/04_evaluate.html')
    assert browser.find_element(By.TAG_NAME, 'h1').text.strip().startswith('4. Evaluate')
    assert 'Executed by papermill on' in main_text(browser)
    imgs = browser.execute_script("return [...document.querySelectorAll('.cell_output img')].map(i => "
                                  "({src: i.src, ok: i.complete, w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width}))")
    assert len(imgs) >= 5, imgs                                                      # ROC, PR, calibration, confusion, importance
    for i in imgs: assert i['ok'] and i['w'] > 100 and i['h'] > 100 and i['shown'] > 100, i
    assert browser.find_elements(By.CSS_SELECTOR, '.cell_output table.dataframe')   # the metrics table
    assert errors(log) == [] and off_site_requests(browser, server) == []
    shot(browser, 'report-evaluate')
    for page in sorted((site/'reports').glob('*.html')):                           # every report: images load, no errors
        log = open_page(browser, server + f'reports/{page.name}')
        bad = browser.execute_script("return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
        assert bad == [] and errors(log) == [], (page.name, bad, errors(log))
    log = open_page(browser, server + 'model-card/index.html')                      # the champion's card, with its figures
    card = (proj/'registry/versions/v0001/card.md').read_text().splitlines()[0].lstrip('# ')
    assert browser.find_element(By.TAG_NAME, 'h1').text.strip().startswith(card) and 'roc_auc' in main_text(browser), card
    imgs = browser.execute_script("return [...document.querySelectorAll('#furo-main-content img')].map(i => [i.complete, i.naturalWidth])")
    assert imgs and all(ok and w > 100 for ok, w in imgs), imgs
    assert errors(log) == []

OVERFLOWING_PRE = """return [...document.querySelectorAll('#furo-main-content pre')].filter(p => p.clientWidth > 0).map(p => {
    const wrapped = [p.scrollWidth, p.clientWidth];
    const before = p.style.whiteSpace; p.style.whiteSpace = 'pre';      // the same block unwrapped: is a line too long for it?
    const unwrapped = p.scrollWidth; p.style.whiteSpace = before;
    return {text: p.textContent.slice(0, 60), scroll: wrapped[0], client: wrapped[1], unwrapped: unwrapped};
})"""

@pytest.mark.parametrize('width', [420, 800])
def test_code_blocks_wrap_at_narrow_widths(browser, server, width):
    "At a phone's and a small window's width no code block or output is cut off: long lines wrap inside the block."
    try:
        browser.set_window_size(width, 1400)
        for page in ['index.html', 'core.html', 'monitor.html']:   # README's commands, signatures, examples' outputs
            open_page(browser, server + page)
            blocks = browser.execute_script(OVERFLOWING_PRE)
            assert blocks, page
            assert any(b['unwrapped'] > b['client'] + 1 for b in blocks), (page, 'no line long enough to need wrapping here')
            cut = [b for b in blocks if b['scroll'] > b['client'] + 1]
            assert cut == [], (page, width, cut)
        browser.save_screenshot(str(ARTIFACTS/f'narrow-{width}.png'))          # the last page, as a reader at that width sees it
    finally:
        browser.set_window_size(1280, 1400)

def test_navigation_links(browser, server):
    from selenium.webdriver.common.by import By
    open_page(browser, server)
    browser.find_element(By.CSS_SELECTOR, '.sidebar-tree').find_element(By.LINK_TEXT, 'data').click()
    assert browser.current_url == server + 'data.html' and browser.find_element(By.TAG_NAME, 'h1').text.strip().startswith('data')
    browser.find_element(By.CSS_SELECTOR, '.sidebar-tree').find_element(By.LINK_TEXT, '2. Prepare').click()
    wait_loaded(browser)
    assert browser.current_url == server + 'reports/02_prepare.html'
    click(browser, browser.find_element(By.CSS_SELECTOR, 'a.next-page'))            # furo's "next" link, at the bottom
    assert browser.current_url == server + 'reports/03_train.html'
    browser.find_element(By.CSS_SELECTOR, '.sidebar-brand').click()
    assert browser.current_url in (server, server + 'index.html')
    # nbdev's links from backticked names go to this site's pages and headings
    open_page(browser, server + 'data.html')
    hrefs = [a.get_attribute('href') for a in browser.find_elements(By.CSS_SELECTOR, '#furo-main-content a.reference.internal')]
    assert any(h.startswith(server + 'core.html#') for h in hrefs), hrefs

def test_every_internal_link_resolves(site, server):
    "Crawl the site over HTTP: every page linked from another page exists, and every #fragment is an id on it."
    class Links(HTMLParser):
        def __init__(self): super().__init__(); self.hrefs, self.ids = [], set()
        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if a.get('id'): self.ids.add(a['id'])
            for k in ('href', 'src'):
                if a.get(k) and tag in ('a', 'img', 'script', 'link'): self.hrefs.append(a[k])
    seen, todo, pages, broken = set(), [server + 'index.html'], {}, []
    while todo:
        url = todo.pop()
        if url in seen: continue
        seen.add(url)
        try: body = urllib.request.urlopen(url, timeout=10).read()
        except OSError as e: broken.append(f'{url}: {e}'); continue
        if not url.endswith('.html'): continue
        p = Links(); p.feed(body.decode('utf-8')); pages[url] = p
        for h in p.hrefs:
            full = urljoin(url, h)
            if full.startswith(server): todo.append(full.split('#')[0]); pages.setdefault('#', []).append((url, full))
    for src, full in pages.pop('#'):
        page, _, frag = full.partition('#')
        if frag and page in pages and frag not in pages[page].ids: broken.append(f'{src} -> {full}: no such id')
    assert broken == []
    assert len([u for u in pages if u.endswith('.html')]) >= 17                     # library pages, reports, model card

def test_search_finds_a_function(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    open_page(browser, server)
    box = browser.find_element(By.CSS_SELECTOR, 'form.sidebar-search-container input[name=q]')
    box.send_keys('atomic_write', Keys.ENTER)
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#search-results ul.search li'))
    assert 'search.html?q=atomic_write' in browser.current_url
    results = [a.get_attribute('href') for a in browser.find_elements(By.CSS_SELECTOR, '#search-results ul.search li a')]
    assert any(urlsplit(h).path == '/core.html' for h in results), results
    assert errors(browser.get_log('browser')) == []
    shot(browser, 'search')

def test_search_finds_the_page_about_a_term_before_the_reports(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    for term, page in [('drift', '/monitor.html'), ('schema', '/data.html'), ('min_rows', '/monitor.html')]:
        open_page(browser, server + f'search.html?q={term}')
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#search-results ul.search li'))
        results = [urlsplit(a.get_attribute('href')).path for a in browser.find_elements(By.CSS_SELECTOR, '#search-results ul.search li > a')]
        reports = [i for i, h in enumerate(results) if h.startswith('/reports/')]
        assert page in results and (not reports or results.index(page) < reports[0]), (term, results)

# ---------------------------------------------------------------- the reports read as reports
RAW_REPR = re.compile(r"Timestamp\(|\{'[^']*': |<pandas\.|object at 0x|\b\d+\.0{6}\b"
                      r"|\d\.\d+e-(?:1\d|[2-9]\d)\b|\d\.\d+e\+(?:0[4-9]|\d\d\d?)\b")   # float noise (1.388e-17), 1.581e+04

def shown_output(o) -> str:
    "What a renderer shows of one output: its richest text form (HTML, then markdown, then plain text)."
    if o['output_type'] == 'stream': return o['text']
    if o['output_type'] == 'error': return o.get('evalue', '')
    data = o.get('data', {})
    if 'image/png' in data: return ''
    return next((''.join(data[k]) if isinstance(data[k], list) else data[k] for k in ('text/html', 'text/markdown', 'text/plain') if k in data), '')

def test_reports_read_as_reports(proj, tmp_path):
    reports = sorted((proj/'reports').glob('*.ipynb'))
    assert [r.stem for r in reports] == ['01_collect', '02_prepare', '03_train', '04_evaluate', '05_deploy', '06_monitor']
    for r in reports:
        nb = json.loads(r.read_text())
        outs = [(c, o) for c in nb['cells'] if c['cell_type'] == 'code' for o in c['outputs']]
        first = outs[0][1]                                         # the summary comes first, as rendered markdown
        assert first['output_type'] == 'display_data' and 'text/markdown' in first['data'], (r.name, first)
        md = ''.join(first['data']['text/markdown'])
        assert 'Since the last run' in md and '**Next:**' in md and 'Stopped' not in md, (r.name, md)
        assert [o for _, o in outs if o['output_type'] == 'stream' and o['name'] == 'stderr'] == [], r.name   # logs go to the log
        assert (proj/'reports'/f'{r.stem}.log').exists()
        raw = [(r.name, m.group(0), shown_output(o)[max(0, m.start() - 80):m.end() + 80]) for _, o in outs
               for m in [RAW_REPR.search(shown_output(o))] if m]
        assert raw == [], raw
        html_out = '\n'.join(shown_output(o) for _, o in outs)
        for _, o in outs:   # the search's table (learning_rate, scores, ...) holds no proportion: no value in it is a percentage
            assert 'learning_rate</th>' not in shown_output(o) or '%</td>' not in shown_output(o), (r.name, 'a learning rate shown as a percentage')
        for m in re.finditer(r'>positive_rate</th>\s*<td[^>]*>([^<]*)<', html_out):   # a rate row in a table of measures
            assert m.group(1).endswith('%'), (r.name, m.group(0))
        params = [c for c in nb['cells'] if 'injected-parameters' in c['metadata'].get('tags', [])]
        assert params and 'report.params_table' in ''.join(''.join(c['source']) for c in nb['cells'])   # injected, and shown once as a table
    # the documented HTML command hides the code and keeps the outputs
    run(f'jupyter nbconvert --to html --no-input --output-dir {tmp_path} {proj}/reports/04_evaluate.ipynb', proj)
    page = (tmp_path/'04_evaluate.html').read_text()
    assert 'report.placeholder' not in page and 'stage_params' not in page and 'Since the last run' in page and '<img' in page

def code_cell(nb:dict, snippet:str) -> dict:
    "The report's one code cell whose source holds `snippet`."
    cells = [c for c in nb['cells'] if c['cell_type'] == 'code' and snippet in ''.join(c['source'])]
    assert len(cells) == 1, (snippet, len(cells))
    return cells[0]

def figures(cell:dict) -> list[str]:
    "The figures a cell shows, as their text form (`<Figure size 550x300 with 1 Axes>`)."
    return [''.join(o['data']['text/plain']) for o in cell['outputs'] if 'image/png' in o.get('data', {})]

TIME_PARTS = ['timestamp_hour', 'timestamp_dayofweek']   # prepare.features.time_parts: auto, of task.time_column

def test_collect_draws_rows_per_batch_only_when_they_vary(proj):
    "No flat chart: the simulator's batches all have the same rows, so collect's figure is the target rate per batch alone."
    collect = json.loads((proj/'reports/01_collect.ipynb').read_text())
    rows = [b['rows'] for b in json.loads((proj/'data/raw/manifest.json').read_text())]
    assert len(rows) > 1 and len(set(rows)) == 1, rows                       # the simulator: the same rows every day
    assert figures(code_cell(collect, 'rows per batch only when')) == ['<Figure size 550x300 with 1 Axes>']   # the target rate only

def test_prepare_draws_no_null_rate_chart_without_nulls(proj):
    "No empty chart: without a missing value anywhere, prepare says so in a sentence and draws the class balance alone."
    prepare = json.loads((proj/'reports/02_prepare.ipynb').read_text())
    assert all(c['null_rate'] == 0 for c in json.loads((proj/'metrics/data_quality.json').read_text())['columns'])
    cell = code_cell(prepare, 'null_rates')
    said = [''.join(o['data']['text/markdown']) for o in cell['outputs'] if 'text/markdown' in o.get('data', {})]
    assert said == ['No missing values in any column of any split.'], said
    assert figures(cell) == ['<Figure size 550x300 with 1 Axes>']            # class balance only, no empty null-rate chart

def test_drift_over_time_leaves_the_time_parts_out(proj):
    "A one-day window holds one weekday: the time parts are left out of the per-day drift (its table and the figure drawn from the same rows), and it says so."
    import pandas as pd
    from mlops_nb.report import time_part_columns
    from mlops_nb.steps import resolved_params
    params = resolved_params(yaml.safe_load((proj/'params.yaml').read_text()), str(proj/'data/raw'))
    assert sorted(time_part_columns(params)) == sorted(TIME_PARTS)
    dot = pd.read_csv(proj/'plots/monitor/drift_over_time.csv')              # all features, every day: what was left out
    assert set(TIME_PARTS) <= set(dot.column) and dot[dot.column == 'timestamp_dayofweek'].drift.all()   # "drifted" every day
    nb = json.loads((proj/'reports/06_monitor.ipynb').read_text())
    heading = next(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown' and ''.join(c['source']).startswith('## Drift over time'))
    assert 'are left out' in heading and 'weekday' in heading, heading
    per_feature = ''.join(shown_output(o) for o in code_cell(nb, 'features drifted**')['outputs'])
    assert all(f'>{c}</td>' in per_feature for c in TIME_PARTS)              # judged over the whole window, as every feature
    cell = code_cell(nb, 'dot = out.drift_over_time')
    assert len(figures(cell)) == 1
    per_day = ''.join(shown_output(o) for o in cell['outputs'])
    assert '>amount</th>' in per_day and not any(c in per_day for c in TIME_PARTS), per_day[:2000]

def test_drift_over_time_figure_for_dvc_plots_leaves_the_time_parts_out(proj, tmp_path):
    "run_monitor's figure (plots/monitor/figures/drift_over_time.png, for `dvc plots show`) is drawn without the time parts."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.image, numpy as np, pandas as pd
    from mlops_nb import monitor as mon
    dot = pd.read_csv(proj/'plots/monitor/drift_over_time.csv')
    assert set(TIME_PARTS) <= set(dot.column)
    def drawn(d:pd.DataFrame, path:Path) -> np.ndarray:
        mon.plot_drift_over_time(d).savefig(path, dpi=80, bbox_inches='tight', metadata={'Software': None})
        return matplotlib.image.imread(path)
    def differs(a, b) -> float: return float('inf') if a.shape != b.shape else float(np.abs(a - b).mean())
    saved = matplotlib.image.imread(proj/'plots/monitor/figures/drift_over_time.png')
    without, full = drawn(dot[~dot.column.isin(TIME_PARTS)], tmp_path/'without.png'), drawn(dot, tmp_path/'full.png')
    assert differs(saved, without) < 0.002 and differs(saved, full) > 10 * max(differs(saved, without), 1e-4), (differs(saved, without), differs(saved, full))

def uneven_csv_folder(folder:Path) -> Path:
    "Four CSV batches of a classification task with different row counts; one in 12 values of `x` missing, in every batch."
    import numpy as np, pandas as pd
    rng, start = np.random.default_rng(0), pd.Timestamp('2026-03-01')
    folder.mkdir(parents=True)
    for i, per_day in enumerate([60, 90, 120, 150]):          # three days a file
        n = 3 * per_day
        ts = start + pd.Timedelta(days=3 * i) + pd.to_timedelta(np.sort(rng.uniform(0, 3 * 86400, n)), unit='s')
        x = rng.normal(0, 1, n)
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(x * 2 - 1.5)))).astype(int)
        x[::12] = np.nan
        pd.DataFrame({'id': [f'r{i}_{j}' for j in range(n)], 'ts': ts.strftime('%Y-%m-%d %H:%M:%S'), 'x': x.round(4),
                      'kind': rng.choice(['a', 'b', 'c'], n), 'y': y}).to_csv(folder/f'part{i}.csv', index=False)
    return folder

INSPECT = {   # appended to the stage notebooks of the copy: what the figure of the cell before holds
    '01_collect': "import json\nprint('FIGURE', json.dumps([a.get_title() for a in fig.axes]))",
    '02_prepare': "import json\nprint('FIGURE', json.dumps([dict(title=a.get_title(), ticks=[t.get_text() for t in a.get_xticklabels()],\n"
                  "    percent=[type(f).__name__ == 'PercentFormatter' for f in (a.xaxis.get_major_formatter(), a.yaxis.get_major_formatter())],\n"
                  "    heights=[float(b.get_height()) for b in a.patches], widths=[float(b.get_width()) for b in a.patches]) for a in fig.axes]))\n"
                  "print('RATES', json.dumps({k: v['target_rate'] for k, v in summary.items()}))"}

def test_figures_of_uneven_batches_with_nulls(project):
    "Batches of different sizes with missing values: collect draws rows per batch; prepare the null rates, and class balance as rates."
    import nbformat
    p = project.path
    uneven_csv_folder(p/'data/external/parts')
    project.set_params({'task': {'type': 'classification', 'target': 'y', 'time_column': 'ts', 'id_columns': ['id']},
                        'collect': {'sources': [{'type': 'file', 'path': 'data/external/parts'}], 'days': 40}})
    for stage, code in INSPECT.items():
        nb_ = nbformat.read(p/f'pipelines/{stage}.ipynb', as_version=4)
        nb_.cells.append(nbformat.v4.new_code_cell(code))
        nbformat.write(nb_, p/f'pipelines/{stage}.ipynb')
    project.run('dvc repro prepare', timeout=600)
    def printed(stage, key):
        nb_ = json.loads((p/f'reports/{stage}.ipynb').read_text())
        return [json.loads(line.split(' ', 1)[1]) for c in nb_['cells'] if c['cell_type'] == 'code' for o in c['outputs']
                if o['output_type'] == 'stream' for line in ''.join(o['text']).splitlines() if line.startswith(key + ' ')][0]
    collect = json.loads((p/'reports/01_collect.ipynb').read_text())
    assert figures(code_cell(collect, 'rows per batch only when')) == ['<Figure size 1100x300 with 2 Axes>']
    assert printed('01_collect', 'FIGURE') == ['rows per batch', 'y rate per batch']
    prepare = json.loads((p/'reports/02_prepare.ipynb').read_text())
    cell = code_cell(prepare, 'null_rates')
    assert figures(cell) == ['<Figure size 1100x300 with 2 Axes>']
    assert not any('No missing values' in shown_output(o) for o in cell['outputs'])
    nulls, balance = printed('02_prepare', 'FIGURE')
    assert nulls['title'].startswith('null rate by column') and nulls['percent'][0] and len(nulls['widths']) == 1   # x only
    assert nulls['widths'][0] == pytest.approx(1 / 12, abs=0.01)
    rates = printed('02_prepare', 'RATES')
    assert balance['title'] == 'y = 1: rate by split' and balance['percent'][1] and balance['ticks'] == list(rates)
    assert balance['heights'] == pytest.approx(list(rates.values()), abs=1e-9) and all(0 < h < 1 for h in balance['heights'])

def test_report_pages_hide_code_and_parameters(site):
    for page in sorted((site/'reports').glob('*.html')):
        text = page.read_text()
        assert 'stage_params' not in text and 'report.summary' not in text and 'serve = None' not in text, page.name
        assert 'Since the last run' in text, page.name

def test_monitor_below_min_rows_judges_nothing(proj, tmp_path):
    p = tmp_path/'proj'
    shutil.copytree(proj, p, ignore=shutil.ignore_patterns('_site', '_docs_cache*'), symlinks=True)
    params = yaml.safe_load((p/'params.yaml').read_text())
    (p/'params.yaml').write_text(yaml.safe_dump(merge(params, {'monitor': {'alerts': {'min_rows': 10**9}}}), sort_keys=False))
    run('dvc repro monitor', p, timeout=600)
    nb = json.loads((p/'reports/06_monitor.ipynb').read_text())
    text = '\n'.join(shown_output(o) for c in nb['cells'] if c['cell_type'] == 'code' for o in c['outputs'])
    first = ''.join(next(o for c in nb['cells'] if c['cell_type'] == 'code' for o in c['outputs'])['data']['text/markdown'])
    assert first.startswith('**Not judged') and 'features drifted' not in text and 'ALERT' not in text, first
    assert '>drift</th>' not in text, 'a drift verdict column in a window too small to judge'

# ---------------------------------------------------------------- without a browser
def test_the_site_works_offline(site):
    from mlops_nb.docs import offline_problems
    assert offline_problems(site) == []
    html = ''.join(p.read_text() for p in site.rglob('*.html'))
    assert not re.search(r'<script[^>]+src="[^"]*(mathjax|require|jupyter-widgets)', html, re.I)   # what notebook exports usually load

def test_build_keeps_the_last_good_site_on_bad_input(proj, site):
    before = (site/'index.html').read_bytes()
    bad = proj/'bad-registry'; (bad/'versions').mkdir(parents=True)
    (bad/'aliases.json').write_text('{"champion": "v0009"}')
    r = run('mlops-nb docs build --registry bad-registry', proj, check=False)
    assert r.returncode == 2 and 'v0009 has no model card' in r.stderr, r.stderr
    assert (site/'index.html').read_bytes() == before
    r = run('mlops-nb docs build --out .', proj, check=False)
    assert r.returncode == 2 and 'would replace the project' in r.stderr
    r = run('mlops-nb docs build --reports nowhere', proj, check=False)
    assert r.returncode == 2 and '--reports nowhere: no such folder' in r.stderr
    r = run('mlops-nb docs build --workers 0', proj, check=False)
    assert r.returncode == 2 and '--workers must be at least 1, got 0' in r.stderr

def nb(*cells):
    "A notebook of (cell_type, source) cells, as nbdev_clean leaves one."
    return {'cells': [dict(cell_type=t, id=f'{i:04x}', metadata={}, source=s, **({'outputs': [], 'execution_count': None} if t == 'code' else {}))
                      for i, (t, s) in enumerate(cells)],
            'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}}, 'nbformat': 4, 'nbformat_minor': 5}

@pytest.fixture
def tiny(tmp_path) -> Path:
    "A one-module nbdev project whose example makes a table, a figure, and prints in a `notest` cell; no outputs stored yet."
    (tmp_path/'nbs').mkdir()
    shutil.copy(ROOT/'settings.ini', tmp_path/'settings.ini')
    (tmp_path/'nbs/index.ipynb').write_text(json.dumps(nb(('markdown', '# tiny\n\n> A tiny project.'), ('markdown', '## Use\n\nCall `double`.'))))
    (tmp_path/'nbs/00_maths.ipynb').write_text(json.dumps(nb(
        ('markdown', '# maths\n\n> Arithmetic.'), ('code', '#| default_exp maths'),
        ('code', '#| export\ndef double(x:int) -> int:\n    "Twice `x`, exactly."\n    return 2 * x'),
        ('code', 'import pandas as pd\ndf = pd.DataFrame({"x": [1, 2], "doubled": [double(1), double(2)]})\ndf'),
        ('code', 'import matplotlib.pyplot as plt\nplt.plot([1, 2], [double(1), double(2)]);'),
        ('code', '#| notest\nprint("a notest cell shows its output too:", double(21))')), indent=1))
    return tmp_path

def test_stored_outputs_are_made_checked_and_rendered(tiny):
    "`docs execute` stores the examples' outputs (clean, idempotent); `--check` finds a missing one; the build renders them."
    maths = tiny/'nbs/00_maths.ipynb'
    r = run('mlops-nb docs execute --check', tiny, check=False)                     # nothing stored yet: the table is missing
    assert r.returncode == 1 and '00_maths.ipynb: cell 3 (`df`) has no stored output' in r.stdout and '2 example cell(s) without' in r.stdout, r.stdout
    out = run('mlops-nb docs execute', tiny).stdout
    assert '00_maths.ipynb: outputs updated' in out and '1 notebooks executed' in out and '1 updated, 0 failed' in out, out
    stored = json.loads(maths.read_text())['cells']
    assert 'text/html' in stored[3]['outputs'][0]['data'] and 'image/png' in stored[4]['outputs'][0]['data']
    assert stored[5]['outputs'][0]['text'] == ['a notest cell shows its output too: 42\n']   # notest cells run too (nbdev_test skips them)
    assert all(c.get('execution_count') is None for c in stored)
    assert run('mlops-nb docs execute --check', tiny).returncode == 0
    before = maths.read_bytes()
    run('nbdev_clean', tiny)                                                           # what scripts/check_sync.sh checks
    assert maths.read_bytes() == before
    assert '0 updated' in run('mlops-nb docs execute nbs/00_maths.ipynb', tiny).stdout   # a second run changes nothing
    assert maths.read_bytes() == before and sorted(p.name for p in (tiny/'nbs').iterdir() if p.name != '.last_checked') == ['00_maths.ipynb', 'index.ipynb']
    # the build renders what is stored, executing nothing
    out = run('mlops-nb docs build', tiny).stdout
    assert '0 notebooks executed' in out, out
    page = (tiny/'_site/maths.html').read_text()
    assert 'Twice' in page and 'class="dataframe' in page and 'notest cell shows its output too: 42' in page
    img = re.search(r'<img[^>]+src="([^"]+)"', page).group(1)
    assert (tiny/'_site'/img).stat().st_size > 1000
    # a broken example: the command names the notebook and the cell, and leaves the notebook as it was
    maths.write_text(maths.read_text().replace('double(2)]})', 'double(2)]}) + undefined_name'))
    broken = maths.read_bytes()
    r = run('mlops-nb docs execute', tiny, check=False)
    assert r.returncode == 1 and '00_maths.ipynb: FAILED: 00_maths.ipynb: cell 3 (`import pandas as pd`) failed' in r.stdout and 'NameError' in r.stdout, r.stdout
    assert maths.read_bytes() == broken
    for bad, msg in [('--workers 0', '--workers must be at least 1'), ('nbs/nope.ipynb', 'nope.ipynb: not a notebook file')]:
        r = run(f'mlops-nb docs execute {bad}', tiny, check=False)
        assert r.returncode == 2 and msg in r.stderr, r.stderr

def test_build_can_execute_the_examples_itself(tiny):
    "`docs build --execute` runs the examples in its cache (nbs/ untouched), again only for a notebook that changed."
    before = (tiny/'nbs/00_maths.ipynb').read_bytes()
    out = run('mlops-nb docs build --execute', tiny).stdout
    assert '2 notebooks executed' in out, out
    page = (tiny/'_site/maths.html').read_text()
    assert 'class="dataframe' in page and '<img' in page and (tiny/'nbs/00_maths.ipynb').read_bytes() == before
    (tiny/'nbs/00_maths.ipynb').write_text((tiny/'nbs/00_maths.ipynb').read_text().replace('exactly', 'always'))
    assert '1 notebooks executed' in run('mlops-nb docs build --execute', tiny).stdout      # index.ipynb's run was cached
    assert 'always' in (tiny/'_site/maths.html').read_text()
    # a broken example stops the build and names the notebook; the last good site stays
    (tiny/'nbs/00_maths.ipynb').write_text((tiny/'nbs/00_maths.ipynb').read_text().replace('double(2)]})', 'double(2)]}) + undefined_name'))
    r = run('mlops-nb docs build --execute', tiny, check=False)
    assert r.returncode == 2 and '00_maths.ipynb: cell 3' in r.stderr and 'NameError' in r.stderr, r.stderr
    assert 'always' in (tiny/'_site/maths.html').read_text()

# ---------------------------------------------------------------- README
def test_readme_is_generated_from_the_home_page():
    r = run('mlops-nb docs readme --check', ROOT, check=False)
    assert r.returncode == 0, r.stdout

def test_readme_check_and_round_trip(tmp_path):
    (tmp_path/'nbs').mkdir()
    for f in ['settings.ini', 'README.md', 'nbs/index.ipynb']: shutil.copy(ROOT/f, tmp_path/f)
    (tmp_path/'README.md').write_text((tmp_path/'README.md').read_text() + '\n## A section added as text\n\nBy another branch.\n')
    r = run('mlops-nb docs readme --check', tmp_path, check=False)
    assert r.returncode == 1 and '+## A section added as text' not in r.stdout and '-## A section added as text' in r.stdout, r.stdout
    run('mlops-nb docs readme --from-readme', tmp_path)                              # port README's edit into the notebook
    assert run('mlops-nb docs readme --check', tmp_path).returncode == 0
    assert any('## A section added as text' in ''.join(c['source']) for c in json.loads((tmp_path/'nbs/index.ipynb').read_text())['cells'])
    (tmp_path/'nbs/index.ipynb').write_text('{not json')
    r = run('mlops-nb docs readme', tmp_path, check=False)
    assert r.returncode == 2 and 'index.ipynb: not a notebook' in r.stderr

def test_readme_is_short_and_its_links_resolve():
    text = (ROOT/'README.md').read_text()
    assert len(text.encode()) < 12_000, len(text.encode())
    for bad in ('../shared', 'DESIGN.md', 'house plan', 'issue #', 'the issue'): assert bad not in text, bad
    assert 'bash scripts/lifecycle.sh' in text and 'bash scripts/test.sh' in text
    links = re.findall(r'(?<!!)\[[^\]]*\]\(([^)\s]+)\)', text)
    local = [l for l in links if not re.match(r'^[a-z][\w+.-]*:', l)]
    assert len(local) >= 6, links
    for link in local:
        path, _, frag = link.partition('#')
        assert (ROOT/path).is_file(), link
        if frag and path.endswith('.ipynb'):
            heads = [l.lstrip('#').strip() for c in json.loads((ROOT/path).read_text())['cells'] if c['cell_type'] == 'markdown'
                     for l in ''.join(c['source']).split('\n') if re.match(r'#{1,4} ', l)]
            assert frag in {re.sub(r'[^\w\- ]', '', h.lower().replace(' ', '-')) for h in heads}, (link, heads)
    assert (ROOT/'LICENSE').read_text().lstrip().startswith('Apache License') and 'license = apache2' in (ROOT/'settings.ini').read_text()

# ---------------------------------------------------------------- words that belong to how the work was organised
INTERNAL = re.compile(r"(?i)\bissues? ?#?\d|\bthe issue\b|\bissue's\b|\.\./shared|\bDESIGN\.md\b|\bhouse plan\b|/work/(?:main|wt-\d|shared)")

def user_facing_files() -> list[Path]:
    "What a user reads: README, the docs notebooks (sources and stored outputs), pipelines, benchmarks and their results, scripts."
    files = [ROOT/'README.md', ROOT/'dvc.yaml', ROOT/'params.yaml', ROOT/'settings.ini']
    for pattern in ('nbs/*.ipynb', 'pipelines/*.ipynb', 'benchmarks/*.py', 'benchmarks/results/*', 'scripts/*', 'mlops_nb/*.py'):
        files += sorted(ROOT.glob(pattern))
    return [f for f in files if f.is_file()]

def test_user_facing_files_hold_no_internal_words():
    found = [(f.relative_to(ROOT).as_posix(), m.group(0), f.read_text(errors='replace')[max(0, m.start() - 60):m.end() + 60])
             for f in user_facing_files() for m in INTERNAL.finditer(f.read_text(errors='replace'))]
    assert found == [], found
    assert any(f.name == 'serve.py' for f in user_facing_files()) and any(f.name == 'performance.ipynb' for f in user_facing_files())
