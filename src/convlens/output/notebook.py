"""What results show inline in Jupyter (``_repr_html_``): a PNG figure with its caption, preformatted text.

Every caption and alternative text is HTML-escaped here, so a result's
``_repr_html_`` never needs to remember to; the picture itself is a
``data:`` URI, so the notebook stays one file.
"""

from __future__ import annotations

import html

import numpy as np

from ..render.html import data_uri
from ..render.png import encode_png

__all__ = ["png_figure_html", "pre_html"]


def png_figure_html(picture: np.ndarray | bytes, caption: str, *, alt: str | None = None,
                    max_width: str = "100%", pixelated: bool = True, inline: bool = False) -> str:
    """A ``<figure>`` holding one PNG (inline, as a ``data:`` URI) and its caption.

    Args:
        picture: ``(H, W, 3)`` uint8 RGB, or the bytes of a PNG file.
        caption: plain text under the picture (escaped).
        alt: the picture's alternative text (escaped); default the caption.
        max_width: the CSS ``max-width`` of the picture, e.g. ``"100%"`` or ``"512px"``.
        pixelated: enlarge without smoothing (grids of small maps); ``False`` for photos.
        inline: figures side by side (``display:inline-block``) rather than one per row.

    Returns:
        HTML text.
    """
    data = picture if isinstance(picture, (bytes, bytearray)) else encode_png(np.asarray(picture))
    box = "display:inline-block;margin:0 8px 12px 0" if inline else "margin:0 0 12px 0"
    style = f"max-width:{max_width}" + (";image-rendering:pixelated" if pixelated else "")
    text = caption if alt is None else alt
    return (f"<figure style='{html.escape(box, quote=True)}'><img src='{data_uri(bytes(data))}' "
            f"alt='{html.escape(text, quote=True)}' style='{html.escape(style, quote=True)}'/>"
            f"<figcaption style='font:12px monospace'>{html.escape(caption)}</figcaption></figure>")


def pre_html(text: str) -> str:
    """Preformatted text (a table printed in columns) as HTML, escaped."""
    return f"<pre style='font-size:12px'>{html.escape(text)}</pre>"
