"""Filters: the atlases of the selected conv layers (first filters x first inputs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..._errors import ConvlensError
from ...core.layers import LayerInfo
from ...core.text import shape_text
from ...render.colormap import lut as colormap_lut
from ...render.filters import filter_grid, first_layer_composites
from ...render.png import encode_png
from ..context import FilterAtlas, ReportContext
from ..registry import register_section
from ..templating import Markup, lazy_img, render

if TYPE_CHECKING:  # pragma: no cover
    from ...model import Model

__all__ = ["REPORT_FILTERS", "REPORT_INPUTS", "draw_atlases", "filters_section", "read_kernels"]

#: Filter atlases in the report: first filters x first inputs (``save_filters`` draws 64 x 16).
REPORT_FILTERS = 32
REPORT_INPUTS = 8


def read_kernels(model: Model, layers: Sequence[LayerInfo]) -> dict[int, np.ndarray | ConvlensError]:
    """The kernels of the selected conv layers (or why one cannot be read), on the caller's thread."""
    out: dict[int, np.ndarray | ConvlensError] = {}
    for info in layers:
        if info.has_kernels:
            try:
                out[info.index] = model.adapter.kernels(info.index)
            except ConvlensError as e:
                out[info.index] = e
    return out


def draw_atlases(layers: Sequence[LayerInfo], kernels: dict[int, np.ndarray | ConvlensError]) -> list[FilterAtlas]:
    """Per conv layer its filter pictures as PNG. Pure numpy and PNG work (runs on a side thread)."""
    lut = colormap_lut("gray")
    atlases = []
    for info in layers:
        k = kernels.get(info.index)
        if k is None:
            continue
        if isinstance(k, ConvlensError):
            atlases.append(FilterAtlas(info, error=str(k)))
            continue
        shown_f, shown_i = min(REPORT_FILTERS, k.shape[0]), min(REPORT_INPUTS, k.shape[1])
        cap = f"{info.index} {info.name} · kernel {shape_text(k.shape, times=True)} (filters, inputs, kh, kw)"
        if shown_f < k.shape[0] or shown_i < k.shape[1]:
            cap += f" · filters 0-{shown_f - 1}, inputs 0-{shown_i - 1}"
        pictures = []
        if k.shape[1] in (1, 3):  # a first layer: each filter as one picture, per-filter 0-1
            pictures.append((encode_png(first_layer_composites(k, REPORT_FILTERS)),
                             f"{info.name} filters as pictures", "cl-pixelated"))
        grid = filter_grid(k, lut, max_filters=REPORT_FILTERS, max_inputs=REPORT_INPUTS)
        pictures.append((encode_png(grid), f"{info.name} filters x inputs", ""))
        atlases.append(FilterAtlas(info, pictures=pictures, caption=cap))
    return atlases


@register_section("filters", "Filters", order=60)
def filters_section(ctx: ReportContext) -> Markup | None:
    """The atlases drawn beside the forward passes (or now, when built on their own)."""
    pending = ctx.atlases
    atlases = pending.result() if pending is not None else draw_atlases(ctx.layers, read_kernels(ctx.model, ctx.layers))
    if not atlases:
        return None
    figures = [{"name": a.layer.name, "error": a.error, "caption": a.caption,
                "pictures": [lazy_img(png, alt, cls=cls) for png, alt, cls in a.pictures]} for a in atlases]
    return render("sections/filters.html", figures=figures)
