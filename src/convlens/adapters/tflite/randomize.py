"""A copy of a TFLite model with some rows' weights re-drawn in the flatbuffer (the randomisation test).

TFLite has no parameters to set: the weights are buffers inside the file. The
copy is the file's bytes with the chosen operators' weight buffers
overwritten in place (the buffers keep their size and type, so the
flatbuffer's layout does not change), opened as a new interpreter. Kernels
are drawn Glorot-uniform in the canonical layout
(:func:`convlens.core.evaluation.draw_native`), the numbers every framework
draws for the same network; quantised kernels are quantised with the
tensor's own scales and zero points (values beyond its range clip); biases
become zero. What cannot be done is said plainly:
transposed convolutions (their weights' layout is not read), weights that an
operator computes at run time (DENSIFY of sparse storage), weights kept
outside the flatbuffer, and models LiteRT's schema module cannot read.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._errors import UnsupportedModel
from ...core.evaluation import draw_native, layer_ranks

__all__ = ["randomized"]

#: Weight layouts -> canonical ``(O, I, kh, kw)``, by operator (the layer table's reading).
_CANONICAL = {
    "CONV_2D": lambda w: w.transpose(0, 3, 1, 2),  # (O, kh, kw, I)
    "DEPTHWISE_CONV_2D": lambda w: w.transpose(3, 0, 1, 2),  # (1, kh, kw, C * m)
    "FULLY_CONNECTED": None,  # (O, I)
}
#: flatbuffer TensorType -> numpy
_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8, 7: np.int16}


def randomized(adapter: Any, rows: Sequence[int], seed: int) -> Any:
    """A copy of ``adapter`` whose ``rows`` have fresh weights drawn from ``seed``.

    Raises:
        UnsupportedModel: a row without weights, or weights this module cannot
            re-draw (the message says why).
    """
    table = adapter.layers()
    ranks = layer_ranks(table)
    schema = getattr(adapter, "_schema", None)
    if schema is None:
        raise UnsupportedModel(f"cannot randomise {adapter.name}: LiteRT's flatbuffer schema module "
                               "(ai_edge_litert.schema_py_generated) is not available to rewrite its weights")
    # a randomised copy's file is gone: it keeps its bytes, so that a cascade can re-draw one more layer
    kept = getattr(adapter, "_flatbuffer", None)
    data = bytearray(kept if kept is not None else Path(adapter.path).read_bytes())
    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    producers = {int(t): op for op in adapter._interp._get_ops_details() if op["op_name"] != "DELEGATE"
                 for t in op["outputs"]}
    for r in rows:
        if r not in ranks:
            raise UnsupportedModel(f"row {r} ({table[r].name if 0 <= r < len(table) else '?'}) holds no "
                                   "weights to randomise")
        op = adapter._row_op[r]
        kind = op["op_name"]
        if kind not in _CANONICAL:
            raise UnsupportedModel(f"cannot randomise {table[r].name} of {adapter.name}: its operator {kind} "
                                   "keeps weights in a layout convlens does not re-draw (it re-draws "
                                   f"{', '.join(sorted(_CANONICAL))})")
        inputs = [int(t) for t in op["inputs"]]
        for pos, t in enumerate(inputs[1:3], start=1):
            if t < 0:
                continue
            src = producers.get(t)
            if src is not None and src["op_name"] == "DEQUANTIZE":
                t = int(src["inputs"][0])  # float16 or int8 storage behind a DEQUANTIZE
            elif src is not None:
                raise UnsupportedModel(f"cannot randomise {table[r].name} of {adapter.name}: its weights are "
                                       f"computed at run time by {src['op_name']}, not stored in a buffer")
            _rewrite(data, model, graph.Tensors(t), kind, pos == 1, seed, ranks[r], f"{table[r].name}")
    return _open_copy(adapter, bytes(data))


def _rewrite(data: bytearray, model: Any, tensor: Any, kind: str, kernel: bool, seed: int, rank: int,
             layer: str) -> None:
    buf = model.Buffers(tensor.Buffer())
    dtype = _TYPES.get(int(tensor.Type()))
    shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    if buf.DataLength() == 0 or dtype is None:
        raise UnsupportedModel(f"cannot randomise {layer}: its weights are not stored inside the flatbuffer "
                               f"(buffer empty or kept outside, type {int(tensor.Type())})")
    raw = buf.DataAsNumpy()  # a view into ``data``, which is a bytearray: writable
    view = raw.view(dtype).reshape(shape)
    if not kernel:
        view[...] = 0
        return
    values = draw_native(shape, _CANONICAL[kind], seed, rank)
    if np.issubdtype(dtype, np.floating):
        view[...] = values.astype(dtype)
        return
    q = tensor.Quantization()
    scales = q.ScaleAsNumpy() if q is not None and q.ScaleLength() else np.ones(1)
    zeros = q.ZeroPointAsNumpy() if q is not None and q.ZeroPointLength() else np.zeros(1)
    axis = int(q.QuantizedDimension()) if q is not None else 0
    bshape = [1] * len(shape)
    if np.size(scales) > 1:
        bshape[axis] = -1
    s = np.asarray(scales, np.float64).reshape(bshape)
    z = np.asarray(zeros, np.float64).reshape(bshape) if np.size(zeros) == np.size(scales) else 0.0
    info = np.iinfo(dtype)  # type: ignore[type-var]
    view[...] = np.clip(np.rint(values / s + z), info.min, info.max).astype(dtype)


def _open_copy(adapter: Any, data: bytes) -> Any:
    with tempfile.TemporaryDirectory(prefix="convlens-random-") as tmp:
        path = Path(tmp) / Path(adapter.path).name
        path.write_bytes(data)
        twin = type(adapter)(path, input_shape=adapter.input_shape, preprocess=adapter.preprocess)
    twin.name = adapter.name
    twin._flatbuffer = data
    return twin
