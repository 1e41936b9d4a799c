"""Channel health: a summary line per layer and a sortable table; a row opens its channels."""

from __future__ import annotations

from typing import Any

from ...core.text import number, percent, sort_key
from ..context import ReportContext
from ..registry import register_section
from ..templating import Markup, render, table

__all__ = ["stats_section"]

_HEAD = ["#", "layer", "type", "channels", "dead", "constant", "NaN/inf", "mean", "std", "max", "zeros"]
_NUMERIC = [True, False, False, True, True, True, True, True, True, True, True]


def _cell(v: float) -> tuple[str, str]:
    return number(v), sort_key(v)


@register_section("stats", "Channel health", order=50)
def stats_section(ctx: ReportContext) -> Markup:
    """Statistics over every image: the summary lines, the per-layer table, the channel table's frame."""
    n = len(ctx.images)
    rows: list[list[Any]] = []
    for s in ctx.stats:
        rows.append([
            s.index, s.name, s.type, s.channels, int(s.dead.sum()), int(s.notable.constant.sum()),
            int(s.nonfinite.sum()), _cell(s.layer_mean()), _cell(s.layer_std()), _cell(s.layer_max()),
            (percent(s.mean_zero_fraction()), sort_key(s.mean_zero_fraction())),
        ])
    attrs = [{"class": "cl-stats-row", "data-stats": pos, "tabindex": "0"} for pos in range(len(ctx.stats))]
    return render("sections/stats.html", over="this image" if n == 1 else f"the {n} images together",
                  summaries=[(s.summary(), s.flagged) for s in ctx.stats],
                  table=table(_HEAD, rows, numeric=_NUMERIC, row_attrs=attrs, id="cl-stats-layers"))
