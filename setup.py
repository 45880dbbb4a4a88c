"""Packaging for mlops-nb: every value comes from `settings.ini`, the nbdev 2 convention."""
from configparser import ConfigParser
from pathlib import Path
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

# The SPDX expression of settings.ini's licence (PEP 639); setuptools deprecates the 'License ::' classifiers.
licenses = {'apache2': 'Apache-2.0'}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
lic = licenses[cfg['license']]
# setuptools >= 77 takes the SPDX expression itself (PEP 639); older ones take it as the licence text.
_st = tuple(int(x) for x in setuptools.__version__.split('.')[:2] if x.isdigit())
license_kw = dict(license_expression=lic, license_files=['LICENSE']) if _st >= (77, 0) else dict(license=lic)
min_python = cfg['min_python']
py_versions = '3.10 3.11 3.12 3.13'.split()

requirements = cfg.get('requirements', '').split()
dask_requirements = cfg.get('dask_requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split() + dask_requirements   # the tests run on a real Dask cluster
postgres_requirements = cfg.get('postgres_requirements', '').split()   # pip install 'mlops-nb[postgres]'
console_scripts = cfg.get('console_scripts', '').split()

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    **license_kw,
    classifiers=[
        'Development Status :: ' + statuses[int(cfg['status'])],
        'Intended Audience :: ' + cfg['audience'].title(),
        'Natural Language :: ' + cfg['language'].title(),
    ] + ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*']),
    package_dir={'': '.'},   # a flat layout, said so: `pip install -e .` then links the folder quietly (a .pth file)
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements, 'postgres': postgres_requirements, 'dask': dask_requirements},
    python_requires='>=' + min_python,
    long_description=Path('README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={
        'console_scripts': console_scripts,
        'nbdev': [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d'],
        'papermill.engine': cfg.get('papermill_engines', '').split(),
    },
)
