"""Write a notebook from a py:percent draft (a convenience for authors who draft in a text editor).

    .venv/bin/python scripts/nb_from_percent.py draft.py nbs/01_sim.ipynb

The notebook in `nbs/` stays the source of truth; this only helps writing it. Existing cell ids are kept when the
cell's source is unchanged, so the exported package does not churn, and so are such a cell's stored outputs (a draft
has none); run `mlops-nb docs execute nbs/NN_name.ipynb` to give the changed cells theirs.
"""
import sys
from pathlib import Path
import jupytext, nbformat
from nbdev.clean import clean_nb

def main(src, dst):
    nb = jupytext.read(src, fmt='py:percent')
    nb.metadata = {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}
    dst = Path(dst)
    if dst.exists():
        old = nbformat.read(dst, as_version=4)
        ids, outs = {}, {}
        for c in old.cells:
            ids.setdefault((c.cell_type, c.source), c.get('id'))
            if c.cell_type == 'code': outs.setdefault(c.source, c.get('outputs', []))
        for c in nb.cells:
            if (c.cell_type, c.source) in ids: c['id'] = ids[(c.cell_type, c.source)]
            if c.cell_type == 'code' and outs.get(c.source): c['outputs'] = outs[c.source]
    for c in nb.cells: c.metadata = {k: v for k, v in c.metadata.items() if k == 'tags'}
    nbformat.validate(nb)
    nbformat.write(nb, dst)

if __name__ == '__main__':
    main(*sys.argv[1:3])
