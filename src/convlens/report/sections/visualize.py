"""Feature visualisation in the report: for one layer, each channel's image beside its feature maps.

Not part of a default report (it optimises an image per channel: seconds to
minutes); ask for it with ``--sections ...,visualize``. Options, in
``section_options["visualize"]`` (the CLI's ``--visualize-layer``,
``--visualize-channels`` and ``--visualize-steps``):

* ``layer``: the layer (default the last selected conv layer with a map);
* ``channels``: as :func:`convlens.visualize.parse_channels` (default the first 16);
* ``steps``: optimisation steps (default :data:`REPORT_STEPS`, quicker than
  ``convlens visualize``'s 512);
* any other :func:`convlens.visualize.visualize` option (``seed``, ``size``,
  ``objective``, ``negative``, ...).

Each channel shows the image that maximises its mean, then the channel's map
for each report image (colormap and per-channel min-max stretch), so what the
channel looks for sits beside where it found it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...core.layers import LayerInfo
from ...core.normalize import normalize_channels
from ...methods import gradients_problem
from ...passes import call_model
from ...render.colormap import apply_lut
from ...render.colormap import lut as colormap_lut
from ...render.png import encode_png
from ...visualize import visualize
from ..context import ReportContext
from ..registry import register_section
from ..templating import Markup, lazy_img, render

__all__ = ["REPORT_CHANNELS", "REPORT_STEPS", "visualize_section"]

#: Steps and channels the section optimises unless told otherwise.
REPORT_STEPS = 128
REPORT_CHANNELS = 16
#: Report images whose maps are shown beside each visualisation.
MAX_IMAGES = 4


def _default_layer(layers: list[LayerInfo]) -> LayerInfo | None:
    maps = [i for i in layers if i.output_shape is not None and len(i.output_shape) == 3]
    convs = [i for i in maps if i.kind == "conv"]
    candidates = convs or maps
    return candidates[-1] if candidates else None


@register_section("visualize", "Feature visualisation", order=55, default=False)
def visualize_section(ctx: ReportContext) -> Markup | None:
    """Optimise one image per channel of the chosen layer; show them beside the layer's maps."""
    options: dict[str, Any] = dict(ctx.section_options.get("visualize", {}))
    problem = gradients_problem(ctx.model.adapter, "feature visualisation", alternatives=False)
    if problem is not None:
        return render("sections/visualize.html", note=problem, figures=[], how="")
    layer = options.pop("layer", None)
    if layer is None:
        info = _default_layer(ctx.layers)
        if info is None:
            return render("sections/visualize.html", figures=[], how="",
                          note="none of the selected layers has a map to visualise; choose one with "
                               "--visualize-layer")
        layer = info.name
    options.setdefault("steps", REPORT_STEPS)
    channels = options.pop("channels", None)
    if channels is None:
        channels = f"0-{REPORT_CHANNELS - 1}"
        table = {i.name: i for i in ctx.model.layers()}
        found = table.get(str(layer))
        if found is not None and found.output_shape and found.output_shape[-1]:
            channels = f"0-{min(REPORT_CHANNELS, int(found.output_shape[-1])) - 1}"
    if options.get("preprocess") is None:
        options["preprocess"] = ctx.model.preprocess
    vis = visualize(ctx.model.adapter, layer, channels, **options)
    ctx.shared["visualize"] = vis  # the dataset section shows these beside its crops
    info = vis.layer
    if info is None:  # objective="class": no layer, so no maps to set beside the images
        return render("sections/visualize.html", figures=[], how="",
                      note="the report's visualisation shows a layer's channels; use the channel or "
                           "neuron objective")
    maps = _maps(ctx, info)
    lut = colormap_lut(ctx.options.cmap)
    figures = []
    for i, channel in enumerate(vis.channels):
        pictures = [lazy_img(encode_png(vis.picture(i)), f"channel {channel}: the image it likes most",
                             cls="cl-pixelated")]
        for name, acts in maps:
            plane = acts[..., channel][None]
            indices, _ = normalize_channels(plane, "minmax")
            pictures.append(lazy_img(encode_png(apply_lut(indices[0], lut)),
                                     f"channel {channel} for {name}", cls="cl-pixelated"))
        means = ", ".join(f"{float(acts[..., channel].mean()):.3g}" for _, acts in maps)
        figures.append({"pictures": pictures,
                        "caption": f"{channel}: reached {float(vis.activations[i]):.3g}; "
                                   f"mean for the image{'s' if len(maps) > 1 else ''} {means}"})
    how = (f"{info.index} {info.name}: each channel's image (Lucid's method, {vis.settings['steps']} steps, "
           f"{vis.settings['size']} px, seed {vis.settings['seed']}), then its map for "
           + ", ".join(name for name, _ in maps)
           + f" ({ctx.options.cmap}, each stretched from its minimum to its maximum). "
           "convlens visualize MODEL --layer L writes full-length runs.")
    return render("sections/visualize.html", figures=figures, how=how, note="")


def _maps(ctx: ReportContext, info: LayerInfo) -> list[tuple[str, np.ndarray]]:
    """The layer's ``(H, W, C)`` output for each of the first report images."""
    out: list[tuple[str, np.ndarray]] = []
    for image, x in list(zip(ctx.images, ctx.inputs))[:MAX_IMAGES]:
        got: dict[int, np.ndarray] = {}
        call_model(ctx.model, x[None], [info.index], got.__setitem__)
        if info.index in got:
            out.append((image.name, got[info.index][0]))
    return out
