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
  correlation of the channel's spatial mean across images (whether the
  channel still responds to the same images: its *role*).

Everything is a handful of float64 sums per channel: memory does not grow
with the number of images. A is the reference: relative figures divide by A.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PairStats", "flatten_channels", "sqnr_db"]


def flatten_channels(x: np.ndarray) -> np.ndarray:
    """``(n, ..., C)`` canonical layer output as ``(n, positions, C)`` float64-ready float32."""
    a = np.asarray(x, np.float32)
    if a.ndim == 1:
        a = a[:, None]
    return a.reshape(a.shape[0], -1, a.shape[-1])


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
    """

    channels: int
    images: int = 0
    max_abs: float = 0.0
    max_a: float = 0.0
    saa: np.ndarray = field(init=False)
    sbb: np.ndarray = field(init=False)
    sab: np.ndarray = field(init=False)
    sdd: np.ndarray = field(init=False)
    # per-channel spatial means across images, for their correlation
    mx: np.ndarray = field(init=False)
    my: np.ndarray = field(init=False)
    mxx: np.ndarray = field(init=False)
    myy: np.ndarray = field(init=False)
    mxy: np.ndarray = field(init=False)
    nonfinite: int = 0

    def __post_init__(self) -> None:
        c = self.channels
        for name in ("saa", "sbb", "sab", "sdd", "mx", "my", "mxx", "myy", "mxy"):
            setattr(self, name, np.zeros(c))

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """One batch: ``a`` and ``b`` the two outputs of the same ``n`` images.

        Returns:
            ``(n, C)`` per image and channel, the sum of squared differences
            (the caller picks pictures from it).
        """
        x = flatten_channels(a)
        y = np.asarray(b, np.float32).reshape(x.shape)
        finite = np.isfinite(x) & np.isfinite(y)
        if not finite.all():
            self.nonfinite += int((~finite).sum())
            x, y = np.where(finite, x, 0), np.where(finite, y, 0)
        d = x - y
        # float32 products summed per image and channel, then float64 across batches: the arrays are
        # large (VGG16: 15M values per image) and a float64 copy of each would double the pass's time
        per_image = np.einsum("npc,npc->nc", d, d).astype(np.float64)
        self.saa += np.einsum("npc,npc->nc", x, x).astype(np.float64).sum(axis=0)
        self.sbb += np.einsum("npc,npc->nc", y, y).astype(np.float64).sum(axis=0)
        self.sab += np.einsum("npc,npc->nc", x, y).astype(np.float64).sum(axis=0)
        self.sdd += per_image.sum(axis=0)
        if d.size:
            self.max_abs = max(self.max_abs, float(np.abs(d).max()))
            self.max_a = max(self.max_a, float(np.abs(x).max()))
        mx, my = x.mean(axis=1, dtype=np.float64), y.mean(axis=1, dtype=np.float64)
        self.mx += mx.sum(axis=0)
        self.my += my.sum(axis=0)
        self.mxx += (mx * mx).sum(axis=0)
        self.myy += (my * my).sum(axis=0)
        self.mxy += (mx * my).sum(axis=0)
        self.images += x.shape[0]
        return per_image

    def channel_errors(self) -> np.ndarray:
        """``(C,)`` relative error per channel (``nan`` for a channel that is zero in A)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.saa > 0, np.sqrt(self.sdd / np.where(self.saa > 0, self.saa, 1)),
                            np.where(self.sdd > 0, np.inf, np.nan))

    def channel_correlation(self) -> np.ndarray:
        """``(C,)`` Pearson correlation across images of each channel's spatial mean in A and in B
        (``nan`` with fewer than 2 images or a channel constant over them)."""
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
        signal, noise = float(self.saa.sum()), float(self.sdd.sum())
        na, nb = math.sqrt(signal), math.sqrt(float(self.sbb.sum()))
        errors = self.channel_errors()
        order = [int(c) for c in np.argsort(-np.nan_to_num(errors, nan=-1.0))[:worst]
                 if errors[c] > 0]  # nan compares false
        return {
            "max_abs": self.max_abs,
            "max_a": self.max_a,
            "rel_error": math.sqrt(noise) / na if na > 0 else (0.0 if noise == 0 else math.inf),
            "cosine": float(self.sab.sum()) / (na * nb) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0),
            "sqnr_db": sqnr_db(signal, noise),
            "worst_channels": [{"channel": c, "rel_error": float(errors[c])} for c in order],
            "nonfinite": self.nonfinite,
        }
