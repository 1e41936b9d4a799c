"""Receptive-field crops: the input region one unit of a layer sees, cut from the original image.

The dataset view ranks images by a channel's strongest unit and shows the part
of each image that unit sees, as Lucid and OpenAI Microscope show "dataset
examples". Three steps:

1. :func:`input_box`: the unit's receptive field in *prepared-input* pixels
   (the image as resized for the model): the exact box of the layer table
   (:func:`convlens.core.receptive.unit_box`: size, jump and the offset that
   padding gives each layer).
2. :func:`to_original`: the same box in the *original* image's pixels. The
   engine stretches every image to one input size (:func:`convlens.images.prepare`
   does not keep the aspect ratio), so this is a per-axis scale.
3. :func:`cut`: the pixels in the box, padded where the box leaves the image,
   resized to a square thumbnail.

The box may reach past the image where the layers pad: that part is the
zeros the unit sees, drawn as a checkerboard by :func:`cut`. After upsampling
the box is the table's envelope (every unit's true box lies inside it, at most
one jump wider). Where the table knows the field's size but not its offset (a
padding the adapter could not read), the centre is estimated from the
map-to-input scale, ``(y + 0.5) * H_in / H_map`` in pixel-edge coordinates, as
before exact boxes: with "same" padding off by at most half a jump, with
"valid" padding up to ``(rf_size - jump) / 2`` pixels outwards near the border.

Units of global layers (global pooling, dense) and of layers whose receptive
field is unknown see the whole input: their box is the whole image.

Araujo, Norris and Sim, "Computing Receptive Fields of Convolutional Neural
Networks", Distill 2019, https://distill.pub/2019/computing-receptive-fields/
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import PIL.Image

from .._errors import BadArgument
from ..core.layers import LayerInfo
from ..core.receptive import unit_box

__all__ = ["FIELD_COLOR", "PAD_DARK", "PAD_LIGHT", "Box", "cut", "draw_field", "input_box", "original_box",
           "to_original", "widen"]

#: ``(top, left, bottom, right)`` in pixel-edge coordinates: a pixel ``(i, j)``
#: covers ``[i, i + 1) x [j, j + 1)``, so a whole ``H x W`` image is ``(0, 0, H, W)``.
Box = tuple[float, float, float, float]

#: The two greys of the checkerboard painted where a box leaves the image. A
#: checkerboard, as image editors show transparency, because any plain colour
#: could be read as image content: black is MNIST's background and a dark
#: photo's shadow, a mid grey is a cloudy sky. The pattern says "nothing here".
PAD_LIGHT = (230, 230, 230)
PAD_DARK = (204, 204, 204)

#: The outline of the receptive field inside a crop widened for context (:func:`widen`):
#: an amber that stands out on black digits, white paper and most photos.
FIELD_COLOR = (255, 176, 0)


def input_box(layer: LayerInfo, position: tuple[int, int], map_hw: tuple[int, int] | None,
              input_hw: tuple[int, int]) -> Box:
    """The receptive field of one unit, in prepared-input pixels.

    Args:
        layer: the layer's table row (``rf_size``, ``rf_jump``, ``rf_offset``, ``global_rf``).
        position: ``(y, x)`` of the unit in the layer's map; ``(0, l)`` for a
            1-D map, ignored for vectors.
        map_hw: the layer's spatial size ``(H_map, W_map)`` at ``input_hw``
            (``(1, L)`` for a 1-D map); ``None`` for a vector layer.
        input_hw: ``(H_in, W_in)``, the size the images were prepared to.

    Returns:
        ``(top, left, bottom, right)`` floats (see :data:`Box`); may extend
        past the input where the field does; the whole input ``(0, 0, H_in,
        W_in)`` for global layers, vectors and unknown receptive fields.

    Raises:
        BadArgument: a size is not positive, or the position lies outside the map.
    """
    h_in, w_in = _positive_pair(input_hw, "input_hw")
    whole: Box = (0.0, 0.0, float(h_in), float(w_in))
    if map_hw is None or layer.global_rf or layer.rf_size is None:
        return whole
    h_map, w_map = _positive_pair(map_hw, "map_hw")
    y, x = (int(v) for v in position)
    if not (0 <= y < h_map and 0 <= x < w_map):
        raise BadArgument(f"position {(y, x)} is outside layer {layer.name!r}'s {h_map}x{w_map} map")
    exact = unit_box(layer, y, x)
    if exact is not None:
        return exact
    rf_h, rf_w = (float(v) for v in layer.rf_size)
    cy = (y + 0.5) * h_in / h_map  # centre in pixel-edge coordinates
    cx = (x + 0.5) * w_in / w_map
    return (cy - rf_h / 2, cx - rf_w / 2, cy + rf_h / 2, cx + rf_w / 2)


def to_original(box: Box, input_hw: tuple[int, int], original_hw: tuple[int, int]) -> Box:
    """A box in prepared-input pixels, in the original image's pixels.

    Args:
        box: ``(top, left, bottom, right)`` in input pixels.
        input_hw: ``(H_in, W_in)`` the image was stretched to.
        original_hw: ``(H, W)`` of the original image (after its EXIF rotation).
    """
    h_in, w_in = _positive_pair(input_hw, "input_hw")
    h, w = _positive_pair(original_hw, "original_hw")
    sy, sx = h / h_in, w / w_in
    top, left, bottom, right = box
    return (top * sy, left * sx, bottom * sy, right * sx)


def original_box(layer: LayerInfo, position: tuple[int, int], map_hw: tuple[int, int] | None,
                 input_hw: tuple[int, int], original_hw: tuple[int, int]) -> Box:
    """:func:`input_box` then :func:`to_original`: the unit's field in the original image."""
    return to_original(input_box(layer, position, map_hw, input_hw), input_hw, original_hw)


def cut(pixels: np.ndarray, box: Box | Sequence[float], out_size: int) -> np.ndarray:
    """The pixels inside ``box``, padded outside the image, as an ``out_size`` square thumbnail.

    The box is rounded outwards to whole pixels, so the crop covers it. Where
    it leaves the image the thumbnail shows a grey checkerboard
    (:data:`PAD_LIGHT`, :data:`PAD_DARK`), drawn at the thumbnail's
    resolution so it stays crisp: it cannot be mistaken for image content.
    A non-square box is stretched to the square, which undoes the stretch of
    a non-square image to a square model input: the thumbnail shows the region
    as the network saw it.

    Resampling: boxes enlarged 2x or more use nearest-neighbour (the pixels of a
    5x5 field stay visible instead of a blur); others use PIL's antialiased
    bilinear filter, as :func:`convlens.images.prepare` does.

    Args:
        pixels: ``(H, W, C)`` image, ``C`` 1 or 3, float 0..255 (an
            :class:`~convlens.images.Image`'s pixels) or uint8.
        box: ``(top, left, bottom, right)`` in the image's pixels (see :data:`Box`).
        out_size: side of the square thumbnail, at least 1.

    Returns:
        ``(out_size, out_size, 3)`` uint8 RGB.

    Raises:
        BadArgument: the array is not an image, the box is empty or not finite,
            or ``out_size`` is not a positive integer.
    """
    a = np.asarray(pixels)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3) or 0 in a.shape:
        raise BadArgument(f"cut needs an (H, W, 1) or (H, W, 3) image, got shape {a.shape}")
    if isinstance(out_size, bool) or not isinstance(out_size, (int, np.integer)) or out_size < 1:
        raise BadArgument(f"the crop size must be a positive integer, not {out_size!r}")
    values = [float(v) for v in box]
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise BadArgument(f"a box is four finite numbers (top, left, bottom, right), not {box!r}")
    top, left, bottom, right = values
    t, l_ = math.floor(top + 1e-9), math.floor(left + 1e-9)
    b, r = math.ceil(bottom - 1e-9), math.ceil(right - 1e-9)
    if b <= t or r <= l_:
        raise BadArgument(f"the box {tuple(values)} is empty; bottom and right must exceed top and left")
    h, w = a.shape[:2]
    n = int(out_size)
    ch, cw = b - t, r - l_
    out = np.empty((n, n, 3), np.uint8)
    # Thumbnail rows and columns whose centres fall inside the image: one contiguous span each.
    rows = _span(t, ch, h, n)
    cols = _span(l_, cw, w, n)
    if rows is not None and cols is not None:
        (oy0, oy1, sy0, sy1), (ox0, ox1, sx0, sx1) = rows, cols
        # Only the image pixels the span needs are converted and resampled (a deep layer's
        # field in a large photo is small next to the photo); resampling inside the image
        # alone means no padding colour can bleed into its border.
        r0, r1 = math.floor(sy0), math.ceil(sy1)
        c0, c1 = math.floor(sx0), math.ceil(sx1)
        inside = a[r0:r1, c0:c1]
        if inside.dtype != np.uint8:
            inside = np.clip(np.rint(inside.astype(np.float32)), 0, 255).astype(np.uint8)
        size = (ox1 - ox0, oy1 - oy0)
        if (r1 - r0, c1 - c0) == (size[1], size[0]) and (sy0, sx0) == (r0, c0):
            part = inside  # pixel for pixel
        else:
            enlarging = n >= 2 * max(ch, cw)
            resample = PIL.Image.Resampling.NEAREST if enlarging else PIL.Image.Resampling.BILINEAR
            picture = PIL.Image.fromarray(np.ascontiguousarray(inside[..., 0] if inside.shape[2] == 1 else inside))
            # reducing_gap: shrink by a whole factor first (Image.reduce), then resample:
            # several times faster for a deep layer's 400 px field, the same to the eye.
            resized = picture.resize(size, resample, box=(sx0 - c0, sy0 - r0, sx1 - c0, sy1 - r0),
                                     reducing_gap=None if enlarging else 3.0)
            part = np.asarray(resized)
        out[oy0:oy1, ox0:ox1] = part[..., None] if part.ndim == 2 else part
    outside = np.ones((n, n), bool)
    if rows is not None and cols is not None:
        outside[rows[0]:rows[1], cols[0]:cols[1]] = False
    if outside.any():
        square = max(2, n // 16)  # 4 px squares in a 64 px crop: visible, not loud
        checker = ((np.arange(n)[:, None] // square + np.arange(n)[None, :] // square) % 2).astype(bool)
        out[outside & checker] = PAD_DARK
        out[outside & ~checker] = PAD_LIGHT
    return out


def widen(box: Box, min_hw: tuple[float, float]) -> Box:
    """``box`` grown about its centre to at least ``min_hw`` ``(height, width)``; never shrunk.

    A first layer's 3x3 field enlarged to a 64 px tile shows nine squares and
    no stroke; the same field inside a quarter of the image, outlined with
    :func:`draw_field`, shows what the nine pixels belong to.
    """
    top, left, bottom, right = (float(v) for v in box)
    grow_h = max(0.0, float(min_hw[0]) - (bottom - top)) / 2
    grow_w = max(0.0, float(min_hw[1]) - (right - left)) / 2
    return (top - grow_h, left - grow_w, bottom + grow_h, right + grow_w)


def draw_field(crop: np.ndarray, field: Box, view: Box, color: tuple[int, int, int] = FIELD_COLOR) -> np.ndarray:
    """Outline ``field`` in a square ``crop`` that :func:`cut` made of ``view``; ``crop`` is changed and returned.

    Both boxes are in the same (image) pixels, as :func:`cut` rounds ``view``
    outwards to whole pixels; the outline is one pixel wide (two from 96 px),
    drawn just inside the field's edges. Nothing is drawn when the field fills the view.
    """
    n = crop.shape[0]
    vt, vl = math.floor(view[0] + 1e-9), math.floor(view[1] + 1e-9)
    vb, vr = math.ceil(view[2] - 1e-9), math.ceil(view[3] - 1e-9)
    sy, sx = n / (vb - vt), n / (vr - vl)
    y0, y1 = round((field[0] - vt) * sy), round((field[2] - vt) * sy) - 1
    x0, x1 = round((field[1] - vl) * sx), round((field[3] - vl) * sx) - 1
    if y0 <= 0 and x0 <= 0 and y1 >= n - 1 and x1 >= n - 1:
        return crop
    y0, y1 = max(y0, 0), min(y1, n - 1)
    x0, x1 = max(x0, 0), min(x1, n - 1)
    if y1 < y0 or x1 < x0:
        return crop
    width = 2 if n >= 96 else 1
    for d in range(width):
        crop[min(y0 + d, y1), x0:x1 + 1] = color
        crop[max(y1 - d, y0), x0:x1 + 1] = color
        crop[y0:y1 + 1, min(x0 + d, x1)] = color
        crop[y0:y1 + 1, max(x1 - d, x0)] = color
    return crop


def _span(start: int, length: int, limit: int, n: int) -> tuple[int, int, float, float] | None:
    """Along one axis: the thumbnail pixels ``[o0, o1)`` whose centres lie in the image ``[0, limit)``,
    and the image interval ``[s0, s1)`` they cover; ``None`` when the box misses the image.

    Thumbnail pixel ``i`` covers image ``start + [i, i + 1) * length / n``.
    """
    scale = length / n
    # centre start + (i + 0.5) * scale >= 0  <=>  i >= -start / scale - 0.5
    o0 = max(0, math.ceil(-start / scale - 0.5))
    o1 = min(n, math.ceil((limit - start) / scale - 0.5))
    if o1 <= o0:
        return None
    s0 = min(max(start + o0 * scale, 0.0), float(limit))
    s1 = min(max(start + o1 * scale, 0.0), float(limit))
    if s1 <= s0:
        return None
    return o0, o1, s0, s1


def _positive_pair(hw: object, what: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in hw)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise BadArgument(f"{what} must be (height, width), not {hw!r}") from None
    if a < 1 or b < 1:
        raise BadArgument(f"{what} must be positive, not {(a, b)}")
    return a, b
