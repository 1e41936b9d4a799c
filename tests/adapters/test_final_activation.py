"""Every adapter's ``final_activation``: what makes the model's output, read from its graph.

The quantised TFLite classifier is the issue's case: a uint8 model whose
last op is SOFTMAX gives outputs in steps of 1/256 that do not sum to 1
(0.99x); read with the graph's word or the output's step they stay the model's
own probabilities instead of going through a second softmax.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convlens.adapters import open_model
from convlens.adapters.onnx import OnnxAdapter
from convlens.core.predictions import to_probabilities

RNG = np.random.default_rng(5)
pytestmark = pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning")

# --------------------------------------------------------------------------- Keras


def _keras_cases(keras):
    L = keras.layers

    def functional(*tail, name):
        x = keras.Input((8, 8, 3))
        y = L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(x))
        for layer in tail:
            y = layer(y)
        return keras.Model(x, y, name=name)

    head = keras.Sequential([keras.Input((4,)), L.Dense(3), L.Softmax()], name="head")
    inp = keras.Input((8, 8, 3))
    nested = keras.Model(inp, head(L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(inp))), name="nested")
    return {
        "softmax": [
            functional(L.Dense(3, activation="softmax"), name="dense_softmax"),
            functional(L.Dense(3), L.Softmax(), name="softmax_layer"),
            functional(L.Dense(3), L.Activation("softmax"), L.Reshape((3,)), L.Dropout(0.5), name="behind"),
            keras.Sequential([keras.Input((8, 8, 3)), L.Flatten(), L.Dense(3, activation="softmax")]),
            nested,
        ],
        "sigmoid": [functional(L.Dense(3, activation="sigmoid"), name="multi_label")],
        "linear": [functional(L.Dense(3), name="logits"),
                   functional(L.Dense(3), L.Activation("linear"), name="linear_activation")],
        None: [functional(L.Dense(3, activation="relu"), name="relu"),
               functional(L.Dense(3), L.ReLU(), name="relu_layer")],
    }


@pytest.mark.keras
def test_keras_final_activation_from_the_graph(keras):
    for want, models in _keras_cases(keras).items():
        for model in models:
            assert open_model(model).final_activation == want, model.name


@pytest.mark.keras
def test_keras_subclassed_model_without_a_graph_does_not_say(keras):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(3, 3)

        def call(self, x):
            return keras.ops.softmax(keras.ops.mean(self.conv(x), axis=(1, 2)))

    net = Net()
    net(np.zeros((1, 8, 8, 3), "float32"))
    assert open_model(net).final_activation is None


@pytest.mark.keras
def test_the_demo_model_ends_in_softmax():
    assert open_model("demo").final_activation == "softmax"


# --------------------------------------------------------------------------- PyTorch


def _torch_cases():
    import torch
    from torch import nn

    def trunk():
        return [nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()]

    class FunctionalSoftmax(nn.Module):  # softmax outside any module: the graph does not say
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(*trunk(), nn.Linear(4, 3))

        def forward(self, x):
            return torch.softmax(self.body(x), dim=1)

    class OwnSoftmax(nn.Module):  # an nn.Softmax attribute, called last in forward
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(*trunk(), nn.Linear(4, 3))
            self.prob = nn.Softmax(dim=1)

        def forward(self, x):
            return self.prob(self.body(x))

    return {
        "softmax": [nn.Sequential(*trunk(), nn.Linear(4, 3), nn.Softmax(dim=1)),
                    nn.Sequential(*trunk(), nn.Linear(4, 3), nn.Softmax(dim=1), nn.Flatten(), nn.Dropout()),
                    OwnSoftmax()],
        "sigmoid": [nn.Sequential(*trunk(), nn.Linear(4, 3), nn.Sigmoid())],
        "linear": [nn.Sequential(*trunk(), nn.Linear(4, 3)), nn.Sequential(nn.Conv2d(3, 2, 1))],
        None: [nn.Sequential(*trunk(), nn.Linear(4, 3), nn.ReLU()), FunctionalSoftmax()],
    }


def test_torch_final_activation_from_the_module_that_returns_the_output():
    for want, modules in _torch_cases().items():
        for module in modules:
            adapter = open_model(module, input_shape=(8, 8, 3))
            assert adapter.final_activation == want, module


def test_torch_exported_program_keeps_its_softmax(tmp_path):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
                          nn.Softmax(dim=1)).eval()
    path = tmp_path / "clf.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 8, 8),)), str(path))
    assert open_model(path).final_activation == "softmax"


# --------------------------------------------------------------------------- ONNX


def _onnx(tail: list, extra_inits: list | None = None) -> onnx.ModelProto:
    """x (1, 3, 8, 8) -> Conv -> GlobalAveragePool -> Flatten "f" (1, 4) -> ``tail`` nodes -> "y"."""
    inits = [numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(RNG.normal(size=(4, 3)).astype(np.float32), "D"),
             numpy_helper.from_array(RNG.normal(size=(3,)).astype(np.float32), "b"),
             *(extra_inits or [])]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), *tail]
    graph = helper.make_graph(nodes, "clf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_onnx_final_activation_from_the_graph():
    gemm = helper.make_node("Gemm", ["f", "D", "b"], ["s"])
    node = helper.make_node
    cases = {
        ("softmax", None): [_onnx([gemm, node("Softmax", ["s"], ["y"], axis=1)]),
                            _onnx([gemm, node("Softmax", ["s"], ["p"], axis=1), node("Identity", ["p"], ["q"]),
                                   node("Flatten", ["q"], ["y"])])],
        ("sigmoid", None): [_onnx([gemm, node("Sigmoid", ["s"], ["y"])])],
        ("linear", None): [_onnx([node("Gemm", ["f", "D", "b"], ["y"])]),
                           _onnx([node("MatMul", ["f", "D"], ["m"]), node("Add", ["m", "b"], ["y"])])],
        (None, None): [_onnx([gemm, node("Relu", ["s"], ["y"])]), _onnx([node("Identity", ["f"], ["y"])])],
    }
    for want, models in cases.items():
        for model in models:
            adapter = OnnxAdapter(model)
            assert (adapter.final_activation, adapter.output_quant_step) == want, model.graph.node


def test_onnx_quantised_softmax_output_gives_its_step():
    scale = numpy_helper.from_array(np.array(1 / 256, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "zero")
    model = _onnx([helper.make_node("Gemm", ["f", "D", "b"], ["s"]),
                   helper.make_node("Softmax", ["s"], ["p"], axis=1),
                   helper.make_node("QuantizeLinear", ["p", "scale", "zero"], ["q"]),
                   helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"])], [scale, zero])
    adapter = OnnxAdapter(model)
    assert adapter.final_activation == "softmax"
    assert adapter.output_quant_step == 1 / 256
    out = adapter.run(RNG.uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32), [], lambda *_: None)
    assert np.allclose(out * 256, np.round(out * 256))  # the output really is in steps of 1/256


# --------------------------------------------------------------------------- TFLite

CLASSES = 1000


@pytest.fixture(scope="module")
def tflite_files(tmp_path_factory):
    """A uint8 classifier ending in SOFTMAX (1000 classes), and float ones ending in sigmoid and in a dense."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    L = keras.layers
    d = tmp_path_factory.mktemp("final_activation")
    rng = np.random.default_rng(9)

    def classifier(*tail, classes, name):
        x = keras.Input((16, 16, 3))
        y = L.GlobalAveragePooling2D()(L.Conv2D(8, 3, activation="relu")(x))
        y = L.Dense(classes, name="fc")(y)
        for layer in tail:
            y = layer(y)
        model = keras.Model(x, y, name=name)
        for layer in model.layers:  # a wide spread of logits, so that one class clearly wins
            layer.set_weights([(rng.normal(size=w.shape) * 3).astype("float32") for w in layer.get_weights()])
        return model

    images = rng.uniform(0, 1, (16, 16, 16, 3)).astype("float32")
    quantised = tf.lite.TFLiteConverter.from_keras_model(classifier(L.Softmax(), classes=CLASSES, name="q"))
    quantised.optimizations = [tf.lite.Optimize.DEFAULT]
    quantised.representative_dataset = lambda: ([img[None]] for img in images)
    quantised.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    quantised.inference_input_type = tf.uint8
    quantised.inference_output_type = tf.uint8
    files = {"uint8_softmax": quantised}
    files["sigmoid"] = tf.lite.TFLiteConverter.from_keras_model(
        classifier(L.Activation("sigmoid"), classes=5, name="s"))
    files["linear"] = tf.lite.TFLiteConverter.from_keras_model(classifier(classes=5, name="l"))
    files["log_softmax"] = tf.lite.TFLiteConverter.from_keras_model(
        classifier(L.Activation("log_softmax"), classes=5, name="ls"))
    paths = {}
    for name, converter in files.items():
        paths[name] = d / f"{name}.tflite"
        paths[name].write_bytes(converter.convert())
    return paths, images


def test_tflite_final_activation_from_the_last_op(tflite_files):
    paths, _ = tflite_files
    assert open_model(paths["sigmoid"]).final_activation == "sigmoid"
    assert open_model(paths["linear"]).final_activation == "linear"
    assert open_model(paths["linear"]).output_quant_step is None


def test_tflite_final_log_softmax_does_not_say(tflite_files):
    paths, images = tflite_files
    adapter = open_model(paths["log_softmax"])
    assert adapter.final_activation is None and adapter.output_quant_step is None
    out = adapter.run(images[:2], [], lambda *_: None)
    p, how = to_probabilities(out, adapter.final_activation)  # softmax of log-probabilities: the probabilities
    np.testing.assert_allclose(p, np.exp(out), rtol=1e-4, atol=1e-6)
    assert how.startswith("softmax")


def test_quantised_tflite_softmax_is_read_as_the_models_own_probabilities(tflite_files):
    paths, images = tflite_files
    adapter = open_model(paths["uint8_softmax"], preprocess="unit")
    assert adapter.final_activation == "softmax"  # SOFTMAX behind the QUANTIZE to uint8
    assert adapter.output_quant_step == 1 / 256
    out = adapter.run(images[:4], [], lambda *_: None)
    assert out.shape == (4, CLASSES)
    sums = out.sum(axis=1)
    off = np.abs(sums - 1) > 1e-3  # e.g. 0.996: the old check (atol=1e-3) took these for logits
    assert off.sum() >= 2 and np.all(np.abs(sums - 1) < 0.1), sums
    assert out[off].max(axis=1).min() > 0.2  # a clear winner, which a second softmax would flatten
    for word in (adapter.final_activation, None):
        p, how = to_probabilities(out, word, adapter.output_quant_step)
        assert np.array_equal(p, out.astype(np.float64)), how
        assert "the model's own probabilities" in how
    again, how = to_probabilities(out[off])  # neither the graph's word nor the step
    assert how.startswith("softmax") and again.max() < 0.01


def test_the_report_shows_a_quantised_softmax_classifiers_own_probabilities(tflite_files, tmp_path):
    """Issue 12 #2 end to end: the report's top class is the model's probability, not a second softmax."""
    from convlens import Lens

    paths, images = tflite_files
    lens = Lens(paths["uint8_softmax"], preprocess="unit")
    out = lens.adapter.run(images[:4], [], lambda *_: None)
    k = int(np.argmax(np.abs(out.sum(axis=1) - 1)))  # the image whose outputs sum furthest from 1
    picture = np.clip(images[k] * 255, 0, 255).astype(np.uint8)
    report = lens.report(picture, sections=["predictions"])
    label, p = report.predictions[0][0]
    assert label == f"class {int(np.argmax(out[k]))}"
    assert p == pytest.approx(float(out[k].max()), abs=1e-6)
    assert "its graph ends in softmax" in report.html


# --------------------------------------------------------------------------- LogSoftmax, everywhere


def test_the_shared_walk_back_from_the_output():
    """One walker for the four adapters: pass-through, bias, log-softmax, cycles and missing producers."""
    from convlens.adapters._graph import Producer, walk_final_activation

    roles = {"SM": "softmax", "LSM": "log_softmax", "SIG": "sigmoid", "FC": "linear", "R": "pass", "ADD": "bias"}
    graph = {"y": ("R", ["p"]), "p": ("SM", ["s"]), "s": ("ADD", ["m"]), "m": ("FC", ["x"]),
             "l": ("LSM", ["m"]), "ly": ("R", ["l"]), "b": ("ADD", ["r"]), "r": ("RELU", ["m"]),
             "loop": ("R", ["loop"]), "dangling": ("R", [])}

    def producer(t):
        return Producer(*graph[t]) if t in graph else None

    def walk(t):
        return walk_final_activation(t, producer, roles, limit=len(graph) + 1)

    assert walk("y").answer == "softmax" and walk("y").path == ("y", "p")
    assert walk("s").answer == "linear" and walk("b").answer is None  # a bias after a ReLU is no logit
    assert walk("ly").answer is None and walk("l").answer is None  # log-probabilities: the graph does not say
    assert walk("loop").answer is None and len(walk("loop").path) == len(graph) + 1
    assert walk("dangling").answer is None and walk("x").answer is None and walk(None).answer is None


def test_a_final_log_softmax_says_nothing_in_torch_and_onnx():
    """LogSoftmax reports ``None`` in every adapter (it listed as a softmax for gradients only in torch)."""
    from torch import nn

    for module in (nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
                                 nn.LogSoftmax(dim=1)),
                   nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
                                 nn.LogSoftmax(dim=1), nn.Flatten(), nn.Dropout())):
        assert open_model(module, input_shape=(8, 8, 3)).final_activation is None, module
    gemm = helper.make_node("Gemm", ["f", "D", "b"], ["s"])
    adapter = OnnxAdapter(_onnx([gemm, helper.make_node("LogSoftmax", ["s"], ["y"], axis=1)]))
    assert (adapter.final_activation, adapter.output_quant_step) == (None, None)
    adapter = OnnxAdapter(_onnx([gemm, helper.make_node("LogSoftmax", ["s"], ["p"], axis=1),
                                 helper.make_node("Identity", ["p"], ["y"])]))
    assert adapter.final_activation is None


@pytest.mark.keras
def test_a_final_log_softmax_says_nothing_in_keras(keras):
    L = keras.layers
    for tail in ([L.Dense(3, activation="log_softmax")], [L.Dense(3), L.Activation("log_softmax")],
                 [L.Dense(3), L.Activation("log_softmax"), L.Flatten()]):
        x = keras.Input((8, 8, 3))
        y = L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(x))
        for layer in tail:
            y = layer(y)
        assert open_model(keras.Model(x, y)).final_activation is None, tail
