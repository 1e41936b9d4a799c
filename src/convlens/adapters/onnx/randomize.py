"""A copy of an ONNX model with some rows' initializers re-drawn (the model randomisation test).

The copy is the graph with every initializer inline (the large ones read
from the model's weights), the chosen rows' initializers replaced, opened as
a new adapter; the original and its files are never touched. Kernels are
drawn Glorot-uniform in the canonical layout
(:func:`convlens.core.evaluation.draw_native`), the numbers every framework
draws for the same network; biases, BatchNormalization shifts and means
become zero, its scales and variances one. Constants of other operators (a
``Mul`` by a scale, an ``Add`` of a mean) are not learned weights and stay.
Weights that the graph computes at run time (``DequantizeLinear`` of int8
storage, a ``Constant`` node) cannot be re-drawn in place: the error says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..._errors import UnsupportedModel
from ...core.evaluation import draw_native, layer_ranks
from .load import node_attrs

__all__ = ["randomized"]

_BN_ONES = (1, 4)  # BatchNormalization inputs: X, scale, B, mean, var


def randomized(adapter: Any, rows: Sequence[int], seed: int) -> Any:
    """A copy of ``adapter`` whose ``rows`` have fresh initializers drawn from ``seed``.

    Raises:
        UnsupportedModel: a row without weights, or weights computed at run time.
    """
    from onnx import ModelProto, numpy_helper

    table = adapter.layers()
    ranks = layer_ranks(table, rows)
    full = ModelProto()
    full.CopyFrom(adapter._skeleton)
    inits = {t.name: t for t in full.graph.initializer}
    for name in adapter._shared:
        inits[name].CopyFrom(numpy_helper.from_array(np.asarray(adapter._weight(name)), name))
    for r in rows:
        node = adapter._row_node[r]
        for pos, fill in _plan(node):
            name = node.input[pos] if pos < len(node.input) else ""
            if not name:
                continue
            if name not in inits:
                raise UnsupportedModel(f"cannot randomise {table[r].name} of {adapter.name}: its weight {name} "
                                       "is computed at run time (DequantizeLinear, Constant), not stored as an "
                                       "initializer")
            old = numpy_helper.to_array(inits[name])
            new = fill(tuple(old.shape), seed, ranks[r]) if callable(fill) else np.full(old.shape, fill)
            inits[name].CopyFrom(numpy_helper.from_array(np.asarray(new, old.dtype), name))
    held = adapter.held_inputs  # the copy holds the other inputs at the same values
    more = {} if held is None else {"image_input": adapter.input_name, "inputs": dict(held.values)}
    twin = type(adapter)(full, input_shape=adapter.input_shape, preprocess=adapter.preprocess, **more)
    twin.name = adapter.name
    return twin


Fill = Callable[[tuple[int, ...], int, int], np.ndarray] | float


def _canonical(op: str, w: np.ndarray, group: int) -> np.ndarray:
    """ONNX conv weights as canonical ``(O, I, kh, kw)``: the layer table's reading (``table.py``), a permutation."""
    if w.ndim == 3:
        w = w[:, :, None, :]
    if op == "ConvTranspose":  # (I, O/group, kh, kw): within each group the first two axes swap
        cin, out_per_group, kh, kw = w.shape
        g = max(group, 1)
        w = w.reshape(g, cin // g, out_per_group, kh, kw).transpose(0, 2, 1, 3, 4).reshape(g * out_per_group,
                                                                                           cin // g, kh, kw)
    return w


def _plan(node: Any) -> list[tuple[int, Fill]]:
    """Which inputs of ``node`` to re-draw, and how (a draw, or a constant)."""
    op = node.op_type
    attrs = node_attrs(node)
    if op in ("Conv", "ConvTranspose"):
        group = int(attrs.get("group", 1))

        def conv(shape: tuple[int, ...], seed: int, rank: int) -> np.ndarray:
            same = op == "Conv" and len(shape) == 4  # Conv's (O, I/group, kh, kw) is canonical already
            return draw_native(shape, None if same else (lambda w: _canonical(op, w, group)), seed, rank)
        return [(1, conv), (2, 0.0)]
    if op == "Gemm":
        trans = bool(int(attrs.get("transB", 0)))

        def dense(shape: tuple[int, ...], seed: int, rank: int) -> np.ndarray:
            return draw_native(shape, None if trans else (lambda w: w.T), seed, rank)
        return [(1, dense), (2, 0.0)]
    if op == "MatMul":
        return [(1, lambda shape, seed, rank: draw_native(shape, lambda w: w.T, seed, rank))]
    if op == "BatchNormalization":
        return [(i, 1.0 if i in _BN_ONES else 0.0) for i in range(1, 5)]
    return []
