"""Lay channels out as pictures: tile grids, vector strips, 1-D signal bands.

Numpy in, RGB ``uint8`` ``(H, W, 3)`` out. A grid is built with one gather
through the colormap straight into the final canvas (a strided view of it with
one cell per tile), so drawing 64 maps of 224x224 costs about as much as
copying them once. PIL is only used, lazily, to draw title text.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._errors import BadArgument
from ..core.normalize import normalize_channels
from .font import text_masks

__all__ = ["PALETTE_LEVELS", "add_title", "add_title_indexed", "check_lut", "downsample", "draw_texts",
           "grid_shape", "mosaic", "palette", "signals", "strip", "text_width", "tile", "tile_indexed",
           "tile_rgb", "upscale_factor"]

Color = tuple[int, int, int]

_NUMBER_INK: Color = (250, 250, 250)
_NUMBER_BOX: Color = (20, 20, 20)
_TITLE_BAR: Color = (38, 38, 42)
_TITLE_INK: Color = (238, 238, 238)
_SEPARATOR: Color = (255, 255, 255)
_EMPTY: Color = (235, 235, 235)
_FLAG: Color = (230, 30, 30)

# Indexed (palette) grids: 240 colormap levels, then the interface colours, then an
# 11-step ramp from title bar to title ink for antialiased text.
PALETTE_LEVELS = 240
_P_SEPARATOR, _P_EMPTY, _P_FLAG, _P_BOX, _P_INK = 240, 241, 242, 243, 244
_P_TITLE = 245  # 245 (bar) .. 255 (ink)
_QUANT = (np.arange(256) * PALETTE_LEVELS >> 8).astype(np.uint8)  # 0..255 -> 0..239


@functools.lru_cache(maxsize=32)
def _palette_cached(table: bytes) -> np.ndarray:
    lut = np.frombuffer(table, np.uint8).reshape(256, 3)
    levels = lut[np.round(np.arange(PALETTE_LEVELS) * 255 / (PALETTE_LEVELS - 1)).astype(int)]
    ramp = np.linspace(0, 1, 11)[:, None]
    title = np.round(np.array(_TITLE_BAR) * (1 - ramp) + np.array(_TITLE_INK) * ramp)
    ui = np.array([_SEPARATOR, _EMPTY, _FLAG, _NUMBER_BOX, _NUMBER_INK])
    out = np.concatenate([levels, ui, title]).astype(np.uint8)
    out.setflags(write=False)
    return out


def palette(lut: np.ndarray) -> np.ndarray:
    """The ``(256, 3)`` palette of indexed grids drawn with colormap ``lut``.

    Entries 0-239 sample the colormap evenly (a step is invisible next to 256
    levels); 240-244 are the separator, empty-cell, flag, number-box and
    number-ink colours; 245-255 ramp from the title bar to the title ink.
    """
    check_lut(lut)
    return _palette_cached(np.ascontiguousarray(lut).tobytes())


def grid_shape(n: int, columns: int | None = None) -> tuple[int, int]:
    """Rows and columns of a grid for ``n`` tiles.

    Args:
        n: number of tiles, at least 1.
        columns: fixed column count (capped at ``n``); ``None`` for a near-square
            grid with ``ceil(sqrt(n))`` columns.

    Returns:
        ``(rows, cols)`` with ``rows * cols >= n`` and no empty row.
    """
    n = int(n)
    if n < 1:
        raise BadArgument(f"a grid needs at least one tile, got {n}")
    if columns is None:
        cols = math.isqrt(n)
        cols += cols * cols < n
    else:
        if int(columns) < 1:
            raise BadArgument(f"columns must be at least 1, got {columns}")
        cols = min(int(columns), n)
    return -(-n // cols), cols


def downsample(x: np.ndarray, max_side: int, *, channels_last: bool = False) -> np.ndarray:
    """Shrink big maps by an integer block mean so their longer side fits.

    Args:
        x: ``(C, H, W)`` maps, or ``(H, W, C)`` with ``channels_last``.
        max_side: largest wanted side, at least 1.
        channels_last: ``x`` is ``(H, W, C)`` (a canonical layer output): the
            means are taken in that layout, with no channels-first copy of a big
            map, and the result is ``(h, w, C)``.

    Returns:
        ``x`` unchanged when ``max(H, W) <= max_side``; otherwise
        ``(C, H // f, W // f)`` float32 means of ``f x f`` blocks with
        ``f = ceil(max(H, W) / max_side)`` (the remainder rows and columns are
        cropped; a side shorter than ``f`` is averaged whole). NaN and inf
        spread to their block, so flags still see them.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise BadArgument(f"downsample needs {'(H, W, C)' if channels_last else '(C, H, W)'} maps, "
                          f"got shape {x.shape}")
    if max_side < 1:
        raise BadArgument(f"max_side must be at least 1, got {max_side}")
    h, w = x.shape[:2] if channels_last else x.shape[1:]
    if max(h, w) <= max_side:
        return x
    f = -(-max(h, w) // max_side)
    fh, fw = max(min(f, h), 1), max(min(f, w), 1)
    hh, ww = h // fh, w // fw
    with np.errstate(all="ignore"):  # inf - inf inside a block is a NaN the flags report
        if channels_last:  # channels innermost: the adds run along C, ~10x faster than across f
            blocks = x[: hh * fh, : ww * fw].reshape(hh, fh, ww, fw, x.shape[2])
            return blocks.mean(axis=(1, 3), dtype=np.float32)
        blocks = x[:, : hh * fh, : ww * fw].reshape(x.shape[0], hh, fh, ww, fw)
        return blocks.mean(axis=(2, 4), dtype=np.float32)


def tile(
    indices: np.ndarray,
    lut: np.ndarray,
    *,
    columns: int | None = None,
    separator: int = 1,
    separator_color: Color = (255, 255, 255),
    empty_color: Color = (235, 235, 235),
    flags: np.ndarray | None = None,
    numbers: bool = False,
    first_number: int = 0,
    min_tile: int = 32,
    flag_color: Color = (230, 30, 30),
) -> np.ndarray:
    """Draw every channel of a layer as one grid picture.

    Tile ``i`` sits at grid row ``i // cols``, column ``i % cols``; its top-left
    pixel is ``(s + row * (th + s), s + col * (tw + s))`` with ``s`` the
    separator width and ``(th, tw)`` the (upscaled) tile size. The grid has a
    separator-wide border all round.

    Args:
        indices: ``(C, h, w)`` uint8 colormap indices (see
            :func:`convlens.core.normalize.normalize_channels`), any ``C >= 1``.
        lut: ``(256, 3)`` uint8 colormap table.
        columns: fixed number of columns; ``None`` for a near-square grid.
        separator: width in pixels of the lines between tiles (0 for none).
        separator_color: RGB of those lines and of the border.
        empty_color: RGB of the unused cells after the last channel.
        flags: ``(C,)`` bool; flagged tiles (dead, constant...) get a thin
            diagonal cross in ``flag_color``.
        numbers: stamp ``first_number + i`` in each tile's top-left corner
            (skipped when tiles are under 12 pixels).
        first_number: number of the first channel.
        min_tile: tiles whose longer side is under this many pixels are
            enlarged by the integer factor ``ceil(min_tile / max(h, w))``
            (nearest neighbour) so 7x7 maps stay visible.
        flag_color: RGB of the cross.

    Returns:
        ``(rows * (th + s) + s, cols * (tw + s) + s, 3)`` uint8 RGB.
    """
    idx = np.asarray(indices)
    if idx.ndim != 3 or idx.dtype != np.uint8:
        raise BadArgument(f"tile needs (C, h, w) uint8 indices, got shape {idx.shape} "
                          f"dtype {idx.dtype}")
    n, h, w = idx.shape
    if n == 0 or h == 0 or w == 0:
        raise BadArgument(f"nothing to draw: maps of shape {idx.shape}")
    check_lut(lut)
    separator = _check_separator(separator)
    rows, cols = grid_shape(n, columns)
    factor = upscale_factor(max(h, w), min_tile)
    if factor > 1:
        idx = idx.repeat(factor, axis=1).repeat(factor, axis=2)
    th, tw = h * factor, w * factor
    canvas, view = mosaic(idx, rows, cols, separator, _color(separator_color),
                           _color(empty_color), lut)
    if flags is not None:
        marked = np.asarray(flags, dtype=bool)
        if marked.shape != (n,):
            raise BadArgument(f"flags must be one bool per channel ({n},), "
                              f"got shape {marked.shape}")
        _draw_crosses(view, np.flatnonzero(marked), cols, th, tw, _color(flag_color))
    if numbers:
        _draw_numbers(view, n, cols, th, tw, int(first_number))
    return canvas


def tile_indexed(indices: np.ndarray, *, columns: int | None = None, separator: int = 1,
                 flags: np.ndarray | None = None, numbers: bool = False, first_number: int = 0,
                 min_tile: int = 32) -> np.ndarray:
    """:func:`tile` in palette space: one byte a pixel, to encode with :func:`palette`.

    Same layout, arguments and marks as :func:`tile`; colours are the fixed
    interface colours of :func:`palette`.

    Returns:
        ``(H, W)`` uint8 palette indices.
    """
    idx = np.asarray(indices)
    if idx.ndim != 3 or idx.dtype != np.uint8 or 0 in idx.shape:
        raise BadArgument(f"tile needs (C, h, w) uint8 indices, got shape {idx.shape} dtype {idx.dtype}")
    n, h, w = idx.shape
    separator = _check_separator(separator)
    rows, cols = grid_shape(n, columns)
    q = _lookup(_QUANT, idx)  # 0..255 -> the palette's 240 colormap levels
    factor = upscale_factor(max(h, w), min_tile)
    if factor > 1:
        q = q.repeat(factor, axis=1).repeat(factor, axis=2)
    th, tw = h * factor, w * factor
    canvas, view = mosaic(q, rows, cols, separator, _P_SEPARATOR, _P_EMPTY)  # type: ignore[arg-type]
    if flags is not None:
        marked = np.asarray(flags, dtype=bool)
        if marked.shape != (n,):
            raise BadArgument(f"flags must be one bool per channel ({n},), got shape {marked.shape}")
        _draw_crosses(view, np.flatnonzero(marked), cols, th, tw, _P_FLAG)  # type: ignore[arg-type]
    if numbers:
        _draw_numbers(view, n, cols, th, tw, int(first_number), _P_BOX, _P_INK)
    return canvas


def strip(values: np.ndarray, lut: np.ndarray, *, cell: int = 8, per_row: int = 64) -> np.ndarray:
    """Draw a vector (a dense layer's output) as rows of coloured squares.

    Args:
        values: ``(C,)`` numbers; min-max normalised (non-finite values get
            index 0, a constant vector is all 0).
        lut: ``(256, 3)`` uint8 colormap table.
        cell: side in pixels of each value's square; vectors shorter than
            ``per_row`` get squares of up to 32 pixels so the strip is ~256 wide.
        per_row: squares per row before wrapping.

    Returns:
        RGB uint8 grid of ``ceil(C / per_row)`` rows, 1-pixel separators.
    """
    v = np.asarray(values)
    if v.ndim != 1 or v.size == 0:
        raise BadArgument(f"strip needs a non-empty (C,) vector, got shape {v.shape}")
    if cell < 1 or per_row < 1:
        raise BadArgument(f"cell and per_row must be at least 1, got {cell} and {per_row}")
    idx, _ = normalize_channels(v.reshape(1, 1, -1), "minmax")
    if v.size < per_row:  # a handful of values (class scores) would be specks at 8 px
        cell = max(cell, min(32, 256 // v.size))
    return tile(idx.reshape(-1, 1, 1), lut, columns=per_row, separator=1, min_tile=cell)


def signals(
    x: np.ndarray,
    lut: np.ndarray,
    *,
    band: int = 6,
    min_width: int = 128,
    method: str = "standardize",
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Draw 1-D maps (a Conv1D layer's output) as one horizontal band per channel.

    Args:
        x: ``(L, C)`` output of one input, channels last.
        lut: ``(256, 3)`` uint8 colormap table.
        band: height in pixels of each channel's band.
        min_width: signals shorter than this are stretched by an integer
            factor (nearest neighbour).
        method, value_range: normalisation, as in ``normalize_channels``
            (each channel on its own by default).

    Returns:
        RGB uint8, channel ``i`` in band ``i`` from the top, 1-pixel separators.
    """
    a = np.asarray(x)
    if a.ndim != 2 or a.size == 0:
        raise BadArgument(f"signals needs a non-empty (L, C) array, got shape {a.shape}")
    if band < 1:
        raise BadArgument(f"band must be at least 1 pixel, got {band}")
    idx, _ = normalize_channels(a.T[:, None, :], method, value_range=value_range)
    stretch = upscale_factor(a.shape[0], min_width)
    idx = idx.repeat(band, axis=1)
    if stretch > 1:
        idx = idx.repeat(stretch, axis=2)
    return tile(idx, lut, columns=1, separator=1, min_tile=0)


def tile_rgb(tiles: np.ndarray, *, columns: int | None = None, separator: int = 1,
             labels: Sequence[str] | None = None, min_tile: int = 32,
             crossed: Sequence[bool] | None = None) -> np.ndarray:
    """Lay out RGB pictures (feature visualisations) as one grid, in :func:`tile`'s layout.

    Args:
        tiles: ``(n, h, w, 3)`` uint8 RGB, ``n >= 1``.
        columns: fixed number of columns; ``None`` for a near-square grid.
        separator: width in pixels of the white lines between tiles.
        labels: ``n`` strings of digits (and ``-+. e``) stamped in each tile's
            top-left corner, e.g. channel numbers; ``None``: no labels.
        min_tile: tiles whose longer side is under this many pixels are
            enlarged by an integer factor (nearest neighbour).
        crossed: ``n`` flags; flagged tiles get a thin red cross (dead channels).

    Returns:
        ``(rows * (th + s) + s, cols * (tw + s) + s, 3)`` uint8 RGB.
    """
    t = np.asarray(tiles)
    if t.ndim != 4 or t.shape[-1] != 3 or t.dtype != np.uint8 or 0 in t.shape:
        raise BadArgument(f"tile_rgb needs (n, h, w, 3) uint8 pictures, got shape {t.shape} dtype {t.dtype}")
    n, h, w = t.shape[:3]
    if labels is not None and len(labels) != n:
        raise BadArgument(f"tile_rgb: {len(labels)} labels for {n} pictures")
    separator = _check_separator(separator)
    rows, cols = grid_shape(n, columns)
    factor = upscale_factor(max(h, w), min_tile)
    if factor > 1:
        t = t.repeat(factor, axis=1).repeat(factor, axis=2)
    canvas, view = mosaic(t, rows, cols, separator, _SEPARATOR, _EMPTY)
    if crossed is not None:
        _draw_crosses(view, np.flatnonzero(np.asarray(crossed, bool)[:n]), cols, h * factor, w * factor,
                      _color(_FLAG))
    if labels is not None:
        _draw_numbers(view, n, cols, h * factor, w * factor, 0, texts=list(labels))
    return canvas


@functools.lru_cache(maxsize=256)
def _title_mask(width: int, text: str, height: int | None) -> np.ndarray:
    """``(bar, W)`` uint8 coverage of the title text (0 bar, 255 ink); ``W >= width``.

    Cached (read-only): every image of a run draws the same layer titles, and
    rendering the text costs as much as encoding a small grid.
    """
    from PIL import Image, ImageDraw

    text = " ".join(str(text).split())
    font = _font(int(np.clip(width // 90, 13, 20)))  # readable over 1800-pixel grids
    margin = 8
    _, _, right, _ = font.getbbox(text or " ")
    _, ref_top, _, ref_bottom = font.getbbox("Ag")  # same baseline for every title
    bar = max(int(height), 1) if height is not None else max(22, ref_bottom - ref_top + 12)
    mask = Image.new("L", (max(width, right + 2 * margin), bar), 0)
    y = (bar - (ref_bottom - ref_top)) // 2 - ref_top
    ImageDraw.Draw(mask).text((margin, y), text, fill=255, font=font)
    out = np.array(mask)
    out.flags.writeable = False
    return out


def _lookup(table: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``table[indices]`` for a 256-entry uint8 table and uint8 indices, the same bytes as ``np.take``.

    Big pictures go through Pillow's ``point`` (a byte-to-byte table in C),
    several times faster than numpy, which widens every index to 64 bits first.
    """
    if indices.size < 1 << 16 or indices.ndim < 2:
        return np.take(table, indices)
    from PIL import Image

    flat = np.ascontiguousarray(indices).reshape(-1, indices.shape[-1])
    return np.asarray(Image.fromarray(flat).point(table.tolist())).reshape(indices.shape)


def add_title(rgb: np.ndarray, text: str, *, height: int | None = None) -> np.ndarray:
    """Put a dark header bar with light text above a picture.

    Args:
        rgb: ``(H, W, 3)`` uint8.
        text: one line (newlines become spaces).
        height: bar height in pixels; default fits the font, which grows
            from 13 to 20 px with the picture's width.

    Returns:
        ``(H + bar, max(W, text width + margins), 3)`` uint8; a picture
        narrower than its title is padded on the right with white.
    """
    img = np.asarray(rgb)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise BadArgument(f"add_title needs an (H, W, 3) uint8 picture, "
                          f"got {img.shape} {img.dtype}")
    mask = _title_mask(img.shape[1], text, height)[..., None].astype(np.float32) / 255
    bar = mask.shape[0]
    out = np.empty((bar + img.shape[0], mask.shape[1], 3), dtype=np.uint8)
    out[:bar] = np.round(np.array(_TITLE_BAR) * (1 - mask) + np.array(_TITLE_INK) * mask)
    out[bar:, : img.shape[1]] = img
    out[bar:, img.shape[1]:] = 255
    return out


def add_title_indexed(indices: np.ndarray, text: str, *, height: int | None = None) -> np.ndarray:
    """:func:`add_title` for palette-index pictures (see :func:`palette`)."""
    img = np.asarray(indices)
    if img.ndim != 2 or img.dtype != np.uint8:
        raise BadArgument(f"add_title_indexed needs (H, W) uint8 indices, got {img.shape} {img.dtype}")
    mask = _title_mask(img.shape[1], text, height)
    bar = mask.shape[0]
    out = np.empty((bar + img.shape[0], mask.shape[1]), dtype=np.uint8)
    out[:bar] = _P_TITLE + (mask.astype(np.uint16) * 10 + 127) // 255
    out[bar:, : img.shape[1]] = img
    out[bar:, img.shape[1]:] = _P_SEPARATOR  # white, as add_title pads
    return out


# ---------------------------------------------------------------- building blocks (also for filters.py)


def mosaic(
    tiles: np.ndarray,
    rows: int,
    cols: int,
    separator: int,
    separator_color: Color,
    empty_color: Color,
    lut: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Place ``(n, th, tw)`` indices (with ``lut``) or ``(n, th, tw, 3)`` RGB tiles.

    Returns the ``(H, W, 3)`` canvas and a ``(rows, th+s, cols, tw+s, 3)``
    view of it whose ``[r, :th, c, :tw]`` is the tile in row r, column c.
    """
    n, th, tw = tiles.shape[:3]
    s = separator
    tail = (3,) if lut is not None or tiles.ndim == 4 else ()  # () : palette indices, one byte a pixel
    canvas = np.empty((rows * (th + s) + s, cols * (tw + s) + s, *tail), dtype=np.uint8)
    # Splitting axes of a sliced array is always a view, so writes land in canvas.
    view = canvas[s:, s:].reshape(rows, th + s, cols, tw + s, *tail)
    if s:
        # Only the lines: filling the whole canvas first would cost more than the tiles.
        canvas[:s] = separator_color
        canvas[:, :s] = separator_color
        view[:, th:] = separator_color
        view[:, :th, :, tw:] = separator_color
    full, rest = divmod(n, cols)
    if lut is not None:
        # One 3-byte gather per pixel, written straight into the canvas.
        table = np.ascontiguousarray(lut).view("V3").reshape(256)
        pixels = canvas.view("V3").reshape(canvas.shape[:2])  # one 3-byte item per pixel
        dest = pixels[s:, s:].reshape(rows, th + s, cols, tw + s)
        if full:
            src = tiles[: full * cols].reshape(full, cols, th, tw).transpose(0, 2, 1, 3)
            np.take(table, src, out=dest[:full, :th, :, :tw])
        if rest:
            np.take(table, tiles[full * cols:].transpose(1, 0, 2), out=dest[full, :th, :rest, :tw])
    else:
        if full:
            src = tiles[: full * cols].reshape(full, cols, th, tw, *tail)
            view[:full, :th, :, :tw] = np.swapaxes(src, 1, 2)
        if rest:
            view[full, :th, :rest, :tw] = np.swapaxes(tiles[full * cols:], 0, 1)
    if rest:
        view[full, :th, rest:, :tw] = empty_color
    return canvas, view


def _cross_mask(th: int, tw: int, half_width: int) -> np.ndarray:
    """``(th, tw)`` bool: both diagonals, continuous along the longer side."""
    y = np.arange(th, dtype=np.float64)[:, None]
    x = np.arange(tw, dtype=np.float64)[None, :]
    if tw >= th:  # wide: walk the columns, one or two pixels each
        along = x * (th - 1) / max(tw - 1, 1)  # row of the main diagonal in each column
        d1, d2 = np.abs(y - along), np.abs((th - 1 - y) - along)
    else:  # tall: walk the rows
        along = y * (tw - 1) / max(th - 1, 1)
        d1, d2 = np.abs(x - along), np.abs((tw - 1 - x) - along)
    limit = half_width + 0.5
    return (d1 <= limit) | (d2 <= limit)


def _draw_crosses(view: np.ndarray, which: np.ndarray, cols: int, th: int, tw: int,
                  color: Color) -> None:
    if which.size == 0:
        return
    ys, xs = np.nonzero(_cross_mask(th, tw, 1 if min(th, tw) >= 96 else 0))
    rr, cc = (which // cols)[:, None], (which % cols)[:, None]
    view[rr, ys[None, :], cc, xs[None, :]] = color


def _draw_numbers(view: np.ndarray, n: int, cols: int, th: int, tw: int, first: int,
                  box_color: Any = _NUMBER_BOX, ink_color: Any = _NUMBER_INK,
                  texts: list[str] | None = None) -> None:
    if min(th, tw) < 12:
        return
    texts = texts if texts is not None else [str(first + i) for i in range(n)]
    longest = max(len(t) for t in texts)
    scale = int(np.clip(min(th, tw) // 56, 1, 3))
    # Shrink the font until the widest label's box fits a tile; give up at 1.
    while scale > 1 and ((4 * longest - 1) * scale + 2 * scale > tw or 7 * scale > th):
        scale -= 1
    box_h, box_w = 7 * scale, (4 * longest + 1) * scale
    if box_h > th or box_w > tw:
        return
    ink = np.zeros((n, box_h, box_w), dtype=bool)
    glyphs = text_masks(texts, scale)
    ink[:, scale : scale + glyphs.shape[1], scale : scale + glyphs.shape[2]] = glyphs
    widths = np.array([(4 * len(t) + 1) * scale for t in texts])
    box = np.arange(box_w)[None, None, :] < widths[:, None, None]  # each box hugs its label
    rr = np.arange(n) // cols
    cc = np.arange(n) % cols
    region = view[rr, :box_h, cc, :box_w]  # (n, box_h, box_w[, 3]), a copy
    extra = (None,) * (region.ndim - 3)  # a colour axis for RGB, none for palette indices
    region = np.where(box[(...,) + extra], np.array(box_color, np.uint8), region)
    region = np.where(ink[(...,) + extra], np.array(ink_color, np.uint8), region)
    view[rr, :box_h, cc, :box_w] = region


def upscale_factor(side: int, minimum: int) -> int:
    """The whole factor that enlarges a ``side``-pixel tile to at least ``minimum`` pixels (1: none)."""
    return max(1, -(-int(minimum) // side)) if side < minimum else 1


def check_lut(lut: np.ndarray) -> None:
    """Raise :class:`BadArgument` unless ``lut`` is a ``(256, 3)`` uint8 table from ``colormap.lut()``."""
    if not isinstance(lut, np.ndarray) or lut.shape != (256, 3) or lut.dtype != np.uint8:
        shape = getattr(lut, "shape", None)
        raise BadArgument(f"lut must be a (256, 3) uint8 table from colormap.lut(), got {shape}")


def _check_separator(separator: int) -> int:
    if int(separator) < 0:
        raise BadArgument(f"separator must be 0 or more pixels, got {separator}")
    return int(separator)


def _color(c: Sequence[int]) -> Color:
    try:
        r, g, b = (int(v) for v in c)
    except (TypeError, ValueError):
        raise BadArgument(f"a colour is three integers 0-255, got {c!r}") from None
    if not all(0 <= v <= 255 for v in (r, g, b)):
        raise BadArgument(f"a colour is three integers 0-255, got {c!r}")
    return r, g, b


@functools.lru_cache(maxsize=8)
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # FreeType: a real, scalable font
    except (TypeError, ImportError, OSError):  # old Pillow or no FreeType: the bitmap font
        return ImageFont.load_default()


def draw_texts(canvas: np.ndarray, items: Sequence[tuple[int, int, str]], *, size: int = 11,
                color: Color = (40, 40, 40)) -> np.ndarray:
    """Draw many short texts on an RGB array with PIL; returns a new array.

    ``items`` are ``(x, y, text)``: left edge, and the row the text is
    vertically centred on. Used for labels that need letters.
    """
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(canvas))
    draw = ImageDraw.Draw(img)
    font = _font(size)
    _, top, _, bottom = font.getbbox("0|w")  # one baseline for all labels
    for x, y, text in items:  # PIL draws one string per call; labels number tens, not pixels
        draw.text((x, y - (top + bottom) // 2), text, fill=color, font=font)
    return np.asarray(img).copy()


def text_width(text: str, size: int = 11) -> int:
    """Width in pixels of ``text`` drawn by :func:`draw_texts` at ``size``."""
    left, _, right, _ = _font(size).getbbox(text)
    return int(right - left)
