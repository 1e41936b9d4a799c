"""How many images one pass may hold: the memory budget and the per-image estimate.

The pass engine (:mod:`convlens.passes`) and the attribution methods batch
images so that the layer outputs one pass holds stay under a budget. The
estimate reads the layer table: each layer's output shape, with free sides
(``None``) worked out from the input size and the layer's receptive-field
jump (a layer that downsamples by 8 has an eighth of the input's side).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .layers import LayerInfo

__all__ = ["MAX_BATCH", "MEMORY_BUDGET", "batch_size_for", "per_sample_bytes"]

#: Bytes of layer outputs one batched pass may hold (per-sample size estimated from the table).
MEMORY_BUDGET = 2**30

#: Images per batch at most, whatever the budget allows (beyond it frameworks gain nothing).
MAX_BATCH = 64


def per_sample_bytes(layers: Sequence[LayerInfo], hw: tuple[int, int], input_values: int = 0, *,
                     backward: bool = False) -> int:
    """Estimated bytes one input takes in a pass: the float32 outputs of ``layers``.

    Args:
        layers: the layers whose outputs the pass holds (rows of the layer table).
        hw: the input's ``(H, W)``, to size outputs whose shape is free.
        input_values: values of one input (``H * W * C``); the estimate is at least that.
        backward: gradients too (twice the bytes).

    Returns:
        Bytes, at least 4.
    """
    h, w = hw
    total = 0
    for layer in layers:
        shape = layer.output_shape or ()
        jump = layer.rf_jump or (1, 1)
        dims = [d if d is not None else max(1, (h, w)[min(i, 1)] // jump[min(i, 1)])
                for i, d in enumerate(shape)]
        total += int(np.prod(dims)) if dims else 1
    return 4 * max(total, int(input_values), 1) * (2 if backward else 1)


def batch_size_for(per_sample: int, memory: int = MEMORY_BUDGET) -> int:
    """As many samples as ``memory`` bytes hold at ``per_sample`` bytes each: 1 to :data:`MAX_BATCH`."""
    return int(min(MAX_BATCH, max(1, int(memory) // max(int(per_sample), 1))))
