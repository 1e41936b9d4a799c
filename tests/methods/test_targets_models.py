"""Targets beyond the classifier on real architectures: YOLOv8n (PyTorch and ONNX), torchvision
detectors against pytorch-grad-cam, segmentation regions, raw output values, embeddings."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics builds from YAML; it must never download

torch = pytest.importorskip("torch")

from convlens import Lens  # noqa: E402
from convlens._errors import BadArgument  # noqa: E402
from convlens.adapters import open_model  # noqa: E402
from convlens.methods import create, default_layer  # noqa: E402
from convlens.methods.targets import Objective  # noqa: E402


def _scaled(m: np.ndarray) -> np.ndarray:
    m = np.maximum(np.asarray(m, np.float64), 0)
    return m / m.max() if m.max() > 0 else m


# --------------------------------------------------------------------------- YOLOv8n


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    """YOLOv8n with random weights (from its YAML), and the same network exported to ONNX."""
    from ultralytics import YOLO
    from ultralytics.nn.modules import Detect

    torch.manual_seed(0)
    model = YOLO("yolov8n.yaml").model.eval()
    path = tmp_path_factory.mktemp("yolo") / "yolov8n.onnx"
    heads = [m for m in model.modules() if isinstance(m, Detect)]
    for h in heads:  # what ultralytics' own ONNX export returns: the (N, 4 + C, A) tensor alone
        h.export, h.format = True, "onnx"
    try:
        torch.onnx.export(model, torch.zeros(1, 3, 224, 256), str(path), input_names=["images"],
                          output_names=["output0"], dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
                          opset_version=17, dynamo=False)
    finally:
        for h in heads:
            h.export = False
    return model, path


@pytest.fixture(scope="module")
def yolo_adapters(yolo):
    """The two adapters, their layer tables probed once for the module."""
    model, path = yolo
    return open_model(model, input_shape=(224, 256, 3)), open_model(str(path))


def _image(h: int = 224, w: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, h, w, 3), dtype=np.float32)


def test_yolo_box_target_gradcam_agrees_between_pytorch_and_onnx(yolo_adapters):
    pt, ox = yolo_adapters
    x = _image()
    # the box of one anchor's own prediction: IoU 1 with that anchor alone
    dense = pt.run(x, [], lambda i, a: None)[0]
    a = int(np.argmax(dense[:, 4 + 3]))
    cx, cy, w, h = dense[a, :4]
    box = (float(cx - w / 2), float(cy - h / 2), float(cx + w / 2), float(cy + h / 2))
    gradcam = create("gradcam")
    got = [gradcam.compute(ad, x, target=3, objective=Objective(box=box)) for ad in (pt, ox)]
    assert got[0].target.kind == "detection"
    np.testing.assert_allclose(got[0].target.boxes, got[1].target.boxes, rtol=1e-4, atol=1e-3)
    assert got[0].scores[0] == pytest.approx(got[1].scores[0], rel=1e-4)
    assert got[0].scores[0] > 1.0  # the class score plus an IoU of 1
    assert not got[0].flat[0]
    np.testing.assert_allclose(_scaled(got[0].raw[0]), _scaled(got[1].raw[0]), atol=1e-4)


def test_yolo_default_layer_is_in_the_neck_and_eigencam_needs_no_class(yolo_adapters):
    for ad in yolo_adapters:
        layer = default_layer(ad.layers())
        # model.15: the neck's stride-8 output, which every detection scale is computed from (the
        # block's own row where the table has container rows, else a layer inside it)
        name = layer.name.strip("/").replace("/", ".")
        assert name == "model.15" or name.startswith(("model.15.", "model.0.act")), layer.name
        res = create("eigencam").compute(ad, _image())
        assert res.layer.index == layer.index and not res.flat[0]
        assert res.raw.shape[1:] == (28, 32)  # stride 8 of the 224x256 input


def test_yolo_top_detections_one_map_each(yolo_adapters):
    ad = yolo_adapters[0]
    res = create("gradcam").compute(ad, _image(), objective=Objective(top=3))
    assert len(res) == 3 and res.target.boxes.shape == (3, 4)
    assert np.all(np.diff(res.scores) <= 1e-12)  # best first


# --------------------------------------------------------------------------- torchvision detectors


def _torchvision(name: str):
    import torchvision

    torch.manual_seed(0)
    kw = {"weights": None, "weights_backbone": None, "min_size": 224, "max_size": 224}
    if "rcnn" in name:  # random heads score every class alike: keep the detections, few of them
        kw.update(box_score_thresh=0.0, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100,
                  box_detections_per_img=20)
    else:
        kw.update(score_thresh=0.0, topk_candidates=100, detections_per_img=20)
    return getattr(torchvision.models.detection, name)(**kw).eval()


@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v3_large_fpn", "retinanet_resnet50_fpn"])
def test_torchvision_box_target_agrees_with_pytorch_grad_cam(name):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    model = _torchvision(name)
    ad = open_model(model, input_shape=(224, 224, 3))
    layer = default_layer(ad.layers())
    assert "fpn.inner_blocks" in layer.name  # the top of the top-down path: every level reads it
    x = _image(224, 224)
    outs = dict(ad.outputs(x))
    det = outs["detections"][0]
    assert det.shape[1] == 6 and det[0, 5] >= 0
    box = det[0, :4] + np.array([2.0, -3.0, 4.0, 1.0])  # overlaps detection 0 best
    label = int(det[0, 5])
    ours = create("gradcam").compute(ad, x, target=label, objective=Objective(box=tuple(box)))
    assert ours.layer.index == layer.index
    np.testing.assert_allclose(ours.target.boxes[0], det[0, :4])

    cam = GradCAM(model=model, target_layers=[dict(model.named_modules())[layer.name]])
    try:
        cam(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
            targets=[FasterRCNNBoxScoreTarget(labels=[label], bounding_boxes=[box])])
        acts = cam.activations_and_grads.activations[0].numpy().transpose(0, 2, 3, 1)
        grads = cam.activations_and_grads.gradients[0].numpy().transpose(0, 2, 3, 1)
    finally:
        cam.activations_and_grads.release()
    theirs = (acts * grads.mean(axis=(1, 2))[:, None, None, :]).sum(-1)
    # before the ReLU (a random head may leave nothing after it), scaled by the largest magnitude
    peak = np.abs(theirs[0]).max()
    assert peak > 0
    np.testing.assert_allclose(ours.raw[0] / peak, theirs[0] / peak, atol=1e-4)


# --------------------------------------------------------------------------- segmentation


class _TwoColours(torch.nn.Module):
    """Hand-set segmenter: class 0's score is the red channel, class 1's the green one, per pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(3, 2, 1, bias=False)
        self.head = torch.nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = 1
            self.features.weight[1, 1] = 1
            self.head.weight.copy_(torch.eye(2)[:, :, None, None])
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        return self.head(self.relu(self.features(x)))


def _halves() -> np.ndarray:
    img = np.full((1, 32, 32, 3), 0.05, np.float32)
    img[:, :, :16, 0] = 1.0  # red on the left
    img[:, :, 16:, 1] = 1.0  # green on the right
    return img


def test_segmentation_box_and_mask_targets_are_hot_inside_and_cold_outside():
    ad = open_model(_TwoColours(), input_shape=(32, 32, 3))
    x = _halves()
    gradcam = create("gradcam")
    left = np.zeros((64, 64), np.uint8)  # a mask of another size: resized, with a note
    left[:, :32] = 255
    for objective, cls, hot in ((Objective(box=(0, 0, 16, 32)), 0, slice(None, 16)),
                                (Objective(box=(16, 0, 32, 32)), 1, slice(16, None)),
                                (Objective(mask=left), 0, slice(None, 16)),
                                (Objective(mask="predicted"), 1, slice(16, None))):
        res = gradcam.compute(ad, x, target=cls, objective=objective, layer="relu")
        m = res.maps[0]
        cold = slice(16, None) if hot.start is None else slice(None, 16)
        assert m[:, hot].min() > 0.9 and m[:, cold].max() < 0.1, objective
        assert res.target.kind == "segmentation"
    res = gradcam.compute(ad, x, target=0, objective=Objective(mask=left), layer="relu")
    assert any("resized" in n for n in res.target.notes)


def test_deeplab_default_layer_is_the_aspp_output_and_region_targets_run():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, aux_loss=False).eval()
    ad = open_model(model, input_shape=(64, 64, 3))
    layer = default_layer(ad.layers())
    assert "classifier.0.project" in layer.name
    res = create("gradcam").compute(ad, _image(64, 64), target=3, objective=Objective(box=(8, 8, 40, 48)))
    assert res.target.kind == "segmentation" and res.target.mask.shape[1:] == (64, 64)
    assert res.target.mask[0, 8:48, 8:40].all() and res.target.mask[0].sum() == 40 * 32


# --------------------------------------------------------------------------- regression, embeddings, errors


class _Regressor(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_regression_output_index_is_signed_and_checked():
    ad = open_model(_Regressor(), input_shape=(16, 16, 3))
    x = _image(16, 16)
    out = ad.run(x, [], lambda i, a: None)
    res = create("saliency").compute(ad, x, objective=Objective(output_index=2))
    assert res.target.kind == "index" and res.scores[0] == pytest.approx(float(out[0, 2]), rel=1e-6)
    with pytest.raises(BadArgument, match="output index 3 is out of range"):
        create("gradcam").compute(ad, x, objective=Objective(output_index=3))
    with pytest.raises(BadArgument, match="no output named 'logits'"):
        create("gradcam").compute(ad, x, objective=Objective(output="logits"))
    with pytest.raises(BadArgument, match="output 2 does not exist"):
        create("gradcam").compute(ad, x, objective=Objective(output=2))


class _Embedder(torch.nn.Module):
    """Mirror-equivariant features (kernels symmetric left-right), pooled to 2x2 and flattened: mirroring
    the image permutes the embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_((self.conv.weight + self.conv.weight.flip(-1)) / 2)
        self.pool = torch.nn.AdaptiveAvgPool2d(2)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def test_siamese_reference_maps_are_mirror_symmetric_and_not_blank():
    lens = Lens(_Embedder(), input_shape=(24, 24, 3), preprocess="unit")
    a = (np.random.default_rng(3).random((24, 24, 3)) * 255).astype(np.uint8)
    b = a[:, ::-1].copy()
    ab = lens.heatmaps(a, "gradcam", reference=b, layer="conv")
    ba = lens.heatmaps(b, "gradcam", reference=a, layer="conv")
    e1, e2 = ab.entries[0], ba.entries[0]
    assert e1.kind == "embedding" and not e1.flat and e1.map.max() > 0
    assert e1.score == pytest.approx(e2.score, rel=1e-6)  # cos(e(a), e(b)) both ways
    np.testing.assert_allclose(e1.map, e2.map[:, ::-1], atol=1e-4)
    with pytest.raises(BadArgument, match="not a vector"):
        Lens(_TwoColours(), input_shape=(32, 32, 3), preprocess="unit").heatmaps(a[:, :, :3], "gradcam",
                                                                                 reference=a, size=(32, 32))


def test_bad_boxes_and_masks_are_refused():
    ad = open_model(_TwoColours(), input_shape=(32, 32, 3))
    x = _halves()
    with pytest.raises(BadArgument, match="lies outside"):
        create("gradcam").compute(ad, x, target=0, objective=Objective(box=(40, 40, 60, 60)))
    with pytest.raises(BadArgument, match="no non-zero pixel"):
        create("gradcam").compute(ad, x, target=0, objective=Objective(mask=np.zeros((8, 8))))
    with pytest.raises(BadArgument, match="layouts known"):
        create("gradcam").compute(open_model(_Regressor(), input_shape=(16, 16, 3)), _image(16, 16),
                                  objective=Objective(top=2))


class _Dense(torch.nn.Module):
    """A YOLO-style dense head on a tiny backbone: ``(N, 4 + 2, A)``, boxes cx, cy, w, h in pixels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.head = torch.nn.Conv2d(8, 6, 1)

    def forward(self, x):
        y = self.head(torch.relu(self.conv(x))).flatten(2)  # (N, 6, A)
        boxes = torch.sigmoid(y[:, :4]) * 32
        return torch.cat([boxes, torch.sigmoid(y[:, 4:])], dim=1)


def test_report_predictions_list_detections_and_class_areas():
    img = (np.random.default_rng(5).random((32, 32, 3)) * 255).astype(np.uint8)
    det = Lens(_Dense(), input_shape=(32, 32, 3), preprocess="unit").report(img, sections=["predictions"])
    html = det.html
    assert "is a detector (yolo output)" in html and "not a classifier" not in html
    seg = Lens(_TwoColours(), input_shape=(32, 32, 3), preprocess="unit").report(
        (_halves()[0] * 255).astype(np.uint8), sections=["predictions"])
    html = seg.html
    assert "is a segmenter" in html and "50.0%" in html
