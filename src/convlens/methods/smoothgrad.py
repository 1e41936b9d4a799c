"""SmoothGrad: saliency averaged over noisy copies of the image.

https://arxiv.org/abs/1706.03825
"""

from __future__ import annotations

import numpy as np

from .._errors import BadArgument
from ..adapters.base import InputItems
from .base import MEMORY_BUDGET, Context, Method, positive_int

__all__ = ["SmoothGrad"]


class SmoothGrad(Method):
    """SmoothGrad: the mean ``|gradient|`` over ``samples`` copies of the image with Gaussian noise.

    Averages absolute gradients, as captum's ``NoiseTunnel(Saliency(abs=True),
    nt_type="smoothgrad")``; the map is the largest value over channels,
    scaled to 0..1. The noise's standard deviation is ``noise`` times the
    image's value range (max - min over its pixels after preprocessing), the
    paper's sigma / (x_max - x_min), 10-20% being its recommendation.
    Noisy copies go through the model in batches under the memory budget.

    Args:
        samples: number of noisy copies (the paper: 50; captum's default 5).
        noise: noise level as a fraction of the input's range.
        seed: seed of the noise (same seed, same map).
    """

    name = "smoothgrad"
    title = "SmoothGrad"
    paper = "https://arxiv.org/abs/1706.03825"
    needs_gradients = True
    kind = "input"
    reduce = "absmax"
    slow = True

    def __init__(
        self,
        *,
        samples: int = 25,
        noise: float = 0.15,
        seed: int | None = 0,
        batch_size: int | None = None,
        memory: int = MEMORY_BUDGET,
    ) -> None:
        super().__init__(batch_size=batch_size, memory=memory)
        self.samples = positive_int("samples", samples)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < 10:
            raise BadArgument(
                f"noise is a fraction of the input's range (e.g. 0.15), not {noise!r}"
            )
        self.noise, self.seed = float(noise), seed

    def raw_maps(self, ctx: Context) -> np.ndarray:
        rows = ctx.rows
        x = ctx.batch[rows.images]
        sigma = self.noise * (x.max(axis=(1, 2, 3)).astype(np.float64) - x.min(axis=(1, 2, 3)))
        item_row = np.repeat(np.arange(len(rows)), self.samples)
        total, _, _ = ctx.summed_input_gradients(
            InputItems(item_row=item_row, origin=x, weights=np.full(len(item_row), 1.0 / self.samples),
                       sigma=sigma, seed=self.seed, absolute=True),
            batch_size=self.batch_size,
            label=f"{self.title} noisy samples",
        )
        return total.astype(np.float32)
