"""Turn raw activations into 8-bit colormap indices, and flag odd channels.

Everything works on a whole layer at once, viewed as ``(C, H*W)``: one numpy
reduction per statistic, no loop over channels. Non-finite values (NaN, +-inf)
are left out of every statistic and drawn as index 0, so one broken pixel
cannot blank or poison a channel, and no RuntimeWarning escapes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .._errors import BadArgument

__all__ = ["NORMS", "ChannelFlags", "finite_range", "normalize_channels", "union_range"]

#: Normalisation methods understood by :func:`normalize_channels`.
NORMS = ("standardize", "minmax", "layer", "global")

# Squares of float32 values overflow above ~1.8e19; channels whose magnitude
# comes near that are rescaled first (every method is scale-invariant).
_HUGE = 1e18
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True, eq=False)
class ChannelFlags:
    """Per-channel warnings worth showing a user.

    Attributes:
        dead: ``(C,)`` bool, every finite value is 0 (and there is at least one).
        constant: ``(C,)`` bool, all finite values are equal (and there is at
            least one); dead channels are also constant.
        nonfinite: ``(C,)`` bool, the channel holds NaN or +-inf somewhere.
    """

    dead: np.ndarray
    constant: np.ndarray
    nonfinite: np.ndarray

    def any(self) -> np.ndarray:
        """``(C,)`` bool: the channel has at least one flag."""
        return self.dead | self.constant | self.nonfinite

    def indices(self) -> dict[str, list[int]]:
        """Flagged channel numbers per flag, as JSON-ready ``int`` lists."""
        return {
            "dead": np.flatnonzero(self.dead).tolist(),
            "constant": np.flatnonzero(self.constant).tolist(),
            "nonfinite": np.flatnonzero(self.nonfinite).tolist(),
        }


def finite_range(x: np.ndarray) -> tuple[float, float]:
    """Smallest and largest finite value of an array of any shape.

    Args:
        x: numeric array (the selected layers' outputs, one at a time).

    Returns:
        ``(lo, hi)`` as Python floats; ``(0.0, 0.0)`` when ``x`` holds no
        finite value. Combine several with ``min(los), max(his)``.
    """
    a = np.asarray(x)
    if a.size == 0:
        return 0.0, 0.0
    if not np.issubdtype(a.dtype, np.inexact):
        return float(a.min()), float(a.max())
    finite = np.isfinite(a)
    if finite.all():
        return float(a.min()), float(a.max())
    if not finite.any():
        return 0.0, 0.0
    return (float(a.min(where=finite, initial=np.inf)),
            float(a.max(where=finite, initial=-np.inf)))


def union_range(ranges: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """The smallest range holding every ``(lo, hi)`` given: one scale over several layers.

    ``norm="global"`` draws every layer of an image with the union of their
    :func:`finite_range`.

    Returns:
        ``(min of the lows, max of the highs)``; ``(0.0, 0.0)`` for no ranges.
    """
    rs = list(ranges)
    return (min(r[0] for r in rs), max(r[1] for r in rs)) if rs else (0.0, 0.0)


def normalize_channels(
    x: np.ndarray,
    method: str = "standardize",
    *,
    value_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, ChannelFlags]:
    """Map each channel of a layer's output to colormap indices 0-255.

    Methods:

    * ``standardize``: ``(x - mean) / std * 64 + 128`` per channel, clipped to
      [0, 255] and truncated, exactly the tutorials' formula; a channel with
      ``std == 0`` is 128 everywhere.
    * ``minmax``: ``(x - min) / (max - min) * 255`` per channel, rounded.
    * ``layer``: the same with one min and max over all channels, so channels
      can be compared with each other.
    * ``global``: the same with the caller's ``value_range`` (one scale over
      several layers, built with :func:`finite_range`); values outside it clip.

    The three range methods round to nearest so that the minimum maps to 0 and
    the maximum to 255 exactly, whatever float32 rounding does; a constant
    channel (or layer, or range) maps to 0.

    Args:
        x: ``(C, H, W)`` output of one image, any real dtype.
        method: one of :data:`NORMS`.
        value_range: ``(lo, hi)`` finite, ``lo <= hi``; required by
            ``global``, ignored otherwise.

    Returns:
        ``(indices, flags)``: ``(C, H, W)`` uint8 indices (non-finite pixels
        are 0) and the :class:`ChannelFlags` of the channels.

    Raises:
        BadArgument: unknown method, wrong shape or dtype, missing or invalid
            ``value_range`` for ``global``.
    """
    if method not in NORMS:
        raise BadArgument(f"unknown normalisation {method!r}; choose one of {', '.join(NORMS)}")
    a = np.asarray(x)
    if a.ndim != 3:
        raise BadArgument(f"normalize_channels needs a (C, H, W) array, got shape {a.shape}")
    lo_hi = _check_range(value_range) if method == "global" else None
    c, n = a.shape[0], a.shape[1] * a.shape[2]
    if c == 0 or n == 0:
        empty = np.zeros(c, dtype=bool)
        return np.zeros(a.shape, dtype=np.uint8), ChannelFlags(empty, empty.copy(), empty.copy())
    flat = _as_float(a).reshape(c, n)  # a view unless the dtype changed

    finite = np.isfinite(flat)
    nonfinite_rows = ~finite.all(axis=1)
    if nonfinite_rows.any():
        bad = ~finite  # (C, N) mask, only built when some value is not finite
        count = finite.sum(axis=1)
        lo = flat.min(axis=1, where=finite, initial=np.inf).astype(np.float64)
        hi = flat.max(axis=1, where=finite, initial=-np.inf).astype(np.float64)
        empty_rows = count == 0
        lo[empty_rows] = 0.0  # keeps later arithmetic free of inf - inf
        hi[empty_rows] = 0.0
    else:
        bad = finite = None
        count = np.full(c, n)
        lo = flat.min(axis=1).astype(np.float64)
        hi = flat.max(axis=1).astype(np.float64)
    has_values = count > 0
    constant = has_values & (lo == hi)
    flags = ChannelFlags(dead=constant & (lo == 0), constant=constant, nonfinite=nonfinite_rows)

    # Rescaling is exact in meaning because every method is scale-invariant;
    # it only runs for absurd magnitudes, where float32 squares would overflow.
    per_channel = method in ("standardize", "minmax")
    absmax = np.maximum(np.abs(lo), np.abs(hi))
    if lo_hi is not None:
        absmax = np.maximum(absmax, max(abs(lo_hi[0]), abs(lo_hi[1])))
    if absmax.max() > _HUGE:
        k = np.where(absmax > _HUGE, absmax, 1.0) if per_channel else np.full(c, absmax.max())
        with np.errstate(all="ignore"):
            flat = (flat / k[:, None]).astype(np.float32)
        lo, hi = lo / k, hi / k
        if lo_hi is not None:
            lo_hi = (lo_hi[0] / k[0], lo_hi[1] / k[0])
    elif flat.dtype != np.float32:
        flat = flat.astype(np.float32)

    if method == "standardize":
        out = _standardize(flat, finite, bad, count, constant)
    else:
        if method == "minmax":
            span_lo, span_hi = lo, hi
        elif method == "layer":
            l_all = float(lo[has_values].min()) if has_values.any() else 0.0
            h_all = float(hi[has_values].max()) if has_values.any() else 0.0
            span_lo, span_hi = np.full(c, l_all), np.full(c, h_all)
        else:
            span_lo, span_hi = np.full(c, lo_hi[0]), np.full(c, lo_hi[1])
        out = _stretch(flat, bad, span_lo, span_hi)
    return out.reshape(a.shape), flags


def _standardize(flat: np.ndarray, finite: np.ndarray | None, bad: np.ndarray | None,
                 count: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """``(C, N)`` float32 -> uint8 with the tutorials' formula, statistics over finite values."""
    denom = np.maximum(count, 1)
    # numpy sums float32 rows pairwise (relative error ~1e-7): as good as
    # float64 accumulators at a third of the cost (einsum is not pairwise).
    total = np.sum(flat, axis=1, where=True if finite is None else finite)
    mean = total.astype(np.float64) / denom
    d = np.subtract(flat, mean.astype(np.float32)[:, None])  # the one big buffer, reused as output
    if bad is not None:
        np.copyto(d, 0, where=bad)  # out of the variance, and no inf * 0 below
    std = np.sqrt(np.square(d).sum(axis=1).astype(np.float64) / denom)
    # Constant channels can show a tiny std from rounding of the mean: force 128.
    usable = (std > 0) & ~constant
    scale = np.zeros(flat.shape[0])
    scale[usable] = np.minimum(64.0 / std[usable], _F32_MAX)
    d *= scale.astype(np.float32)[:, None]
    d += 128
    np.clip(d, 0, 255, out=d)
    if bad is not None:
        np.copyto(d, 0, where=bad)
    return d.astype(np.uint8)


def _stretch(flat: np.ndarray, bad: np.ndarray | None, lo: np.ndarray,
             hi: np.ndarray) -> np.ndarray:
    """``(C, N)`` float32 -> uint8, ``lo`` -> 0 and ``hi`` -> 255 per channel, rounded."""
    span = hi - lo
    gain = np.zeros(flat.shape[0])
    wide = span > 0
    gain[wide] = np.minimum(255.0 / span[wide], _F32_MAX)
    d = np.subtract(flat, lo.astype(np.float32)[:, None])
    if bad is not None:
        np.copyto(d, 0, where=bad)  # lands on index 0, and no inf * 0 below
    d *= gain.astype(np.float32)[:, None]
    d += 0.5  # round to nearest by truncation below
    np.clip(d, 0, 255, out=d)
    return d.astype(np.uint8)


def _as_float(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.float32 or a.dtype == np.float64:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float64 if a.dtype.itemsize > 8 else np.float32)
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        return a.astype(np.float32)
    raise BadArgument(f"cannot normalise values of dtype {a.dtype}; pass real numbers")


def _check_range(value_range: tuple[float, float] | None) -> tuple[float, float]:
    if value_range is None:
        raise BadArgument("normalisation 'global' needs value_range=(lo, hi) over every layer "
                          "drawn; build it with finite_range()")
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise BadArgument(f"value_range must be two numbers (lo, hi), "
                          f"got {value_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        raise BadArgument(f"value_range must be finite with lo <= hi, got ({lo}, {hi})")
    return lo, hi
