"""The floor of our serving stack, for benchmarks/serve.py: Starlette + uvicorn + orjson + ONNX Runtime, nothing else.

It serves a registry version the way `mlops-nb serve` runs it: the numpy feature pre-step (`feature_step.build_features`)
and encoder (`feature_step.Encoder`) before the estimator's graph `estimator.onnx` (the whole `model.onnx` for a version
without them), on the same ONNX Runtime threads (several for a request of `ORT_WIDE_ROWS` rows or more), from a
`dataframe_split` body, with no validation, capture, metrics or hot swap. What `mlops-nb serve` costs above this is
the price of what it does that this does not.

    FLOOR_VERSION_DIR=<registry>/versions/v0001 uvicorn floor_app:app --app-dir benchmarks --port 8001
"""
import json, os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from mlops_nb.feature_step import Encoder, build_features
from mlops_nb.serve import ORT_WIDE_ROWS, ServeConfig, wide_threads

VDIR = Path(os.environ['FLOOR_VERSION_DIR'])
INFO = json.loads((VDIR/'model.json').read_text())
PRE = INFO['onnx']['pre_step']
SCHEMA = {c['name']: c['kind'] for c in json.loads((VDIR/'schema.json').read_text())['columns']}
ENCODER = Encoder(INFO['onnx']['encoder']) if INFO['onnx'].get('encoder') and (VDIR/'estimator.onnx').exists() else None

def session(threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(VDIR/('estimator.onnx' if ENCODER else 'model.onnx')), so, providers=['CPUExecutionProvider'])
SESSION = session(1)
WIDE = session(wide_threads(ServeConfig()))   # as `mlops-nb serve` runs a call of ORT_WIDE_ROWS+ rows: on the worker's cores
INPUTS = [(i.name, i.type) for i in SESSION.get_inputs()]
OUT = next(o.name for o in SESSION.get_outputs() if 'prob' in o.name)


def column(name, values):
    kind = SCHEMA.get(name)
    if kind == 'datetime': return np.array(values, dtype='datetime64[us]')
    if kind == 'categorical': return np.array(values, dtype=object)
    return np.array(values, dtype='float64')


async def invocations(request):
    body = orjson.loads(await request.body())['dataframe_split']
    rows = body['data']
    cols = {c: column(c, [r[i] for r in rows]) for i, c in enumerate(body['columns'])}
    cols |= build_features(cols, PRE['spec'], PRE.get('time_column'))
    n = len(rows)
    feed = ({'encoded': ENCODER(cols)} if ENCODER else
            {k: (cols[k].astype(object) if t == 'tensor(string)' else cols[k].astype('float64')).reshape(n, 1) for k, t in INPUTS})
    score = (WIDE if n >= ORT_WIDE_ROWS else SESSION).run([OUT], feed)[0][:, -1]
    return Response(orjson.dumps({'predictions': score.tolist()}), media_type='application/json')


async def ping(request): return Response(b'ok')

app = Starlette(routes=[Route('/invocations', invocations, methods=['POST']), Route('/ping', ping)])
