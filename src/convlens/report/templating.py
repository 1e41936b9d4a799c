"""The report's templates: ``report/templates/`` (package data) in the one Jinja2 environment.

The environment is :mod:`convlens.output.templates`'s (autoescaping on, shared
with the timeline page); this module names the report's templates and adds
the report's own pieces.

Every value a template prints is HTML-escaped unless it is ``Markup`` (HTML
that a template or one of the helpers below made). Sections render their own
template (``templates/sections/<key>.html``) with :func:`render`; the helpers
cover the pieces several sections share: sortable tables, pictures, lazily
loaded pictures.

The page's CSS and JavaScript are not templates: :func:`asset` reads them
verbatim, so that the hashes in the Content-Security-Policy are the hashes
of exactly the text on the page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..output.templates import Markup, environment
from ..output.templates import asset as shared_asset
from ..output.templates import render as render_template
from ..render.html import data_uri

__all__ = ["Markup", "asset", "environment", "img", "lazy_img", "render", "table"]


def render(name: str, **values: Any) -> Markup:
    """Render ``report/templates/<name>`` with ``values`` in the shared environment; safe HTML (``Markup``)."""
    return render_template(f"report/{name}", **values)


def asset(name: str) -> str:
    """The text of ``report/templates/<name>`` verbatim (the page's CSS and JavaScript)."""
    return shared_asset(f"report/{name}")


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "cl-sortable",
          numeric: Sequence[bool] | None = None,
          row_attrs: Iterable[Mapping[str, Any] | None] | None = None, id: str | None = None) -> Markup:
    """A sortable ``<table>``: every cell escaped; numeric columns sort by number.

    Args:
        head: column titles.
        rows: cells, any objects (``str()``-ed and escaped). A ``(text, key)``
            tuple shows ``text`` and sorts by ``key``.
        numeric: per column, whether it sorts as numbers.
        row_attrs: per row, attributes of its ``<tr>`` (escaped), or ``None``.
        id: the table's id, if any.
    """
    numeric = list(numeric) if numeric is not None else [False] * len(head)
    body = []
    extra = iter(row_attrs) if row_attrs is not None else None
    for row in rows:
        cells = [(c[0], c[1], False) if isinstance(c, tuple) else (c, None, numeric[i])
                 for i, c in enumerate(row)]
        body.append((next(extra) if extra is not None else None, cells))
    return render("table.html", cls=cls, id=id, head=list(zip(head, numeric)), rows=body)


def img(data: bytes, mime: str, alt: str, cls: str = "") -> Markup:
    """An ``<img>`` with the picture inline as a ``data:`` URI."""
    return render("img.html", cls=cls, alt=alt, src=data_uri(data, mime))


def lazy_img(data: bytes, alt: str, *, mime: str = "image/png", cls: str = "") -> Markup:
    """An ``<img>`` whose picture is set by the page script when it scrolls into view.

    The bytes sit in ``data-src`` until then, so a long report opens without
    decoding every picture below the fold.
    """
    classes = " ".join(c for c in ("cl-lazy", cls) if c)
    return render("lazy_img.html", cls=classes, alt=alt, src=data_uri(data, mime))
