"""``evaluate.html`` and the report section's body: rendered with Jinja2 (autoescape), pictures inline."""

from __future__ import annotations

from functools import cache
from typing import Any

from markupsafe import Markup

from .._version import __version__
from ..output.templates import asset, render
from ..render.html import csp, data_uri

__all__ = ["render_body", "render_page"]


@cache
def _style() -> str:
    # the compare page's tables, notes and charts, plus the verdict rows and strips of this one
    return asset("compare/compare.css") + asset("evaluate/evaluate.css")


def _values(result: Any) -> dict[str, Any]:
    rows = result.ranking()
    labels, values = result.table(rows)
    best = next((r for r in rows if not r["fails"]), None)
    pictures = {name: data_uri(png) for name, png in result.pictures().items()}
    return {"e": result, "rows": rows, "labels": labels, "values": values, "best": best,
            "pictures": pictures}


def render_body(result: Any) -> Markup:
    """The table, verdicts, strips and curves, as HTML (the report section embeds it)."""
    return render("evaluate/body.html", **_values(result))


def render_page(result: Any) -> str:
    """The self-contained page of an :class:`~convlens.evaluate.result.Evaluation`."""
    style = _style()
    return str(render("evaluate/evaluate.html", **_values(result), csp=csp(style, ""), style=Markup(style),
                      version=__version__))
