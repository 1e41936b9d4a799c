"""A detection target's rows (methods.targets): the box match, its overlaps and a float32 output read as it
is, against the plain formulas (box_iou, a lexsort over candidates sorted by score), to the bit."""

from __future__ import annotations

import numpy as np
import pytest

from convlens.core.detection import box_iou, decode
from convlens.methods.targets import Objective, _best_overlaps, _overlaps, resolve_objective


def test_one_box_overlaps_are_box_iou_to_the_bit():
    rng = np.random.default_rng(0)
    for k in range(50):
        boxes = rng.random((400, 4)) * 100
        boxes[:, 2:] += boxes[:, :2] * rng.random((400, 2))
        if k % 3 == 0:  # whole numbers: touching and identical boxes, empty overlaps
            boxes = np.round(boxes)
        x0, y0 = rng.random(2) * 80
        box = (x0, y0, x0 + rng.random() * 40, y0 + rng.random() * 40)
        np.testing.assert_array_equal(_overlaps(box, boxes), box_iou(np.asarray(box), boxes)[0])


@pytest.mark.parametrize("top", [1, 2, 5, 500])
def test_the_best_overlaps_are_the_lexsorts_first(top):
    rng = np.random.default_rng(1)
    for _ in range(30):
        iou = np.round(rng.random(300), 1)  # many ties in overlap and in score
        scores = np.round(rng.random(300), 1)
        np.testing.assert_array_equal(_best_overlaps(iou, scores, top), np.lexsort((-scores, -iou))[:top])
    iou[5] = np.nan
    np.testing.assert_array_equal(_best_overlaps(iou, scores, top), np.lexsort((-scores, -iou))[:top])


def _dense(seed: int) -> np.ndarray:
    """A YOLO-style (1, A, 4 + C) float32 output with duplicate boxes and scores (ties to break)."""
    rng = np.random.default_rng(seed)
    out = rng.random((1, 600, 9), dtype=np.float32)
    out[0, :, :2] *= 64
    out[0, :, 2:4] = out[0, :, 2:4] * 20 + 2
    out[0, 100:110] = out[0, 50]  # ten copies of one anchor: the first is the match
    return out


@pytest.mark.parametrize("top", [1, 3])
def test_a_box_matches_as_among_candidates_sorted_by_score(top):
    out = _dense(2)
    box = (20.0, 20.0, 40.0, 44.0)
    rows = resolve_objective(Objective(box=box, top=top), [("output", out)], classes=None, names=None,
                             input_hw=(64, 64))
    # the plain way: every candidate decoded and sorted by score, then the most overlap, best score first
    allx = decode([out[0].astype(np.float64)], "yolo", image_hw=(64, 64), min_score=-np.inf, with_nms=False,
                  max_detections=10**9)
    iou = box_iou(np.asarray(box), allx.boxes)[0]
    order = np.lexsort((-allx.scores, -iou))[:top]
    np.testing.assert_array_equal(rows.boxes, allx.boxes[order])
    np.testing.assert_array_equal(rows.classes, allx.classes[order])
    np.testing.assert_array_equal(rows.values, allx.scores[order] + iou[order])
    shown = decode([out[0].astype(np.float64)], "yolo", image_hw=(64, 64), min_score=0.25, max_detections=100)
    np.testing.assert_array_equal(rows.detections[0].slots, shown.slots)


@pytest.mark.parametrize("objective", [Objective(box=(10.0, 12.0, 30.0, 40.0)), Objective(top=2),
                                       Objective(box=(10.0, 12.0, 30.0, 40.0), layout="yolo-obj")])
@pytest.mark.parametrize("classes", [None, [3]])
def test_a_float32_output_gives_the_rows_of_its_float64_copy(objective, classes):
    out = _dense(5)
    got, want = (resolve_objective(objective, [("output", o)], classes=classes, names=None, input_hw=(64, 64))
                 for o in (out, out.astype(np.float64)))
    for a, b in ((got.cotangents, want.cotangents), (got.values, want.values), (got.boxes, want.boxes),
                 (got.classes, want.classes), (got.images, want.images)):
        np.testing.assert_array_equal(a, b)
    assert got.cotangents.dtype == np.float32
    for a, b in zip(got.detections, want.detections):
        np.testing.assert_array_equal(a.slots, b.slots)
        np.testing.assert_array_equal(a.scores, b.scores)
