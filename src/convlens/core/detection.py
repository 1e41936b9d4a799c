"""Detections in numpy: decoding a detector's output, IoU, NMS, and the box-score objective.

Layouts convlens decodes (one image's canonical output, batch axis removed):

* ``"yolo"``: dense ``(A, 4 + C)`` rows ``(cx, cy, w, h, class scores...)``
  in input pixels, as Ultralytics YOLOv5u/v8/v11 export them (the raw
  ``(4 + C, A)`` is turned to anchors-first by the adapter's channels-last
  rule, and either order is accepted here: anchors are the longer axis);
* ``"yolo-obj"``: ``(A, 5 + C)`` with an objectness column after the box
  (YOLOv5/v7): a detection's score is objectness times its class score;
* ``"torchvision"``: ``(K, 6)`` rows ``(x0, y0, x1, y1, score, label)``, what
  the PyTorch adapter makes of a torchvision detector's list of dicts
  (Faster R-CNN, RetinaNet, SSD, FCOS); unused rows have label ``-1``;
* ``"detr"``: two outputs, logits ``(Q, C + 1)`` (the last class is "no
  object") and boxes ``(Q, 4)`` ``(cx, cy, w, h)`` relative to the image.

Boxes are ``(x0, y0, x1, y1)`` in the network input's pixels, x right, y down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LAYOUTS",
    "Detections",
    "box_iou",
    "candidates",
    "decode",
    "guess_layout",
    "looks_like_torchvision",
    "iou_gradient",
    "nms",
    "select",
]

#: The layouts :func:`decode` knows, in words (for the error that lists them).
LAYOUTS = {
    "yolo": "YOLO dense (N, 4+C, A) or (N, A, 4+C): boxes cx, cy, w, h in pixels, then class scores",
    "yolo-obj": "YOLO dense with objectness (N, 5+C, A) or (N, A, 5+C)",
    "torchvision": "torchvision detectors (lists of dicts with boxes, scores, labels)",
    "detr": "DETR pairs: logits (N, Q, C+1) and boxes (N, Q, 4) cx, cy, w, h in 0..1",
}


#: Candidates NMS looks at, at most (the best scores).
PRE_NMS = 1000


@dataclass(frozen=True)
class Detections:
    """One image's detections, best first.

    Attributes:
        boxes: ``(K, 4)`` float64 ``(x0, y0, x1, y1)`` in input pixels.
        scores: ``(K,)`` float64.
        classes: ``(K,)`` int.
        slots: ``(K,)`` int, the row of the raw output each came from (anchor,
            query or detection index), where its score is read.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    slots: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, keep: np.ndarray | Sequence[int]) -> Detections:
        k = np.asarray(keep, int)
        return Detections(self.boxes[k], self.scores[k], self.classes[k], self.slots[k])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(n, m)`` intersection over union of boxes ``a`` ``(n, 4)`` and ``b`` ``(m, 4)`` (xyxy)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou_gradient(box: Sequence[float] | np.ndarray, target: Sequence[float]) -> np.ndarray:
    """``(4,)`` d IoU(box, target) / d box, ``target`` fixed (both xyxy).

    The derivative torch's autograd takes of ``torchvision.ops.box_iou``
    (``max``/``min`` pass the gradient to the larger/smaller side, a clamp at 0
    stops it), so a cotangent built from it gives the gradient of
    pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    t0, u0, t1, u1 = (float(v) for v in target)
    iw, ih = min(x1, t1) - max(x0, t0), min(y1, u1) - max(y0, u0)
    cw, ch = max(iw, 0.0), max(ih, 0.0)
    inter = cw * ch
    area = (x1 - x0) * (y1 - y0)
    union = area + (t1 - t0) * (u1 - u0) - inter
    if union <= 0:
        return np.zeros(4)
    # d inter: the clamp passes the gradient where the overlap is >= 0
    dw = np.array([-1.0 if x0 > t0 else 0.0, 0.0, 1.0 if x1 < t1 else 0.0, 0.0]) * (iw >= 0)
    dh = np.array([0.0, -1.0 if y0 > u0 else 0.0, 0.0, 1.0 if y1 < u1 else 0.0]) * (ih >= 0)
    d_inter = dw * ch + dh * cw
    d_area = np.array([-(y1 - y0), -(x1 - x0), y1 - y0, x1 - x0])
    d_union = d_area - d_inter
    return (d_inter * union - inter * d_union) / union**2


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = 0.45) -> np.ndarray:
    """Indexes of the boxes greedy non-maximum suppression keeps, best score first.

    Args:
        boxes: ``(K, 4)`` xyxy.
        scores: ``(K,)``.
        threshold: a box overlapping a kept one by more than this IoU is dropped.
    """
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    boxes = np.asarray(boxes, np.float64)
    keep: list[int] = []
    while len(order):
        i = int(order[0])
        keep.append(i)
        if len(order) == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[i], boxes[rest])[0] <= threshold]
    return np.asarray(keep, int)


def looks_like_torchvision(out: np.ndarray) -> bool:
    """``(K, 6)`` rows ``(x0, y0, x1, y1, score, label)`` with whole labels from -1 (the padding): the
    PyTorch adapter's form of a torchvision detector's output for one image."""
    out = np.asarray(out)
    if out.ndim != 2 or out.shape[1] != 6:
        return False
    labels = out[:, 5]
    if not (np.all(labels == np.round(labels)) and np.all(labels >= -1)):
        return False
    used = labels >= 0
    ordered = np.all(out[used, 2] >= out[used, 0]) and np.all(out[used, 3] >= out[used, 1])
    return bool(ordered)


def _anchors_first(out: np.ndarray) -> np.ndarray:
    """A dense ``(F, A)`` or ``(A, F)`` output as ``(A, F)``: anchors are the longer axis."""
    return out.T if out.shape[0] < out.shape[1] else out


def guess_layout(shapes: Sequence[tuple[int, ...]]) -> str | None:
    """The layout of a model's outputs (per-image shapes, batch axis removed), or ``None``.

    Args:
        shapes: every output's shape without the batch axis, in output order.
    """
    if len(shapes) >= 2 and len(shapes[0]) == 2 and len(shapes[1]) == 2 and shapes[1][-1] == 4 \
            and shapes[0][0] == shapes[1][0] and shapes[0][-1] >= 2:
        return "detr"
    if not shapes or len(shapes[0]) != 2:
        return None
    rows, cols = shapes[0]
    # a torchvision detector's (K, 6) is named "detections" by the adapter, which callers check first
    feats = min(rows, cols)
    if max(rows, cols) >= 4 * feats and feats >= 5:
        return "yolo"
    return None


def decode(outputs: Sequence[np.ndarray], layout: str, *, image_hw: tuple[int, int],
           min_score: float = 0.25, iou: float = 0.45, max_detections: int = 100,
           with_nms: bool = True) -> Detections:
    """One image's detections from its raw outputs.

    :func:`candidates` then :func:`select`: a caller that needs several
    selections of one output (the detections drawn, and every candidate a
    box is matched against) decodes once and selects twice.

    Args:
        outputs: the model's outputs for ONE image (batch axis removed); the
            first is the dense or torchvision output, DETR needs two.
        layout: one of :data:`LAYOUTS`.
        image_hw: the network input's ``(H, W)`` (DETR's relative boxes).
        min_score: detections scoring less are dropped.
        iou: the NMS threshold (per class).
        max_detections: at most this many, best first.
        with_nms: suppress overlapping boxes of one class (dense outputs).

    Raises:
        ValueError: an unknown layout or outputs that do not fit it.
    """
    return select(candidates(outputs, layout, image_hw=image_hw), layout, min_score=min_score, iou=iou,
                  max_detections=max_detections, with_nms=with_nms)


def candidates(outputs: Sequence[np.ndarray], layout: str, *, image_hw: tuple[int, int]) -> Detections:
    """Every anchor, query or detection of one image's raw outputs, in the output's order (unsorted,
    unfiltered): each with its best class and that class's score.

    A dense float32 output is read as it is (no float64 copy of the whole
    array): the best class and its score are the same in either precision,
    and the box columns are widened before any arithmetic.

    Args:
        outputs, layout, image_hw: as :func:`decode`.

    Raises:
        ValueError: an unknown layout or outputs that do not fit it.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown detection layout {layout!r}")
    first = np.asarray(outputs[0])
    if not np.issubdtype(first.dtype, np.floating) or first.dtype.itemsize > 8:
        first = first.astype(np.float64)
    if layout in ("yolo", "yolo-obj"):
        dense = _anchors_first(first)
        start = 5 if layout == "yolo-obj" else 4
        if dense.ndim != 2 or dense.shape[1] <= start:
            raise ValueError(f"a dense output of shape {first.shape} has no class scores")
        cls_scores = dense[:, start:]
        if layout == "yolo-obj":  # a product: in float64, as its scores are
            cls_scores = cls_scores.astype(np.float64) * dense[:, 4:5].astype(np.float64)
        classes = np.argmax(cls_scores, axis=1)
        scores = cls_scores[np.arange(len(dense)), classes].astype(np.float64)
        cx, cy, w, h = (dense[:, k].astype(np.float64) for k in range(4))
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        slots = np.arange(len(dense))
    elif layout == "torchvision":
        first = first.astype(np.float64, copy=False)
        if first.ndim != 2 or first.shape[1] != 6:
            raise ValueError(f"a torchvision detection output is (K, 6), not {first.shape}")
        used = first[:, 5] >= 0
        boxes, scores, classes = first[used, :4], first[used, 4], first[used, 5].astype(int)
        slots = np.flatnonzero(used)
    else:
        if len(outputs) < 2:
            raise ValueError("a DETR output is a pair: logits and boxes")
        logits = first.astype(np.float64, copy=False)
        rel = np.asarray(outputs[1], np.float64)
        z = logits - logits.max(axis=1, keepdims=True)
        prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        prob = prob[:, :-1]  # the last class is "no object"
        classes = np.argmax(prob, axis=1)
        scores = prob[np.arange(len(prob)), classes]
        hh, ww = image_hw
        cx, cy, w, h = rel[:, 0] * ww, rel[:, 1] * hh, rel[:, 2] * ww, rel[:, 3] * hh
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        slots = np.arange(len(logits))
    return Detections(boxes, scores, classes.astype(int), slots.astype(int))


def select(dets: Detections, layout: str, *, min_score: float = 0.25, iou: float = 0.45,
           max_detections: int = 100, with_nms: bool = True, ordered: bool = True) -> Detections:
    """The detections :func:`decode` keeps of :func:`candidates`' ``dets``: those scoring at least
    ``min_score``, per-class NMS for dense layouts (``with_nms``), best first, at most ``max_detections``
    (``ordered=False``: in the output's order, all of them)."""
    if layout in ("torchvision", "detr"):
        with_nms = False  # the model ran its own NMS; DETR's queries do not duplicate
    kept = dets.scores >= min_score  # (a NaN score is dropped even at -inf)
    if not kept.all():
        dets = dets.take(np.flatnonzero(kept))
    if with_nms and len(dets) > PRE_NMS:  # NMS is quadratic: the best candidates only, as ultralytics does
        dets = dets.take(np.argsort(-dets.scores, kind="stable")[:PRE_NMS])
    if with_nms and len(dets):
        keep: list[int] = []
        for c in np.unique(dets.classes):
            idx = np.flatnonzero(dets.classes == c)
            keep.extend(idx[nms(dets.boxes[idx], dets.scores[idx], iou)].tolist())
        dets = dets.take(keep)
    if not ordered:
        return dets
    order = np.argsort(-dets.scores, kind="stable")[:max_detections]
    return dets.take(order)


def dense_box_gradient(layout: str, row: np.ndarray, target: Sequence[float]) -> np.ndarray:
    """d IoU(decoded box, target) / d (the raw box columns of one dense row).

    ``"yolo"``/``"yolo-obj"`` rows hold ``(cx, cy, w, h)``; ``"torchvision"``
    rows hold ``(x0, y0, x1, y1)`` already.
    """
    if layout == "torchvision":
        return iou_gradient(row[:4], target)
    cx, cy, w, h = (float(v) for v in row[:4])
    g = iou_gradient((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), target)
    # x0 = cx - w/2, x1 = cx + w/2 (and y): the chain rule to (cx, cy, w, h)
    return np.array([g[0] + g[2], g[1] + g[3], (g[2] - g[0]) / 2, (g[3] - g[1]) / 2])
