"""Properties of the grid renderers (convlens.render.grid and convlens.render.maps).

Any channel count, tile size, column count and separator: the canvas has the
documented size, every tile sits where the layout formula says with exactly its
colormap levels, separators and empty cells have their colours, flags and
numbers only touch their own tiles, and a drawn layer encodes to a PNG that
reads back to the same picture.
"""

from __future__ import annotations

import io
import math

import numpy as np
import PIL.Image
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from convlens._errors import BadArgument
from convlens.render.colormap import lut as colormap_lut
from convlens.render.grid import (
    PALETTE_LEVELS,
    add_title_indexed,
    downsample,
    grid_shape,
    palette,
    signals,
    strip,
    tile,
    tile_indexed,
)
from convlens.render.maps import RenderOptions, render_map

SEPARATOR, EMPTY = 240, 241  # palette entries of the interface colours (see grid.palette)


@settings(max_examples=200)
@given(n=st.integers(1, 5000), columns=st.one_of(st.none(), st.integers(1, 10_000)))
def test_grid_shape_fits_every_tile_without_an_empty_row(n, columns):
    rows, cols = grid_shape(n, columns)
    assert rows >= 1 and cols >= 1
    assert rows * cols >= n > (rows - 1) * cols
    assert cols == (min(columns, n) if columns is not None else math.ceil(math.sqrt(n)))


@settings(max_examples=40)
@given(n=st.integers(-5, 0), columns=st.one_of(st.none(), st.integers(-3, 3)))
def test_grid_shape_refuses_no_tiles(n, columns):
    with pytest.raises(BadArgument):
        grid_shape(n, columns)


indices = hnp.arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 9), st.integers(1, 9)))


def _layout(idx: np.ndarray, columns: int | None, separator: int, min_tile: int):
    n, h, w = idx.shape
    rows, cols = grid_shape(n, columns)
    f = max(1, -(-min_tile // max(h, w))) if max(h, w) < min_tile else 1
    return rows, cols, h * f, w * f, f


@settings(max_examples=150)
@given(
    idx=indices,
    columns=st.one_of(st.none(), st.integers(1, 50)),
    separator=st.integers(0, 3),
    min_tile=st.integers(0, 40),
)
@example(idx=np.zeros((1, 1, 1), np.uint8), columns=None, separator=0, min_tile=0)
def test_indexed_grid_puts_every_tile_where_the_layout_says(idx, columns, separator, min_tile):
    canvas = tile_indexed(idx, columns=columns, separator=separator, min_tile=min_tile)
    rows, cols, th, tw, f = _layout(idx, columns, separator, min_tile)
    s = separator
    assert canvas.dtype == np.uint8
    assert canvas.shape == (rows * (th + s) + s, cols * (tw + s) + s)
    levels = (idx.astype(int) * PALETTE_LEVELS) // 256  # 0..255 -> the palette's 240 levels
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        y, x = s + r * (th + s), s + c * (tw + s)
        cell = canvas[y : y + th, x : x + tw]
        if k < idx.shape[0]:
            expected = levels[k].repeat(f, axis=0).repeat(f, axis=1)
            np.testing.assert_array_equal(cell, expected)
        else:
            assert np.all(cell == EMPTY)
    if s:
        lines = np.ones(canvas.shape, bool)
        for k in range(rows * cols):
            r, c = divmod(k, cols)
            lines[
                s + r * (th + s) : s + r * (th + s) + th, s + c * (tw + s) : s + c * (tw + s) + tw
            ] = False
        assert np.all(canvas[lines] == SEPARATOR)


@settings(max_examples=80)
@given(
    idx=indices,
    columns=st.one_of(st.none(), st.integers(1, 50)),
    data=st.data(),
    min_tile=st.integers(0, 120),
)
def test_flags_and_numbers_only_mark_their_own_tiles(idx, columns, data, min_tile):
    n = idx.shape[0]
    flags = data.draw(hnp.arrays(np.bool_, (n,)), label="flags")
    plain = tile_indexed(idx, columns=columns, min_tile=min_tile)
    marked = tile_indexed(idx, columns=columns, flags=flags, numbers=True, min_tile=min_tile)
    assert marked.shape == plain.shape
    rows, cols, th, tw, _ = _layout(idx, columns, 1, min_tile)
    changed = marked != plain
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        y, x = 1 + r * (th + 1), 1 + c * (tw + 1)
        region = changed[y : y + th, x : x + tw]
        if k >= n or (not flags[k] and min(th, tw) < 12):
            assert not region.any()  # empty cells, and tiles too small for numbers
        changed[y : y + th, x : x + tw] = False
    assert not changed.any()  # separators never change
    # a flagged tile big enough to show it gets the flag colour on its diagonal
    for k in np.flatnonzero(flags):
        r, c = divmod(int(k), cols)
        y, x = 1 + r * (th + 1), 1 + c * (tw + 1)
        assert (marked[y : y + th, x : x + tw] == 242).any()


@settings(max_examples=60)
@given(
    idx=indices,
    columns=st.one_of(st.none(), st.integers(1, 50)),
    separator=st.integers(0, 2),
    cmap=st.sampled_from(["viridis", "gray", "magma", "RdBu"]),
)
def test_rgb_grid_is_the_colormap_of_each_tile(idx, columns, separator, cmap):
    table = colormap_lut(cmap)
    canvas = tile(idx, table, columns=columns, separator=separator, min_tile=0)
    rows, cols, th, tw, _ = _layout(idx, columns, separator, 0)
    s = separator
    assert canvas.shape == (rows * (th + s) + s, cols * (tw + s) + s, 3)
    for k in range(idx.shape[0]):
        r, c = divmod(k, cols)
        y, x = s + r * (th + s), s + c * (tw + s)
        np.testing.assert_array_equal(canvas[y : y + th, x : x + tw], table[idx[k]])


@settings(max_examples=100)
@given(
    x=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40)),
        elements=st.floats(-1e6, 1e6, width=32),
    ),
    max_side=st.integers(1, 50),
)
def test_downsample_fits_the_longer_side_with_block_means(x, max_side):
    out = downsample(x, max_side)
    c, h, w = x.shape
    if max(h, w) <= max_side:
        assert out is x
        return
    assert out.shape[0] == c and max(out.shape[1:]) <= max_side and min(out.shape[1:]) >= 1
    f = -(-max(h, w) // max_side)
    fh, fw = min(f, h), min(f, w)
    np.testing.assert_allclose(
        out[:, 0, 0], x[:, :fh, :fw].mean(axis=(1, 2), dtype=np.float64), rtol=1e-5, atol=1e-2
    )


@st.composite
def layer_outputs(draw):
    """One image's output of a layer: (H, W, C) maps, (L, C) signals or (C,) vectors."""
    ndim = draw(st.sampled_from([3, 3, 2, 1]))
    c = draw(st.integers(1, 80))
    shape = {
        3: (draw(st.integers(1, 12)), draw(st.integers(1, 12)), c),
        2: (draw(st.integers(1, 20)), c),
        1: (c,),
    }[ndim]
    values = st.one_of(st.floats(-1e3, 1e3, width=32), st.sampled_from([0.0, np.nan, np.inf]))
    return draw(hnp.arrays(np.float32, shape, elements=values))


@settings(max_examples=80)
@given(
    x=layer_outputs(),
    norm=st.sampled_from(["standardize", "minmax", "layer", "global"]),
    cmap=st.sampled_from(["viridis", "gray", "magma"]),
    max_channels=st.one_of(st.none(), st.integers(1, 70)),
    columns=st.one_of(st.none(), st.integers(1, 100)),
    numbers=st.booleans(),
    tile_size=st.integers(4, 16),
    title=st.one_of(st.none(), st.text(max_size=40)),
)
def test_any_layer_output_renders_and_round_trips_through_png(
    x, norm, cmap, max_channels, columns, numbers, tile_size, title
):
    opts = RenderOptions(
        norm=norm,
        cmap=cmap,
        max_channels=max_channels,
        columns=columns,
        numbers=numbers,
        tile_size=tile_size,
    )
    with np.errstate(all="raise"):  # no floating-point warning escapes the renderer
        rendered = render_map(x, opts, title=title, value_range=(-1.0, 1.0))
    total = x.shape[-1]
    assert rendered.channels_total == total
    shown = total if max_channels is None or x.ndim == 1 else min(total, max_channels)
    assert rendered.channels_shown == shown
    assert rendered.layout == {3: "grid", 2: "signals", 1: "strip"}[x.ndim]
    assert rendered.flags.dead.shape == (shown,)
    px = rendered.pixels
    assert px.dtype == np.uint8 and px.ndim == (2 if rendered.layout == "grid" else 3)
    rgb = rendered.rgb
    assert rgb.shape == (*px.shape[:2], 3) and rgb.dtype == np.uint8
    back = PIL.Image.open(io.BytesIO(rendered.png()))
    np.testing.assert_array_equal(np.asarray(back.convert("RGB")), rgb)
    if rendered.layout == "grid" and norm != "global":
        # no blank grid: a drawn channel that is not constant shows at least two colours
        drawn = np.moveaxis(x[..., :shown], -1, 0)
        levels = px[px < PALETTE_LEVELS]
        varied = [
            ch
            for ch in downsample(drawn, tile_size)
            if np.isfinite(ch).any() and np.ptp(ch[np.isfinite(ch)]) > 0
        ]
        if varied:
            assert np.unique(levels).size >= 2


@settings(max_examples=40)
@given(
    values=hnp.arrays(np.float32, st.integers(1, 300), elements=st.floats(width=32)),
    cell=st.integers(1, 12),
    per_row=st.integers(1, 80),
)
def test_strips_hold_one_square_per_value(values, cell, per_row):
    out = strip(values, colormap_lut("gray"), cell=cell, per_row=per_row)
    n = values.size
    side = max(cell, min(32, 256 // n)) if n < per_row else cell
    rows, cols = grid_shape(n, per_row)
    assert out.shape == (rows * (side + 1) + 1, cols * (side + 1) + 1, 3)


@settings(max_examples=40)
@given(
    x=hnp.arrays(
        np.float32, st.tuples(st.integers(1, 200), st.integers(1, 20)), elements=st.floats(width=32)
    ),
    band=st.integers(1, 8),
)
def test_signals_hold_one_band_per_channel(x, band):
    out = signals(x, colormap_lut("viridis"), band=band)
    length, channels = x.shape
    stretch = max(1, -(-128 // length)) if length < 128 else 1
    assert out.shape == (channels * (band + 1) + 1, length * stretch + 2, 3)


@settings(max_examples=40)
@given(h=st.integers(1, 30), w=st.integers(1, 400), text=st.text(max_size=80))
def test_titles_sit_above_the_picture(h, w, text):
    picture = np.full((h, w), 7, np.uint8)
    out = add_title_indexed(picture, text)
    bar = out.shape[0] - h
    assert bar >= 1 and out.shape[1] >= w
    np.testing.assert_array_equal(out[bar:, :w], picture)
    assert np.all(out[bar:, w:] == SEPARATOR) and np.all(out[:bar] >= 245)


def test_palette_has_the_interface_colours_after_the_levels():
    pal = palette(colormap_lut("gray"))
    assert pal.shape == (256, 3) and tuple(pal[SEPARATOR]) == (255, 255, 255)
    assert tuple(pal[0]) == (0, 0, 0) and tuple(pal[PALETTE_LEVELS - 1]) == (255, 255, 255)


@settings(max_examples=80)
@given(
    x=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 5)),
        elements=st.one_of(st.floats(-1e6, 1e6, width=32), st.sampled_from([np.nan, np.inf])),
    ),
    max_side=st.integers(1, 50),
)
def test_channels_last_downsample_is_the_same_block_mean(x, max_side):
    chw = downsample(np.ascontiguousarray(np.moveaxis(x, -1, 0)), max_side)
    hwc = downsample(x, max_side, channels_last=True)
    np.testing.assert_allclose(np.moveaxis(hwc, -1, 0), chw, rtol=1e-5, atol=1e-2)
