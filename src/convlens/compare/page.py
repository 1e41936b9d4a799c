"""``compare.html``: one self-contained page (no script, no network), rendered with Jinja2 (autoescape).

Rendered in the one Jinja2 environment of :mod:`convlens.output.templates`
(autoescaping, strict undefined), as the report and the timeline page are.
The page's only style is inline and allowed by its hash in the
Content-Security-Policy, which refuses every load but ``data:`` pictures.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from markupsafe import Markup

from .._version import __version__
from ..output.templates import asset, render
from ..render.chart import line_chart
from ..render.html import csp, data_uri

__all__ = ["render_page"]


@cache
def _style() -> str:
    return asset("compare/compare.css")


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, float) and v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def render_page(result: Any) -> str:
    """The HTML text of a :class:`~convlens.compare.result.Comparison`'s page (the result renders itself
    through this function; it is not imported here, so that the two modules form no cycle)."""
    style = _style()
    script = ""
    growth = None
    errors = [p.rel_error for p in result.pairs]
    if any(e is not None and e > 0 for e in errors):
        chart = line_chart(list(range(len(result.pairs))), {"relative error": errors}, title="error growth",
                           x_label="layer pair (network order)", y_label="relative error", log=True,
                           threshold=result.tolerance if result.metric == "rel" else None)
        growth = Markup(chart.svg)
    pictures = {name: data_uri(png) for name, png in result.pictures.items()}
    return str(render(
        "compare/compare.html",
        r=result, case_text=result.case_text, num=_num, growth=growth, pictures=pictures,
        csp=csp(style, script), style=Markup(style), version=__version__,
        best=result.cka_matrix.best_match() if result.cka_matrix is not None else [],
    ))
