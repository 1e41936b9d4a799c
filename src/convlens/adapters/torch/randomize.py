"""A copy of a PyTorch model with some rows' weights re-drawn (the model randomisation test).

The copy is a ``copy.deepcopy`` of the adapter, so the module, its probe
records and its layer table are copied together and the copy's hooks land on
the copy's modules; the original is never touched. Each parameter of a
chosen row's module is re-drawn as Keras initialises before training, in the
canonical layout (:func:`convlens.core.evaluation.draw_native`): kernels
(``weight`` with 2 or more axes) Glorot-uniform, biases and BatchNorm shifts
and running means zero, BatchNorm scales and running variances one. Every
framework holding the same network therefore draws the same numbers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..._errors import UnsupportedModel
from ...core.evaluation import draw_native, layer_ranks

__all__ = ["randomized"]


def randomized(adapter: Any, rows: Sequence[int], seed: int) -> Any:
    """A copy of ``adapter`` whose ``rows`` have fresh weights drawn from ``seed``.

    Raises:
        UnsupportedModel: a row without weights, or a module that cannot be
            copied (``copy.deepcopy`` fails: say so, with the reason).
    """
    torch = adapter.torch
    table = adapter.layers()
    ranks = layer_ranks(table, rows)
    try:
        twin = copy.deepcopy(adapter, memo={id(torch): torch})
    except Exception as exc:
        raise UnsupportedModel(f"the weights of {adapter.name} cannot be copied ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200] if str(exc) else 'no reason given'}), so it "
                               "cannot be randomised; the randomisation check needs a model that "
                               "copy.deepcopy can copy") from None
    twin._names = twin._module_names()  # keyed by id(): the copy's modules have new ids
    with torch.no_grad():
        for r in rows:
            _redraw(twin._records[r - 1].module, table[r].type, seed, ranks[r])
    return twin


def _canonical(w: np.ndarray, type_name: str, groups: int) -> np.ndarray:
    """Torch conv weights as canonical ``(O, I, kh, kw)``: the layer table's reading (``table.py``), a permutation."""
    if "Transpose" in type_name:  # (I, O/groups, kh, kw), regrouped per output channel
        i, o_g, *k = w.shape
        w = w.reshape(groups, i // groups, o_g, *k).swapaxes(1, 2).reshape(groups * o_g, i // groups, *k)
    return w[:, :, None, :] if w.ndim == 3 else w


def _redraw(module: Any, type_name: str, seed: int, rank: int) -> None:
    groups = int(getattr(module, "groups", 1) or 1)
    for name, p in module.named_parameters(recurse=True):
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim >= 2:
            if "conv" in type_name.lower() and p.ndim >= 3 and ("Transpose" in type_name or p.ndim == 3):
                def canon(w: np.ndarray) -> np.ndarray:
                    return _canonical(w, type_name, groups)
                values = draw_native(tuple(p.shape), canon, seed, rank)
            else:
                values = draw_native(tuple(p.shape), None, seed, rank)
            p.copy_(p.new_tensor(values))
        elif leaf == "weight":
            p.fill_(1.0)
        else:
            p.zero_()
    for name, b in module.named_buffers(recurse=True):
        if not b.is_floating_point():
            continue
        b.fill_(1.0 if name.rsplit(".", 1)[-1] == "running_var" else 0.0)

