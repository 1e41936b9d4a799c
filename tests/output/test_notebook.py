"""``png_figure_html``: the notebook picture, escaped; and ``pre_html``."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from convlens.output import png_figure_html, pre_html
from convlens.render.png import encode_png

EVIL = "<img src=x onerror=alert(1)> 'quoted' \"double\" & more"


def _picture(page: str) -> np.ndarray:
    data = re.search(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page).group(1)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def test_the_caption_and_alt_text_are_escaped() -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    page = png_figure_html(rgb, EVIL)
    assert "<img src=x" not in page and "onerror=alert(1)>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&amp; more" in page
    assert page.count("<img ") == 1 and page.count("<figcaption") == 1
    # in the single-quoted alt attribute the quotes are entities: the attribute cannot be closed
    alt = re.search(r"alt='([^']*)'", page).group(1)
    assert "&#x27;quoted&#x27;" in alt and "&quot;double&quot;" in alt
    other = png_figure_html(rgb, "caption", alt=EVIL)
    assert "onerror=alert(1)>" not in other and "&lt;img" in re.search(r"alt='([^']*)'", other).group(1)


def test_an_array_or_png_bytes_give_the_same_picture() -> None:
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    from_array = png_figure_html(rgb, "c")
    from_bytes = png_figure_html(encode_png(rgb), "c")
    assert from_array == from_bytes
    assert np.array_equal(_picture(from_array), rgb)


def test_style_options() -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    assert "image-rendering:pixelated" in png_figure_html(rgb, "c")
    photo = png_figure_html(rgb, "c", pixelated=False, max_width="512px", inline=True)
    assert "pixelated" not in photo and "max-width:512px" in photo and "inline-block" in photo
    assert "&lt;" in png_figure_html(rgb, "c", max_width="<x>")


def test_pre_html_escapes() -> None:
    assert pre_html("a <b> & c") == "<pre style='font-size:12px'>a &lt;b&gt; &amp; c</pre>"
