"""Saliency: the magnitude of the score's gradient at each pixel.

https://arxiv.org/abs/1312.6034
"""

from __future__ import annotations

import numpy as np

from ..adapters.base import InputItems
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
        m = len(rows)
        # one item per row, weight 1: the framework takes |gradient| where it computed it
        total, _, outputs = ctx.summed_input_gradients(
            InputItems(item_row=np.arange(m), origin=ctx.batch[rows.images], weights=np.ones(m),
                       absolute=True, keep=np.ones(m, bool)),
            batch_size=self.batch_size,
            label=f"{self.title} gradients",
        )
        if len(outputs) == m:
            ctx.row_output = np.stack([outputs[k] for k in range(m)])
        return total.astype(np.float32)
