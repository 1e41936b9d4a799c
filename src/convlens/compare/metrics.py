"""How far apart two arrays that should be equal are: streamed over batches, per layer and per channel.

For every pair of layers the comparison accumulates, over all images:

* the maximum absolute error ``max |a - b|``;
* the relative error ``||a - b|| / ||a||`` (2-norms over every value);
* the cosine similarity ``<a, b> / (||a|| ||b||)``;
* the SQNR in dB, ``10 log10(sum a^2 / sum (a - b)^2)``: signal to
  quantisation-noise ratio, the figure TensorFlow Lite's quantisation
  debugger reports (higher is better; a float export gives well over 100 dB,
  int8 typically 20-40 dB);
* per channel, the relative error (the worst offenders are listed), and the
  correlation of the channel's RMS activation across images (whether the
  channel still responds to the same images: its *role*).

Everything is a handful of float64 sums per channel: memory does not grow
with the number of images. A is the reference: relative figures divide by A.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PairStats", "flatten_channels", "ranks", "spearman", "sqnr_db"]


def flatten_channels(x: np.ndarray) -> np.ndarray:
    """``(n, ..., C)`` canonical layer output as ``(n, positions, C)`` float32 (contiguous: no copy then)."""
    a = np.asarray(x, np.float32)
    if a.ndim == 1:
        a = a[:, None]
    return a.reshape(a.shape[0], -1, a.shape[-1])


def ranks(x: np.ndarray) -> np.ndarray:
    """The ranks of ``x``'s values (flattened), 0-based, ties sharing their mean rank (float64)."""
    v = np.ravel(np.asarray(x, np.float64))
    order = np.argsort(v, kind="mergesort")
    ordered = v[order]
    start = np.r_[True, ordered[1:] != ordered[:-1]] if v.size else np.zeros(0, bool)
    group = np.cumsum(start) - 1
    starts = np.flatnonzero(start)
    ends = np.r_[starts[1:], v.size]
    out = np.empty(v.size, np.float64)
    out[order] = ((starts + ends - 1) / 2.0)[group]
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two arrays of one size (ties: mean ranks); ``None`` when one is constant."""
    ra, rb = ranks(a), ranks(b)
    if ra.size != rb.size:
        raise ValueError(f"spearman needs arrays of one size, got {ra.size} and {rb.size}")
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(np.clip(float(ra @ rb) / den, -1.0, 1.0)) if den > 0 else None


def sqnr_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)``; ``inf`` without noise, ``nan`` without signal."""
    if noise <= 0:
        return math.inf if signal > 0 else math.nan
    if signal <= 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclass
class PairStats:
    """Running sums comparing A's and B's outputs of one layer pair.

    Call :meth:`add` per batch with arrays of the same number of values per
    image (``(n, H, W, C)`` against ``(n, 1, 1, C)`` or ``(n, C)`` is fine
    when the counts agree), then read :meth:`figures`.

    Per batch this costs one subtraction and three sums of squares over the
    arrays (``a``, ``b``, ``a - b`` per image and channel) and a maximum:
    the cosine follows from them, ``<a, b> = (|a|^2 + |b|^2 - |a - b|^2) / 2``,
    and a channel's *role* is its root-mean-square activation per image.
    """

    channels: int
    images: int = 0
    max_abs: float = 0.0
    saa: np.ndarray = field(init=False)
    sbb: np.ndarray = field(init=False)
    sdd: np.ndarray = field(init=False)
    # per channel, the RMS activation per image in A (x) and B (y): sums for their correlation
    mx: np.ndarray = field(init=False)
    my: np.ndarray = field(init=False)
    mxx: np.ndarray = field(init=False)
    myy: np.ndarray = field(init=False)
    mxy: np.ndarray = field(init=False)
    nonfinite: int = 0

    def __post_init__(self) -> None:
        c = self.channels
        for name in ("saa", "sbb", "sdd", "mx", "my", "mxx", "myy", "mxy"):
            setattr(self, name, np.zeros(c))

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """One batch: ``a`` and ``b`` the two outputs of the same ``n`` images.

        Returns:
            ``(n, C)`` per image and channel, the sum of squared differences
            (the caller picks pictures from it).
        """
        x = flatten_channels(a)
        y = np.asarray(b, np.float32).reshape(x.shape)
        d = x - y
        # float32 sums per image and channel (einsum's SIMD loops), float64 across batches: the arrays
        # are large (VGG16: 15M values per image) and every pass over them costs memory bandwidth
        dd = np.einsum("npc,npc->nc", d, d)
        xx = np.einsum("npc,npc->nc", x, x)
        yy = np.einsum("npc,npc->nc", y, y)
        if not (np.isfinite(dd).all() and np.isfinite(xx).all() and np.isfinite(yy).all()):
            finite = np.isfinite(x) & np.isfinite(y)  # the slow path, only when something overflowed
            self.nonfinite += int((~finite).sum())
            x, y = np.where(finite, x, 0), np.where(finite, y, 0)
            d = x - y
            dd, xx, yy = (np.einsum("npc,npc->nc", u, u) for u in (d, x, y))
        per_image = dd.astype(np.float64)
        self.sdd += per_image.sum(axis=0)
        self.saa += xx.astype(np.float64).sum(axis=0)
        self.sbb += yy.astype(np.float64).sum(axis=0)
        if d.size:
            self.max_abs = max(self.max_abs, float(d.max()), float(-d.min()))
        positions = max(x.shape[1], 1)
        rx, ry = np.sqrt(xx.astype(np.float64) / positions), np.sqrt(yy.astype(np.float64) / positions)
        self.mx += rx.sum(axis=0)
        self.my += ry.sum(axis=0)
        self.mxx += (rx * rx).sum(axis=0)
        self.myy += (ry * ry).sum(axis=0)
        self.mxy += (rx * ry).sum(axis=0)
        self.images += x.shape[0]
        return per_image

    def channel_errors(self) -> np.ndarray:
        """``(C,)`` relative error per channel (``nan`` for a channel that is zero in A and B)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.saa > 0, np.sqrt(self.sdd / np.where(self.saa > 0, self.saa, 1)),
                            np.where(self.sdd > 0, np.inf, np.nan))

    def channel_correlation(self) -> np.ndarray:
        """``(C,)`` Pearson correlation across images of each channel's RMS activation in A and in B:
        whether the channel still responds to the same images (``nan`` with fewer than 2 images or a
        channel constant over them)."""
        n = self.images
        if n < 2:
            return np.full(self.channels, np.nan)
        cov = self.mxy - self.mx * self.my / n
        vx = self.mxx - self.mx ** 2 / n
        vy = self.myy - self.my ** 2 / n
        with np.errstate(divide="ignore", invalid="ignore"):
            ok = (vx > 1e-12 * np.maximum(self.mxx, 1e-30)) & (vy > 1e-12 * np.maximum(self.myy, 1e-30))
            return np.where(ok, cov / np.sqrt(np.where(ok, vx * vy, 1)), np.nan)

    def figures(self, worst: int = 5) -> dict[str, Any]:
        """The pair's figures (see the module docstring) and its ``worst`` channels."""
        signal, noise, other = float(self.saa.sum()), float(self.sdd.sum()), float(self.sbb.sum())
        na, nb = math.sqrt(signal), math.sqrt(other)
        errors = self.channel_errors()
        order = [int(c) for c in np.argsort(-np.nan_to_num(errors, nan=-1.0))[:worst]
                 if errors[c] > 0]  # nan compares false
        if na > 0 and nb > 0:
            cosine = min(1.0, max(-1.0, (signal + other - noise) / (2.0 * na * nb)))
        else:
            cosine = 1.0 if na == nb else 0.0
        return {
            "max_abs": self.max_abs,
            "rel_error": math.sqrt(noise) / na if na > 0 else (0.0 if noise == 0 else math.inf),
            "cosine": cosine,
            "sqnr_db": sqnr_db(signal, noise),
            "worst_channels": [{"channel": c, "rel_error": float(errors[c])} for c in order],
            "nonfinite": self.nonfinite,
        }
