"""DVC remotes: `dvc push` of a real lifecycle's data, models and registry to a local-path remote, then `dvc pull` into a
fresh `git clone` restores every file byte for byte, with every registry version's manifest verified."""
import hashlib, json, shutil, time
from pathlib import Path

import pandas as pd, pytest, yaml

from conftest import Project, copy_project, run
from mlops_nb.registry import Registry

OUTPUTS = ['data/raw', 'data/prepared', 'data/predictions', 'models/candidate', 'registry']

def digests(root:Path, folders=OUTPUTS) -> dict[str, str]:
    "sha256 of every file under `folders` of `root`, by relative path."
    out = {}
    for f in folders:
        for p in sorted((root/f).rglob('*')):
            if p.is_file(): out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out

def test_push_then_pull_into_a_fresh_clone_restores_data_models_and_registry(tmp_path):
    p = copy_project(tmp_path/'proj')
    p.run('dvc repro', timeout=900)
    remote = tmp_path/'remote'
    p.run(f'dvc remote add -d store {remote}')
    p.run('dvc add registry')                                   # the registry snapshot: registry.dvc goes to git
    assert 'registry' in (p.path/'.gitignore').read_text()
    p.commit('lifecycle run and registry snapshot')
    t0 = time.perf_counter(); p.run('dvc push'); push_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for f in OUTPUTS: shutil.copytree(p.path/f, tmp_path/'plain'/f)
    copy_s = time.perf_counter() - t0

    clone = Project(tmp_path/'clone')
    run(f'git clone -q {p.path} {clone.path}', tmp_path)
    assert not (clone.path/'registry').exists() and not (clone.path/'models/candidate').exists()
    t0 = time.perf_counter(); clone.run('dvc pull'); pull_s = time.perf_counter() - t0

    want, got = digests(p.path), digests(clone.path)
    assert got == want and any(k.startswith('registry/versions/') for k in got) and any(k.startswith('models/') for k in got)
    reg = Registry(clone.path/'registry')
    assert reg.versions() and reg.aliases() == Registry(p.path/'registry').aliases()
    rows = reg.list(verify=True)                                # every manifest checked: presence, size, sha256
    assert rows and all(r['status'] != 'damaged' for r in rows), rows
    # the pulled champion scores the pulled test split as the original does
    test = pd.read_parquet(clone.path/'data/prepared/test.parquet')
    X = test[json.loads((reg.version_dir('champion')/'model.json').read_text())['features']]
    pd.testing.assert_series_equal(pd.Series(reg.load('champion').predict_proba(X)[:, 1]),
                                   pd.Series(Registry(p.path/'registry').load('champion').predict_proba(X)[:, 1]))
    # in the clone every cached out is in place: DVC misses only the outs it never caches (`cache: false` plots, git-ignored)
    uncached = {next(iter(o)) for st in yaml.safe_load((p.path/'dvc.yaml').read_text())['stages'].values()
                for o in [*st.get('outs', []), *st.get('metrics', [])] if isinstance(o, dict) and not next(iter(o.values())).get('cache', True)}
    status = json.loads(clone.run('dvc status --json').stdout)
    missing = {path for st in status.values() for ch in st if isinstance(ch, dict)
               for path, what in ch.get('changed outs', {}).items() if what in ('deleted', 'not in cache')}
    assert missing <= uncached and missing, missing   # e.g. the plots and data/sources.json: git-ignored, never cached
    # few files on the remote: one object per file (plus one listing per folder), no per-row or per-request files
    objects = [q for q in remote.rglob('*') if q.is_file()]
    assert len(objects) <= len(want) + 20, (len(objects), len(want))
    # the check is real: a byte changed in a pulled model is refused
    f = reg.version_dir('champion')/'model.skops'; b = bytearray(f.read_bytes()); b[len(b) // 2] ^= 1; f.write_bytes(bytes(b))
    with pytest.raises(Exception, match='sha256 mismatch'): reg.version_dir('champion')
    print(json.dumps(dict(files=len(want), bytes=sum((p.path/k).stat().st_size for k in want), remote_objects=len(objects),
                          push_s=round(push_s, 2), pull_s=round(pull_s, 2), plain_copy_s=round(copy_s, 3))))
