"""HTML for the report: escaping, data URIs and the one-file page writer.

Everything that reaches the page goes through one of two doors:

* :func:`escape` for text and attribute values in the HTML itself;
* :func:`json_for_script` for data in ``<script type="application/json">``,
  which also escapes ``<``, ``>`` and ``&`` so that no value can close the
  script element or open a comment, whatever it holds.

The page is self-contained: its CSS and JavaScript are inlined from
``render/templates/`` and pictures are ``data:`` URIs. A Content-Security-Policy
meta forbids every network load and lets only the page's own style and script
run (by their SHA-256 hashes), so even an injected ``<script>`` or inline event
handler would not execute.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any

from .._errors import BadArgument
from .png import atomic_write_bytes

__all__ = ["attr", "csp", "data_uri", "escape", "json_for_script", "lazy_img", "render_page",
           "table", "template", "write_page"]

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# "<", ">" and "&" as JSON escapes: "</script>" and "<!--" cannot appear inside the data block,
# and U+2028/2029 stay escaped for old parsers that treat them as line ends. (Five str.replace
# calls: str.translate with a dict is ~40x slower on the megabytes of a report.)
_JSON_UNSAFE = (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def escape(text: Any) -> str:
    """Text for HTML content or a quoted attribute value (``& < > " '`` escaped)."""
    return html.escape(str(text), quote=True)


def attr(name: str, value: Any) -> str:
    """`` name="value"`` with the value escaped (leading space included)."""
    return f' {name}="{escape(value)}"'


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


def lazy_img(data: bytes, alt: str, *, mime: str = "image/png", cls: str = "") -> str:
    """An ``<img>`` whose picture is set by the page script when it scrolls into view.

    The bytes sit in ``data-src`` until then, so a long report opens without
    decoding every picture below the fold.
    """
    classes = " ".join(c for c in ("cl-lazy", cls) if c)
    return (f'<img{attr("class", classes)}{attr("alt", alt)}'
            f' data-src="{data_uri(data, mime)}" loading="lazy" decoding="async">')


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "cl-sortable",
          numeric: Sequence[bool] | None = None, row_attrs: Iterable[str] | None = None,
          id: str | None = None) -> str:
    """A sortable ``<table>``: every cell escaped; numeric columns sort by number.

    Args:
        head: column titles.
        rows: cells, any objects (``str()``-ed and escaped). A ``(text, key)``
            tuple shows ``text`` and sorts by ``key``.
        numeric: per column, whether it sorts as numbers.
        row_attrs: per row, extra attribute text (already escaped, e.g. from :func:`attr`).
        id: the table's id, if any.
    """
    numeric = list(numeric) if numeric is not None else [False] * len(head)
    ths = "".join(f'<th{attr("data-type", "num" if numeric[i] else "text")} tabindex="0">{escape(h)}</th>'
                  for i, h in enumerate(head))
    extra = iter(row_attrs) if row_attrs is not None else None
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if isinstance(cell, tuple):
                text, key = cell
                cells.append(f'<td{attr("data-key", key)}>{escape(text)}</td>')
            else:
                cells.append(f'<td{" class=num" if numeric[i] else ""}>{escape(cell)}</td>')
        body.append(f"<tr{next(extra) if extra is not None else ''}>{''.join(cells)}</tr>")
    ident = attr("id", id) if id else ""
    return (f'<table{attr("class", cls)}{ident}><thead><tr>{ths}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


@cache
def template(name: str) -> str:
    """The text of ``render/templates/<name>`` (package data)."""
    try:
        return resources.files("convlens.render").joinpath("templates", name).read_text("utf-8")
    except (FileNotFoundError, OSError) as e:  # pragma: no cover - a broken installation
        raise BadArgument(f"the report template {name} is missing from the convlens installation "
                          "(reinstall convlens)") from e


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


def render_page(*, title: str, body: str, data: Any, header: str = "") -> str:
    """The whole report page as one HTML string.

    Args:
        title: the document title (escaped here).
        body: HTML of the sections (already escaped by whoever built it).
        data: JSON-ready data for the page script (escaped here).
        header: HTML of the header bar (already escaped).

    Returns:
        The page; its ``{{...}}`` placeholders are filled in one pass, so text
        inside the values is never taken for a placeholder.
    """
    style = template("report.css")
    script = template("report.js")
    if "</script" in script.lower() or "</style" in style.lower():  # pragma: no cover - our own files
        raise BadArgument("report templates must not close their own element")
    values = {
        "title": escape(title),
        "csp": escape(csp(style, script)),
        "style": style,
        "script": script,
        "header": header,
        "body": body,
        "data": json_for_script(data),
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template("report.html"))


def write_page(path: str | os.PathLike[str], page: str) -> None:
    """Write the page atomically (a failed run leaves no file, an old one stays whole)."""
    atomic_write_bytes(path, page.encode("utf-8"))
