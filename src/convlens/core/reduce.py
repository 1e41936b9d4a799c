"""Per-channel reductions of a batch of layer outputs, one row per image (numpy only).

A consumer of the pass engine that needs only a few numbers per channel (the
channel statistics, a top-k of activations) declares the reductions it wants
and receives ``(n, C)`` arrays instead of the whole ``(n, H, W, C)`` output.
This module is the numpy implementation; it is also the place a device
backend would reduce before the transfer to the host.

Every op reduces over the positions of one image (``H*W``, ``L`` or 1) and
keeps the images apart. Non-finite values (NaN, +-inf) are left out of every
op but ``nonfinite``:

========== ======= ==============================================================
op          dtype   per image and channel
========== ======= ==============================================================
count       int64   finite values
sum         float64 sum of the finite values
sumsq       float64 sum of their squares
m2          float64 sum of squared deviations from the image's own finite mean
                    (two-pass, merged over chunks with Chan's update: the
                    spread survives where ``sumsq - sum**2/count`` cancels)
min, max    float64 the finite extremes (``+inf``/``-inf`` without a finite value)
argmax      int64   flat position of the first largest finite value (-1 without one)
argmin      int64   flat position of the first smallest finite value (-1 without one)
zeros       int64   exact zeros (``-0.0`` included)
nonfinite   int64   NaN and +-inf values
shape       int64   not per channel: ``(ndim,)``, one image's canonical shape
                    (``(H, W, C)``, ``(L, C)`` or ``(C,)``), so that a position
                    can be turned back into ``(y, x)``
========== ======= ==============================================================

Reference for ``m2``: Chan, Golub and LeVeque, "Algorithms for computing the
sample variance" (1983), https://doi.org/10.1080/00031305.1983.10483115
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .._errors import BadArgument

__all__ = ["REDUCTIONS", "as_positions", "reduce_channels"]

#: Every op :func:`reduce_channels` knows.
REDUCTIONS = ("count", "sum", "sumsq", "m2", "min", "max", "argmax", "argmin", "zeros", "nonfinite", "shape")

# Values per chunk: bounds the float64 temporaries (8 MB each) whatever the layer's size.
_CHUNK_VALUES = 1 << 20


def as_positions(array: np.ndarray) -> np.ndarray:
    """A canonical layer output as ``(n, positions, C)`` real values, a view when possible.

    Args:
        array: ``(n, H, W, C)``, ``(n, L, C)``, ``(n, C)`` or ``(n,)`` (one
            channel); booleans and integers become float32.

    Raises:
        BadArgument: not real numbers, or another number of axes.
    """
    a = np.asarray(array)
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32)
    elif not np.issubdtype(a.dtype, np.floating):
        raise BadArgument(f"channel reductions need real numbers, got dtype {a.dtype}")
    if a.ndim == 1:
        return a.reshape(-1, 1, 1)
    if a.ndim not in (2, 3, 4):
        raise BadArgument(f"channel reductions need a layer output (N, H, W, C), (N, L, C) or (N, C), "
                          f"got shape {a.shape}")
    return a.reshape(a.shape[0], -1, a.shape[-1])


def reduce_channels(array: np.ndarray, ops: Iterable[str]) -> dict[str, np.ndarray]:
    """Reduce each image's output per channel over its positions.

    Args:
        array: a batch of one layer's output, ``(n, H, W, C)``, ``(n, L, C)``,
            ``(n, C)`` or ``(n,)`` (see :func:`as_positions`).
        ops: names among :data:`REDUCTIONS`.

    Returns:
        ``{op: (n, C) array}`` for each op asked for (dtypes in the module's table).

    Raises:
        BadArgument: an unknown op or an unusable array.
    """
    wanted = tuple(dict.fromkeys(ops))
    unknown = [op for op in wanted if op not in REDUCTIONS]
    if unknown:
        raise BadArgument(f"unknown reduction {', '.join(map(repr, unknown))}; choose among "
                          f"{', '.join(REDUCTIONS)}")
    x = as_positions(array)
    n, p, c = x.shape
    step = max(1, _CHUNK_VALUES // max(n * c, 1))
    total: dict[str, np.ndarray] | None = None
    per_channel = tuple(op for op in wanted if op != "shape")
    with np.errstate(all="ignore"):  # float64 overflow of absurd inputs gives inf, never a warning
        for start in range(0, max(p, 1), step):
            part = _chunk(x[:, start:start + step], start, per_channel)
            total = part if total is None else _merge(total, part)
    assert total is not None
    total["shape"] = np.asarray(np.shape(array)[1:] or (1,), np.int64)
    return {op: total[op] for op in wanted}


def _chunk(x: np.ndarray, offset: int, ops: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Every op (and what merging needs) over one ``(n, positions, C)`` chunk."""
    n, p, c = x.shape
    need = set(ops)
    if need & {"sum", "m2"}:
        need |= {"count", "sum"}
    if "argmax" in need:
        need |= {"max", "count"}
    if "argmin" in need:
        need |= {"min", "count"}
    finite = np.isfinite(x)
    clean = bool(finite.all())
    out: dict[str, np.ndarray] = {}
    if "count" in need:
        out["count"] = np.full((n, c), p, np.int64) if clean else finite.sum(axis=1, dtype=np.int64)
    if "nonfinite" in need:
        out["nonfinite"] = (np.zeros((n, c), np.int64) if clean
                            else (~finite).sum(axis=1, dtype=np.int64))
    if "zeros" in need:
        out["zeros"] = np.count_nonzero(x == 0, axis=1).astype(np.int64)
    if need & {"min", "max"}:
        if clean and p:
            lo, hi = x.min(axis=1), x.max(axis=1)
        else:
            lo = x.min(axis=1, where=finite, initial=np.inf)
            hi = x.max(axis=1, where=finite, initial=-np.inf)
        out["min"], out["max"] = lo.astype(np.float64), hi.astype(np.float64)
    if "argmax" in need and not p:
        out["argmax"] = np.full((n, c), -1, np.int64)
    elif "argmax" in need:
        at = np.argmax(x if clean else np.where(finite, x, -np.inf), axis=1).astype(np.int64)
        out["argmax"] = np.where(out["count"] > 0, at + offset, -1)
    if "argmin" in need and not p:
        out["argmin"] = np.full((n, c), -1, np.int64)
    elif "argmin" in need:
        at = np.argmin(x if clean else np.where(finite, x, np.inf), axis=1).astype(np.int64)
        out["argmin"] = np.where(out["count"] > 0, at + offset, -1)
    if need & {"sum", "sumsq", "m2"}:
        x64 = x.astype(np.float64) if clean else np.where(finite, x, 0.0).astype(np.float64, copy=False)
        if "sum" in need:
            out["sum"] = x64.sum(axis=1)
        if "sumsq" in need:
            out["sumsq"] = np.square(x64).sum(axis=1)
        if "m2" in need:
            mean = np.divide(out["sum"], out["count"], out=np.zeros((n, c)), where=out["count"] > 0)
            d = x64 - mean[:, None, :]
            if not clean:
                d = np.where(finite, d, 0.0)
            np.square(d, out=d)
            out["m2"] = d.sum(axis=1)
    return out


def _merge(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Two chunks' reductions of the same images as one (``b``'s positions follow ``a``'s)."""
    out: dict[str, np.ndarray] = {}
    for op in ("count", "nonfinite", "zeros", "sumsq"):
        if op in a:
            out[op] = a[op] + b[op]
    if "min" in a:
        out["min"] = np.minimum(a["min"], b["min"])
    if "max" in a:
        out["max"] = np.maximum(a["max"], b["max"])
    if "argmax" in a:  # the first largest: b wins only when strictly larger
        out["argmax"] = np.where(b["max"] > a["max"], b["argmax"], a["argmax"])
    if "argmin" in a:  # the first smallest: b wins only when strictly smaller
        out["argmin"] = np.where(b["min"] < a["min"], b["argmin"], a["argmin"])
    if "sum" in a:
        out["sum"] = a["sum"] + b["sum"]
    if "m2" in a:  # Chan et al.: combine (n_a, mean_a, M2_a) with (n_b, mean_b, M2_b)
        na, nb = a["count"], b["count"]
        ma = np.divide(a["sum"], na, out=np.zeros(na.shape), where=na > 0)
        mb = np.divide(b["sum"], nb, out=np.zeros(nb.shape), where=nb > 0)
        delta = mb - ma
        total = np.maximum(na + nb, 1)
        out["m2"] = a["m2"] + b["m2"] + delta * delta * (na * (nb / total))
    return out
