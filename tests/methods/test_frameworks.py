"""The methods on real frameworks: hand-set PyTorch networks, the trained demo CNN, a TFLite file.

The PyTorch networks are the numpy ones of test_exact.py with the same
weights, so the expected maps are the same hand-worked numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from convlens import methods
from convlens._errors import UnsupportedModel
from convlens.adapters import DATA_DIR, open_model
from convlens.images import load_image, prepare

CH0 = np.array([[1.0, 2.0], [3.0, 4.0]])
CH1 = 5.0 - CH0
X = CH0.reshape(1, 2, 2, 1).astype(np.float32)


def _torch_tiny() -> nn.Module:
    """1x1 conv (weights 1, -1; biases 0, 5) -> ReLU -> global mean -> linear [[1, 2], [-1, 1]]."""
    net = nn.Sequential(
        nn.Conv2d(1, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
        net[0].bias.copy_(torch.tensor([0.0, 5.0]))
        net[4].weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))
        net[4].bias.zero_()
    return net.eval()


@pytest.mark.parametrize(
    "name, target, expected",
    [
        ("gradcam", 0, 0.25 * CH0 + 0.5 * CH1),
        ("hirescam", 0, 0.25 * CH0 + 0.5 * CH1),
        ("xgradcam", 0, 0.25 * CH0 + 0.5 * CH1),
        ("gradcam", 1, 0.25 * (CH1 - CH0)),
        ("layercam", 1, CH1 / 4),
        ("gradcam++", 0, 2 / 9 * CH0 + 2 / 7 * CH1),
        ("scorecam", 0, (1 - 1 / (1 + math.exp(-5 / 6))) * CH0 + 1 / (1 + math.exp(-5 / 6)) * CH1),
    ],
)
def test_torch_hand_set_network(name, target, expected):
    adapter = open_model(_torch_tiny())
    r = methods.create(name).compute(adapter, X, target=target)
    assert r.layer.name == "1"  # the ReLU after the last conv
    np.testing.assert_allclose(r.raw[0], expected, rtol=1e-5, atol=1e-6)
    assert r.scores[0] == pytest.approx([7.5, 0.0][target], abs=1e-6)


def test_torch_eigen_cam_of_rank_one_activations():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1))
        net[0].bias.zero_()
    r = methods.create("eigencam").compute(open_model(net, input_shape=(2, 2, 1)), X)
    np.testing.assert_allclose(r.raw[0], (CH0 - 2.5) * math.sqrt(5), rtol=1e-5)


def test_torch_linear_model_attributions():
    net = nn.Sequential(nn.Flatten(), nn.Linear(9, 1, bias=False)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, -1.0, 2.0, 0.5, 1.0, 1.0, -2.0, 1.0, 3.0]]))
    w = net[1].weight.detach().numpy().reshape(3, 3)
    z = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    adapter = open_model(net, input_shape=(3, 3, 1))
    occ = methods.create("occlusion", window=1, stride=1).compute(adapter, z, target=0)
    np.testing.assert_allclose(occ.raw[0, ..., 0], w * z[0, ..., 0], rtol=1e-5)
    ig = methods.create("ig", steps=3).compute(adapter, z, target=0)
    np.testing.assert_allclose(ig.raw[0, ..., 0], w * z[0, ..., 0], rtol=1e-5)
    assert abs(ig.extra["completeness_gap"][0]) < 1e-4
    sal = methods.create("saliency").compute(adapter, z, target=0)
    np.testing.assert_allclose(sal.raw[0, ..., 0], np.abs(w), rtol=1e-6)
    ones = nn.Sequential(nn.Flatten(), nn.Linear(9, 1, bias=False)).eval()
    with torch.no_grad():
        ones[1].weight.fill_(1.0)
    window = methods.create("occlusion", window=2, stride=1).compute(
        open_model(ones, input_shape=(3, 3, 1)), z, target=0
    )
    np.testing.assert_allclose(
        window.raw[0, ..., 0], [[12, 14, 16], [18, 20, 22], [24, 26, 28]], rtol=1e-5
    )


# --------------------------------------------------------------------------- the trained demo CNN


@pytest.fixture(scope="module")
def demo():
    adapter = open_model("demo")
    x, _ = prepare(load_image(DATA_DIR / "digit.png"), size=(28, 28), channels=1, preprocess="unit")
    return adapter, x[None]


@pytest.mark.keras
@pytest.mark.gradients
@pytest.mark.parametrize("name", methods.names())
def test_every_method_on_the_demo_model(demo, name):
    adapter, x = demo
    options = {"smoothgrad": {"samples": 8}, "ig": {"steps": 16}}.get(name, {})
    r = methods.create(name, **options).compute(adapter, x)
    assert r.maps.shape == (1, 28, 28) and r.maps.dtype == np.float32
    assert np.isfinite(r.maps).all() and np.isfinite(r.raw).all()
    low = -1.0 if r.signed else 0.0
    assert r.maps.min() >= low and r.maps.max() <= 1.0 and r.maps.max() > 0.99
    assert r.maps.std() > 0.05 and not r.flat.any()
    assert r.classes.tolist() == [7] and r.scores[0] > 0.9  # the demo digit is a 7, softmax output
    if name == "ig":  # the logit before the softmax is integrated: completeness within 5%
        assert r.extra["logits"]
        assert abs(r.extra["completeness_gap"][0]) < 0.05 * abs(r.extra["score_difference"][0])
    if r.kind == "cam":
        assert r.layer.name == "conv3" and r.raw.shape == (1, 7, 7)
    else:
        assert r.raw.shape == (1, 28, 28, 1)


# --------------------------------------------------------------------------- TFLite: forward only


@pytest.fixture(scope="module")
def tflite_pair(tmp_path_factory):
    import keras
    import tensorflow as tf

    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            L.Conv2D(6, 3, activation="relu", name="conv"),
            L.Conv2D(8, 3, activation="relu", name="conv2"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(4, name="fc"),
        ],
        name="tiny",
    )
    rng = np.random.default_rng(5)
    for layer in model.layers:
        layer.set_weights(
            [(rng.normal(size=w.shape) * 0.5).astype("float32") for w in layer.get_weights()]
        )
    path = tmp_path_factory.mktemp("methods") / "tiny.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    x = rng.uniform(0, 1, size=(2, 12, 12, 3)).astype(np.float32)
    return open_model(model), open_model(path), x


def test_forward_only_methods_run_on_tflite_and_agree_with_keras(tflite_pair):
    keras_adapter, tflite, x = tflite_pair
    for name in methods.forward_only():
        options = {"occlusion": {"window": 4, "stride": 2}}.get(name, {})
        a = methods.create(name, **options).compute(keras_adapter, x, target=[1, 3])
        b = methods.create(name, **options).compute(tflite, x, target=[1, 3])
        assert b.maps.shape == (4, 12, 12) and (b.layer is None) == (name == "occlusion")
        np.testing.assert_allclose(b.maps, a.maps, atol=1e-4)
        np.testing.assert_allclose(b.scores, a.scores, rtol=1e-4, atol=1e-5)


def test_gradient_methods_on_tflite_name_the_forward_only_ones(tflite_pair):
    _, tflite, x = tflite_pair
    with pytest.raises(UnsupportedModel) as e:
        methods.create("gradcam").compute(tflite, x)
    assert "scorecam, eigencam, occlusion" in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- default layers


@pytest.mark.slow
@pytest.mark.parametrize(
    "source, layer",
    [("torchvision:vgg16", "features.29"), ("torchvision:mobilenet_v2", "features.18")],
)
def test_default_layer_of_torchvision_models(source, layer):
    """VGG16: relu5_3 (14x14, the Grad-CAM paper's layer), MobileNetV2: the last conv block
    (conv, BN, ReLU6; its output is the ReLU6's), pytorch-grad-cam's ``model.features[-1]``."""
    assert methods.default_layer(open_model(source, weights="none").layers()).name == layer


@pytest.mark.keras
@pytest.mark.slow
@pytest.mark.parametrize("source, layer", [("vgg16", "block5_conv3"), ("mobilenet_v2", "out_relu")])
def test_default_layer_of_keras_applications(source, layer):
    assert methods.default_layer(open_model(source, weights="none").layers()).name == layer
