"""Saliency: the magnitude of the score's gradient at each pixel.

https://arxiv.org/abs/1312.6034
"""

from __future__ import annotations

import numpy as np

from .base import Context, Method

__all__ = ["Saliency"]


class Saliency(Method):
    """Vanilla gradient saliency (Simonyan et al. 2014).

    ``raw`` is ``|d score / d input|`` per channel, captum's ``Saliency`` with
    ``abs=True``; the map is its largest value over the colour channels (the
    paper's reduction), scaled to 0..1 per map. One backward pass to the input.
    """

    name = "saliency"
    title = "Saliency"
    paper = "https://arxiv.org/abs/1312.6034"
    needs_gradients = True
    kind = "input"
    reduce = "absmax"

    def raw_maps(self, ctx: Context) -> np.ndarray:
        rows = ctx.rows
        grads, _, output = ctx.input_gradients(
            ctx.batch[rows.images], rows.classes, self.batch_size
        )
        ctx.row_output = output
        return np.abs(grads)
