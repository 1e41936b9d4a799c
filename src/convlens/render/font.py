"""A tiny built-in 3x5 bitmap font for channel numbers stamped on tiles.

Stamping text with PIL means a round trip through an image object per label;
these glyphs are numpy masks, so hundreds of labels are drawn in one indexing
operation (see :func:`text_masks`). Only digits and a few signs are needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._errors import BadArgument

__all__ = ["CHARS", "GLYPH_HEIGHT", "GLYPH_WIDTH", "stamp_digits", "text_masks", "text_size"]

GLYPH_HEIGHT = 5
GLYPH_WIDTH = 3

# Each glyph is 5 rows of 3 pixels; '#' is ink.
_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
    "-": ("...", "...", "###", "...", "..."),
    "+": ("...", ".#.", "###", ".#.", "..."),
    ".": ("...", "...", "...", "...", ".#."),
    "e": ("###", "#..", "##.", "#..", "###"),
    " ": ("...", "...", "...", "...", "..."),
}

#: Characters the font can draw.
CHARS = "".join(_GLYPHS)

# (K, 5, 4): every glyph followed by one blank column of letter spacing.
_TABLE = np.zeros((len(_GLYPHS), GLYPH_HEIGHT, GLYPH_WIDTH + 1), dtype=bool)
for _k, _rows in enumerate(_GLYPHS.values()):
    _TABLE[_k, :, :GLYPH_WIDTH] = np.array([[c == "#" for c in row] for row in _rows])
_CODE = {c: k for k, c in enumerate(_GLYPHS)}


def _codes(text: str) -> list[int]:
    try:
        return [_CODE[c] for c in text.replace("E", "e")]
    except KeyError:
        bad = sorted({c for c in text if c not in _CODE and c != "E"})
        raise BadArgument(f"the built-in font cannot draw {''.join(bad)!r}; "
                          f"it draws {CHARS!r}") from None


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """Pixel size ``(height, width)`` of ``text`` drawn at ``scale`` (no padding)."""
    if not text:
        return 0, 0
    return GLYPH_HEIGHT * scale, ((GLYPH_WIDTH + 1) * len(text) - 1) * scale


def text_masks(texts: Sequence[str], scale: int = 1) -> np.ndarray:
    """Ink masks of several strings at once.

    Args:
        texts: N strings made of :data:`CHARS` (``E`` is drawn as ``e``).
        scale: integer magnification, at least 1.

    Returns:
        ``(N, 5 * scale, (4 * L - 1) * scale)`` bool, L the longest string's
        length; shorter strings are padded with blank columns on the right.
    """
    if scale < 1:
        raise BadArgument(f"font scale must be at least 1, got {scale}")
    length = max((len(t) for t in texts), default=0)
    if length == 0:
        return np.zeros((len(texts), GLYPH_HEIGHT * scale, 0), dtype=bool)
    blank = _CODE[" "]
    codes = np.full((len(texts), length), blank, dtype=np.intp)
    for i, text in enumerate(texts):
        codes[i, : len(text)] = _codes(text)
    glyphs = _TABLE[codes]  # (N, L, 5, 4)
    n = len(texts)
    masks = glyphs.transpose(0, 2, 1, 3).reshape(n, GLYPH_HEIGHT, length * (GLYPH_WIDTH + 1))
    masks = masks[:, :, :-1]  # no spacing after the last glyph
    if scale > 1:
        masks = masks.repeat(scale, axis=1).repeat(scale, axis=2)
    return masks


def stamp_digits(
    canvas_rgb: np.ndarray,
    text: str,
    y: int,
    x: int,
    scale: int = 1,
    color: tuple[int, int, int] = (245, 245, 245),
    background: tuple[int, int, int] | None = (24, 24, 24),
    pad: int | None = None,
) -> tuple[int, int]:
    """Draw ``text`` into an RGB image in place, clipped to its edges.

    Args:
        canvas_rgb: ``(H, W, 3)`` uint8 image, modified in place.
        text: characters from :data:`CHARS`.
        y: top row of the box (background included).
        x: left column of the box.
        scale: integer magnification of the 3x5 glyphs.
        color: ink colour.
        background: colour of the box behind the text; ``None`` for none.
        pad: box margin around the text in pixels; default ``scale``.

    Returns:
        ``(height, width)`` of the box, whether or not it was clipped.
    """
    if canvas_rgb.ndim != 3 or canvas_rgb.shape[2] != 3:
        raise BadArgument(f"stamp_digits needs an (H, W, 3) image, got shape {canvas_rgb.shape}")
    pad = scale if pad is None else pad
    ink = text_masks([text], scale)[0]
    box_h, box_w = ink.shape[0] + 2 * pad, ink.shape[1] + 2 * pad
    box = np.zeros((box_h, box_w), dtype=bool)
    box[pad : pad + ink.shape[0], pad : pad + ink.shape[1]] = ink
    # Clip the box to the canvas so labels near an edge never raise.
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + box_h, canvas_rgb.shape[0]), min(x + box_w, canvas_rgb.shape[1])
    if y1 <= y0 or x1 <= x0:
        return box_h, box_w
    region = canvas_rgb[y0:y1, x0:x1]
    mask = box[y0 - y : y1 - y, x0 - x : x1 - x]
    if background is not None:
        region[...] = background
    region[mask] = color
    return box_h, box_w
