"""The report's templates: Jinja2 with autoescaping, from ``report/templates/`` (package data).

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
from functools import cache
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from .._errors import BadArgument
from ..render.html import data_uri

__all__ = ["Markup", "asset", "environment", "img", "lazy_img", "render", "table"]


@cache
def environment() -> jinja2.Environment:
    """The one Jinja2 environment of the report (autoescaping on for every template)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("convlens.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails loudly, never prints ""
        keep_trailing_newline=True,
        auto_reload=False,
    )


def render(name: str, **values: Any) -> Markup:
    """Render ``templates/<name>`` with ``values``; the result is safe HTML (``Markup``)."""
    try:
        template = environment().get_template(name)
    except jinja2.TemplateNotFound as e:  # pragma: no cover - a broken installation
        raise BadArgument(f"the report template {name} is missing from the convlens installation "
                          "(reinstall convlens)") from e
    return Markup(template.render(**values))


@cache
def asset(name: str) -> str:
    """The text of ``templates/<name>`` verbatim (the page's CSS and JavaScript)."""
    try:
        return resources.files("convlens.report").joinpath("templates", name).read_text("utf-8")
    except (FileNotFoundError, OSError) as e:  # pragma: no cover - a broken installation
        raise BadArgument(f"the report file {name} is missing from the convlens installation "
                          "(reinstall convlens)") from e


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
