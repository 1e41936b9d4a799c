"""HTML safety for the report: escaping, script-safe JSON, data URIs and the page's CSP.

Everything that reaches the page goes through one of two doors:

* HTML escaping (:func:`escape` here; the report's Jinja2 templates escape
  every value they print the same way) for text and attribute values;
* :func:`json_for_script` for data in ``<script type="application/json">``,
  which also escapes ``<``, ``>`` and ``&`` so that no value can close the
  script element or open a comment, whatever it holds.

The page is self-contained: its CSS and JavaScript are inlined and pictures
are ``data:`` URIs. A Content-Security-Policy meta (:func:`csp`) forbids every
network load and lets only the page's own style and script run (by their
SHA-256 hashes), so even an injected ``<script>`` or inline event handler
would not execute. The page itself is assembled by :mod:`convlens.report.page`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from typing import Any

__all__ = ["csp", "data_uri", "escape", "json_for_script"]

# "<", ">" and "&" as JSON escapes: "</script>" and "<!--" cannot appear inside the data block,
# and U+2028/2029 stay escaped for old parsers that treat them as line ends. (Five str.replace
# calls: str.translate with a dict is ~40x slower on the megabytes of a report.)
_JSON_UNSAFE = (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def escape(text: Any) -> str:
    """Text for HTML content or a quoted attribute value (``& < > " '`` escaped)."""
    return html.escape(str(text), quote=True)


def json_for_script(data: Any) -> str:
    """``data`` as JSON that is safe inside ``<script type="application/json">``.

    Non-finite floats become ``null`` (JSON has no NaN). ``<``, ``>`` and ``&``
    are written as ``\\u003c`` etc., which ``JSON.parse`` reads back unchanged.
    """
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:  # a NaN or inf somewhere: replace them all (the slow path)
        text = json.dumps(_finite(data), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    for unsafe, safe in _JSON_UNSAFE:
        text = text.replace(unsafe, safe)
    return text


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...``; base64 needs no escaping in attributes or JSON."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def csp(style: str, script: str) -> str:
    """The page's Content-Security-Policy: no network at all, only its own style and script.

    ``img-src data: blob:`` lets the inlined pictures and canvases show; every
    other kind of load (fetch, fonts, frames, forms, base URL) is refused.
    """
    return ("default-src 'none'; img-src data: blob:; "
            f"style-src {_sha256(style)}; script-src {_sha256(script)}; "
            "base-uri 'none'; form-action 'none'")
