"""Which score a heatmap explains: top-1, classes by index or name, a region of a segmentation.

A user's target (``None``, ``3``, ``"tabby"``, ``[3, "dog"]``) is resolved
against the model's output into rows: one ``(image, class)`` pair per map.
Several classes at once give one map per image and class, image-major.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._errors import BadArgument
from ..adapters.base import Target
from ..core.detection import LAYOUTS, Detections, box_iou, candidates, dense_box_gradient, guess_layout, select

__all__ = [
    "Objective",
    "Rows",
    "TargetSpec",
    "box_mask",
    "class_index",
    "class_scores",
    "parse_classes",
    "resolve_objective",
    "resolve_rows",
]

#: What a caller may ask for: ``None`` (each image's top class), a class index
#: or name, or several of them (a list, or a comma-separated string).
TargetSpec = None | int | str | Sequence[int | str]


@dataclass(frozen=True)
class Rows:
    """The resolved targets: row ``m`` explains class ``classes[m]`` of image ``images[m]``.

    Attributes:
        images: ``(M,)`` int, index into the batch.
        classes: ``(M,)`` int, index into the model's output channels (a
            detection's class; the raw index for ``kind="index"``).
        labels: ``M`` class labels (the class name, or the index as text).
        mask: ``(h, w)`` or ``(M, h, w)`` weights over the output's positions
            for a segmentation model (a box, a mask, the pixels predicted as the
            class), or ``None``.
        kind: what the rows explain: ``"class"``, ``"detection"``,
            ``"segmentation"``, ``"index"`` (one raw output value, signed) or
            ``"embedding"`` (cosine similarity with a reference).
        output: which model output holds the score (``None``: the first).
        cotangents: ``(M, *output_shape)`` float32 d objective / d output at the
            resolved output, when the objective is not one class score: the
            gradient pass multiplies the output by it (a box score's IoU term
            is linearised there, which gives its exact gradient).
        values: ``(M,)`` the objective's value per row when it has its own.
        boxes: ``(M, 4)`` the explained detection's box ``(x0, y0, x1, y1)``
            in input pixels (detections), else ``None``.
        detections: per batch image, its decoded detections (for display).
        notes: what was done to make the target (a mask resized...).
    """

    images: np.ndarray
    classes: np.ndarray
    labels: list[str]
    mask: np.ndarray | None = None
    kind: str = "class"
    output: int | None = None
    cotangents: np.ndarray | None = None
    values: np.ndarray | None = None
    boxes: np.ndarray | None = None
    detections: tuple[Detections, ...] | None = None
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images)

    def target(self, part: slice | np.ndarray | None = None) -> Target:
        """The adapter :class:`Target` of these rows (or of ``part`` of them): each class's score,
        summed over the mask, or the rows' own cotangents (detections, embeddings, raw indexes)."""
        sel = slice(None) if part is None else part
        if self.cotangents is not None:
            return Target(layer=None, cotangent=self.cotangents[sel], output=self.output)
        mask = self.mask
        if mask is not None and mask.ndim == 3:  # one region per row
            mask = mask[sel]
        return Target(layer=None, channels=tuple(int(c) for c in self.classes[sel]), reduce="sum",
                      mask=mask, output=self.output)

    def scores(self, output: np.ndarray) -> np.ndarray:
        """``(M,)`` float64: each row's score in ``output``, its own image's output ``(M, ...)``.

        Rows with their own objective (:attr:`values`: a detection's score and
        overlap, a cosine similarity) give the values found when they were resolved.
        """
        if self.values is not None:
            return np.asarray(self.values, np.float64)
        if self.mask is not None and self.mask.ndim == 3:
            out = np.asarray(output, np.float64)
            picked = out[np.arange(len(out)), ..., np.asarray(self.classes, int)]
            return (picked * self.mask).reshape(len(out), -1).sum(axis=1)
        return class_scores(output, self.classes, self.mask, per_row=True)


def class_scores(
    output: np.ndarray,
    classes: Sequence[int] | np.ndarray,
    mask: np.ndarray | None = None,
    *,
    per_row: bool = False,
) -> np.ndarray:
    """Scores of ``classes`` in a model output: the class's value, summed over ``mask`` for a map.

    Args:
        output: ``(B, K)`` or ``(B, h, w, K)`` canonical model output.
        classes: class indexes.
        mask: ``(h, w)`` weights over positions for a map output (``None``: all ones).
        per_row: ``classes[b]`` belongs to item ``b`` (returns ``(B,)``); else
            every class for every item (returns ``(B, len(classes))``).

    Returns:
        float64 scores.
    """
    out = np.asarray(output, np.float64)
    idx = np.asarray(classes, int)
    picked = out[np.arange(len(out)), ..., idx] if per_row else out[..., idx]
    if out.ndim == 2:
        return picked
    if per_row:  # (B, h, w)
        weights = np.ones(out.shape[1:-1]) if mask is None else np.asarray(mask, np.float64)
        return (picked * weights).reshape(len(out), -1).sum(axis=1)
    weights = np.ones(out.shape[1:-1]) if mask is None else np.asarray(mask, np.float64)
    return (picked * weights[..., None]).reshape(len(out), -1, len(idx)).sum(axis=1)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def class_index(item: int | str, n_classes: int | None, names: Sequence[str] | None) -> int:
    """One class: an index (``int`` or digits) or a name, checked against the output.

    Raises:
        BadArgument: an index out of range, or a name the model does not have
            (with the closest names).
    """
    if isinstance(item, (bool, np.bool_)):
        raise BadArgument(f"class {item!r} is not a class index or name")
    if isinstance(item, (int, np.integer)) or (
        isinstance(item, str) and re.fullmatch(r"\s*-?\d+\s*", item)
    ):
        k = int(item)
        if n_classes is not None and not 0 <= k < n_classes:
            raise BadArgument(
                f"class {k} is out of range: the model has {n_classes} classes (0-{n_classes - 1})"
            )
        if n_classes is None and k < 0:
            raise BadArgument(f"class {k} is out of range: class indexes start at 0")
        return k
    if not isinstance(item, str):
        raise BadArgument(f"class {item!r} is not a class index or name")
    if not names:
        raise BadArgument(
            f"class {item!r}: the model's class names are unknown; give a class index "
            "or pass the class names (--labels FILE, class_names=[...])"
        )
    wanted = _norm(item)
    normed = [_norm(n) for n in names]
    if wanted in normed:
        return normed.index(wanted)
    close = difflib.get_close_matches(wanted, normed, n=3, cutoff=0.6)
    hint = f"; closest: {', '.join(repr(names[normed.index(c)]) for c in close)}" if close else ""
    raise BadArgument(
        f"unknown class {item!r}{hint}; give a class index (0-{len(names) - 1}) "
        "or one of the model's class names"
    )


def parse_classes(
    spec: TargetSpec, n_classes: int | None, names: Sequence[str] | None
) -> list[int] | None:
    """The class indexes a target names; ``None`` for top-1.

    A string is split on commas unless it is one of the class names as a whole
    (ImageNet has ``"crane"`` twice but also names with commas in some lists).
    """
    if spec is None:
        return None
    if isinstance(spec, (bool, np.bool_)):
        raise BadArgument(f"class {spec!r} is not a class index or name")
    if isinstance(spec, str):
        whole = names is not None and _norm(spec) in {_norm(n) for n in names}
        items: list[int | str] = [spec] if whole else [s for s in spec.split(",") if s.strip()]
    elif isinstance(spec, (int, np.integer)):
        items = [int(spec)]
    else:
        items = list(spec)
    if not items:
        raise BadArgument(
            "empty class list; give a class index or name, or leave it out for the top class"
        )
    return [class_index(item, n_classes, names) for item in items]


def box_mask(
    box: Sequence[float], input_hw: tuple[int, int], output_hw: tuple[int, int]
) -> np.ndarray:
    """A ``(h, w)`` mask of ones over the output positions whose centres fall in ``box``.

    Args:
        box: ``(top, left, bottom, right)`` in the network input's pixels,
            bottom and right exclusive.
        input_hw: the network input's ``(H, W)``.
        output_hw: the output's ``(h, w)``.

    Raises:
        BadArgument: a malformed box, or one that holds no output position.
    """
    try:
        top, left, bottom, right = (float(v) for v in box)
    except (TypeError, ValueError):
        raise BadArgument(
            f"box {box!r}: give four numbers (top, left, bottom, right) in input pixels"
        ) from None
    if not (bottom > top and right > left):
        raise BadArgument(
            f"box {tuple(box)} is empty: bottom must exceed top and right exceed left"
        )
    h, w = output_hw
    ys = (np.arange(h) + 0.5) * input_hw[0] / h
    xs = (np.arange(w) + 0.5) * input_hw[1] / w
    mask = ((ys >= top) & (ys < bottom))[:, None] & ((xs >= left) & (xs < right))[None, :]
    if not mask.any():
        raise BadArgument(
            f"box {tuple(box)} holds no output position of the {input_hw[0]}x{input_hw[1]} "
            "input; give a larger box inside the image"
        )
    return mask.astype(np.float32)


def resolve_rows(
    spec: TargetSpec,
    output: np.ndarray | None,
    *,
    n_images: int,
    n_classes: int | None,
    names: Sequence[str] | None,
    box: Sequence[float] | None = None,
    input_hw: tuple[int, int] | None = None,
) -> Rows:
    """Resolve a target against the model's output.

    Args:
        spec: see :data:`TargetSpec`.
        output: the model's output for the batch (canonical, ``(N, K)`` or
            ``(N, h, w, K)``), or ``None`` when it is not computed yet (then
            ``spec`` must name classes, and ``box`` cannot be used).
        n_images: the batch size N.
        n_classes: K when known, to check indexes before any work.
        names: the class names, if known.
        box: a region for a segmentation output (see :func:`box_mask`).
        input_hw: the network input's size, to place ``box``.

    Raises:
        BadArgument: a bad class, no class for an output that is not a vector
            of class scores, a box for a classifier.
    """
    if output is not None:
        n_classes = int(output.shape[-1])
        spatial = output.shape[1:-1]
    else:
        spatial = ()
    classes = parse_classes(spec, n_classes, names)
    if spatial and classes is None:
        raise BadArgument(
            f"the model's output is a map of shape {tuple(spatial)} x {n_classes}, not one score "
            "per class, so there is no top class: name the class to explain (--class)"
        )
    mask = None
    if box is not None:
        if output is None or len(spatial) != 2:
            raise BadArgument(
                "a box selects pixels of a segmentation output; this model's output has no "
                "spatial axes (leave the box out)"
            )
        mask = box_mask(box, input_hw or tuple(spatial), (int(spatial[0]), int(spatial[1])))
    if classes is None:
        if output is None:
            raise ValueError(
                "a top-1 target is resolved from the model's output: run the forward pass first"
            )
        if output.ndim != 2:
            raise BadArgument(
                f"the model's output has shape {tuple(output.shape[1:])}, not one score per "
                "class: name the class to explain (--class)"
            )
        top = np.argmax(output, axis=1)
        images, picked = np.arange(n_images), top
    else:
        images = np.repeat(np.arange(n_images), len(classes))
        picked = np.tile(np.asarray(classes, int), n_images)
    labels = [str(names[k]) if names is not None and k < len(names) else str(k) for k in picked]
    return Rows(
        images=images.astype(int), classes=np.asarray(picked, int), labels=labels, mask=mask
    )


# --------------------------------------------------------------------------- beyond one class score


@dataclass(frozen=True)
class Objective:
    """What to explain when it is not one class score of a classifier: plain data, no callable.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in the network input's pixels: a detector's
            detection that best overlaps it (pytorch-grad-cam's box-score
            target: its score plus the overlap), or a segmentation's region.
        top: a detector's ``top`` best detections, one map each.
        mask: ``(h, w)`` any size: a segmentation's region (non-zero pixels),
            resized to the output's positions; or the text ``"predicted"``: the
            pixels the model predicts as the class.
        output: which model output (its name or position) to explain.
        output_index: one raw value of the output (flat index into one image's
            canonical output), signed: a regression output, or raw scores.
        reference: ``(D,)`` a reference embedding: the score is the cosine
            similarity of the output (a vector) with it.
        layout: a detector's output layout (:data:`convlens.core.detection.LAYOUTS`);
            default guessed from the outputs' shapes.
        min_score: detections scoring less are not drawn (the top detections
            and the box's match are chosen among all).
    """

    box: tuple[float, float, float, float] | None = None
    top: int | None = None
    mask: np.ndarray | str | None = None
    output: int | str | None = None
    output_index: int | None = None
    reference: np.ndarray | None = None
    layout: str | None = None
    min_score: float = 0.25

    def is_plain(self) -> bool:
        """Nothing beyond classes is asked: the classic path applies (unless the output is a detector's)."""
        return (self.box is None and self.top is None and self.mask is None and self.output is None
                and self.output_index is None and self.reference is None and self.layout is None)


def output_position(which: int | str | None, names: Sequence[str]) -> int:
    """The position of the output ``which`` names (a name or a position) among ``names``.

    Raises:
        BadArgument: no such output (the message lists them).
    """
    if which is None:
        return 0
    listed = ", ".join(f"{i}: {n}" for i, n in enumerate(names))
    if isinstance(which, (int, np.integer)) and not isinstance(which, bool) or (
            isinstance(which, str) and re.fullmatch(r"\s*\d+\s*", which) and which.strip() not in names):
        k = int(which)
        if 0 <= k < len(names):
            return k
        raise BadArgument(f"output {k} does not exist: the model has {len(names)} output(s) ({listed})")
    if isinstance(which, str) and which in names:
        return list(names).index(which)
    raise BadArgument(f"no output named {which!r}: the model's outputs are {listed}; give a name or a position")


def _label(names: Sequence[str] | None, k: int) -> str:
    return str(names[k]) if names is not None and 0 <= k < len(names) else str(k)


def check_box(box: Sequence[float], input_hw: tuple[int, int], what: str = "image") -> tuple[float, ...]:
    """``(x0, y0, x1, y1)`` as floats, checked to be a non-empty box that overlaps the image.

    Raises:
        BadArgument: four numbers are not given, the box is empty or lies outside the image.
    """
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise BadArgument(f"box {box!r}: give four numbers X0,Y0,X1,Y1 in pixels of the {what}") from None
    h, w = input_hw
    if not (x1 > x0 and y1 > y0):
        raise BadArgument(f"box {x0:g},{y0:g},{x1:g},{y1:g} is empty: X1 must exceed X0 and Y1 exceed Y0")
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise BadArgument(f"box {x0:g},{y0:g},{x1:g},{y1:g} lies outside the {w}x{h} {what}; give "
                          f"X0,Y0,X1,Y1 within 0-{w},0-{h}")
    return x0, y0, x1, y1


def region_mask(objective: Objective, output: np.ndarray, cls: int, input_hw: tuple[int, int],
                notes: list[str]) -> np.ndarray:
    """``(h, w)`` float32 region of one image's segmentation ``output`` ``(h, w, K)`` for class ``cls``.

    Raises:
        BadArgument: an empty region (a box holding no position, a mask with
            no non-zero pixel, no pixel predicted as the class).
    """
    h, w = output.shape[:2]
    if objective.box is not None:
        x0, y0, x1, y1 = check_box(objective.box, input_hw)
        return box_mask((y0, x0, y1, x1), input_hw, (h, w))
    if isinstance(objective.mask, str):
        if objective.mask.strip().lower() != "predicted":
            raise BadArgument(f"mask {objective.mask!r}: give an image file or 'predicted'")
        region = (np.argmax(output, axis=-1) == cls).astype(np.float32)
        if not region.any():
            raise BadArgument(f"no pixel is predicted as class {cls}: give a box or a mask file instead")
        return region
    m = np.asarray(objective.mask, np.float64)
    if m.ndim == 3:
        m = np.abs(m).max(axis=-1)
    if m.ndim != 2 or not (m != 0).any():
        raise BadArgument("the mask holds no non-zero pixel: mark the region to explain with non-zero pixels")
    if m.shape != (h, w):
        ys = np.minimum((np.arange(h) + 0.5) * m.shape[0] / h, m.shape[0] - 1).astype(int)
        xs = np.minimum((np.arange(w) + 0.5) * m.shape[1] / w, m.shape[1] - 1).astype(int)
        note = f"the {m.shape[1]}x{m.shape[0]} mask was resized to the output's {w}x{h} positions"
        if note not in notes:
            notes.append(note)
        m = m[ys][:, xs]
        if not (m != 0).any():
            raise BadArgument("the mask's region vanished when resized to the output's positions: give a "
                              "larger region")
    return (m != 0).astype(np.float32)


def resolve_objective(objective: Objective, outputs: Sequence[tuple[str, np.ndarray]], *,
                      classes: list[int] | None, names: Sequence[str] | None,
                      input_hw: tuple[int, int]) -> Rows:
    """Rows for an :class:`Objective` against the model's outputs for a batch.

    Args:
        objective: what to explain.
        outputs: every model output ``(name, (N, ...))``, canonical, in order.
        classes: the classes the user named (``None``: none named).
        names: the class names, if known.
        input_hw: the network input's ``(H, W)``.

    Raises:
        BadArgument: an output that does not exist, a box outside the image,
            an empty region, a reference on a non-vector output, a detector
            output that cannot be decoded (the message lists the layouts).
    """
    k = output_position(objective.output, [n for n, _ in outputs])
    name, out = outputs[k][0], np.asarray(outputs[k][1])
    n = len(out)
    notes: list[str] = []
    if objective.reference is not None:
        return _embedding_rows(out, np.asarray(objective.reference, np.float64), k)
    if objective.output_index is not None:
        return _index_rows(out, int(objective.output_index), k)
    layout = objective.layout or ("torchvision" if name == "detections" else
                                  guess_layout([tuple(o.shape[1:]) for _, o in outputs[k:]]))
    if out.ndim == 4 and layout is None:  # a segmentation: (N, h, w, K)
        if classes is None:
            raise BadArgument(f"the output {name!r} is a map of {out.shape[-1]} classes: name the class to "
                              "explain (--class)")
        imgs = np.repeat(np.arange(n), len(classes))
        picked = np.tile(np.asarray(classes, int), n)
        masks = np.stack([region_mask(objective, out[i], int(c), input_hw, notes) for i, c in zip(imgs, picked)])
        vals = (out[imgs, ..., picked] * masks).reshape(len(imgs), -1).sum(axis=1)
        return Rows(images=imgs, classes=picked, labels=[_label(names, int(c)) for c in picked], mask=masks,
                    kind="segmentation", output=k, values=vals, notes=tuple(notes))
    if out.ndim == 2 and layout is None and objective.box is None and objective.top is None \
            and objective.mask is None:  # one score per class on the output picked (--output cls)
        picked = np.asarray(classes, int) if classes is not None else np.argmax(out, axis=1)
        imgs = np.repeat(np.arange(n), len(picked)) if classes is not None else np.arange(n)
        picked = np.tile(picked, n) if classes is not None else picked
        bad = [int(c) for c in picked if not 0 <= int(c) < out.shape[1]]
        if bad:
            raise BadArgument(f"class {bad[0]} is out of range: the output {name!r} has {out.shape[1]} classes "
                              f"(0-{out.shape[1] - 1})")
        return Rows(images=imgs, classes=picked, labels=[_label(names, int(c)) for c in picked], output=k,
                    values=out[imgs, picked].astype(np.float64))
    if layout is None or layout not in LAYOUTS:
        known = "; ".join(f"{key}: {text}" for key, text in LAYOUTS.items())
        raise BadArgument(f"cannot decode the output {name!r} of shape {tuple(out.shape[1:])} as detections "
                          f"(layouts known: {known}); explain one raw value with --output-index I instead")
    return _detection_rows(objective, [o for _, o in outputs[k:]], layout, k, classes=classes, names=names,
                           input_hw=input_hw)


def _detection_rows(objective: Objective, outs: Sequence[np.ndarray], layout: str, k: int, *,
                    classes: list[int] | None, names: Sequence[str] | None, input_hw: tuple[int, int]) -> Rows:
    first = np.asarray(outs[0])  # as given: the decoding widens what it computes with, not the whole output
    n = len(first)
    box = check_box(objective.box, input_hw) if objective.box is not None else None
    top = int(objective.top) if objective.top is not None else 1
    if top < 1:
        raise BadArgument(f"--top must be a whole number from 1, not {top}")
    imgs: list[int] = []
    picked: list[int] = []
    vals: list[float] = []
    boxes: list[np.ndarray] = []
    cots: list[np.ndarray] = []
    shown: list[Detections] = []
    for i in range(n):
        raw = [first[i], *(np.asarray(o[i]) for o in outs[1:])]
        full = candidates(raw, layout, image_hw=input_hw)  # decoded once, selected twice
        shown.append(select(full, layout, min_score=objective.min_score, max_detections=100))
        # a box is matched against every candidate in the output's order: the order of the match
        # (overlap, then score, then position) is the same as among candidates sorted by score first
        allx = select(full, layout, min_score=-np.inf, with_nms=False, max_detections=10**9, ordered=False) \
            if box is not None else select(full, layout, min_score=-np.inf, max_detections=10**9)
        wanted: list[int | None] = list(classes) if classes else [None]
        for c in wanted:
            cands = allx if c is None or layout in ("yolo", "yolo-obj", "detr") else \
                allx.take(np.flatnonzero(allx.classes == c))
            if box is not None:
                if not len(cands):
                    raise BadArgument(f"image {i} has no detection of class {_label(names, c or 0)} to match the box")
                iou = _overlaps(box, cands.boxes)
                order = _best_overlaps(iou, cands.scores, top)
                if iou[order[0]] <= 0:
                    raise BadArgument(f"no detection overlaps the box {','.join(f'{v:g}' for v in box)} in image "
                                      f"{i}; draw the box around an object the model detects")
            else:
                if c is not None and layout in ("yolo", "yolo-obj", "detr"):
                    cands = _as_class(raw, full, layout, int(c))
                    cands = cands.take(nms_order(cands))
                order = np.arange(min(top, len(cands)))
                if not len(order):
                    raise BadArgument(f"image {i} has no detection{'' if c is None else f' of class {c}'}; "
                                      "explain a raw score with --output-index I")
            for j in order:
                slot = int(cands.slots[j])
                cls = int(cands.classes[j]) if c is None else int(c)
                det_box = cands.boxes[j]
                cot, value = _detection_cotangent(first[i], layout, slot, cls, box, raw)
                imgs.append(i)
                picked.append(cls)
                vals.append(value)
                boxes.append(det_box)
                cots.append(cot)
    return Rows(images=np.asarray(imgs, int), classes=np.asarray(picked, int),
                labels=[_label(names, c) for c in picked], kind="detection", output=k,
                cotangents=np.stack(cots), values=np.asarray(vals, np.float64),
                boxes=np.stack(boxes), detections=tuple(shown))


def nms_order(dets: Detections) -> np.ndarray:
    """Indexes of ``dets`` that per-class NMS keeps, best first."""
    from ..core.detection import PRE_NMS, nms

    best = np.argsort(-dets.scores, kind="stable")[:PRE_NMS]
    keep = best[nms(dets.boxes[best], dets.scores[best])]
    return keep[np.argsort(-dets.scores[keep], kind="stable")]


def _overlaps(box: Sequence[float], boxes: np.ndarray) -> np.ndarray:
    """``(K,)`` IoU of one ``box`` with each of ``boxes`` ``(K, 4)``: :func:`box_iou`'s arithmetic, value for
    value, on columns (thousands of anchors) rather than through ``(1, K, 2)`` broadcasts."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = (float(v) for v in box)
    iw = np.clip(np.minimum(x1, b[:, 2]) - np.maximum(x0, b[:, 0]), 0, None)
    ih = np.clip(np.minimum(y1, b[:, 3]) - np.maximum(y0, b[:, 1]), 0, None)
    inter = iw * ih
    union = (x1 - x0) * (y1 - y0) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _best_overlaps(iou: np.ndarray, scores: np.ndarray, top: int) -> np.ndarray:
    """The first ``top`` of ``np.lexsort((-scores, -iou))`` (most overlap, then best score, then first),
    sorted among the candidates that can be among them: those overlapping at least the ``top``-th most."""
    if len(iou) > top and not np.isnan(iou).any():
        kth = np.partition(-iou, top - 1)[top - 1]
        few = np.flatnonzero(-iou <= kth)
        return few[np.lexsort((-scores[few], -iou[few]))[:top]]
    return np.lexsort((-scores, -iou))[:top]


def _as_class(raw: Sequence[np.ndarray], full: Detections, layout: str, cls: int) -> Detections:
    """Every anchor/query of a dense or DETR output (``full``: its :func:`candidates`), scored for class
    ``cls`` (best first)."""
    dets = select(full, layout, min_score=-np.inf, with_nms=False, max_detections=10**9)
    first = np.asarray(raw[0])
    if layout == "detr":
        first = first.astype(np.float64)
        z = first - first.max(axis=1, keepdims=True)
        prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        score = prob[dets.slots, cls]
    else:
        dense = first.T if first.shape[0] < first.shape[1] else first
        start = 5 if layout == "yolo-obj" else 4
        if not 0 <= cls < dense.shape[1] - start:
            raise BadArgument(f"class {cls} is out of range: the detector has {dense.shape[1] - start} classes")
        score = dense[dets.slots, start + cls].astype(np.float64)
        if layout == "yolo-obj":
            score = score * dense[dets.slots, 4].astype(np.float64)
    order = np.argsort(-score, kind="stable")
    return Detections(dets.boxes[order], score[order], np.full(len(order), cls), dets.slots[order])


def _detection_cotangent(out: np.ndarray, layout: str, slot: int, cls: int, box: tuple[float, ...] | None,
                         raw: Sequence[np.ndarray]) -> tuple[np.ndarray, float]:
    """d objective / d (one image's output ``out``) for one detection, and the objective's value.

    The objective is the detection's class score, plus (with a box) its IoU
    with the box: pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``. DETR: the
    class's logit (its softmax probability is what is shown).
    """
    cot = np.zeros(out.shape, np.float32)  # each entry is set once (one rounding, as a float64 array cast)
    if layout == "torchvision":
        row = out[slot].astype(np.float64)
        cot[slot, 4] = 1.0
        value = float(row[4])
        if box is not None:
            cot[slot, :4] += dense_box_gradient(layout, row, box)
            value += float(box_iou(row[:4], np.asarray(box))[0, 0])
        return cot, value
    if layout == "detr":
        cot[slot, cls] = 1.0
        return cot, float(out[slot, cls])
    flip = out.shape[0] < out.shape[1]  # (4 + C, A): anchors on the second axis
    dense, view = (out.T, cot.T) if flip else (out, cot)
    start = 5 if layout == "yolo-obj" else 4
    if not 0 <= cls < dense.shape[1] - start:
        raise BadArgument(f"class {cls} is out of range: the detector has {dense.shape[1] - start} classes")
    row = dense[slot].astype(np.float64)  # the one row the objective reads, widened
    if layout == "yolo-obj":
        view[slot, 4] = row[start + cls]
        view[slot, start + cls] = row[4]
        value = float(row[4] * row[start + cls])
    else:
        view[slot, start + cls] = 1.0
        value = float(row[start + cls])
    if box is not None:
        view[slot, :4] += dense_box_gradient(layout, row, box)
        cx, cy, w, h = row[:4]
        value += float(box_iou(np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), np.asarray(box))[0, 0])
    return cot, value


def _index_rows(out: np.ndarray, index: int, k: int) -> Rows:
    n = len(out)
    size = int(np.prod(out.shape[1:]))
    if not 0 <= index < size:
        raise BadArgument(f"output index {index} is out of range: one image's output has {size} values "
                          f"(shape {tuple(out.shape[1:])}, channels last; 0-{size - 1})")
    cot = np.zeros((n, size), np.float32)
    cot[:, index] = 1.0
    vals = out.reshape(n, -1)[:, index].astype(np.float64)
    return Rows(images=np.arange(n), classes=np.full(n, index), labels=[f"output {index}"] * n, kind="index",
                output=k, cotangents=cot.reshape(out.shape), values=vals)


def _embedding_rows(out: np.ndarray, reference: np.ndarray, k: int) -> Rows:
    if out.ndim != 2:
        raise BadArgument(f"--reference compares embeddings, but this output has shape {tuple(out.shape[1:])}, "
                          "not a vector; pick a vector output with --output")
    ref = reference.reshape(-1)
    if ref.shape[0] != out.shape[1]:
        raise BadArgument(f"the reference embedding has {ref.shape[0]} values, the output {out.shape[1]}")
    e = out.astype(np.float64)
    ne = np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    nr = max(float(np.linalg.norm(ref)), 1e-12)
    cos = (e @ ref) / (ne[:, 0] * nr)
    # d cos / d e = r / (|e||r|) - cos * e / |e|^2
    cot = ref[None, :] / (ne * nr) - cos[:, None] * e / ne**2
    n = len(out)
    return Rows(images=np.arange(n), classes=np.zeros(n, int), labels=["similarity"] * n, kind="embedding",
                output=k, cotangents=cot.astype(np.float32), values=cos)
