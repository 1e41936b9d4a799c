"""One constant-image check: the heatmap API and the methods' batch check refuse with one message."""

from __future__ import annotations

import numpy as np
import pytest

from convlens import methods
from convlens._errors import BadImage
from convlens.heatmaps import compute_heatmaps
from convlens.images import PreparedBatch, check_not_constant, load_image


def _message(call) -> str:
    with pytest.raises(BadImage) as e:
        call()
    return str(e.value)


def _from_heatmaps(pixels: np.ndarray) -> str:
    image = load_image(pixels, name="flat")
    prepared = PreparedBatch([image], [image.pixels], [])
    # the check runs before the model is touched
    return _message(lambda: compute_heatmaps(None, prepared, []))  # type: ignore[arg-type]


def _from_methods(pixels: np.ndarray) -> str:
    batch = np.stack([np.arange(12, dtype=np.float32).reshape(2, 2, 3), pixels])
    # eigencam needs no gradients: the batch is checked before the adapter is asked anything
    return _message(lambda: methods.create("eigencam").compute(object(), batch))


@pytest.mark.parametrize("pixels", [
    np.full((2, 2, 3), 7.0, np.float32),  # one value everywhere
    np.broadcast_to(np.array([255.0, 0.0, 0.0], np.float32), (2, 2, 3)).copy(),  # one colour
])
def test_both_callers_give_the_same_message(pixels):
    from_heatmaps = _from_heatmaps(pixels)
    from_methods = _from_methods(pixels)
    assert from_heatmaps.startswith("flat has the same value at every pixel: a heatmap has nothing to point at")
    assert from_methods.startswith("image 1 of the batch has the same value at every pixel")
    assert from_heatmaps.replace("flat", "image 1 of the batch", 1) == from_methods
    assert from_methods == _message(lambda: check_not_constant(pixels, "image 1 of the batch"))


def test_an_image_with_content_passes():
    check_not_constant(np.arange(12, dtype=np.float32).reshape(2, 2, 3), "ok")
    check_not_constant(np.zeros((0, 2, 3), np.float32), "empty")  # other checks report empty arrays
