"""Heatmap overlays: exact blends, the colour bar, the resize, and big and tiny images."""

from __future__ import annotations

import numpy as np
import pytest

from convlens import BadArgument
from convlens.render.colormap import lut
from convlens.render.overlay import DEFAULT_CMAP, SIGNED_CMAP, overlay, resize_map, tick_label


def test_resize_map_enlarges_bilinearly_between_pixel_centres():
    out = resize_map(np.array([[0, 4], [8, 12]], np.float32), (4, 4))
    # Along each axis the output centres fall at 1/4 and 3/4 between the input centres.
    expected = np.array([[0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]], np.float32)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_resize_map_keeps_a_map_of_the_right_size_and_clears_non_finite_values():
    heat = np.array([[np.nan, 1.0], [np.inf, -np.inf]])
    out = resize_map(heat, (2, 2))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 1], [0, 0]])


def test_resize_map_shrinks_without_aliasing_a_checkerboard():
    board = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)
    out = resize_map(board, (8, 8))
    np.testing.assert_allclose(out, 0.5, atol=0.02)  # plain sampling would give all 0 or all 1


def test_a_uniform_map_blends_one_colour_exactly():
    image = np.full((300, 400, 3), 100, np.uint8)
    out = overlay(image, np.ones((7, 7)), colorbar=False, alpha=0.5)
    top = lut(DEFAULT_CMAP)[255].astype(np.float64)
    assert out.shape == (300, 400, 3)
    np.testing.assert_array_equal(out, np.broadcast_to(np.rint(100 + (top - 100) * 0.5), out.shape))


def test_the_map_is_resized_to_the_image_as_given_not_the_network_input():
    image = np.zeros((300, 450), np.uint8)  # grayscale, not square
    heat = np.zeros((224, 224), np.float32)
    heat[:, 112:] = 1.0  # the right half matters
    out = overlay(image, heat, colorbar=False, alpha=1.0)
    table = lut(DEFAULT_CMAP)
    assert out.shape == (300, 450, 3)
    np.testing.assert_array_equal(out[:, :200], np.broadcast_to(table[0], (300, 200, 3)))
    np.testing.assert_array_equal(out[:, 250:], np.broadcast_to(table[255], (300, 200, 3)))


def test_signed_maps_use_a_diverging_colormap_and_leave_zero_untouched():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    heat = np.zeros((256, 256), np.float32)
    heat[:, :64] = -2.0
    heat[:, -64:] = 2.0
    out = overlay(image, heat, signed=True, colorbar=False, alpha=1.0)
    table = lut(SIGNED_CMAP)
    np.testing.assert_array_equal(out[:, 64:-64], image[:, 64:-64])  # zero: the photo unchanged
    np.testing.assert_array_equal(out[:, :64], np.broadcast_to(table[0], (256, 64, 3)))
    np.testing.assert_array_equal(out[:, -64:], np.broadcast_to(table[255], (256, 64, 3)))


def test_the_colour_bar_is_the_colormap_from_end_to_end():
    image = np.zeros((256, 512, 3), np.uint8)
    out = overlay(image, np.zeros((4, 4)), cmap="viridis")
    band = out[256:]
    table = lut("viridis")
    # The bar's first row of colour: the colormap's first entry on the left, its last on the right.
    rows = np.where((band != 255).any(axis=(1, 2)))[0]
    strip = band[rows[0]]
    coloured = np.where((strip != 255).any(axis=1))[0]
    np.testing.assert_array_equal(strip[coloured[0]], table[0])
    np.testing.assert_array_equal(strip[coloured[-1]], table[255])
    assert np.all(np.diff(coloured) == 1)  # one unbroken ramp


def test_a_caption_goes_above_the_picture():
    image = np.full((256, 256, 3), 200, np.uint8)
    plain = overlay(image, np.zeros((2, 2)), colorbar=False)
    titled = overlay(image, np.zeros((2, 2)), colorbar=False, caption="Grad-CAM · tabby cat · p=0.41")
    bar = titled.shape[0] - plain.shape[0]
    assert bar >= 20
    np.testing.assert_array_equal(titled[bar:, :256], plain)


def test_tiny_images_are_enlarged_by_an_integer_factor():
    digit = np.zeros((28, 28), np.float32)
    digit[10:18, 12:16] = 255.0
    out = overlay(digit, np.zeros((28, 28)), colorbar=False, alpha=0.0)
    assert out.shape == (280, 280, 3)  # 28 * ceil(256 / 28)
    np.testing.assert_array_equal(out[100:180, 120:160], 255)
    np.testing.assert_array_equal(out[:100], 0)


def test_big_photos_are_shrunk_by_a_block_mean():
    image = np.zeros((5000, 3000, 3), np.uint8)
    image[:, 1500:] = 200
    out = overlay(image, np.zeros((7, 7)), colorbar=False, alpha=0.0, max_side=1000)
    assert out.shape == (1000, 600, 3)  # factor 5
    np.testing.assert_array_equal(out[:, :300], 0)
    np.testing.assert_array_equal(out[:, 300:], 200)


def test_float_images_in_0_255_are_accepted_as_loaded():
    image = np.full((256, 256, 1), 99.6, np.float32)
    out = overlay(image, np.zeros((2, 2)), colorbar=False, alpha=0.0)
    np.testing.assert_array_equal(out, 100)


@pytest.mark.parametrize("value, text", [(0, "0"), (1, "1"), (0.5, "0.5"), (-0.0123, "-0.0123"),
                                         (2.4e-5, "2.4e-5"), (-3.48, "-3.48"), (12345.0, "1.2e4")])
def test_tick_labels_are_short_and_drawable(value, text):
    assert tick_label(value) == text


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": 1.5}, "alpha"),
    ({"value_range": (1.0, 1.0)}, "value_range"),
    ({"cmap": "viridsi"}, "colormap"),
    ({"min_side": 512, "max_side": 256}, "min_side"),
])
def test_bad_options_raise_one_clear_error(kwargs, match):
    with pytest.raises(BadArgument, match=match):
        overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((2, 2)), **kwargs)


def test_bad_shapes_raise_one_clear_error():
    with pytest.raises(BadArgument, match="image"):
        overlay(np.zeros((8, 8, 2), np.uint8), np.zeros((2, 2)))
    with pytest.raises(BadArgument, match="heatmap"):
        overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((2, 2, 2)))
