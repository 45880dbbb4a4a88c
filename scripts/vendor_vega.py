"""Build the offline page template of `dvc plots show`: Vega, Vega-Lite and Vega-Embed inlined from their npm packages.

    .venv/bin/python scripts/vendor_vega.py          # rewrites .dvc/plots_offline.html (needs npm and the registry)

DVC's own page loads the three scripts from a CDN, so offline its Vega plots stay blank. `.dvc/config` names this
template (`plots.html_template`), so `dvc plots show` writes a page that draws every plot without a network. The
versions are pinned with the registry's sha512 integrity; the page is committed, so users never run this.
"""
import base64, hashlib, subprocess, sys, tarfile, tempfile
from pathlib import Path

PACKAGES = [  # (name, version, npm dist.integrity, file in the package): Vega 5 / Vega-Lite 5, what DVC's templates are written for
    ('vega', '5.33.1', 'sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==', 'build/vega.min.js'),
    ('vega-lite', '5.23.0', 'sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==', 'build/vega-lite.min.js'),
    ('vega-embed', '6.29.0', 'sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==', 'build/vega-embed.min.js'),
]
OUT = Path(__file__).resolve().parent.parent/'.dvc'/'plots_offline.html'

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {versions}: BSD-3-Clause, (c) the University of Washington Interactive Data Lab; inlined by scripts/vendor_vega.py -->
{scripts}
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""

def fetch(name, version, integrity, member, tmp:Path) -> str:
    "The text of `member` in the npm tarball of name@version, after checking the tarball against `integrity`."
    subprocess.run(['npm', 'pack', '--silent', '--pack-destination', str(tmp), f'{name}@{version}'], check=True, capture_output=True)
    tgz = tmp/f'{name}-{version}.tgz'
    got = 'sha512-' + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    if got != integrity: sys.exit(f"{tgz.name}: integrity {got} differs from the pinned {integrity}")
    with tarfile.open(tgz) as t: js = t.extractfile(f'package/{member}').read().decode('utf-8')
    if '</script' in js.lower(): js = js.replace('</script', '<\\/script').replace('</SCRIPT', '<\\/SCRIPT')
    return js

def main():
    with tempfile.TemporaryDirectory() as d:
        scripts = [f'    <script type="text/javascript">/* {n}@{v} */\n{fetch(n, v, i, m, Path(d))}\n    </script>' for n, v, i, m in PACKAGES]
    OUT.write_text(PAGE.format(versions=', '.join(f'{n}@{v}' for n, v, _, _ in PACKAGES), scripts='\n'.join(scripts)), encoding='utf-8')
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")

if __name__ == '__main__': main()
