"""Heatmaps: where the network looks when it decides, per image, for its top classes.

For each image, its top classes (3 by default) under the default method
(Grad-CAM when the model gives gradients, Score-CAM otherwise); every other
computed method is one click away (a button group; the page script shows one
method at a time). Each picture is the map blended on the image as given
(:func:`convlens.render.overlay.overlay`) with its colour bar; the caption,
in HTML, names the class and its probability.

Options (``section_options={"heatmaps": {...}}``, or ``convlens report
--heatmap-methods``):

* ``methods``: method names (a list or ``"gradcam,scorecam"``), the first
  shown first; default Grad-CAM, or Score-CAM for a model without gradients.
  Methods asked for by name must work (a gradient method on TFLite fails the
  report); the defaults leave a note instead when the model cannot run them.
* ``top``: classes per image (default 3).
* ``layer``: the CAM layer (default: the output of the last conv layer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._errors import BadArgument, ConvlensError
from ...core.text import probability as probability_text
from ...heatmaps import Heatmap, compute_heatmaps, create_methods, parse_methods
from ...images import PreparedBatch
from ...methods import GradientCam, RecordedForward, get, resolve_layer
from ...render.overlay import overlay
from ...render.png import encode_png
from ..context import ReportContext
from ..registry import register_section
from ..templating import Markup, lazy_img, render
from .inputs import jpeg_or_png
from .predictions import output_classes

if TYPE_CHECKING:  # pragma: no cover
    from ...model import Model

__all__ = ["OPTIONS", "default_methods", "heatmaps_section", "recorded_forward"]

#: The options the section reads from ``ctx.section_options["heatmaps"]``.
OPTIONS = ("methods", "top", "layer")
_SIDE = 320  # longest side of each picture on the page (the image as given is shrunk to fit)


def default_methods(ctx: ReportContext) -> list[str]:
    """Grad-CAM when the model gives gradients, else Score-CAM.

    One method by default: Grad-CAM costs about one forward pass per image
    (its three classes share it), so a report stays about as fast as without
    the section; more methods are asked for by name.
    """
    return ["gradcam"] if ctx.model.adapter.gradients_unavailable() is None else ["scorecam"]


def recorded_forward(model: Model, options: Mapping[str, Any]) -> RecordedForward | None:
    """The report's forward pass when it can serve this section's gradient CAMs too, else ``None``.

    When the section will run a gradient CAM (Grad-CAM by default on a model
    with gradients) on a classifier, the report's one pass records the CAM
    layer's output and the gradients of each image's top classes
    (:class:`~convlens.methods.RecordedForward`), and the section computes the
    maps from them: no pass of its own. ``None`` (the plain forward pass) for
    anything else, including options the section will refuse (it says so then).

    Args:
        model: the model.
        options: the section's options (``section_options["heatmaps"]``).
    """
    try:
        asked = options.get("methods")
        names = parse_methods(asked) if asked else (
            ["gradcam"] if model.adapter.gradients_unavailable() is None else [])
        classes = model.output_classes()
        if classes is None or not any(issubclass(get(n), GradientCam) for n in names):
            return None
        layer = resolve_layer(model.adapter.layers(), options.get("layer"))
        top = int(options.get("top", 3))
    except (ConvlensError, TypeError, ValueError):
        return None
    if not 1 <= top <= 10:
        return None
    forward = RecordedForward(model.adapter, layer, min(top, classes))
    return forward if forward.unavailable is None else None


@register_section("heatmaps", "Heatmaps", order=45)
def heatmaps_section(ctx: ReportContext) -> Markup:
    """One card per image: its top classes under each method, one method shown at a time."""
    options = dict(ctx.section_options.get("heatmaps", {}))
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise BadArgument(f"unknown heatmaps option {', '.join(map(repr, unknown))}; the section takes "
                          f"{', '.join(OPTIONS)}")
    asked = options.get("methods")
    names = parse_methods(asked) if asked else default_methods(ctx)
    top = int(options.get("top", 3))
    if output_classes(ctx.model, ctx.outputs) is None:
        return render("sections/heatmaps.html", note=(
            f"{ctx.model.name} does not output one score per class, so there are no top classes to explain; "
            "convlens heatmap MODEL IMAGE --class C draws the heatmap of a class."), methods=[], cards=[])
    try:
        made = create_methods(names, {})
        result = compute_heatmaps(ctx.model, PreparedBatch(ctx.images, ctx.inputs, []), made,
                                  layer=options.get("layer"), top=min(top, int(ctx.outputs[0].shape[1])),
                                  class_names=ctx.labels, preprocess=ctx.preprocess, outputs=ctx.outputs,
                                  recorded=ctx.recorded)
    except ConvlensError as exc:
        if asked:
            raise
        return render("sections/heatmaps.html", note=f"No heatmaps: {exc}", methods=[], cards=[])
    layer = next((e.layer for e in result.entries if e.layer), None)
    cards = []
    for i, im in enumerate(result.images):
        sets = []
        for name in result.methods:
            mine = [e for e in result.entries if e.image == i and e.method == name]
            sets.append({"key": name, "figures": [_figure(im.pixels, rank, e) for rank, e in enumerate(mine, 1)]})
        cards.append({"name": im.name, "sets": sets})
    methods = [{"key": n, "title": result.titles[n]} for n in result.methods]
    return render("sections/heatmaps.html", note="", methods=methods, cards=cards, top=top,
                  default=methods[0]["title"], layer=layer)


def _figure(pixels: Any, rank: int, e: Heatmap) -> dict[str, Any]:
    rgb = overlay(pixels, e.map, signed=e.signed, value_range=(-1.0, 1.0) if e.signed else (0.0, 1.0),
                  min_side=192, max_side=_SIDE)
    # a small image (a digit) is enlarged with sharp pixels, which JPEG would smear: PNG then
    data, mime = (encode_png(rgb), "image/png") if max(np.shape(pixels)[:2]) < 224 else jpeg_or_png(rgb)
    if e.probability is not None:
        score = f"p {probability_text(e.probability)}"
    else:
        score = f"score {e.score:.4g}"
    caption = f"{rank}. {e.label} ({e.class_index}) · {score}" + (" · no signal" if e.flat else "")
    return {"img": lazy_img(data, f"{e.title} heatmap of {e.label}", mime=mime), "caption": caption}
