"""Three-way merge of a notebook at cell level (a maintainer's tool for merging branches that both add cells).

    python scripts/merge_nb.py BASE OURS THEIRS OUT

Cells are matched by id. A cell changed on one side only takes that side's version; a cell added by THEIRS is
inserted after the cell that precedes it in THEIRS; a cell changed on both sides keeps OURS and is reported.
"""
import json, sys

def load(p): return json.load(open(p))

def main(base_p, ours_p, theirs_p, out_p):
    base, ours, theirs = load(base_p), load(ours_p), load(theirs_p)
    bmap = {c['id']: c for c in base['cells']}
    tmap = {c['id']: c for c in theirs['cells']}
    tids = [c['id'] for c in theirs['cells']]
    out = []
    for c in ours['cells']:
        i = c['id']
        if i in bmap and i not in tmap and c['source'] == bmap[i]['source']: continue   # deleted by theirs
        if i in bmap and i in tmap and c['source'] == bmap[i]['source']: c = tmap[i]      # changed by theirs only
        elif i in bmap and i in tmap and tmap[i]['source'] != bmap[i]['source'] and c['source'] != tmap[i]['source']:
            print(f"both changed cell {i}; kept ours", file=sys.stderr)
        out.append(c)
    have = {c['id'] for c in out}
    for k, i in enumerate(tids):
        if i in have or i in bmap: continue
        prev = next((tids[j] for j in range(k - 1, -1, -1) if tids[j] in have), None)
        pos = 0 if prev is None else [c['id'] for c in out].index(prev) + 1
        out.insert(pos, tmap[i]); have.add(i)
    ours['cells'] = out
    json.dump(ours, open(out_p, 'w'), indent=1, ensure_ascii=False); open(out_p, 'a').write('\n')

if __name__ == '__main__': main(*sys.argv[1:5])
