"""Layers: the whole layer table, with receptive fields; drawn layers link to their maps."""

from __future__ import annotations

from typing import Any

from ...core.layers import LayerInfo
from ...core.text import pair_text, shape_text
from ..context import ReportContext
from ..registry import register_section
from ..templating import Markup, render, table

__all__ = ["layers_section"]

_HEAD = ["#", "name", "type", "kind", "output", "params", "kernel (O, I, kh, kw)", "stride",
         "receptive field", "jump"]
_NUMERIC = [True, False, False, False, False, True, False, False, True, False]


@register_section("layers", "Layers", order=30)
def layers_section(ctx: ReportContext) -> Markup:
    """Every layer of the model (not only the selected ones), sortable."""
    maps = "maps" in ctx.sections  # rows link to the maps only when they are there
    position = {info.index: pos for pos, info in enumerate(ctx.layers)} if maps else {}
    all_layers = ctx.model.layers()
    rows: list[list[Any]] = []
    attrs: list[dict[str, Any] | None] = []
    for info in all_layers:
        rf, jump = _rf_cells(info)
        rf_key = 1e9 if info.global_rf else (info.rf_size[0] * info.rf_size[1] if info.rf_size else -1)
        rows.append([
            info.index, info.name, info.type, info.kind, shape_text(info.output_shape, times=True),
            (f"{info.params:,}", info.params),
            shape_text(info.kernel_shape, times=True) if info.kernel_shape else "-",
            pair_text(info.stride, times="×"), (rf, rf_key),
            jump,
        ])
        pos = position.get(info.index)
        attrs.append({"class": "cl-goto", "data-goto": pos, "tabindex": "0", "title": "show its feature maps"}
                     if pos is not None else None)
    return render("sections/layers.html", n=len(all_layers), total=f"{sum(i.params for i in all_layers):,}",
                  maps=maps, table=table(_HEAD, rows, numeric=_NUMERIC, row_attrs=attrs))


def _rf_cells(info: LayerInfo) -> tuple[str, str]:
    """Receptive field and jump: ``all``/``-`` for global layers, ``?``/``?`` where the model does not say."""
    if info.global_rf:
        return "all", "-"
    if info.rf_size is None or info.rf_jump is None:
        return "?", "?"
    return pair_text(info.rf_size, times="×"), pair_text(info.rf_jump, times="×")
