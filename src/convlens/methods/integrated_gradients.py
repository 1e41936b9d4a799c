"""Integrated Gradients: gradients along the path from a baseline to the image.

https://arxiv.org/abs/1703.01365
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import BadArgument
from ..adapters.base import InputItems
from ..core.cam import ig_alphas
from .base import MEMORY_BUDGET, Context, Method, positive_int

__all__ = ["IntegratedGradients"]


class IntegratedGradients(Method):
    """Integrated Gradients (Sundararajan et al. 2017), computed as captum computes it.

    ``attr = (x - b) * sum_j w_j * grad(b + alpha_j (x - b))`` with captum's
    points and weights (:func:`convlens.core.cam.ig_alphas`; for
    ``riemann_trapezoid`` the rule's own weights, whose sum is 1, where captum's
    sum to ``(n-1)/n``). ``raw`` keeps the
    attribution per channel; the map is its sum over channels (captum's
    convention for an additive attribution), scaled by its largest magnitude
    to -1..1. ``extra["completeness_gap"]`` is ``sum(attr) - (f(x) - f(b))``
    per map, the axiom's error (smaller with more steps), with ``f`` the score
    that was differentiated (the logit when the adapter could read it before a
    softmax, see ``extra["logits"]``). All path points and the two endpoints go
    through the model in batches under the memory budget.

    Args:
        steps: number of integration points (captum's default 50).
        method: ``gausslegendre`` (captum's default), ``riemann_trapezoid``,
            ``riemann_left``, ``riemann_right``, ``riemann_middle``.
        baseline: ``"zero"`` (zeros after preprocessing, captum's default),
            ``"black"`` (black pixels through the model's preset), ``"blur"``
            (the image under a Gaussian blur of ``blur_sigma`` pixels, default
            1/16 of its shorter side), a number or an array ``(H, W, C)`` /
            ``(N, H, W, C)`` in the preprocessed space.
    """

    name = "ig"
    title = "Integrated Gradients"
    paper = "https://arxiv.org/abs/1703.01365"
    needs_gradients = True
    kind = "input"
    reduce = "sum"
    signed = True
    slow = True

    def __init__(
        self,
        *,
        steps: int = 50,
        method: str = "gausslegendre",
        baseline: Any = "zero",
        blur_sigma: float | None = None,
        batch_size: int | None = None,
        memory: int = MEMORY_BUDGET,
    ) -> None:
        super().__init__(batch_size=batch_size, memory=memory)
        self.steps = positive_int("steps", steps)
        try:
            self.alphas, self.weights = ig_alphas(self.steps, method)
        except ValueError as exc:
            raise BadArgument(
                f"{exc}; use gausslegendre or riemann_trapezoid/left/right/middle"
            ) from None
        self.method, self.baseline, self.blur_sigma = method, baseline, blur_sigma

    def raw_maps(self, ctx: Context) -> np.ndarray:
        rows, m, s = ctx.rows, len(ctx.rows), self.steps
        x = ctx.batch[rows.images]
        b = ctx.baseline(self.baseline, blur_sigma=self.blur_sigma)[rows.images]
        # Items: every row's path points, then each row's image and its baseline (for the gap).
        item_row = np.concatenate([np.repeat(np.arange(m), s), np.arange(m), np.arange(m)])
        alpha = np.concatenate([np.tile(self.alphas, m), np.ones(m), np.zeros(m)]).astype(
            np.float32
        )
        weights = np.concatenate([np.tile(self.weights, m), np.zeros(2 * m)])
        total, score, outputs = ctx.summed_input_gradients(
            InputItems(item_row=item_row, origin=b, weights=weights, delta=x - b, alpha=alpha,
                       keep=np.arange(len(item_row)) // m == s),  # the images themselves: their outputs
            batch_size=self.batch_size,
            label=f"{self.title} path points",
        )
        attr = (x - b).astype(np.float64) * total
        if len(outputs) == m:
            ctx.row_output = np.stack([outputs[m * s + k] for k in range(m)])
        difference = score[m * s : m * s + m] - score[m * s + m :]
        gap = attr.reshape(m, -1).sum(axis=1) - difference
        ctx.extra.update(completeness_gap=gap, score_difference=difference, steps=s)
        ctx.extra.update(method=self.method, logits=ctx.logits)
        return attr.astype(np.float32)
