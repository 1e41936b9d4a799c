"""A copy of a Keras model with some rows' weights re-drawn (the model randomisation test).

The copy is ``keras.models.clone_model`` with the original's weights, opened
as a new adapter; the original is never touched. Each variable of a chosen
row's layer is re-drawn as Keras initialises before training, in the
canonical layout (:func:`convlens.core.evaluation.draw_native`): kernels
Glorot-uniform, biases and BatchNorm shifts and moving means zero, BatchNorm
scales and moving variances one, so that every framework holding the same
network draws the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..._errors import UnsupportedModel
from ...core.evaluation import draw_native, layer_ranks

__all__ = ["randomized"]

_ONES = ("gamma", "moving_variance")


def randomized(adapter: Any, rows: Sequence[int], seed: int) -> Any:
    """A copy of ``adapter`` whose ``rows`` have fresh weights drawn from ``seed``.

    Raises:
        UnsupportedModel: a row without weights, or a model that ``clone_model``
            cannot copy (a subclassed model: say so, with the reason).
    """
    keras = adapter.keras
    table = adapter.layers()
    ranks = layer_ranks(table, rows)
    try:
        clone = keras.models.clone_model(adapter.model)
        clone.set_weights(adapter.model.get_weights())
    except Exception as exc:
        why = str(exc).splitlines()[0][:200] if str(exc) else "no reason given"
        raise UnsupportedModel(f"the weights of {adapter.name} cannot be copied (keras.models.clone_model: "
                               f"{type(exc).__name__}: {why}), so it cannot be randomised; save it as a "
                               "functional or Sequential model") from None
    held = adapter.held_inputs  # the copy's other inputs are held at the same values
    twin = type(adapter)(clone, input_shape=adapter.input_shape, preprocess=adapter.preprocess,
                         **({} if held is None else {"image_input": held.image_slot.name,
                                                      "inputs": dict(held.values)}))
    twin.name = adapter.name
    twin_table = twin.layers()
    if [t.name for t in twin_table] != [t.name for t in table]:
        raise UnsupportedModel(f"the copy of {adapter.name} lists other layers than the model; its weights "
                               "cannot be randomised row by row")
    for r in rows:
        layer = twin._objects[r]
        for var in layer.weights:
            var.assign(_draw(layer, var, seed, ranks[r]))
    return twin


def _draw(layer: Any, var: Any, seed: int, rank: int) -> np.ndarray:
    name = str(getattr(var, "path", var.name)).rsplit("/", 1)[-1].split(":")[0]
    shape = tuple(int(d) for d in var.shape)
    if len(shape) < 2:
        return np.full(shape, 1.0 if name in _ONES else 0.0, np.float32)
    return draw_native(shape, _to_canonical(type(layer).__name__, name, len(shape)), seed, rank)


def _to_canonical(layer_type: str, name: str, ndim: int) -> Callable[[np.ndarray], np.ndarray]:
    """The permutation from a Keras kernel layout to canonical ``(O, I, kh, kw)`` (as the layer table reads it)."""
    def move(w: np.ndarray) -> np.ndarray:
        depthwise = name == "depthwise_kernel" or ("Depthwise" in layer_type and name != "pointwise_kernel")
        if depthwise and w.ndim == 4:  # (kh, kw, in, multiplier)
            kh, kw, cin, mult = w.shape
            return w.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
        if ndim == 2:  # Dense (in, out)
            return w.T
        if ndim == 3:  # Conv1D (k, in, out)
            return w.transpose(2, 1, 0)[:, :, None, :]
        if "Transpose" in layer_type:  # (kh, kw, out, in)
            return w.transpose(2, 3, 0, 1)
        return w.transpose(3, 2, 0, 1)  # (kh, kw, in, out)
    return move
