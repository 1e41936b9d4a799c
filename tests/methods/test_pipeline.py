"""The pipeline around the methods: registry, targets, layers, progress and every bad input."""

from __future__ import annotations

import numpy as np
import pytest

from convlens import methods
from convlens._errors import BadArgument, BadImage, ConvlensError, LayerNotFound, UnsupportedModel
from convlens.core.layers import LayerInfo
from convlens.methods.targets import box_mask, class_scores, parse_classes

X = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and isinstance(exc.value, ConvlensError)
    return text


# --------------------------------------------------------------------------- registry


def test_registry_names_and_capabilities():
    assert methods.names() == [
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
        "hirescam",
        "scorecam",
        "eigencam",
        "saliency",
        "smoothgrad",
        "ig",
        "occlusion",
    ]
    assert methods.forward_only() == ["scorecam", "eigencam", "occlusion"]
    assert set(methods.gradient_methods()) | set(methods.forward_only()) == set(methods.names())
    for name in methods.names():
        cls = methods.get(name)
        assert cls.name == name and cls.title and cls.paper.startswith("https://")
        assert cls.kind in ("cam", "input")
    assert methods.get("Grad-CAM++") is methods.GradCAMPlusPlus
    assert methods.get("integrated_gradients") is methods.IntegratedGradients
    assert methods.get("Score-CAM") is methods.ScoreCAM


def test_unknown_method_and_option():
    with pytest.raises(BadArgument) as e:
        methods.get("gradcan")
    assert "did you mean gradcam" in _one_line(e)
    with pytest.raises(BadArgument) as e:
        methods.create("ig", step=3)
    assert "Integrated Gradients" in _one_line(e) and "step" in str(e.value)
    for name, bad in [
        ("ig", {"steps": 0}),
        ("ig", {"method": "simpson"}),
        ("smoothgrad", {"samples": 1.5}),
        ("smoothgrad", {"noise": -1}),
        ("occlusion", {"window": 0}),
    ]:
        with pytest.raises(BadArgument):
            methods.create(name, **bad)


# --------------------------------------------------------------------------- targets


NAMES = ["tabby cat", "tiger cat", "golden retriever", "crane"]


def test_classes_by_index_name_and_list():
    assert parse_classes(None, 4, NAMES) is None
    assert parse_classes(2, 4, NAMES) == [2]
    assert parse_classes("2", 4, NAMES) == [2]
    assert parse_classes("Golden_Retriever", 4, NAMES) == [2]
    assert parse_classes("tiger cat, 0", 4, NAMES) == [1, 0]
    assert parse_classes(["crane", 3, "1"], 4, NAMES) == [3, 3, 1]


def test_bad_classes_say_what_to_do():
    with pytest.raises(BadArgument) as e:
        parse_classes(4, 4, NAMES)
    assert "out of range" in _one_line(e) and "0-3" in str(e.value)
    with pytest.raises(BadArgument) as e:
        parse_classes("tabby", 4, NAMES)
    assert "closest: 'tabby cat'" in _one_line(e)
    with pytest.raises(BadArgument) as e:
        parse_classes("cat", 4, None)
    assert "class names are unknown" in _one_line(e)
    with pytest.raises(BadArgument):
        parse_classes("", 4, NAMES)
    with pytest.raises(BadArgument):
        parse_classes(True, 4, NAMES)


def test_class_names_from_the_adapter_or_the_caller(tiny):
    tiny.class_names = ["dog", "cat"]
    r = methods.create("gradcam").compute(tiny, X, target="cat")
    assert r.classes.tolist() == [1] and r.labels == ["cat"]
    r = methods.create("gradcam").compute(tiny, X, target="kat", class_names=["hund", "kat"])
    assert r.labels == ["kat"]
    with pytest.raises(BadArgument) as e:
        methods.create("gradcam").compute(tiny, X, target="cta")
    assert "closest: 'cat'" in _one_line(e)
    with pytest.raises(BadArgument):  # out of range, caught before any work from the names
        methods.create("gradcam").compute(tiny, X, target=2)
    assert tiny.items_grad == 2 and tiny.items_run == 0


def test_class_out_of_range_without_names_comes_from_the_adapter(tiny):
    with pytest.raises(BadArgument) as e:
        methods.create("gradcam").compute(tiny, X, target=5)
    assert "out of range" in _one_line(e)
    with pytest.raises(BadArgument) as e:
        methods.create("scorecam").compute(tiny, X, target=5)
    assert "out of range" in _one_line(e)


def test_box_mask_and_class_scores():
    np.testing.assert_array_equal(box_mask((0, 0, 2, 1), (2, 2), (2, 2)), [[1, 0], [1, 0]])
    # A 4x4 output of an 8x8 input: centres at 1, 3, 5, 7.
    np.testing.assert_array_equal(box_mask((2, 0, 6, 4), (8, 8), (4, 4))[:, 0], [0, 1, 1, 0])
    with pytest.raises(BadArgument):
        box_mask((3, 3, 3, 4), (8, 8), (4, 4))
    with pytest.raises(BadArgument):
        box_mask((0, 0, 0.5, 0.5), (8, 8), (4, 4))  # holds no output centre
    with pytest.raises(BadArgument):
        box_mask("top", (8, 8), (4, 4))
    out = np.arange(2 * 2 * 2 * 3, dtype=float).reshape(2, 2, 2, 3)
    # Item 0 holds (position * 3 + class): class 2 sums to 18 + 4 * 2, class 0 to 18.
    np.testing.assert_allclose(class_scores(out, [2, 0])[0], [26, 18])
    np.testing.assert_allclose(
        class_scores(out, [1, 1], per_row=True), [1 + 4 + 7 + 10, 13 + 16 + 19 + 22]
    )


def test_segmentation_needs_a_class_and_a_classifier_no_box(cam_net, tiny):
    seg = cam_net([[1.0, -1.0]], [0.0, 5.0], [[1.0, -1.0], [2.0, 1.0]], [0.0, 0.0], seg=True)
    with pytest.raises(BadArgument) as e:
        methods.create("gradcam").compute(seg, X)
    assert "name the class" in _one_line(e)
    with pytest.raises(BadArgument) as e:
        methods.create("eigencam").compute(tiny, X, box=(0, 0, 1, 1))
    assert "segmentation" in _one_line(e)


# ------------------------------------------------------------------ capability, layers, images


def test_gradient_method_on_a_forward_only_model_fails_before_any_work(cam_net):
    net = cam_net([[1.0, -1.0]], [0.0, 5.0], [[1.0, -1.0], [2.0, 1.0]], [0.0, 0.0], grads=False)
    net.layers = None  # reading the layer table would fail too: the check comes first
    for name in methods.gradient_methods():
        with pytest.raises(UnsupportedModel) as e:
            methods.create(name).compute(net, X)
        assert "forward-only methods by name: scorecam, eigencam, occlusion" in _one_line(e)
    assert net.items_run == 0


def test_cam_layer_choice(tiny, linear_net):
    assert methods.create("gradcam").compute(tiny, X, layer="conv").layer.name == "conv"
    assert methods.create("gradcam").compute(tiny, X, layer=1).layer.name == "conv"
    with pytest.raises(BadArgument) as e:
        methods.create("gradcam").compute(tiny, X, layer="gap")
    assert "layers with maps: conv ?x?, relu ?x?" in _one_line(e)
    with pytest.raises(BadArgument) as e:
        methods.create("gradcam").compute(tiny, X, layer="conv,relu")
    assert "names 2 layers" in _one_line(e)
    with pytest.raises(LayerNotFound):
        methods.create("gradcam").compute(tiny, X, layer="conv9")
    with pytest.raises(UnsupportedModel) as e:
        methods.create("eigencam").compute(linear_net(np.ones((2, 2, 1, 3))), X)
    assert "input attribution" in _one_line(e)
    # Input attributions take no layer: it is ignored.
    assert methods.create("occlusion").compute(tiny, X, layer="conv").layer is None


def _row(i, name, kind, shape):
    return LayerInfo(i, name, "T", kind, shape, parents=(i - 1,) if i else ())


def test_default_layer_rule_on_tables():
    vgg = [
        _row(0, "in", "input", (224, 224, 3)),
        _row(1, "conv5_3", "conv", (14, 14, 512)),
        _row(2, "relu5_3", "act", (14, 14, 512)),
        _row(3, "pool5", "pool", (7, 7, 512)),
        _row(4, "flatten", "reshape", (25088,)),
        _row(5, "fc", "dense", (1000,)),
    ]
    assert methods.default_layer(vgg).name == "relu5_3"
    resnet = [
        _row(0, "in", "input", (224, 224, 3)),
        _row(1, "conv2", "conv", (7, 7, 512)),
        _row(2, "bn2", "norm", (7, 7, 512)),
        _row(3, "down", "conv", (7, 7, 512)),
        _row(4, "relu#2", "act", (7, 7, 512)),
        _row(5, "avgpool", "pool", (1, 1, 512)),
        _row(6, "fc", "dense", (1000,)),
    ]
    assert methods.default_layer(resnet).name == "relu#2"
    fcn = [
        _row(0, "in", "input", (None, None, 3)),
        _row(1, "c1", "conv", (None, None, 8)),
        _row(2, "r1", "act", (None, None, 8)),
        _row(3, "head", "conv", (None, None, 5)),
    ]
    assert methods.default_layer(fcn).name == "r1"  # not the model's output
    pools = [
        _row(0, "in", "input", (8, 8, 3)),
        _row(1, "p", "pool", (4, 4, 3)),
        _row(2, "d", "dense", (2,)),
    ]
    assert methods.default_layer(pools).name == "p"


def test_constant_and_malformed_images(tiny):
    flat = np.stack([X[0], np.full((2, 2, 1), 0.5, np.float32)])
    for name in ("gradcam", "eigencam", "saliency"):
        with pytest.raises(BadImage) as e:
            methods.create(name).compute(tiny, flat)
        assert "image 1 of the batch has the same value at every pixel" in _one_line(e)
    with pytest.raises(BadArgument):
        methods.create("gradcam").compute(tiny, X[0])
    nan = X.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(BadImage):
        methods.create("gradcam").compute(tiny, nan)


def test_flat_maps_are_reported_not_hidden(cam_net):
    # Every activation negative: the ReLU gives zeros, the CAM carries no signal.
    net = cam_net([[1.0]], [-100.0], [[1.0]], [0.0])
    r = methods.create("gradcam").compute(net, X)
    assert r.flat.tolist() == [True] and not r.maps.any()


def test_baselines(tiny):
    ig = methods.create("ig", baseline="black", steps=4)
    r = ig.compute(tiny, X * 50, target=0, preprocess="tf")  # black through the "tf" preset is -1
    np.testing.assert_allclose(
        r.raw.sum() - r.extra["completeness_gap"][0], r.extra["score_difference"][0], rtol=1e-5
    )
    with pytest.raises(BadArgument):
        methods.create("ig", baseline="white").compute(tiny, X)
    with pytest.raises(BadArgument):
        methods.create("ig", baseline=np.zeros((3, 3, 1))).compute(tiny, X)
    custom = methods.create("ig", baseline=np.full((2, 2, 1), 1.0, np.float32), steps=4).compute(
        tiny, X
    )
    assert custom.raw[0, 0, 0, 0] == pytest.approx(0.0)  # the pixel equals the baseline there


class _Recorder:
    def __init__(self):
        self.events = []

    def start(self, total, label):
        self.events.append(("start", total, label))

    def advance(self, n=1):
        self.events.append(("advance", n))

    def finish(self):
        self.events.append(("finish",))


@pytest.mark.parametrize(
    "name, options",
    [
        ("scorecam", {}),
        ("ig", {"steps": 5}),
        ("smoothgrad", {"samples": 3}),
        ("occlusion", {"window": 1}),
    ],
)
def test_slow_methods_report_progress(tiny, name, options):
    rec = _Recorder()
    methods.create(name, batch_size=2, **options).compute(tiny, X, progress=rec)
    assert rec.events[0][0] == "start" and rec.events[-1] == ("finish",)
    total = rec.events[0][1]
    assert sum(e[1] for e in rec.events if e[0] == "advance") == total and total > 1
    assert methods.get(name).slow


def test_a_known_output_saves_the_top1_forward_pass(tiny):
    out = tiny.run(X, [], lambda *a: None)
    tiny.items_run = 0
    r = methods.create("gradcam").compute(tiny, X, output=out)
    assert r.classes.tolist() == [0] and tiny.items_run == 0 and tiny.items_grad == 1
    r = methods.create("occlusion", window=1).compute(tiny, X, output=out)
    assert tiny.items_run == 4  # the four occluded pixels only
    with pytest.raises(BadArgument):
        methods.create("gradcam").compute(tiny, X, output=np.zeros((2, 2)))


def test_forward_only_methods_check_classes_against_the_output(cam_net):
    # A segmentation output: the layer table does not say how many classes; the output does.
    seg = cam_net([[1.0, -1.0]], [0.0, 5.0], [[1.0, -1.0], [2.0, 1.0]], [0.0, 0.0], seg=True)
    seg._rows[-1] = LayerInfo(3, "head", "Conv", "conv", None, parents=(2,))
    for name in ("occlusion", "scorecam", "eigencam"):
        with pytest.raises(BadArgument) as e:
            methods.create(name).compute(seg, X, target=2)
        assert "out of range" in _one_line(e)
    with pytest.raises(BadArgument):
        methods.create("gradcam", batch_size=0)
    with pytest.raises(BadArgument):
        methods.create("scorecam", memory="1GB")


def test_the_default_layer_follows_a_table_edited_in_place():
    from convlens.methods.base import resolve_layer

    table = [LayerInfo(0, "input", "Input", "input", (16, 16, 3)),
             LayerInfo(1, "conv1", "Conv2d", "conv", (16, 16, 4), parents=(0,)),
             LayerInfo(2, "conv2", "Conv2d", "conv", (8, 8, 4), parents=(1,)),
             LayerInfo(3, "head", "Linear", "dense", (10,), parents=(2,))]
    assert resolve_layer(table, None).name == "conv2"
    assert resolve_layer(table, None).name == "conv2"  # asked again: the kept answer
    table[2] = LayerInfo(2, "pool", "AvgPool", "pool", (8, 8, 4), parents=(1,))
    assert resolve_layer(table, None).name == "conv1"
