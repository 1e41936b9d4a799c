"""Grids, strips, signal bands, titles, colormaps and the bitmap font."""

from __future__ import annotations

import numpy as np
import pytest

from convlens import BadArgument
from convlens.render.colormap import apply_lut, lut
from convlens.render.font import stamp_digits, text_masks, text_size
from convlens.render.grid import add_title, downsample, grid_shape, signals, strip, tile

GRAY = lut("gray")
SEP = (255, 255, 255)
EMPTY = (235, 235, 235)
FLAG = (230, 30, 30)


def origin(i: int, cols: int, th: int, tw: int, s: int = 1) -> tuple[int, int]:
    """Top-left pixel of tile i, as tile() documents it."""
    return s + (i // cols) * (th + s), s + (i % cols) * (tw + s)


def distinct_maps(n: int, h: int = 4, w: int = 4) -> np.ndarray:
    """n channels that differ pairwise: index i % 256, and i // 256 in pixel (0, 0)."""
    idx = np.empty((n, h, w), np.uint8)
    idx[:] = (np.arange(n) % 256)[:, None, None]
    idx[:, 0, 0] = np.arange(n) // 256
    return idx


# ---------------------------------------------------------------- grid_shape


@pytest.mark.parametrize("n, columns, expected", [
    (1, None, (1, 1)), (3, None, (2, 2)), (4, None, (2, 2)), (17, None, (4, 5)),
    (64, None, (8, 8)), (512, None, (23, 23)), (17, 16, (2, 16)), (3, 16, (1, 3)), (10, 1, (10, 1)),
])
def test_grid_shape(n, columns, expected):
    assert grid_shape(n, columns) == expected


def test_grid_shape_rejects_bad_counts():
    with pytest.raises(BadArgument):
        grid_shape(0)
    with pytest.raises(BadArgument, match="columns"):
        grid_shape(5, 0)


# ---------------------------------------------------------------- tile


@pytest.mark.parametrize("n", [1, 3, 17, 64, 512])
def test_tile_draws_every_channel_once_and_nothing_else(n):
    idx = distinct_maps(n)
    rgb = tile(idx, GRAY, min_tile=0)
    rows, cols = grid_shape(n)
    assert rgb.dtype == np.uint8
    assert rgb.shape == (rows * 5 + 1, cols * 5 + 1, 3)
    for i in range(n):
        y, x = origin(i, cols, 4, 4)
        assert np.array_equal(rgb[y : y + 4, x : x + 4], GRAY[idx[i]]), f"channel {i}"
    for i in range(n, rows * cols):
        y, x = origin(i, cols, 4, 4)
        assert (rgb[y : y + 4, x : x + 4] == EMPTY).all(), f"empty cell {i}"
    # Separators: every 5th row and column, border included.
    assert (rgb[::5, :] == SEP).all() and (rgb[:, ::5] == SEP).all()


def test_fixed_columns_wraps_17_channels_into_two_rows():
    rgb = tile(distinct_maps(17), GRAY, columns=16, min_tile=0)
    assert rgb.shape == (2 * 5 + 1, 16 * 5 + 1, 3)
    y, x = origin(16, 16, 4, 4)
    assert (rgb[y + 1, x + 1] == 16).all()
    y, x = origin(17, 16, 4, 4)
    assert (rgb[y : y + 4, x : x + 4] == EMPTY).all()


def test_separator_width_and_colours_are_honoured():
    idx = distinct_maps(3)
    rgb = tile(idx, GRAY, separator=3, separator_color=(1, 2, 3), empty_color=(9, 8, 7), min_tile=0)
    assert rgb.shape == (2 * 7 + 3, 2 * 7 + 3, 3)
    assert (rgb[:3] == (1, 2, 3)).all() and (rgb[7:10] == (1, 2, 3)).all()
    y, x = origin(3, 2, 4, 4, 3)
    assert (rgb[y : y + 4, x : x + 4] == (9, 8, 7)).all()
    assert tile(idx, GRAY, separator=0, min_tile=0).shape == (8, 8, 3)


def test_small_maps_are_enlarged_by_an_integer_factor():
    idx = np.arange(2 * 7 * 7, dtype=np.uint8).reshape(2, 7, 7)
    rgb = tile(idx, GRAY)  # min_tile 32 -> factor ceil(32 / 7) = 5
    assert rgb.shape == (1 * 36 + 1, 2 * 36 + 1, 3)
    y, x = origin(1, 2, 35, 35)
    expected = np.kron(idx[1], np.ones((5, 5), np.uint8))
    assert np.array_equal(rgb[y : y + 35, x : x + 35, 0], expected)
    big = np.zeros((1, 40, 40), np.uint8)
    assert tile(big, GRAY).shape == (42, 42, 3)  # already big enough: factor 1


def test_non_square_maps():
    idx = np.zeros((5, 3, 40), np.uint8)
    rgb = tile(idx, GRAY, min_tile=0)
    assert rgb.shape == (2 * 4 + 1, 3 * 41 + 1, 3)


def test_flagged_tiles_get_a_cross():
    idx = np.full((4, 20, 20), 100, np.uint8)
    rgb = tile(idx, GRAY, flags=np.array([False, True, False, True]), min_tile=0)
    for i, flagged in enumerate([False, True, False, True]):
        y, x = origin(i, 2, 20, 20)
        cell = rgb[y : y + 20, x : x + 20]
        red = (cell == FLAG).all(axis=-1)
        if flagged:
            diag = np.arange(20)
            assert red[diag, diag].all() and red[diag, 19 - diag].all()
            assert red.sum() == 40  # one pixel wide: 20 per diagonal, they never share a pixel
        else:
            assert not red.any()


def test_cross_on_wide_tiles_is_continuous():
    rgb = tile(np.zeros((1, 10, 60), np.uint8), GRAY, flags=[True], min_tile=0)
    red = (rgb[1:11, 1:61] == FLAG).all(axis=-1)
    assert red.any(axis=0).all()  # every column of the tile is crossed
    assert red[0, 0] and red[9, 59] and red[0, 59] and red[9, 0]  # corner to corner
    tall = tile(np.zeros((1, 60, 10), np.uint8), GRAY, flags=[True], min_tile=0)
    assert (tall[1:61, 1:11] == FLAG).all(axis=-1).any(axis=1).all()  # every row


def test_numbers_are_stamped_top_left():
    idx = np.full((12, 30, 30), 200, np.uint8)
    rgb = tile(idx, GRAY, numbers=True, first_number=5, min_tile=0)
    y, x = origin(6, 4, 30, 30)  # the 7th tile shows "11"
    ink = text_masks(["11"])[0]  # (5, 7) at scale 1, inside a 1-pixel dark margin
    box = rgb[y : y + 7, x : x + 9]
    assert (box[1:6, 1:8][ink] == 250).all()
    assert (box[1:6, 1:8][~ink] == 20).all()
    assert (box[0] == 20).all() and (box[:, 8] == 20).all()
    assert (rgb[y + 7 :, x : x + 30][: 30 - 7] == 200).all()  # the rest of the tile is untouched
    assert (rgb[y : y + 7, x + 9 : x + 30] == 200).all()


def test_number_boxes_fit_their_label():
    rgb = tile(np.full((11, 30, 30), 200, np.uint8), GRAY, numbers=True, min_tile=0)
    y, x = origin(0, 4, 30, 30)  # "0": box 5 wide
    assert (rgb[y, x : x + 5] == 20).all() and (rgb[y, x + 5] == 200).all()
    y, x = origin(10, 4, 30, 30)  # "10": box 9 wide
    assert (rgb[y, x : x + 9] == 20).all() and (rgb[y, x + 9] == 200).all()


def test_numbers_grow_on_big_tiles_and_are_skipped_on_tiny_ones():
    big = tile(np.full((1, 120, 120), 200, np.uint8), GRAY, numbers=True)
    assert (big[1 : 1 + 14, 1 : 1 + 10] != 200).any(axis=-1).all()  # scale 2: a 14x10 box for "0"
    assert (big[1 + 14, 1 : 1 + 10] == 200).all()
    tiny = np.full((4, 8, 8), 200, np.uint8)
    assert np.array_equal(tile(tiny, GRAY, numbers=True, min_tile=0), tile(tiny, GRAY, min_tile=0))


def test_tile_rejects_bad_input():
    with pytest.raises(BadArgument, match="uint8"):
        tile(np.zeros((2, 3, 3), np.float32), GRAY)
    with pytest.raises(BadArgument, match="flags"):
        tile(np.zeros((2, 3, 3), np.uint8), GRAY, flags=[True])
    with pytest.raises(BadArgument, match="lut"):
        tile(np.zeros((2, 3, 3), np.uint8), np.zeros((10, 3), np.uint8))
    with pytest.raises(BadArgument):
        tile(np.zeros((0, 3, 3), np.uint8), GRAY)


# ---------------------------------------------------------------- downsample


def test_downsample_block_mean():
    x = np.arange(2 * 10 * 10, dtype=np.float32).reshape(2, 10, 10)
    small = downsample(x, 5)
    assert small.shape == (2, 5, 5) and small.dtype == np.float32
    assert small[0, 0, 0] == (0 + 1 + 10 + 11) / 4
    assert small[1, 4, 4] == x[1, 8:10, 8:10].mean()


def test_downsample_crops_the_remainder_and_keeps_small_maps():
    x = np.ones((1, 11, 7), np.float32)
    assert downsample(x, 5).shape == (1, 3, 2)  # factor ceil(11 / 5) = 3
    assert downsample(x, 11) is x
    assert downsample(np.ones((1, 2, 400), np.float32), 100).shape == (1, 1, 100)


def test_downsample_spreads_nonfinite_without_warnings():
    x = np.zeros((1, 4, 4), np.float32)
    x[0, 0, 0], x[0, 0, 1] = np.inf, -np.inf
    with np.errstate(all="raise"):
        out = downsample(x, 2)
    assert np.isnan(out[0, 0, 0]) and (out[0].ravel()[1:] == 0).all()


# ---------------------------------------------------------------- strip / signals


def test_strip_wraps_and_min_max_normalises():
    v = np.linspace(-1, 1, 100)
    v[50] = np.nan
    rgb = strip(v, GRAY, cell=8, per_row=64)
    assert rgb.shape == (2 * 9 + 1, 64 * 9 + 1, 3)
    assert (rgb[1:9, 1:9] == 0).all()  # the minimum
    y, x = origin(99, 64, 8, 8)
    assert (rgb[y : y + 8, x : x + 8] == 255).all()  # the maximum
    y, x = origin(50, 64, 8, 8)
    assert (rgb[y, x] == 0).all()  # NaN is drawn as index 0
    y, x = origin(100, 64, 8, 8)
    assert (rgb[y, x] == EMPTY).all()


def test_short_strips_get_bigger_cells():
    rgb = strip(np.array([0.1, 0.7, 0.2]), GRAY)
    assert rgb.shape == (34, 3 * 33 + 1, 3)
    assert rgb[1, 1, 0] == 0 and rgb[1, 34, 0] == 255 and rgb[1, 67, 0] == 43


def test_signals_bands():
    x = np.zeros((50, 3), np.float32)  # (L, C)
    x[:, 0] = np.arange(50)
    x[:, 2] = 7.0
    rgb = signals(x, GRAY, method="minmax")  # 50 < 128: stretched 3x; bands 6 px
    assert rgb.shape == (3 * 7 + 1, 150 + 2, 3)
    assert rgb[1, 1, 0] == 0 and rgb[6, 150, 0] == 255  # channel 0 ramps left to right
    assert (rgb[1:7, 1:4] == rgb[1, 1]).all()  # one sample = 3 columns x 6 rows
    assert (rgb[15:21, 1:151] == 0).all()  # constant channel under minmax
    assert (rgb[7] == SEP).all()


def test_strip_and_signals_reject_wrong_shapes():
    with pytest.raises(BadArgument):
        strip(np.zeros((2, 2)), GRAY)
    with pytest.raises(BadArgument):
        signals(np.zeros(5), GRAY)


# ---------------------------------------------------------------- add_title


def test_add_title_puts_a_bar_above():
    img = np.full((40, 300, 3), 77, np.uint8)
    out = add_title(img, "conv2d_1 (Conv2D)", height=24)
    assert out.shape == (64, 300, 3)
    assert np.array_equal(out[24:], img)
    bar = out[:24]
    assert (bar[0, 0] == (38, 38, 42)).all()
    assert (bar.max(axis=-1) > 150).any()  # light text was drawn


def test_add_title_pads_narrow_pictures():
    img = np.full((10, 10, 3), 77, np.uint8)
    out = add_title(img, "a rather long layer name for a tiny picture")
    assert out.shape[1] > 150
    bar = out.shape[0] - 10
    assert np.array_equal(out[bar:, :10], img)
    assert (out[bar:, 10:] == 255).all()


# ---------------------------------------------------------------- colormap


def test_viridis_matches_matplotlib():
    import matplotlib

    table = lut("viridis")
    cmap = matplotlib.colormaps["viridis"]
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert table[0].tolist() == np.rint(np.array(cmap(0.0)[:3]) * 255).astype(int).tolist()
    assert table[255].tolist() == np.rint(np.array(cmap(1.0)[:3]) * 255).astype(int).tolist()
    assert table[0].tolist() == [68, 1, 84]


def test_gray_needs_no_matplotlib_and_tables_are_shared_read_only():
    for name in ("gray", "grey", "Gray"):
        assert lut(name)[:, 0].tolist() == list(range(256))
    assert lut("viridis") is lut("viridis")
    with pytest.raises(ValueError):
        lut("viridis")[0, 0] = 1


def test_colormap_names_are_case_insensitive():
    assert np.array_equal(lut("Viridis"), lut("viridis"))
    assert np.array_equal(lut("rdbu_r"), lut("RdBu_r"))


def test_unknown_colormap_suggests_close_names():
    with pytest.raises(BadArgument) as err:
        lut("virdis")
    assert "'viridis'" in str(err.value) and "matplotlib" in str(err.value)


def test_apply_lut():
    idx = np.array([[0, 255], [1, 2]], np.uint8)
    assert apply_lut(idx, GRAY).shape == (2, 2, 3)
    assert apply_lut(idx, lut("viridis"))[0, 1].tolist() == lut("viridis")[255].tolist()
    with pytest.raises(BadArgument):
        apply_lut(idx.astype(np.int32), GRAY)


# ---------------------------------------------------------------- font


def test_font_masks():
    m = text_masks(["1", "10"], 2)
    assert m.shape == (2, 10, 14) and m.dtype == bool
    assert not m[0, :, 6:].any()  # "1" is padded on the right
    assert text_size("10", 2) == (10, 14)
    one = np.array([[c == "#" for c in row] for row in (".#.", "##.", ".#.", ".#.", "###")])
    assert np.array_equal(text_masks(["1"])[0], one)
    with pytest.raises(BadArgument, match="cannot draw"):
        text_masks(["x"])


def test_stamp_digits_clips_at_the_edges():
    canvas = np.zeros((6, 6, 3), np.uint8)
    assert stamp_digits(canvas, "8", 3, 3, color=(255, 0, 0), background=(0, 0, 255)) == (7, 5)
    assert (canvas[:3] == 0).all() and (canvas[:, :3] == 0).all()
    assert (canvas[3, 3:] == (0, 0, 255)).all()  # the box margin
    assert (canvas[4, 4] == (255, 0, 0)).all()  # top-left of the "8"
    stamp_digits(canvas, "123", -50, -50)  # fully outside: nothing happens, nothing raises


# ---------------------------------------------------------------- indexed (palette) grids


def test_indexed_grid_matches_the_rgb_grid_exactly():
    from convlens.render.grid import _QUANT, palette, tile_indexed

    rng = np.random.default_rng(3)
    idx = rng.integers(0, 256, (17, 9, 11), dtype=np.uint8)
    flags = np.zeros(17, bool)
    flags[[2, 16]] = True
    table = lut("magma")
    pal = palette(table)
    quantised = np.ascontiguousarray(pal[_QUANT])  # the colormap as the palette holds it
    want = tile(idx, quantised, columns=5, flags=flags, numbers=True)
    got = tile_indexed(idx, columns=5, flags=flags, numbers=True)
    assert got.ndim == 2 and got.dtype == np.uint8
    np.testing.assert_array_equal(pal[got], want)
    assert int(np.abs(pal[:240].astype(int) - table[_QUANT_INV()].astype(int)).max()) == 0


def _QUANT_INV():
    from convlens.render.grid import PALETTE_LEVELS

    return np.round(np.arange(PALETTE_LEVELS) * 255 / (PALETTE_LEVELS - 1)).astype(int)


def test_indexed_title_close_to_rgb_title_and_png_roundtrip():
    import io

    from PIL import Image

    from convlens.render.grid import add_title_indexed, palette, tile_indexed
    from convlens.render.png import encode_png

    idx = np.tile(np.arange(256, dtype=np.uint8).reshape(1, 16, 16), (4, 1, 1))
    pal = palette(lut("viridis"))
    grid = tile_indexed(idx)
    titled = add_title_indexed(grid, "7 conv · Conv2D · (16, 16, 4)")
    rgb_title = add_title(pal[grid], "7 conv · Conv2D · (16, 16, 4)")
    assert titled.shape == rgb_title.shape[:2]
    assert int(np.abs(pal[titled].astype(int) - rgb_title.astype(int)).max()) <= 12  # 11-step ramp
    png = Image.open(io.BytesIO(encode_png(titled, palette=pal)))
    assert png.mode == "P"
    np.testing.assert_array_equal(np.asarray(png.convert("RGB")), pal[titled])
