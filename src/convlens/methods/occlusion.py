"""Occlusion (https://arxiv.org/abs/1311.2901): how much the score drops when a patch is covered."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import BadArgument
from ..core.cam import occlusion_windows
from ..passes import call_model
from .base import MEMORY_BUDGET, Context, Method, positive_int
from .targets import class_scores

__all__ = ["Occlusion"]


class Occlusion(Method):
    """Occlusion (Zeiler & Fergus 2014), computed as captum's ``Occlusion`` computes it.

    A ``window`` x ``window`` patch (all channels) slides with ``stride``,
    replaced by the baseline; each pixel's attribution is the mean, over the
    patches that cover it, of ``f(x) - f(x occluded)``. Forward only, so it
    runs on every framework. Signed: the map is scaled by its largest
    magnitude to -1..1 (positive: covering the pixel lowers the score).

    Args:
        window: patch side in input pixels; default 1/8 of the input's shorter
            side (28 at 224, 3 at 28).
        stride: default half the window.
        baseline: what covers the patch: ``"zero"`` (zeros after
            preprocessing, captum's default), ``"black"``, ``"blur"``, a number
            or an array (see :class:`~convlens.methods.integrated_gradients.IntegratedGradients`).
    """

    name = "occlusion"
    title = "Occlusion"
    paper = "https://arxiv.org/abs/1311.2901"
    kind = "input"
    reduce = "mean"
    signed = True
    slow = True

    def __init__(
        self,
        *,
        window: int | None = None,
        stride: int | None = None,
        baseline: Any = "zero",
        batch_size: int | None = None,
        memory: int = MEMORY_BUDGET,
    ) -> None:
        super().__init__(batch_size=batch_size, memory=memory)
        self.window = None if window is None else positive_int("window", window)
        self.stride = None if stride is None else positive_int("stride", stride)
        self.baseline = baseline

    def raw_maps(self, ctx: Context) -> np.ndarray:
        rows, (h, w) = ctx.rows, ctx.hw
        k = min(self.window or max(1, min(h, w) // 8), h, w)
        stride = self.stride or max(1, k // 2)
        if stride > k:
            raise BadArgument(
                f"stride {stride} exceeds the window {k}: some pixels would never be covered"
            )
        patches = [
            (ys, xs)
            for ys in occlusion_windows(h, k, stride)
            for xs in occlusion_windows(w, k, stride)
        ]
        base = ctx.baseline(self.baseline)
        clean = ctx.forward()
        step = ctx.batch_size(self.batch_size, backward=False)
        out = np.zeros((len(rows), h, w))
        count = np.zeros((h, w))
        for (y0, y1), (x0, x1) in patches:
            count[y0:y1, x0:x1] += 1
        ctx.progress.start(len(patches) * len(np.unique(rows.images)), f"{self.title} patches")
        try:
            for i in np.unique(rows.images):
                mine = np.flatnonzero(rows.images == i)
                ref = class_scores(clean[i : i + 1], rows.classes[mine], rows.mask)[0]
                for start in range(0, len(patches), step):
                    chunk = patches[start : start + step]
                    x = np.repeat(ctx.batch[i : i + 1], len(chunk), axis=0)
                    for j, ((y0, y1), (x0, x1)) in enumerate(chunk):
                        x[j, y0:y1, x0:x1] = base[i, y0:y1, x0:x1]
                    drop = ref[None] - class_scores(
                        call_model(ctx.adapter, x), rows.classes[mine], rows.mask
                    )
                    for j, ((y0, y1), (x0, x1)) in enumerate(chunk):
                        out[mine, y0:y1, x0:x1] += drop[j][:, None, None]
                    ctx.progress.advance(len(chunk))
        finally:
            ctx.progress.finish()
        attr = out / count
        ctx.extra.update(window=k, stride=stride)
        return np.repeat(attr[..., None], ctx.batch.shape[-1], axis=-1).astype(np.float32)
