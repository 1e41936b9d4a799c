"""Feature maps: one grid per layer and image (drawn by the pass, see :mod:`convlens.report.grids`).

The grids themselves travel in the page script's data; this section is the
layer list, the panel they are shown in and the legend. A tile opens its
channel in the viewer, arrows step through channels and layers.
"""

from __future__ import annotations

from ...core.text import shape_text
from ..context import ReportContext
from ..registry import register_section
from ..templating import Markup, render

__all__ = ["maps_section"]

_HOW = {"standardize": "each channel standardised ((x − mean) / std · 64 + 128, as the tutorials do)",
        "minmax": "each channel stretched from its minimum to its maximum",
        "layer": "one scale per layer, so its channels compare",
        "global": "one scale over every drawn layer"}


@register_section("maps", "Feature maps", order=40)
def maps_section(ctx: ReportContext) -> Markup:
    """The layer list and the map panel."""
    layers = [{"name": info.name, "meta": f"{shape_text(info.output_shape, times=True)} · {info.type}",
               "flagged": s.flagged, "channels": s.channels}
              for info, s in zip(ctx.layers, ctx.stats)]
    grid_layers = sum(1 for i in ctx.layers if ctx.drawn[i.index][0].layout == "grid")
    hint = ("Click a tile to open that channel; in the viewer ← → step through channels, ↑ ↓ through "
            "layers, Esc closes." if grid_layers else "")
    return render("sections/maps.html", cmap=ctx.options.cmap, how=_HOW[ctx.options.norm], hint=hint,
                  layers=layers)
