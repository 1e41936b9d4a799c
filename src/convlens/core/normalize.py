"""Turn raw activations into 8-bit colormap indices, and flag odd channels.

Everything works on a layer viewed as ``(C, H*W)``, a few channels at a time:
one numpy reduction per statistic along each channel's row, no loop over single
channels. Non-finite values (NaN, +-inf)
are left out of every statistic and drawn as index 0, so one broken pixel
cannot blank or poison a channel, and no RuntimeWarning escapes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .._errors import BadArgument

__all__ = ["NORMS", "ChannelFlags", "finite_range", "global_range", "normalize_channels", "union_range"]

#: Normalisation methods understood by :func:`normalize_channels`.
NORMS = ("standardize", "minmax", "layer", "global")

# float32 squares overflow above ~1.8e19 and underflow below ~1e-19, and a sum of
# 1e8 squares must stay under 3.4e38: channels outside these bounds are shifted and
# scaled to [0, 1] first (every method is shift- and scale-invariant).
_HUGE = 1e15
_TINY = 1e-15
_F32_MAX = float(np.finfo(np.float32).max)
# Channels are normalised a few at a time, about this many bytes of values each: the ten or
# so passes over them then run in a core's cache instead of memory (measured on VGG16's maps:
# 512 KiB beats 256 KiB and 1-4 MiB).
_CHUNK_BYTES = 1 << 19


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


def global_range(reduced: Iterable[np.ndarray]) -> tuple[float, float]:
    """``norm="global"``'s one scale for an image: the union of the finite ranges of its reduced layers.

    Args:
        reduced: per layer, its output for the image after
            :func:`~convlens.render.maps.reduce_map`.
    """
    return union_range(finite_range(r) for r in reduced)


def normalize_channels(
    x: np.ndarray,
    method: str = "standardize",
    *,
    value_range: tuple[float, float] | None = None,
    channels_last: bool = False,
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

    Channels are worked on a few at a time (as many as fit a core's cache),
    each as one contiguous row of ``H*W`` values: every statistic is the same
    numpy reduction along that row whatever the layout of ``x``, so
    ``channels_last`` input gives exactly the indices of its channels-first
    copy, without making that copy.

    Args:
        x: ``(C, H, W)`` output of one image, any real dtype; ``(H, W, C)``
            with ``channels_last``.
        method: one of :data:`NORMS`.
        value_range: ``(lo, hi)`` finite, ``lo <= hi``; required by
            ``global``, ignored otherwise.
        channels_last: ``x`` is ``(H, W, C)`` (a canonical layer output).

    Returns:
        ``(indices, flags)``: ``(C, H, W)`` uint8 indices (channels first in
        either case; non-finite pixels are 0) and the :class:`ChannelFlags` of
        the channels.

    Raises:
        BadArgument: unknown method, wrong shape or dtype, missing or invalid
            ``value_range`` for ``global``.
    """
    if method not in NORMS:
        raise BadArgument(f"unknown normalisation {method!r}; choose one of {', '.join(NORMS)}")
    a = np.asarray(x)
    if a.ndim != 3:
        layout = "(H, W, C)" if channels_last else "(C, H, W)"
        raise BadArgument(f"normalize_channels needs a {layout} array, got shape {a.shape}")
    lo_hi = _check_range(value_range) if method == "global" else None
    c, h, w = (a.shape[2], a.shape[0], a.shape[1]) if channels_last else a.shape
    n = h * w
    if c == 0 or n == 0:
        empty = np.zeros(c, dtype=bool)
        return np.zeros((c, h, w), dtype=np.uint8), ChannelFlags(empty, empty.copy(), empty.copy())
    read = _RowsReader(a, c, n, channels_last)
    step = max(1, min(c, _CHUNK_BYTES // (n * read.itemsize)))
    read.set_step(step)
    chunks = [slice(c0, min(c0 + step, c)) for c0 in range(0, c, step)]
    lo, hi = np.empty(c), np.empty(c)
    count, nonfinite = np.empty(c, dtype=np.intp), np.zeros(c, dtype=bool)

    def stats(part: slice, flat: np.ndarray) -> np.ndarray | None:
        """Fill lo, hi, count, nonfinite of the channels in ``part``; their finite mask if needed."""
        lo[part], hi[part] = flat.min(axis=1), flat.max(axis=1)  # NaN and +-inf show up here
        if np.isfinite(lo[part]).all() and np.isfinite(hi[part]).all():
            count[part] = n
            return None
        finite = np.isfinite(flat)
        nonfinite[part] = ~finite.all(axis=1)
        count[part] = finite.sum(axis=1)
        lo[part] = flat.min(axis=1, where=finite, initial=np.inf)
        hi[part] = flat.max(axis=1, where=finite, initial=-np.inf)
        empty_rows = count[part] == 0
        lo[part][empty_rows] = 0.0  # keeps later arithmetic free of inf - inf
        hi[part][empty_rows] = 0.0
        return finite

    if method == "layer":  # one scale over all channels: every channel's range first
        for part in chunks:
            stats(part, read(part))
        has = count > 0
        layer_lo, layer_hi = (lo[has].min(), hi[has].max()) if has.any() else (0.0, 0.0)
    out = np.empty((c, n), dtype=np.uint8)
    for part in chunks:
        flat = read(part)
        finite = stats(part, flat)
        k = flat.shape[0]
        constant = (count[part] > 0) & (lo[part] == hi[part])
        # Every method is invariant to shifting and scaling a channel (the whole layer for
        # ``layer``, the range for ``global``), so values float32 cannot carry are first moved
        # to [0, 1] in float64: magnitudes or spans beyond 1e15 (squares and sums overflow),
        # spans under 1e-15 (squares underflow; denormals), and float64 inputs whose
        # differences float32 would round away. Values outside a global range may become +-inf
        # here; they clip to 0 or 255 like any value outside the range.
        if lo_hi is not None:
            base, top = np.full(k, lo_hi[0]), np.full(k, lo_hi[1])
        elif method == "layer":
            base, top = np.full(k, layer_lo), np.full(k, layer_hi)
        else:
            base, top = lo[part].copy(), hi[part].copy()
        absmax = np.maximum(np.abs(base), np.abs(top))
        with np.errstate(over="ignore"):
            span = top - base  # inf for float64 values from -max to max: those are scaled, not shifted
        fix = (absmax > _HUGE) | ((span > 0) & ((span < _TINY) | (span > _HUGE)))
        if flat.dtype != np.float32:
            fix[:] = True
        if fix.any():
            shift = np.where(fix & np.isfinite(span), base, 0.0)
            scale = np.where(fix & (span > 0), np.where(np.isfinite(span), span, absmax), 1.0)
            with np.errstate(all="ignore"):
                flat = ((flat - shift[:, None]) / scale[:, None]).astype(np.float32)
                base, top = (base - shift) / scale, (top - shift) / scale
        bad = None if finite is None else ~finite
        if method == "standardize":
            out[part] = _standardize(flat, finite, bad, count[part], constant)
        else:  # the range methods: base -> 0 and top -> 255, for each channel
            out[part] = _stretch(flat, bad, base, top)
    has_values = count > 0
    constant = has_values & (lo == hi)
    flags = ChannelFlags(dead=constant & (lo == 0), constant=constant, nonfinite=nonfinite)
    return out.reshape(c, h, w), flags


class _RowsReader:
    """``read(part)``: the channels in ``part`` as a ``(k, H*W)`` float array, one row a channel.

    Channels-first float input is read in place; anything else is copied (and cast) into a
    reused buffer. Channels-last input is transposed in blocks of positions, ``group`` channels
    at a time (whole cache lines of each source row, so every row is read from memory once),
    and the parts asked for are views of that group: call with consecutive parts of ``step``
    channels.
    """

    _BLOCK = 1024  # positions per transposing copy
    _LINE = 16  # float32 channels in a 64-byte cache line

    def __init__(self, a: np.ndarray, c: int, n: int, channels_last: bool) -> None:
        self.dtype = _float_dtype(a.dtype)
        self.itemsize = self.dtype.itemsize
        self.c, self.n = c, n
        self.channels_last = channels_last
        self.rows = a.reshape(n, c) if channels_last else a.reshape(c, n)  # views unless strides forbid
        self.copy = channels_last or a.dtype != self.dtype
        self.group = 1
        self.loaded = slice(0, 0)
        self.buffer: np.ndarray | None = None

    def set_step(self, step: int) -> None:
        """Parts will be ``step`` channels: gather whole multiples of it, a cache line's worth at least."""
        self.group = step * -(-self._LINE // step) if self.channels_last else step

    def __call__(self, part: slice) -> np.ndarray:
        if not self.copy:
            return self.rows[part]
        if not (self.loaded.start <= part.start and part.stop <= self.loaded.stop):
            self._load(slice(part.start, min(part.start + max(self.group, part.stop - part.start), self.c)))
        assert self.buffer is not None
        return self.buffer[part.start - self.loaded.start:part.stop - self.loaded.start]

    def _load(self, group: slice) -> None:
        k = group.stop - group.start
        if self.buffer is None or self.buffer.shape[0] < k:
            self.buffer = np.empty((k, self.n), dtype=self.dtype)
        out = self.buffer[:k]
        if self.channels_last:
            src = self.rows[:, group]
            for s in range(0, self.n, self._BLOCK):
                out[:, s:s + self._BLOCK] = src[s:s + self._BLOCK].T
        else:
            out[...] = self.rows[group]
        self.loaded = group


def _standardize(flat: np.ndarray, finite: np.ndarray | None, bad: np.ndarray | None,
                 count: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """``(C, N)`` float32 -> uint8 with the tutorials' formula, statistics over finite values.

    The mean is taken twice (the corrected two-pass algorithm): the float32 mean of a
    channel whose spread is small next to its magnitude is off by a few of its last bits,
    which can be as much as the spread itself; the mean of the deviations from it takes
    that error back out.
    """
    denom = np.maximum(count, 1)
    # numpy sums float32 rows pairwise (relative error ~1e-7): as good as
    # float64 accumulators at a third of the cost (einsum is not pairwise).
    total = np.sum(flat, axis=1, where=True if finite is None else finite)
    mean = total.astype(np.float64) / denom
    d = np.subtract(flat, mean.astype(np.float32)[:, None])  # the one big buffer, reused as output
    if bad is not None:
        np.copyto(d, 0, where=bad)  # out of the variance, and no inf * 0 below
    shift = d.sum(axis=1).astype(np.float64) / denom  # the first mean's rounding error
    var = np.square(d).sum(axis=1).astype(np.float64) / denom - shift * shift
    std = np.sqrt(np.maximum(var, 0.0))
    # Constant channels can show a tiny std from rounding of the mean: force 128.
    usable = (std > 0) & ~constant
    scale = np.zeros(flat.shape[0])
    scale[usable] = np.minimum(64.0 / std[usable], _F32_MAX)
    d *= scale.astype(np.float32)[:, None]
    d += (128 - shift * scale).astype(np.float32)[:, None]
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
    with np.errstate(over="ignore", invalid="ignore"):  # far outside a global range: inf, clipped
        d *= gain.astype(np.float32)[:, None]
    if not wide.all():
        d[~wide] = 0  # a constant channel or range maps to 0 (and inf * 0 is no NaN)
    d += 0.5  # round to nearest by truncation below
    np.clip(d, 0, 255, out=d)
    return d.astype(np.uint8)


def _float_dtype(dtype: np.dtype) -> np.dtype:
    """The float type values of ``dtype`` are normalised in: float32 and float64 kept, wider
    floats as float64, narrower floats, integers and bools as float32."""
    if dtype == np.float32 or dtype == np.float64:
        return np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        return np.dtype(np.float64 if dtype.itemsize > 8 else np.float32)
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        return np.dtype(np.float32)
    raise BadArgument(f"cannot normalise values of dtype {dtype}; pass real numbers")


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
