"""core.detection: IoU, NMS, decoding, and the IoU gradient that a box-score target's cotangent uses."""

from __future__ import annotations

import numpy as np
import pytest

from convlens.core.detection import box_iou, decode, dense_box_gradient, guess_layout, iou_gradient, nms


def test_box_iou_exact_on_integer_boxes():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(box_iou(a, b)[0], [25 / 175, 1.0, 0.0])


def test_nms_drops_the_overlapping_lower_box():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], float)
    keep = nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]


@pytest.mark.parametrize("box", [(2.0, 3.0, 9.0, 12.0), (-1.0, 4.0, 6.0, 7.5), (3.5, 1.0, 13.0, 8.0)])
def test_iou_gradient_matches_finite_differences(box):
    target = (1.0, 2.0, 8.0, 10.0)
    g = iou_gradient(box, target)
    eps = 1e-6
    for k in range(4):
        up, down = list(box), list(box)
        up[k] += eps
        down[k] -= eps
        t = np.array(target)
        fd = (box_iou(np.array(up), t)[0, 0] - box_iou(np.array(down), t)[0, 0]) / (2 * eps)
        assert g[k] == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_dense_box_gradient_is_the_chain_rule_to_cx_cy_w_h():
    row = np.array([5.5, 6.0, 6.0, 7.0])  # cx, cy, w, h: no edge on a target edge (a kink)
    target = (1.0, 2.0, 8.0, 10.0)
    g = dense_box_gradient("yolo", row, target)
    eps = 1e-6

    def iou(r):
        cx, cy, w, h = r
        return box_iou(np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), np.array(target))[0, 0]

    for k in range(4):
        up, down = row.copy(), row.copy()
        up[k] += eps
        down[k] -= eps
        assert g[k] == pytest.approx((iou(up) - iou(down)) / (2 * eps), rel=1e-5, abs=1e-8)


def test_decode_yolo_both_orders_and_objectness():
    # 8 anchors, 2 classes; anchor 2 is a class-1 box at (10, 20, 30, 40)
    dense = np.zeros((8, 6))
    dense[:, :4] = [50, 50, 10, 10]
    dense[2] = [20, 30, 20, 20, 0.1, 0.9]
    dense[4] = [21, 31, 20, 20, 0.8, 0.2]  # overlaps anchor 2 but is class 0: kept by per-class NMS
    for out in (dense, dense.T):
        d = decode([out], "yolo", image_hw=(64, 64), min_score=0.5)
        assert d.slots.tolist() == [2, 4]
        np.testing.assert_allclose(d.boxes[0], [10, 20, 30, 40])
        assert d.classes.tolist() == [1, 0]
    obj = np.concatenate([dense[:, :4], np.full((8, 1), 0.5), dense[:, 4:]], axis=1)
    d = decode([obj], "yolo-obj", image_hw=(64, 64), min_score=0.3)
    assert d.scores[0] == pytest.approx(0.45)


def test_decode_detr_and_torchvision():
    logits = np.array([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])  # query 1 is "no object"
    boxes = np.array([[0.5, 0.5, 0.5, 0.25], [0.1, 0.1, 0.1, 0.1]])
    d = decode([logits, boxes], "detr", image_hw=(100, 200), min_score=0.5)
    assert d.slots.tolist() == [0]
    np.testing.assert_allclose(d.boxes[0], [50, 37.5, 150, 62.5])
    tv = np.array([[1, 2, 3, 4, 0.9, 7], [0, 0, 0, 0, 0, -1]], float)
    d = decode([tv], "torchvision", image_hw=(10, 10), min_score=0.0)
    assert d.classes.tolist() == [7] and len(d) == 1
    assert guess_layout([(8400, 84)]) == "yolo" and guess_layout([(84, 8400)]) == "yolo"
    assert guess_layout([(100, 92), (100, 4)]) == "detr"
    assert guess_layout([(10,)]) is None


def test_a_torchvision_output_is_told_from_a_two_class_yolo_output():
    from convlens.core.detection import looks_like_torchvision

    tv = np.array([[1, 2, 3, 4, 0.9, 7], [0, 0, 0, 0, 0, -1]], float)
    yolo = np.array([[10, 12, 4, 6, 0.2, 0.7], [11, 12, 4, 6, 0.1, 0.3]], float)
    assert looks_like_torchvision(tv) and not looks_like_torchvision(yolo)


@pytest.mark.parametrize("layout", ["yolo", "yolo-obj"])
def test_a_float32_output_decodes_as_its_float64_copy(layout):
    # decoding reads a float32 output as it is (no float64 copy of the whole array): the same detections
    rng = np.random.default_rng(3)
    out = rng.random((300, 9), dtype=np.float32)
    out[:, :4] *= 64
    out[7, 5:] = out[7, 6]  # a tie between classes: the first wins in either precision
    out[9, 6] = np.nan  # a NaN score is dropped in either precision
    for dense in (out, out.T):
        for kw in ({"min_score": 0.3}, {"min_score": -np.inf, "with_nms": False, "max_detections": 10**9}):
            got = decode([dense], layout, image_hw=(64, 64), **kw)
            want = decode([dense.astype(np.float64)], layout, image_hw=(64, 64), **kw)
            assert got.boxes.dtype == got.scores.dtype == np.float64
            for a, b in ((got.boxes, want.boxes), (got.scores, want.scores), (got.classes, want.classes),
                         (got.slots, want.slots)):
                np.testing.assert_array_equal(a, b)


def test_candidates_selected_twice_are_two_decodes():
    from convlens.core.detection import candidates, select

    rng = np.random.default_rng(4)
    out = rng.random((500, 7), dtype=np.float32)
    out[:, :4] *= 32
    full = candidates([out], "yolo", image_hw=(32, 32))
    assert full.slots.tolist() == list(range(500))  # every anchor, in the output's order
    for kw in ({"min_score": 0.25, "max_detections": 100}, {"min_score": -np.inf, "max_detections": 10**9}):
        a, b = select(full, "yolo", **kw), decode([out], "yolo", image_hw=(32, 32), **kw)
        np.testing.assert_array_equal(a.slots, b.slots)
        np.testing.assert_array_equal(a.boxes, b.boxes)
    unordered = select(full, "yolo", min_score=-np.inf, with_nms=False, ordered=False)
    assert unordered.slots.tolist() == list(range(500))
