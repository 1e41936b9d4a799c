"""Heatmaps: where the network looks when it decides, as arrays, pictures and files.

:func:`heatmaps` runs one or several methods of :mod:`convlens.methods` on some
images and returns a :class:`Heatmaps`: every map at the network input's
resolution and, on request, at the resolution of the image as given; the class
names and scores; ``render()`` for an overlay picture, ``save()`` for files and
an inline view in Jupyter. Nothing here knows a framework: the adapter runs the
model, the methods compute, :mod:`convlens.render.overlay` draws.

>>> lens = Lens("demo")
>>> hm = lens.heatmaps(convlens.DEMO_IMAGE, method="gradcam,ig")
>>> hm.map(0, "gradcam").shape            # the network input's resolution
(28, 28)
>>> hm.save("out/")                        # overlays, .npy maps, index.json
"""

from __future__ import annotations

import html
import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import BadArgument
from ._progress import NullProgress, Progress
from .core.predictions import to_probabilities
from .core.text import probability as probability_text
from .images import Image, PreparedBatch, check_not_constant
from .methods import Method, MethodResult, RecordedForward, check_gradients, create, get, resolve_layer
from .methods import names as method_names
from .methods.targets import Objective, TargetSpec, check_box, output_position, parse_classes
from .output import OutputDir, png_figure_html, safe_name, write_index
from .passes import call_model
from .render.marks import Box
from .render.overlay import overlay, resize_map

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model

__all__ = ["DEFAULT_METHOD", "Heatmap", "Heatmaps", "compute_heatmaps", "create_methods", "heatmaps",
           "parse_methods"]

#: What ``heatmaps()`` computes when no method is named.
DEFAULT_METHOD = "gradcam"
#: Other detections drawn thin on a detection's overlay, at most.
DRAWN_DETECTIONS = 10


@dataclass
class Heatmap:
    """One map: one image, one method, one class.

    Attributes:
        image: index of the image in :attr:`Heatmaps.images`.
        method: the method's registry name (``"gradcam"``).
        title: its display name (``"Grad-CAM"``).
        class_index: the class explained (an index into the model's output).
        label: the class's name, or its index as text.
        score: the class's value in the model's output (a probability when the
            model ends in a softmax or a sigmoid; summed over the box for a
            segmentation model).
        probability: the class's probability: the output itself after a
            softmax or sigmoid, else the softmax of the output; ``None`` for a
            model whose output is not one score per class.
        scores_are_probabilities: the model ends in a softmax or a sigmoid, so
            :attr:`score` is the probability.
        map: ``(H, W)`` float32 at the network input's resolution: 0..1, or
            -1..1 when :attr:`signed`.
        signed: the map is a signed attribution (Integrated Gradients, occlusion).
        layer: the CAM's layer name; ``None`` for input attributions.
        flat: the map carried no signal (every value equal; drawn as zeros).
        extra: the method's own figures for this map (e.g. Integrated
            Gradients' ``completeness_gap``).
        kind: what the map explains (:attr:`convlens.methods.targets.Rows.kind`):
            ``"class"``, ``"detection"``, ``"segmentation"``, ``"index"``,
            ``"embedding"`` or ``"agnostic"``.
        box: a detection's box ``(x0, y0, x1, y1)`` in pixels of the image as given.
        region: a segmentation's region ``(h, w)`` at the output's positions (non-zero inside).
    """

    image: int
    method: str
    title: str
    class_index: int
    label: str
    score: float
    probability: float | None
    scores_are_probabilities: bool
    map: np.ndarray = field(repr=False)
    signed: bool
    layer: str | None
    flat: bool
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = "class"
    box: tuple[float, float, float, float] | None = None
    region: np.ndarray | None = field(default=None, repr=False)

    def caption(self) -> str:
        """One line: method, class, score (``Grad-CAM · tabby cat (281) · p 0.412``)."""
        cls = self.label if self.label == str(self.class_index) else f"{self.label} ({self.class_index})"
        parts = [self.title, cls]
        if self.kind == "detection":
            parts.append(f"detection score {_num(self.score)}")
        elif self.kind == "embedding":
            parts.append(f"cosine similarity {_num(self.score)}")
        elif self.kind in ("index", "agnostic", "segmentation"):
            if self.kind != "agnostic":
                parts.append(f"{'value' if self.kind == 'index' else 'score over the region'} {_num(self.score)}")
        elif self.scores_are_probabilities:
            parts.append(f"p {probability_text(self.score)}")
        elif self.probability is not None:
            parts.append(f"score {_num(self.score)}, softmax p {probability_text(self.probability)}")
        else:
            parts.append(f"score {_num(self.score)}")
        if self.layer:
            parts.append(f"layer {self.layer}")
        if self.flat:
            parts.append("no signal")
        return " · ".join(parts)


def _num(v: float) -> str:
    return f"{v:.4g}"


class Heatmaps:
    """Heatmaps of some images under one or several methods.

    Attributes:
        images: the images as loaded (``Image.pixels`` is the picture as given).
        inputs: per image, the ``(H, W, C)`` float32 input the network saw.
        methods: the method names, in the order asked.
        titles: their display names, by name.
        entries: every map, image-major, then method, then class (:class:`Heatmap`).
        outputs: per image, the model's output (``(K,)`` for a classifier).
        class_names: the model's class names, when known.
        model: the model's name.
        framework: the adapter's framework.
        notes: what was done to the inputs (resizing, channel changes).
        results: the methods' own :class:`~convlens.methods.MethodResult`, by
            method name, one per group of images of the same size.
        detections: per image, a detector's decoded detections (best first,
            ``{"box": (x0, y0, x1, y1) in pixels of the image as given,
            "class": k, "label": name, "score": s}``), or ``None``.
    """

    def __init__(self, *, images: list[Image], inputs: list[np.ndarray], methods: list[str],
                 titles: dict[str, str], entries: list[Heatmap], outputs: list[np.ndarray],
                 class_names: list[str] | None, model: str, framework: str, notes: list[str],
                 results: dict[str, list[MethodResult]],
                 detections: list[list[dict[str, Any]] | None] | None = None) -> None:
        self.images, self.inputs, self.methods, self.titles = images, inputs, methods, titles
        self.entries, self.outputs, self.class_names = entries, outputs, class_names
        self.model, self.framework, self.notes, self.results = model, framework, notes, results
        self.detections: list[list[dict[str, Any]] | None] = list(detections or [None] * len(images))

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return (f"Heatmaps({self.model!r}: {len(self.images)} image(s) x {', '.join(self.methods)}, "
                f"{len(self.entries)} maps)")

    # ------------------------------------------------------------------ finding maps

    def find(self, image: int | str = 0, method: str | None = None,
             target: int | str | None = None) -> Heatmap:
        """One map: by image (index or name), method (default the first) and class.

        Args:
            image: the image's index or name.
            method: a method name; default the first one computed.
            target: the class index or name; default the image's first (its
                top class when none was asked for).

        Raises:
            BadArgument: no such image, method or class among those computed
                (the message lists what there is).
        """
        i = self._image_index(image)
        name = self.methods[0] if method is None else get(method).name
        if name not in self.methods:
            raise BadArgument(f"{method!r} was not computed; these were: {', '.join(self.methods)}")
        mine = [e for e in self.entries if e.image == i and e.method == name]
        if target is None:
            return mine[0]
        for e in mine:
            if (isinstance(target, (int, np.integer)) and not isinstance(target, bool)
                    and e.class_index == int(target)):
                return e
            if isinstance(target, str) and (target.strip().lower() == e.label.lower()
                                            or target.strip() == str(e.class_index)):
                return e
        have = ", ".join(f"{e.label} ({e.class_index})" for e in mine)
        raise BadArgument(f"class {target!r} was not computed for {self.images[i].name}; these were: {have}")

    def map(self, image: int | str = 0, method: str | None = None, target: int | str | None = None, *,
            original: bool = False) -> np.ndarray:
        """One map as an array.

        Args:
            image, method, target: as :meth:`find`.
            original: ``False``: ``(H, W)`` at the network input's resolution;
                ``True``: at the resolution of the image as given (resized
                bilinearly, see :func:`convlens.render.overlay.resize_map`).

        Returns:
            float32: 0..1, or -1..1 for a signed attribution.
        """
        entry = self.find(image, method, target)
        if not original:
            return entry.map
        im = self.images[entry.image]
        return resize_map(entry.map, (im.height, im.width))

    def _image_index(self, image: int | str) -> int:
        if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
            if 0 <= int(image) < len(self.images):
                return int(image)
            raise BadArgument(f"image {image} is out of range: there are {len(self.images)} (0-{len(self.images) - 1})")
        names = [im.name for im in self.images]
        if isinstance(image, str) and image in names:
            return names.index(image)
        raise BadArgument(f"no image {image!r}; the images are: {', '.join(names)}")

    # ------------------------------------------------------------------ pictures

    def render(self, image: int | str = 0, method: str | None = None, target: int | str | None = None, *,
               alpha: float | None = None, cmap: str | None = None, colorbar: bool = True,
               min_side: int = 256, max_side: int = 4096) -> np.ndarray:
        """The overlay picture of one map: ``(H', W', 3)`` uint8.

        The heatmap is blended on the image as given (its own resolution), with
        a colour bar and a caption naming the method, the class and its score.
        ``alpha``, ``cmap``, ``colorbar``, ``min_side`` and ``max_side`` are
        :func:`convlens.render.overlay.overlay`'s.
        """
        return self._render_entry(self.find(image, method, target), alpha=alpha, cmap=cmap, colorbar=colorbar,
                                  min_side=min_side, max_side=max_side)

    def _render_entry(self, entry: Heatmap, *, alpha: float | None = None, cmap: str | None = None,
                      colorbar: bool = True, min_side: int = 256, max_side: int = 4096) -> np.ndarray:
        boxes: list[Box] = []
        if entry.box is not None:
            boxes.append(Box(*entry.box, label=f"{entry.label} {entry.score:.2f}", thick=True))
            others = self.detections[entry.image] if entry.image < len(self.detections) else None
            for det in (others or [])[:DRAWN_DETECTIONS]:
                if tuple(det["box"]) != tuple(entry.box):
                    x0, y0, x1, y1 = (float(v) for v in det["box"])
                    boxes.append(Box(x0, y0, x1, y1, label=f"{det['label']} {det['score']:.2f}"))
        return overlay(self.images[entry.image].pixels, entry.map, caption=entry.caption(),
                       signed=entry.signed, value_range=(-1.0, 1.0) if entry.signed else (0.0, 1.0),
                       alpha=alpha, cmap=cmap, colorbar=colorbar, min_side=min_side, max_side=max_side,
                       boxes=boxes, region=entry.region)

    def _repr_html_(self) -> str:
        head = (f"<div><b>{html.escape(self.model)}</b>: {len(self.entries)} heatmaps "
                f"({html.escape(', '.join(self.titles[m] for m in self.methods))})</div>")
        parts = [head, *(f"<div>note: {html.escape(n)}</div>" for n in self.notes)]  # a guessed preset, ...
        for e in self.entries:
            rgb = self._render_entry(e, max_side=512)
            parts.append(png_figure_html(rgb, self.images[e.image].name,
                                         alt=f"{self.images[e.image].name}: {e.caption()}", max_width="512px",
                                         pixelated=False, inline=True))
        return "".join(parts)

    # ------------------------------------------------------------------ files

    def save(self, out: str | os.PathLike[str], *, alpha: float | None = None, cmap: str | None = None,
             colorbar: bool = True, max_side: int = 4096) -> Path:
        """Write every map: an overlay PNG, the raw map as ``.npy``, and ``index.json``.

        Files go to ``out/heatmaps/<image>/<method>_<class>.png`` and ``.npy``;
        the ``.npy`` holds the map at the resolution of the image as given,
        float32 (0..1, or -1..1 for signed attributions). ``index.json`` lists
        every map with its class, score and files (entries of other convlens
        commands in the same folder stay). Written atomically: nothing changes
        in ``out`` unless everything was written. ``alpha``, ``cmap``,
        ``colorbar`` and ``max_side`` go to :meth:`render`.

        Returns:
            The path of ``out/index.json``.
        """
        options: dict[str, Any] = {"alpha": alpha, "cmap": cmap, "colorbar": colorbar, "max_side": max_side}
        out_path = Path(out)
        records: list[dict[str, Any]] = []
        with OutputDir(out_path) as staging:
            used: dict[str, int] = {}
            for e in self.entries:
                im = self.images[e.image]
                base = f"heatmaps/{_safe(im.name)}/{_safe(e.method)}_{e.class_index}"
                used[base] = used.get(base, 0) + 1
                if used[base] > 1:  # a detector's second detection of one class
                    base = f"{base}_{used[base]}"
                first = self.find(e.image, e.method, e.class_index) is e
                staging.write_png(base + ".png", self.render(e.image, e.method, e.class_index, **options)
                                  if first else self._render_entry(e, **options))
                full = resize_map(e.map, (im.height, im.width))
                staging.write_bytes(base + ".npy", _npy(full))
                records.append({**self._record(e), "file": base + ".png", "array": base + ".npy",
                                "array_shape": list(full.shape)})
            write_index(staging, "heatmaps", records, self._meta())
        return out_path / "index.json"

    def to_json(self) -> dict[str, Any]:
        """Every map's record (image, method, class, label, score, probability, layer, flags), JSON-ready.

        The maps themselves are not included: :meth:`map` gives them, :meth:`save` writes them.
        """
        return {**self._meta(), "methods": list(self.methods), "heatmaps": [self._record(e) for e in self.entries]}

    def _meta(self) -> dict[str, Any]:
        return {"model": self.model, "framework": self.framework,
                "images": [im.record() for im in self.images],
                "notes": self.notes}

    def _record(self, e: Heatmap) -> dict[str, Any]:
        return {"image": self.images[e.image].name, "method": e.method, "title": e.title, "class": e.class_index,
                "label": e.label, "score": e.score, "probability": e.probability,
                "layer": e.layer, "signed": e.signed, "flat": e.flat,
                "range": [-1.0, 1.0] if e.signed else [0.0, 1.0],
                "extra": {k: v for k, v in e.extra.items() if isinstance(v, (int, float, str, bool))},
                "target": e.kind, "box": None if e.box is None else [float(v) for v in e.box]}


def _npy(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a, np.float32), allow_pickle=False)
    return buf.getvalue()


def _safe(name: str) -> str:
    """An image or method name as a file name (``gradcam++`` -> ``gradcampp``; empty -> ``x``)."""
    return safe_name(name.replace("+", "p"), "x")


# ---------------------------------------------------------------------- computing


def parse_methods(method: str | Sequence[str] | None) -> list[str]:
    """Method registry names from ``"gradcam,scorecam"`` or a list; unknown names raise BadArgument."""
    if method is None:
        items = [DEFAULT_METHOD]
    elif isinstance(method, str):
        items = [m for m in method.split(",") if m.strip()]
    else:
        items = [str(m) for m in method]
    if not items:
        raise BadArgument("no heatmap method named; give one or more, e.g. gradcam,scorecam")
    out: list[str] = []
    for m in items:
        name = get(m.strip()).name
        if name not in out:
            out.append(name)
    return out


def create_methods(names: Sequence[str], options: Mapping[str, Any]) -> list[Method]:
    """One instance per method, each given the options its constructor takes."""
    used: set[str] = set()
    made = []
    for name in names:
        cls = get(name)
        accepted = set(inspect.signature(cls.__init__).parameters)
        mine = {k: v for k, v in options.items() if k in accepted}
        used.update(mine)
        made.append(create(name, **mine))
    unused = sorted(set(options) - used)
    if unused:
        key = unused[0]
        owners = [n for n in method_names() if key in inspect.signature(get(n).__init__).parameters]
        where = f"an option of {', '.join(owners)}" if owners else "not an option of any method"
        raise BadArgument(f"option {key!r} is {where}, not of {', '.join(names)}; add the method or leave "
                          "the option out (help(convlens.methods) lists each method's options)")
    return made


def _check_before_work(model: Model, made: list[Method], layer: Any, target: TargetSpec,
                       names: list[str] | None, objective: Objective | None = None) -> list[int] | None:
    """Every check that needs no pass: gradients, the layer, the classes (nothing runs on failure).

    Returns:
        The class indexes the target names, ``None`` for each image's top class.
    """
    adapter = model.adapter
    needing = [m.title for m in made if m.needs_gradients]
    if needing:
        check_gradients(adapter, needing)
    table = adapter.layers()
    if any(m.kind == "cam" for m in made):
        resolve_layer(table, layer)
    last = table[-1].output_shape if table else None
    # the classes of another output than the table's last row are checked against that output's scores
    classes = model.output_classes() if objective is None or objective.output is None else None
    chosen = _classes(target, classes, names)
    needs_class = any(m.needs_target for m in made) and (objective is None or objective.is_plain())
    if objective is not None and objective.box is not None:
        check_box(objective.box, (10**9, 10**9))  # four numbers, not empty (the image's size is checked later)
    if needs_class and chosen is None and last is not None and len(last) == 3:
        raise BadArgument(f"the output of {model.name} has shape {tuple(last)}, not one score per class, so "
                          "there is no top class: name the class to explain (--class, target=...)")
    return chosen


def _classes(target: TargetSpec, classes: int | None, names: list[str] | None) -> list[int] | None:
    """The class indexes ``target`` names (``None``: each image's top class).

    Each string of a list may itself be comma-separated (``--class 3,5 --class 7``).
    """
    if target is None or isinstance(target, (str, int, np.integer)):
        return parse_classes(target, classes, names)
    out: list[int] = []
    for item in target:
        for k in parse_classes(item, classes, names) or []:
            if k not in out:
                out.append(k)
    if not out:
        raise BadArgument("empty class list; give a class index or name, or leave it out for the top class")
    return out


def _probabilities(output: np.ndarray, final: str | None, step: float | None) -> np.ndarray | None:
    """``(N, K)`` class probabilities of a classifier's output (see :func:`to_probabilities`), else ``None``."""
    out = np.asarray(output, np.float64)
    if out.ndim != 2 or out.shape[1] < 2:
        return None
    return to_probabilities(out, final, step)[0]


def _are_probabilities(output: np.ndarray, final: str | None, step: float | None = None) -> bool:
    """The output is already probabilities, as :func:`to_probabilities` decides (the graph's final
    softmax or sigmoid, else rows in 0..1 that sum to 1 within the output's quantisation step)."""
    out = np.asarray(output, np.float64)
    if out.ndim != 2 or out.shape[1] < 2:
        return final in ("softmax", "sigmoid")
    return to_probabilities(out, final, step)[1].startswith("the model's own")


def heatmaps(model: Model, images: Any, method: str | Sequence[str] | None = DEFAULT_METHOD, *,
             layer: str | int | None = None, target: TargetSpec = None, top: int = 1, size: Any = None,
             preprocess: str | None = None, labels: str | os.PathLike[str] | Sequence[str] | None = None,
             progress: Progress | None = None, method_options: Mapping[str, Any] | None = None,
             box: Sequence[float] | None = None, mask: Any = None, output: int | str | None = None,
             output_index: int | None = None, reference: Any = None) -> Heatmaps:
    """Heatmaps of ``images`` under one or several methods.

    Every check that needs no computation (gradients for the methods asked,
    the layer, the classes) runs before any pass, so a mistake costs nothing.
    Images of the same size go through each method as one batch.

    Args:
        model: the model.
        images: one image or a list (paths, PIL images or arrays).
        method: a name, a comma-separated list or a list: ``gradcam``,
            ``gradcam++``, ``xgradcam``, ``layercam``, ``hirescam``,
            ``scorecam``, ``eigencam``, ``saliency``, ``smoothgrad``, ``ig``,
            ``occlusion`` (see :mod:`convlens.methods`).
        layer: CAM methods: the layer (name, index or a selection naming one);
            default the output of the last conv layer.
        target: ``None`` (each image's top classes, see ``top``), a class
            index or name, or several (a list or ``"cat,dog"``): one map per
            image and class.
        top: with ``target=None``, how many of each image's top classes (1-10).
        size: ``(H, W)`` for models that accept any size.
        preprocess: preprocessing preset; default the model's.
        labels: class names (a file, one per line, or a list); default the model's own.
        progress: receives the progress of slow methods (Score-CAM, IG, occlusion).
        method_options: the methods' own options by name (``{"steps": 32}`` for IG,
            ``{"samples": 10}`` for SmoothGrad, ``{"window": 16}`` for occlusion...);
            each goes to the methods that take it, and one that no method asked
            for takes is refused. One mapping rather than keyword arguments: the
            options belong to the methods, and a new method brings its own.
        box: ``(x0, y0, x1, y1)`` in pixels of the image as given: a detector's
            detection of the class named that best overlaps it (its score plus
            the overlap, pytorch-grad-cam's box-score target), or a
            segmentation's region.
        mask: a segmentation's region: an image (path or array, any size:
            non-zero pixels count, resized to the output) or ``"predicted"``
            (the pixels the model predicts as the class).
        output: which model output to explain, by name or position.
        output_index: explain one raw value of the output (a regression
            output, or raw scores): a flat index into one image's canonical
            output, signed.
        reference: an image whose embedding the output is compared with
            (cosine similarity): face and re-identification models.

    Raises:
        UnsupportedModel: a gradient method on a model without gradients
            (TFLite; the message names the forward-only methods), a model
            that does not take images.
        BadArgument: an unknown method, option, layer or class.
        BadImage: an image whose pixels are all equal.
    """
    names = parse_methods(method)
    made = create_methods(names, method_options or {})
    class_names, _ = model.class_names(labels)
    objective = Objective(box=None if box is None else tuple(box),  # type: ignore[arg-type]
                          mask=_load_mask(mask), output=output, output_index=output_index)
    asked = objective if reference is None else replace(objective, reference=np.zeros(1))  # known after a pass
    classes = _check_before_work(model, made, layer, target, class_names, asked)
    prepared = model.prepare(images, size=size, preprocess=preprocess)
    hint = model.labels_hint(class_names, model.output_classes())
    if hint and objective.is_plain():
        prepared.notes.append(hint)
    if reference is not None:
        objective = replace(objective, reference=reference_embedding(model, reference, size=size,
                                                                       preprocess=preprocess, output=output))
    return compute_heatmaps(model, prepared, made, layer=layer, classes=classes, top=top,
                            class_names=class_names, preprocess=preprocess, progress=progress,
                            objective=objective)


def _load_mask(mask: Any) -> np.ndarray | str | None:
    """A region mask as an array (an image file's pixels), or ``"predicted"``, or ``None``."""
    if mask is None or (isinstance(mask, str) and mask.strip().lower() == "predicted"):
        return mask
    if isinstance(mask, np.ndarray):
        return mask
    from .images import load_image

    return np.asarray(load_image(mask).pixels)


def reference_embedding(model: Model, reference: Any, *, size: Any = None, preprocess: str | None = None,
                        output: int | str | None = None) -> np.ndarray:
    """``(D,)`` the embedding of a reference image: the model's chosen output for it, a vector.

    Raises:
        BadArgument: the output is not a vector (``--reference`` compares embeddings).
    """
    ref = model.prepare([reference], size=size, preprocess=preprocess)
    batch = np.stack(ref.arrays)
    many = getattr(model.adapter, "outputs", None)
    outs = [(str(n), np.asarray(a)) for n, a in many(batch)] if callable(many) else \
        [("output", call_model(model.adapter, batch))]
    k = output_position(output, [n for n, _ in outs])
    emb = outs[k][1]
    if emb.ndim != 2:
        raise BadArgument(f"--reference compares embeddings, but the output {outs[k][0]!r} of {model.name} has "
                          f"shape {tuple(emb.shape[1:])}, not a vector; pick a vector output with --output")
    return emb[0].astype(np.float64)


def compute_heatmaps(model: Model, prepared: PreparedBatch, made: Sequence[Method], *,
                     layer: str | int | None = None, classes: list[int] | None = None, top: int = 1,
                     class_names: list[str] | None = None, preprocess: str | None = None,
                     progress: Progress | None = None,
                     outputs: Sequence[np.ndarray] | None = None,
                     recorded: RecordedForward | None = None,
                     objective: Objective | None = None) -> Heatmaps:
    """:func:`heatmaps` for images already loaded and prepared (the report's section uses it).

    Args:
        model: the model.
        prepared: the images and the arrays the network takes (:func:`convlens.images.prepare_batch`).
        made: method instances (:func:`convlens.methods.create`).
        layer: as :func:`heatmaps`.
        classes: class indexes, or ``None`` for each image's ``top`` classes.
        top: see :func:`heatmaps`.
        class_names: the model's class names, if known.
        preprocess: the preset the arrays were made with.
        progress: as :func:`heatmaps`.
        outputs: the model's output per image ``(1, ...)``, when a pass computed it already.
        recorded: the pass that computed ``outputs`` (the report's), when it recorded
            the CAM layer's gradients of each image's top classes: a gradient CAM
            on that layer computes its maps from them, with no pass of its own
            (:meth:`~convlens.methods.GradientCam.from_gradients`); anything
            not recorded is computed as usual.
        objective: what to explain beyond a class (see :func:`heatmaps`); its
            box is in pixels of the image as given.
    """
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or not 1 <= int(top) <= 10:
        raise BadArgument(f"top must be a whole number from 1 to 10, not {top!r}")
    loaded, arrays, notes = prepared.images, prepared.arrays, list(prepared.notes)
    for image, a in zip(loaded, arrays):
        check_not_constant(a, image.name)
    progress = progress or NullProgress()
    adapter = model.adapter
    # Images of one size share a batch; with several top classes each image is its own batch
    # (a batch's target is one list of classes for all its images).
    groups: dict[Any, list[int]] = {}
    per_image_target = objective is not None and (objective.box is not None or objective.mask is not None)
    for i, a in enumerate(arrays):
        groups.setdefault(i if (classes is None and top > 1) or per_image_target else a.shape, []).append(i)
    found: list[list[dict[str, Any]] | None] = [None] * len(arrays)
    known: list[np.ndarray | None] = [None] * len(arrays)
    per_image: dict[tuple[int, str], list[Heatmap]] = {}
    results: dict[str, list[MethodResult]] = {m.name: [] for m in made}
    for members in groups.values():
        batch = np.stack([arrays[i] for i in members])
        if outputs is not None:
            out = np.concatenate([np.asarray(outputs[i]) for i in members])
        else:
            out = call_model(adapter, batch)
        probs = _probabilities(out, adapter.final_activation, getattr(adapter, "output_quant_step", None))
        for j, i in enumerate(members):
            known[i] = out[j]
        wanted: TargetSpec = classes
        goal = objective
        if goal is not None and goal.box is not None:  # the user's pixels -> the network input's
            im, a = loaded[members[0]], arrays[members[0]]
            x0, y0, x1, y1 = check_box(goal.box, (im.height, im.width))
            sy, sx = a.shape[0] / im.height, a.shape[1] / im.width
            goal = replace(goal, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
        if classes is None and top > 1 and out.ndim == 3:  # a detector: its top detections
            goal = replace(goal or Objective(), top=int(top))
        elif classes is None and top > 1:
            if out.ndim != 2:
                raise BadArgument(f"the output of {model.name} has shape {tuple(out.shape[1:])}, not one score "
                                  "per class, so there are no top classes: name the class to explain")
            wanted = [int(k) for k in np.argsort(-out[0], kind="stable")[: int(top)]]
        for m in made:
            given = _recorded_rows(recorded, m, adapter.layers(), layer, members, out, wanted)
            if given is not None:
                res = m.from_gradients(adapter, batch, *given, output=out, target=wanted,  # type: ignore[attr-defined]
                                       layer=layer, class_names=class_names,
                                       preprocess=preprocess or model.preprocess)
            else:
                res = m.compute(adapter, batch, target=wanted, layer=layer, class_names=class_names,
                                preprocess=preprocess or model.preprocess, progress=progress, output=out,
                                objective=goal)
            results[m.name].append(res)
            rows = res.target
            if rows is not None and rows.detections is not None:
                for j, dets in enumerate(rows.detections):
                    found[members[j]] = _detection_records(dets, loaded[members[j]], arrays[members[j]],
                                                           class_names)
            if rows is not None:
                notes.extend(n for n in rows.notes if n not in notes)
            for r in range(len(res)):
                img = members[int(res.images[r])]
                k = int(res.classes[r])
                kind = rows.kind if rows is not None else "class"
                per_image.setdefault((img, m.name), []).append(Heatmap(
                    image=img, method=m.name, title=m.title, class_index=k, label=res.labels[r],
                    score=float(res.scores[r]),
                    probability=float(probs[int(res.images[r]), k]) if probs is not None and kind == "class"
                    and k < probs.shape[1] else None,
                    scores_are_probabilities=_are_probabilities(out, adapter.final_activation,
                                                                  getattr(adapter, "output_quant_step", None)),
                    map=res.maps[r], signed=res.signed, layer=res.layer.name if res.layer else None,
                    flat=bool(res.flat[r]) if len(res.flat) else False,
                    extra=_row_extra(res.extra, r, len(res)), kind=kind,
                    box=_image_box(rows.boxes[r], loaded[img], arrays[img])
                    if rows is not None and rows.boxes is not None else None,
                    region=_row_region(rows, r)))
    names = [m.name for m in made]
    entries = [e for i in range(len(arrays)) for n in names for e in per_image.get((i, n), [])]
    return Heatmaps(images=loaded, inputs=arrays, methods=names, titles={m.name: m.title for m in made},
                    entries=entries, outputs=[o for o in known if o is not None],
                    class_names=class_names, model=model.name, framework=adapter.framework, notes=notes,
                    results=results, detections=found)


def _image_box(box: np.ndarray, image: Image, array: np.ndarray) -> tuple[float, float, float, float]:
    """A box in the network input's pixels, in pixels of the image as given."""
    sy, sx = image.height / array.shape[0], image.width / array.shape[1]
    x0, y0, x1, y1 = (float(v) for v in box)
    return x0 * sx, y0 * sy, x1 * sx, y1 * sy


def _row_region(rows: Any, r: int) -> np.ndarray | None:
    if rows is None or rows.mask is None or rows.kind != "segmentation":
        return None
    return rows.mask[r] if rows.mask.ndim == 3 else rows.mask


def _detection_records(dets: Any, image: Image, array: np.ndarray,
                       names: Sequence[str] | None) -> list[dict[str, Any]]:
    """A detector's decoded detections as records, boxes in pixels of the image as given."""
    out = []
    for b, sc, c in zip(dets.boxes, dets.scores, dets.classes):
        k = int(c)
        label = str(names[k]) if names is not None and 0 <= k < len(names) else str(k)
        out.append({"box": _image_box(b, image, array), "class": k, "label": label, "score": float(sc)})
    return out


def _recorded_rows(recorded: RecordedForward | None, method: Method, table: list[Any], layer: str | int | None,
                   members: list[int], out: np.ndarray, wanted: TargetSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """The recorded ``(acts, grads)`` of the rows ``method`` would compute for ``members``, or ``None``.

    The rows are :func:`~convlens.methods.targets.resolve_rows`'s: per image its
    top-1 class (``wanted`` ``None``), else the classes ``wanted`` lists, in order.
    """
    if recorded is None or out.ndim != 2 or not (wanted is None or isinstance(wanted, list)):
        return None
    per_image = [[int(np.argmax(out[j]))] if wanted is None else [int(k) for k in wanted]  # type: ignore[arg-type]
                 for j in range(len(members))]
    return recorded.rows_for(method, resolve_layer(table, layer), members, per_image)


def _row_extra(extra: dict[str, Any], r: int, rows: int) -> dict[str, Any]:
    """The method's figures for row ``r``: per-row arrays indexed, scalars kept."""
    out: dict[str, Any] = {}
    for key, value in extra.items():
        if isinstance(value, np.ndarray) and value.shape[:1] == (rows,):
            out[key] = value[r].item() if value[r].ndim == 0 else value[r]
        elif isinstance(value, (int, float, str, bool, np.integer, np.floating)):
            out[key] = value.item() if isinstance(value, (np.integer, np.floating)) else value
    return out

