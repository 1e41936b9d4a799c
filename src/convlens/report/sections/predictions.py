"""Predictions: the top classes of a classifier, per image (softmax when the outputs are not probabilities)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...core.predictions import to_probabilities
from ...core.text import probability as probability_text
from ...core.text import shape_text
from ...model import Model
from ..context import ReportContext
from ..registry import register_section
from ..templating import Markup, render

__all__ = ["TOP_K", "output_classes", "predictions_section"]

TOP_K = 5


def output_classes(model: Model, outputs: Sequence[np.ndarray]) -> int | None:
    """K when every output is ``(1, K)`` of class scores (:meth:`Model.output_classes` decides), else ``None``."""
    shapes = {tuple(o.shape[1:]) for o in outputs}
    return model.output_classes(shapes.pop()) if len(shapes) == 1 else None


@register_section("predictions", "Predictions", order=20)
def predictions_section(ctx: ReportContext) -> Markup:
    """The top-5 table per image; fills ``ctx.predictions``."""
    k = output_classes(ctx.model, ctx.outputs)
    ctx.predictions = [[] for _ in ctx.images]
    if k is None:
        beyond = _detections_or_areas(ctx)
        if beyond is not None:
            return beyond
        shape = shape_text(ctx.outputs[0].shape[1:], times=True) if ctx.outputs else "?"
        return render("sections/predictions.html", classifier=False, model=ctx.model.name, shape=shape)
    adapter = ctx.model.adapter
    # The graph's word first (a final softmax/sigmoid), else a tolerance that fits the output's
    # quantisation step; ``how`` says which was used.
    p, how = to_probabilities(np.concatenate(ctx.outputs), adapter.final_activation,
                              getattr(adapter, "output_quant_step", None))
    names = ctx.labels
    if names is None:
        hint = " The 1,000 outputs look like ImageNet's: --labels src/convlens/data/imagenet_classes.txt " \
               "names them." if k == 1000 else " --labels FILE (one name per line) names them."
        label_note = f"Classes are numbered: convlens does not know this model's class names.{hint}"
    else:
        label_note = f"Class names: {ctx.label_source}."
    cards = []
    for i, im in enumerate(ctx.images):
        order = np.argsort(-p[i], kind="stable")[:TOP_K]
        top = [((names[j] if names else f"class {j}"), float(p[i, j]), int(j)) for j in order]
        ctx.predictions[i] = [(t[0], t[1]) for t in top]
        rows = [{"rank": r, "name": name, "id": j, "value": f"{prob:.6f}", "text": probability_text(prob)}
                for r, (name, prob, j) in enumerate(top, 1)]
        cards.append({"name": im.name, "rows": rows})
    return render("sections/predictions.html", classifier=True, shown=min(TOP_K, k), k=k, how=how,
                  label_note=label_note, cards=cards)


#: Detections listed per image in the report, at most.
TOP_DETECTIONS = 10


def _detections_or_areas(ctx: ReportContext) -> Markup | None:
    """A detector's detections (class, score, box) or a segmenter's class areas per image, else ``None``."""
    if not ctx.outputs:
        return None
    from ...core.detection import decode, guess_layout, looks_like_torchvision

    names = ctx.labels

    def label(j: int) -> str:
        return str(names[j]) if names is not None and 0 <= j < len(names) else f"class {j}"

    first = np.asarray(ctx.outputs[0])[0]
    cards = []
    if first.ndim == 3:  # (h, w, K): a segmentation's classes by the area they are predicted on
        for i, im in enumerate(ctx.images):
            won = np.argmax(np.asarray(ctx.outputs[i])[0], axis=-1)
            counts = np.bincount(won.ravel(), minlength=first.shape[-1]) / won.size
            order = [int(j) for j in np.argsort(-counts, kind="stable")[:TOP_K] if counts[j] > 0]
            cards.append({"name": im.name, "rows": [{"name": label(j), "id": j, "value": f"{counts[j]:.4f}",
                                                      "text": f"{100 * counts[j]:.1f}%"} for j in order]})
        return render("sections/detections.html", kind="segmentation", model=ctx.model.name, cards=cards)
    layout = "torchvision" if looks_like_torchvision(first) else guess_layout([tuple(first.shape)])
    if layout is None:
        return None
    for i, im in enumerate(ctx.images):
        out = np.asarray(ctx.outputs[i])[0]
        hw = (int(ctx.model.input_shape[0] or 0), int(ctx.model.input_shape[1] or 0))
        dets = decode([out], layout, image_hw=hw, min_score=0.0, max_detections=TOP_DETECTIONS)
        cards.append({"name": im.name, "rows": [
            {"name": label(int(c)), "id": int(c), "value": f"{float(sc):.6f}", "text": f"{float(sc):.3f}",
             "box": ", ".join(f"{v:.0f}" for v in b)} for b, sc, c in zip(dets.boxes, dets.scores, dets.classes)]})
    return render("sections/detections.html", kind="detection", layout=layout, model=ctx.model.name, cards=cards)
