"""Exact receptive fields of Keras VGG16 (random weights), against the brute-force measurement.

VGG16's 'same' 3x3 convs and 2x2 max pools, at 64 px: every unit's box of every
conv and pool row, from the adapter's own forward pass on lines
(:mod:`tests.receptive.shared`; ReLU and max pooling act on the positive lines
as the identity and as "any pixel is on").
"""

from __future__ import annotations

import numpy as np
import pytest

from .shared import check_table, lines, split

SIZE = 64


@pytest.mark.keras
def test_vgg16_rows_match_the_measurement(keras) -> None:  # type: ignore[no-untyped-def]
    from convlens.adapters.keras import KerasAdapter

    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:  # averaging kernels, no bias: linear and positive
            kernel = weights[0]
            layer.set_weights([np.full_like(kernel, 1.0 / np.prod(kernel.shape[:3])),
                               *(np.zeros_like(w) for w in weights[1:])])
    adapter = KerasAdapter(model)
    table = adapter.layers()
    got: dict[int, np.ndarray] = {}
    adapter.run(lines(SIZE, SIZE, 3), [row.index for row in table],
                lambda i, a: got.__setitem__(i, np.abs(a).sum(-1)))
    counts = check_table(table, {i: split(a, SIZE) for i, a in got.items()}, (SIZE, SIZE), kinds=("conv", "pool"))
    # 13 convs and 5 pools; from block4 on the boxes are wider than the image
    assert sum(counts.values()) == 18 and counts["exact"] >= 8, counts
    assert [row.rf_size for row in table if row.name == "block5_pool"] == [(212, 212)]
    assert [row.rf_offset for row in table if row.name == "block5_pool"] == [(-90, -90)]
