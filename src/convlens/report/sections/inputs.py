"""Images: each input as given and as the network sees it."""

from __future__ import annotations

import io

import numpy as np

from ...core.normalize import finite_range
from ...core.text import shape_text
from ...render.png import encode_png
from ..context import ReportContext
from ..registry import register_section
from ..templating import Markup, img, render

__all__ = ["inputs_section"]

#: Longest side of both pictures of each input, as given and as seen (display only).
PREVIEW_SIDE = 384


@register_section("inputs", "Images", order=10)
def inputs_section(ctx: ReportContext) -> Markup:
    """One card per image: the picture as given and the network's input, stretched to be seen."""
    cards = []
    bgr = ctx.preprocess == "caffe"
    for im, x in zip(ctx.images, ctx.inputs):
        small_preview = preview(im.pixels)
        given, mime = jpeg_or_png(small_preview)
        small = "cl-pixelated" if max(small_preview.shape[:2]) < 224 else ""  # enlarged by CSS: keep pixels sharp
        seen, lo, hi = as_seen(x)
        # A model that takes any size sees the photo whole: a 12-megapixel PNG would be most of the page.
        seen_png = encode_png(preview(seen if seen.ndim == 3 else seen[..., None]))
        w, h = im.original_size
        cards.append({
            "name": im.name,
            "given": img(given, mime, f"{im.name} as given", small),
            "given_caption": f"{w}×{h} ({im.mode})",
            "seen": img(seen_png, "image/png", f"{im.name} as the network sees it", "cl-pixelated"),
            "shape": shape_text(x.shape, times=True),
            "range": f"{lo:.4g} … {hi:.4g}",
            "order": (" Channels in the network's order (BGR), so colours look swapped."
                      if bgr and x.shape[2] == 3 else ""),
        })
    return render("sections/inputs.html", cards=cards, preprocess=ctx.preprocess)


def jpeg_or_png(rgb: np.ndarray) -> tuple[bytes, str]:
    """Photos as JPEG (a tenth of the bytes), anything else as PNG."""
    from PIL import Image as PILImage

    if rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 64:
        buf = io.BytesIO()
        PILImage.fromarray(rgb).save(buf, "JPEG", quality=90)
        return buf.getvalue(), "image/jpeg"
    return encode_png(rgb), "image/png"


def preview(pixels: np.ndarray) -> np.ndarray:
    """An ``(H, W, C)`` 0..255 float image as uint8, its longer side at most :data:`PREVIEW_SIDE`."""
    from PIL import Image as PILImage

    a = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    a = a[..., 0] if a.shape[2] == 1 else a
    h, w = a.shape[:2]
    if max(h, w) > PREVIEW_SIDE:
        f = PREVIEW_SIDE / max(h, w)
        a = np.asarray(PILImage.fromarray(a).resize((max(1, round(w * f)), max(1, round(h * f))),
                                                    PILImage.Resampling.LANCZOS))
    return a


def as_seen(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The network's input, one min-max stretch over all channels (channel balance kept)."""
    lo, hi = finite_range(x)
    span = hi - lo
    y = np.zeros(x.shape, np.float32) if span <= 0 else (np.nan_to_num(x, nan=lo) - lo) * (255.0 / span)
    y = np.clip(np.round(y), 0, 255).astype(np.uint8)
    return (y[..., 0] if y.shape[2] == 1 else y), lo, hi
