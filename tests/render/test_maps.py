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


@pytest.mark.parametrize("side", [8, 256])  # numpy's table lookup below 65536 values, Pillow's above
def test_tile_indexed_maps_every_value_to_its_colormap_level(side):
    from convlens.render.grid import PALETTE_LEVELS, tile_indexed

    idx = np.random.default_rng(2).integers(0, 256, (4, side, side)).astype(np.uint8)
    canvas = tile_indexed(idx, columns=2, min_tile=1)
    levels = (idx.astype(np.int64) * PALETTE_LEVELS >> 8).astype(np.uint8)
    for k in range(4):
        r, c = divmod(k, 2)
        top, left = 1 + r * (side + 1), 1 + c * (side + 1)
        assert np.array_equal(canvas[top:top + side, left:left + side], levels[k])


@pytest.mark.parametrize("norm", ["standardize", "minmax", "layer"])
def test_render_map_draws_channels_last_maps_as_their_reduction(norm):
    """render_map normalises (H, W, C) in place: the same picture as from reduce_map's channels-first copy."""
    from convlens.render.maps import render_map

    rng = np.random.default_rng(3)
    x = (np.maximum(rng.standard_normal((300, 260, 70)), 0) * rng.uniform(0.1, 5, 70)).astype(np.float32)
    x[..., 2] = 0.0
    x[4, 4, 5] = np.nan
    opts = RenderOptions(norm=norm, tile_size=128)  # 300 -> 150 x 130 tiles, 64 of 70 channels
    direct = render_map(x, opts, title="layer")
    via = render_map(reduce_map(x, opts), opts, title="layer", channels_total=70, reduced=True)
    assert direct.channels_shown == via.channels_shown == 64 and direct.channels_total == 70
    assert np.array_equal(direct.pixels, via.pixels) and direct.png() == via.png()
    assert direct.flags.indices() == via.flags.indices() == {"dead": [2], "constant": [2], "nonfinite": [5]}
