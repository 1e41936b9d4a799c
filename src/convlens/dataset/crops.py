"""Receptive-field crops: the input region one unit of a layer sees, cut from the original image.

The dataset view ranks images by a channel's strongest unit and shows the part
of each image that unit sees, as Lucid and OpenAI Microscope show "dataset
examples". Three steps:

1. :func:`input_box`: the unit's receptive field in *prepared-input* pixels
   (the image as resized for the model). Its size is the layer table's
   ``rf_size`` (:mod:`convlens.core.receptive`); its centre is placed by the
   map-to-input scale, ``(y + 0.5) * H_in / H_map`` in pixel-edge coordinates
   (``(y + 0.5) * H_in / H_map - 0.5`` as a pixel index).
2. :func:`to_original`: the same box in the *original* image's pixels. The
   engine stretches every image to one input size (:func:`convlens.images.prepare`
   does not keep the aspect ratio), so this is a per-axis scale.
3. :func:`cut`: the pixels in the box, padded where the box leaves the image,
   resized to a square thumbnail.

The approximation, and its size: the layer table does not track padding, so
the centre comes from the ratio of input to map size rather than from each
layer's padding. With "same" padding the ratio is the jump and the centre is
off by at most half a jump (e.g. 0.5 px after one stride-2 conv, where
TensorFlow pads bottom-right and PyTorch both sides: they differ by as much
themselves). With "valid" padding the map is smaller than ``input / jump`` and
units near the border are placed up to ``(rf_size - jump) / 2`` pixels too
far outwards. The box is a whole receptive field, so the unit's strongest input
(usually near the field's centre) stays inside it in both cases.

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

__all__ = ["PAD_DARK", "PAD_LIGHT", "Box", "cut", "input_box", "original_box", "to_original"]

#: ``(top, left, bottom, right)`` in pixel-edge coordinates: a pixel ``(i, j)``
#: covers ``[i, i + 1) x [j, j + 1)``, so a whole ``H x W`` image is ``(0, 0, H, W)``.
Box = tuple[float, float, float, float]

#: The two greys of the checkerboard painted where a box leaves the image. A
#: checkerboard, as image editors show transparency, because any plain colour
#: could be read as image content: black is MNIST's background and a dark
#: photo's shadow, a mid grey is a cloudy sky. The pattern says "nothing here".
PAD_LIGHT = (224, 224, 224)
PAD_DARK = (176, 176, 176)


def input_box(layer: LayerInfo, position: tuple[int, int], map_hw: tuple[int, int] | None,
              input_hw: tuple[int, int]) -> Box:
    """The receptive field of one unit, in prepared-input pixels.

    Args:
        layer: the layer's table row (``rf_size``, ``rf_jump``, ``global_rf``).
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
    rgb = a if a.dtype == np.uint8 else np.clip(np.rint(a.astype(np.float32)), 0, 255).astype(np.uint8)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    # Rows and columns outside the image repeat the edge, so resampling does not bleed
    # a colour into the border; the checkerboard is painted over them afterwards.
    rows = np.clip(np.arange(t, b), 0, h - 1)
    cols = np.clip(np.arange(l_, r), 0, w - 1)
    region = rgb[rows[:, None], cols[None, :]]
    ch, cw = region.shape[:2]
    n = int(out_size)
    enlarging = n >= 2 * max(ch, cw)
    resample = PIL.Image.Resampling.NEAREST if enlarging else PIL.Image.Resampling.BILINEAR
    if (ch, cw) == (n, n):
        out = np.array(region, dtype=np.uint8)
    else:
        out = np.asarray(PIL.Image.fromarray(np.ascontiguousarray(region)).resize((n, n), resample)).copy()
    # Which thumbnail pixels fall outside the image: map their centres back to image rows/columns.
    ys = t + (np.arange(n) + 0.5) * ch / n
    xs = l_ + (np.arange(n) + 0.5) * cw / n
    outside = ((ys < 0) | (ys >= h))[:, None] | ((xs < 0) | (xs >= w))[None, :]
    if outside.any():
        square = max(2, n // 8)
        checker = ((np.arange(n)[:, None] // square + np.arange(n)[None, :] // square) % 2).astype(bool)
        out[outside & checker] = PAD_DARK
        out[outside & ~checker] = PAD_LIGHT
    return out


def _positive_pair(hw: object, what: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in hw)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise BadArgument(f"{what} must be (height, width), not {hw!r}") from None
    if a < 1 or b < 1:
        raise BadArgument(f"{what} must be positive, not {(a, b)}")
    return a, b
