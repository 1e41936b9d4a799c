"""reduce_map's blocked transpose: the same bytes as numpy's moveaxis, at every block boundary."""

from __future__ import annotations

import numpy as np
import pytest

from convlens.render.maps import RenderOptions, channels_first, reduce_map


@pytest.mark.parametrize("shape", [(1, 1, 1), (23, 23, 3), (32, 16, 5), (33, 31, 64)])
def test_channels_first_is_moveaxis(shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = channels_first(x)
    assert got.flags.c_contiguous and got.dtype == np.float32
    assert np.array_equal(got, np.moveaxis(x, -1, 0))
    wide = np.random.default_rng(1).standard_normal((*shape[:2], 70)).astype(np.float32)
    assert np.array_equal(channels_first(wide[..., :5]), np.moveaxis(wide[..., :5], -1, 0))  # a channel slice


def test_reduce_map_caps_channels_first():
    x = np.arange(6 * 7 * 9, dtype=np.float32).reshape(6, 7, 9)
    got = reduce_map(x, RenderOptions(max_channels=4))
    assert got.shape == (4, 6, 7) and np.array_equal(got, np.moveaxis(x[..., :4], -1, 0))
