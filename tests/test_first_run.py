"""A clean first run: the set-up installs into `.venv` only (JupyterLab runs as root too), the tests' system packages are
installed by `scripts/system_packages.sh` (announced, waiting on the apt lock, stopping with a clear message), and the
project's own packaging warns about nothing (no licence deprecation)."""
import glob, hashlib, json, os, re, shutil, subprocess, sys, tomllib
from pathlib import Path

import pytest

from conftest import ROOT

VENV = ROOT/'.venv'
BASH = shutil.which('bash')

def commands(script:Path) -> str:
    "The script's text without its comments: what it runs."
    return '\n'.join(re.sub(r'(^|\s)#.*$', '', l) for l in script.read_text().splitlines())

def stub(folder:Path, name:str, body:str) -> Path:
    "An executable `name` in `folder` that records its arguments in folder/calls.log, then runs `body` (bash)."
    f = folder/name
    f.write_text(f'#!{BASH}\necho "{name} $*" >> "{folder}/calls.log"\n{body}\n')
    f.chmod(0o755)
    return f

def calls(folder:Path) -> list[str]:
    log = folder/'calls.log'
    return log.read_text().splitlines() if log.exists() else []

# ---------------------------------------------------------------- scripts/setup.sh
def test_setup_installs_into_the_venv_only_and_lets_jupyter_run_as_root(tmp_path):
    script = ROOT/'scripts/setup.sh'
    assert not re.search(r'\b(apt-get|apt|dpkg|sudo|yum|dnf)\b', commands(script)), 'setup.sh runs a system package manager'
    assert 'system_packages.sh' not in commands(script)
    # a real run of the script in a copy whose .venv is already installed (the stamp matches): it only writes the
    # environment's own Jupyter config and the git repository; no system tool is called (stubs first on PATH record it)
    proj, bin_ = tmp_path/'proj', tmp_path/'bin'
    (proj/'scripts').mkdir(parents=True); bin_.mkdir()
    for f in ['settings.ini', 'setup.py', 'pyproject.toml', 'constraints.txt', 'scripts/setup.sh']: shutil.copy(ROOT/f, proj/f)
    (proj/'.venv/bin').mkdir(parents=True)
    (proj/'.venv/bin/python').symlink_to(sys.executable)
    stamp = hashlib.sha256(b''.join((proj/f).read_bytes() for f in ['settings.ini', 'setup.py', 'pyproject.toml', 'constraints.txt'])).hexdigest()[:16]
    (proj/'.venv/.mlops-nb-installed').write_text(stamp + '\n')
    for tool in ['apt-get', 'apt', 'dpkg', 'sudo']: stub(bin_, tool, 'exit 0')
    env = dict(os.environ, PATH=f'{bin_}{os.pathsep}{os.environ["PATH"]}', PYTHON=sys.executable)
    r = subprocess.run([BASH, 'scripts/setup.sh'], cwd=proj, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'installing' not in r.stdout and calls(bin_) == [], (r.stdout, calls(bin_))   # nothing installed, no system tool
    assert json.loads((proj/'.venv/etc/jupyter/jupyter_server_config.json').read_text()) == {'ServerApp': {'allow_root': True}}
    assert (proj/'.git').is_dir()

def test_this_machines_venv_lets_jupyter_lab_run_as_root():
    "What setup.sh wrote into this machine's .venv, and that JupyterLab's server reads it from there."
    cfg = VENV/'etc/jupyter/jupyter_server_config.json'
    assert json.loads(cfg.read_text())['ServerApp']['allow_root'] is True
    r = subprocess.run([str(VENV/'bin/jupyter'), 'server', '--show-config'], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and str(cfg.resolve()) in r.stdout.replace(str(VENV), str(VENV.resolve())) and re.search(r'\.allow_root = True', r.stdout), r.stdout[-2000:]

# ---------------------------------------------------------------- scripts/system_packages.sh
def test_the_test_command_installs_the_system_packages():
    test_sh = commands(ROOT/'scripts/test.sh')
    assert 'bash scripts/system_packages.sh' in test_sh and test_sh.index('system_packages.sh') < test_sh.index('pytest')

def missing_here() -> list[str]:
    "What system_packages.sh finds missing with none of the programs on PATH: the PostgreSQL it finds by path stays found."
    return ['chromium', 'chromium-driver'] + ([] if glob.glob('/usr/lib/postgresql/*/bin/initdb') else ['postgresql'])

def system_packages(bin_:Path):
    "Run scripts/system_packages.sh with only `bin_` (stubs) on PATH."
    return subprocess.run([BASH, str(ROOT/'scripts/system_packages.sh')], env={'PATH': str(bin_), 'HOME': str(bin_)},
                          capture_output=True, text=True, timeout=60)

@pytest.mark.parametrize('case', ['not_root', 'no_apt', 'update_fails', 'install_fails'])
def test_system_packages_stop_with_a_clear_message(tmp_path, case):
    bin_ = tmp_path/'bin'; bin_.mkdir()
    stub(bin_, 'id', 'echo 1000' if case == 'not_root' else 'echo 0')
    if case == 'update_fails':
        stub(bin_, 'apt-get', 'echo "E: Could not get lock /var/lib/dpkg/lock-frontend" >&2; exit 100')
    if case == 'install_fails':   # a package apt does not know
        stub(bin_, 'apt-get', 'case " $* " in *" update "*) exit 0;; esac; echo "E: Unable to locate package chromium-driver" >&2; exit 100')
    r = system_packages(bin_)
    missing = ' '.join(missing_here())
    why = {'not_root': 'not root', 'no_apt': 'no apt-get on this machine', 'update_fails': 'apt-get update failed',
           'install_fails': 'apt-get install failed'}[case]
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert f'system packages: could not install {missing}: {why}' in r.stderr, r.stderr
    assert f'install them yourself (Debian/Ubuntu: apt-get install {missing}) and run the tests again' in r.stderr, r.stderr
    apt = [c for c in calls(bin_) if c.startswith('apt-get')]
    if case in ('not_root', 'no_apt'):
        assert apt == [] and 'installing' not in r.stdout
        return
    # announced before anything runs, and every apt-get call waits on the lock
    assert f'system packages: the tests need {missing}; installing them with apt-get (waits for the apt lock up to 5 minutes)' in r.stdout
    assert apt and all('-o DPkg::Lock::Timeout=300' in c for c in apt), apt
    if case == 'install_fails':
        assert apt[-1].endswith(f'install -y -qq {missing}') and 'Unable to locate package chromium-driver' in r.stderr, (apt, r.stderr)
        assert 'system packages: installed' not in r.stdout

def test_system_packages_do_nothing_when_all_are_there(tmp_path):
    bin_ = tmp_path/'bin'; bin_.mkdir()
    for tool in ['chromium', 'chromedriver', 'initdb']: stub(bin_, tool, 'exit 0')
    stub(bin_, 'id', 'echo 0'); stub(bin_, 'apt-get', 'exit 0')
    r = system_packages(bin_)
    assert r.returncode == 0 and r.stdout == '' and r.stderr == '' and calls(bin_) == [], (r, calls(bin_))

# ---------------------------------------------------------------- packaging
@pytest.fixture(scope='module')
def build_setuptools(tmp_path_factory) -> Path:
    "The newest setuptools pyproject.toml's build-system allows (what `pip install -e .` builds with), in a folder of its own."
    spec = next(r for r in tomllib.loads((ROOT/'pyproject.toml').read_text())['build-system']['requires'] if r.startswith('setuptools'))
    dst = tmp_path_factory.mktemp('setuptools')
    r = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--disable-pip-version-check', '--no-deps', '--target', str(dst), spec],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0: pytest.skip(f'cannot fetch {spec} (no package index?): {r.stderr[-300:]}')
    return dst

def setup_py_version(pythonpath:str|None):
    """`python -W error setup.py --version` in the repository, with `pythonpath`'s setuptools first; (run, setuptools version).
    setup.py's unclosed README.md (a ResourceWarning only `-W error` shows) is not a packaging warning, and is ignored."""
    env = dict(os.environ, **({'PYTHONPATH': pythonpath} if pythonpath else {}))
    code = ("import runpy, sys, setuptools; print(setuptools.__version__, file=sys.stderr); "
            "sys.argv = ['setup.py', '--version']; runpy.run_path('setup.py', run_name='__main__')")
    r = subprocess.run([sys.executable, '-W', 'error', '-W', 'ignore::ResourceWarning', '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return r, r.stderr.splitlines()[0] if r.stderr else ''

@pytest.mark.parametrize('which', ['venv', 'build'])
def test_packaging_gives_no_licence_warning(which, request):
    path = str(request.getfixturevalue('build_setuptools')) if which == 'build' else None
    r, version = setup_py_version(path)
    if which == 'build': assert int(version.split('.')[0]) >= 77, version   # the PEP 639 licence checks are there
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == re.search(r'^version\s*=\s*(\S+)', (ROOT/'settings.ini').read_text(), re.M).group(1)
    assert not re.search(r'(?i)licen[cs]e|deprecat|warning', r.stderr), r.stderr[-3000:]
