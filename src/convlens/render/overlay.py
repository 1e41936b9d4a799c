"""A heatmap blended on the image as given, with a colour bar and a caption.

Numpy in, RGB ``uint8`` out. The map (at the network input's resolution, or
any other) is resized to the image as it was loaded, not to the resized input
the network saw, so the picture lines up with the user's own file. Big photos
cost bounded memory and time: the picture is shrunk by an integer block mean
to at most ``max_side`` pixels before anything else happens, and the blend
runs in bands of rows, so no full-size float temporary beyond the resized map
exists. Tiny images (MNIST digits) are enlarged by an integer factor so that
the caption and the colour bar stay readable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .._errors import BadArgument
from .colormap import lut as colormap_lut
from .font import stamp_digits, text_size
from .grid import add_title
from .marks import Box, draw_boxes, draw_outline

__all__ = ["DEFAULT_CMAP", "SIGNED_CMAP", "overlay", "resize_map", "tick_label"]

#: Colormap of maps in 0..1 (CAMs, normalised saliency): a perceptual rainbow that reads like
#: the "jet" overlays people know, without jet's false edges.
DEFAULT_CMAP = "turbo"
#: Colormap of signed attributions (Integrated Gradients): diverging, blue below zero, red above.
SIGNED_CMAP = "RdBu_r"

_BAND_ROWS = 256  # rows blended at a time: bounds the float temporaries of a big photo
_BAR_BG = (255, 255, 255)
_INK = (30, 30, 30)


def resize_map(heat: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize one map to ``size`` with bilinear interpolation (pixel centres aligned).

    Enlarging is plain bilinear interpolation between pixel centres (as
    OpenCV's ``INTER_LINEAR`` and torch's ``align_corners=False``); shrinking
    widens the filter with the factor (PIL's antialiased ``BILINEAR``), so a
    fine-grained saliency map does not alias.

    Args:
        heat: ``(h, w)`` map, any real dtype; NaN and infinity become 0.
        size: ``(H, W)`` wanted.

    Returns:
        ``(H, W)`` float32; ``heat`` itself as float32 when the size matches.
    """
    from PIL import Image

    h = np.asarray(heat)
    if h.ndim != 2 or h.size == 0:
        raise BadArgument(f"a heatmap is one (H, W) array, got shape {h.shape}")
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise BadArgument(f"size must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise BadArgument(f"size must be positive, got {height}x{width}")
    h = np.nan_to_num(h.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    if h.shape == (height, width):
        return np.ascontiguousarray(h)
    plane = Image.fromarray(np.ascontiguousarray(h), mode="F")
    return np.asarray(plane.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def tick_label(value: float) -> str:
    """A short label the bitmap font can draw: ``0``, ``0.5``, ``-0.012``, ``2.4e-5``."""
    v = float(value)
    if v == 0 or not math.isfinite(v):
        return "0"
    text = f"{v:.3g}" if 1e-2 <= abs(v) < 1e4 else f"{v:.2g}"
    if "e" in text:
        mantissa, exp = text.split("e")
        text = f"{mantissa}e{int(exp)}"
    return text


def overlay(image: np.ndarray, heat: np.ndarray, *, caption: str = "", signed: bool = False,
            value_range: tuple[float, float] | None = None, cmap: str | None = None,
            alpha: float | None = None, colorbar: bool = True, min_side: int = 256,
            max_side: int = 4096, boxes: Sequence[Box] = (), region: np.ndarray | None = None) -> np.ndarray:
    """Blend a heatmap on an image, with a colour bar below and a caption above.

    Args:
        image: the image as given, ``(H, W)`` or ``(H, W, C)`` with C 1 or 3
            (or 4: alpha is dropped), uint8 or float in 0..255
            (:attr:`convlens.images.Image.pixels`).
        heat: ``(h, w)`` map at any resolution; it is resized to the image.
        caption: one line above the picture (method, class, score).
        signed: the map is a signed attribution: a diverging colormap over a
            range symmetric about 0, and each pixel's opacity grows with
            ``|value|`` up to half the range (then stays at ``alpha``), so
            that zero shows the photo unchanged and small values still show.
        value_range: the values at the two ends of the colour bar; default
            ``(0, 1)``, or ``(-m, m)`` with ``m = max |heat|`` when signed.
        cmap: colormap name; default :data:`DEFAULT_CMAP`, or
            :data:`SIGNED_CMAP` when signed.
        alpha: opacity of the colour, 0-1 (the largest one when signed);
            default 0.5, or 0.8 when signed.
        colorbar: draw the colour bar with labelled ends and middle.
        min_side: images whose longer side is shorter are enlarged by an
            integer factor (nearest neighbour) to at least this.
        max_side: images whose longer side is longer are shrunk by an integer
            block mean to at most this.
        boxes: detections to draw, in the image's pixels (:func:`convlens.render.marks.draw_boxes`).
        region: a region whose outline is drawn (``(h, w)`` any resolution, non-zero inside).

    Returns:
        ``(H', W', 3)`` uint8: the caption bar, the blended picture at the
        image's resolution (or an integer multiple or fraction of it, see
        ``min_side`` and ``max_side``) and the colour bar.
    """
    if alpha is None:
        alpha = 0.8 if signed else 0.5
    if not 0.0 <= float(alpha) <= 1.0:
        raise BadArgument(f"alpha must be between 0 and 1, got {alpha}")
    if min_side < 1 or max_side < min_side:
        raise BadArgument(f"need 1 <= min_side <= max_side, got {min_side} and {max_side}")
    table = colormap_lut(cmap or (SIGNED_CMAP if signed else DEFAULT_CMAP))
    lo, hi = _range(heat, signed, value_range)
    img = _display(image, min_side, max_side)
    height, width = img.shape[:2]
    resized = resize_map(heat, (height, width))

    picture = np.empty((height, width, 3), np.uint8)
    scale = 255.0 / (hi - lo)
    for top in range(0, height, _BAND_ROWS):
        rows = slice(top, top + _BAND_ROWS)
        t = np.clip((resized[rows] - lo) * scale, 0.0, 255.0)
        colour = table[np.rint(t).astype(np.uint8)].astype(np.float32)
        weight: np.ndarray | float = float(alpha)
        if signed:
            zero = -lo * scale
            reach = max(zero, 255.0 - zero, 1e-6) / 2  # full opacity from half the range on
            weight = (float(alpha) * np.minimum(np.abs(t - zero) / reach, 1.0))[..., None]
        base = img[rows].astype(np.float32)
        picture[rows] = np.rint(base + (colour - base) * weight).astype(np.uint8)

    if region is not None:
        picture = draw_outline(picture, region)
    if boxes:
        picture = draw_boxes(picture, boxes, np.asarray(image).shape[:2])
    if colorbar:
        picture = np.concatenate([picture, _colour_bar(width, table, lo, hi, signed)], axis=0)
    return add_title(picture, caption) if caption else picture


# ---------------------------------------------------------------- internals


def _display(image: np.ndarray, min_side: int, max_side: int) -> np.ndarray:
    """The picture to draw on: ``(H', W', 3)`` uint8, shrunk or enlarged by an integer factor.

    Works in bands of rows, so a float32 photo of 100 megapixels needs no
    full-size temporary besides the (smaller) uint8 result.
    """
    x = np.asarray(image)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[2] not in (1, 3, 4) or x.shape[0] < 1 or x.shape[1] < 1:
        raise BadArgument(f"an image is (H, W) or (H, W, C) with C 1, 3 or 4, got shape {x.shape}")
    channels = 1 if x.shape[2] == 1 else 3
    longer = max(x.shape[:2])
    f = -(-longer // max_side) if longer > max_side else 1
    h, w = max(x.shape[0] // f, 1), max(x.shape[1] // f, 1)
    out = np.empty((h, w, channels), np.uint8)
    band = max(1, _BAND_ROWS // f)
    for top in range(0, h, band):
        rows = x[top * f:(top + band) * f, : w * f, :channels]
        if f > 1:
            rows = rows.reshape(-1, f, w, f, channels).mean(axis=(1, 3), dtype=np.float32)
        out[top:top + band] = _to_uint8(rows)
    if channels == 1:
        out = np.repeat(out, 3, axis=2)
    if longer < min_side:
        k = -(-min_side // longer)
        out = out.repeat(k, axis=0).repeat(k, axis=1)
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    return np.clip(np.rint(np.nan_to_num(x.astype(np.float32, copy=False))), 0, 255).astype(np.uint8)


def _range(heat: np.ndarray, signed: bool, value_range: tuple[float, float] | None) -> tuple[float, float]:
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise BadArgument(f"value_range must be two finite numbers, low < high; got {value_range!r}")
        return lo, hi
    if not signed:
        return 0.0, 1.0
    h = np.asarray(heat, dtype=np.float32)
    finite = h[np.isfinite(h)]
    m = float(np.abs(finite).max()) if finite.size else 0.0
    m = m if m > 0 else 1.0  # an all-zero attribution still gets a bar
    return -m, m


def _colour_bar(width: int, table: np.ndarray, lo: float, hi: float, signed: bool) -> np.ndarray:
    """A white band with the colormap as a strip and its two ends and middle labelled."""
    scale = int(np.clip(width // 140, 2, 6))
    margin = 4 * scale
    bar_h = 6 * scale + 4
    text_h = text_size("0", scale)[0] + 2 * scale
    band = np.empty((margin + bar_h + scale * 2 + text_h + margin // 2, width, 3), np.uint8)
    band[...] = _BAR_BG
    inner = max(width - 2 * margin, 1)
    ramp = np.rint(np.linspace(0, 255, inner)).astype(np.uint8)
    band[margin:margin + bar_h, margin:margin + inner] = table[ramp][None]
    mid = (lo + hi) / 2 if not signed else 0.0
    y = margin + bar_h + scale
    for value, frac in ((lo, 0.0), (mid, 0.5), (hi, 1.0)):
        text = tick_label(value) if not signed or value <= 0 else "+" + tick_label(value)
        tw = text_size(text, scale)[1] + 2 * scale
        x = margin + round(frac * (inner - 1))
        band[margin + bar_h:y, max(x - scale // 2, 0):x + max(scale // 2, 1)] = _INK  # the tick
        left = int(np.clip(x - tw // 2, 0, max(width - tw, 0)))
        stamp_digits(band, text, y, left, scale=scale, color=_INK, background=None)
    return band
