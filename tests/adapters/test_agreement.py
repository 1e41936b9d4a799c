"""One network, four frameworks, the same pictures.

One small CNN is built in Keras with seeded random weights; the same weights
are copied into a PyTorch module; the PyTorch module is exported to ONNX and
the Keras model is converted to TFLite twice (float, and int8 full-integer
with a representative dataset). Every adapter then runs the same contract
(layer table, feature maps through :class:`convlens.Lens`, kernels), and the
results must agree:

* float frameworks: every conv, act, pool and dense output within
  ``rtol=1e-4`` and ``atol=1e-4 * max|x|`` of Keras, kernels within 1e-6;
* the int8 TFLite model: every layer within a bound derived from its own
  quantisation scales (see :func:`_quant_bound`), kernels within half a
  quantisation step of each output channel;
* gradients (Keras on the backend under test, PyTorch, ONNX through its
  onnx2torch conversion): scores, activations, layer and input gradients of a
  class target and of a conv channel target within ``rtol=1e-4`` and
  ``atol=1e-4 * max|x|`` of Keras; TFLite refuses, naming what still works.

Layers are matched by their order within each kind, not by name: each
framework keeps its own naming (``conv1`` / ``conv1`` / ``/conv1/Conv`` /
``.../Conv2D``). TFLite fuses a ReLU into the conv before it, so a conv stage
is compared by its output after the activation ("stage outputs").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convlens import Lens, UnsupportedModel
from convlens.adapters.base import Target

SIZE = 32
CLASSES = 10


def _keras_model(keras):
    L = keras.layers
    keras.utils.set_random_seed(7)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        L.Conv2D(8, 3, name="conv1"), L.ReLU(name="relu1"),
        L.MaxPooling2D(2, name="pool1"),
        L.DepthwiseConv2D(3, depth_multiplier=2, name="dw"), L.ReLU(name="relu2"),
        L.Conv2D(12, 3, strides=2, name="conv2"), L.ReLU(name="relu3"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dense(CLASSES, name="fc"),
    ], name="agree")


def _torch_twin(kmodel):
    """The same network in PyTorch, with the Keras weights copied in."""
    import torch
    from torch import nn

    class Twin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3)
            self.relu1 = nn.ReLU()
            self.pool1 = nn.MaxPool2d(2)
            self.dw = nn.Conv2d(8, 16, 3, groups=8)
            self.relu2 = nn.ReLU()
            self.conv2 = nn.Conv2d(16, 12, 3, stride=2)
            self.relu3 = nn.ReLU()
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(12, CLASSES)

        def forward(self, x):
            x = self.pool1(self.relu1(self.conv1(x)))
            x = self.relu3(self.conv2(self.relu2(self.dw(x))))
            return self.fc(torch.flatten(self.gap(x), 1))

    twin = Twin().eval()

    def k(name: str) -> list[np.ndarray]:
        return [np.asarray(w) for w in kmodel.get_layer(name).get_weights()]

    with torch.no_grad():
        w, b = k("conv1")
        twin.conv1.weight.copy_(torch.from_numpy(w.transpose(3, 2, 0, 1).copy()))
        twin.conv1.bias.copy_(torch.from_numpy(b))
        w, b = k("dw")  # (kh, kw, in, mult) -> (in * mult, 1, kh, kw), channel c * mult + m
        kh, kw, cin, mult = w.shape
        twin.dw.weight.copy_(torch.from_numpy(w.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw).copy()))
        twin.dw.bias.copy_(torch.from_numpy(b))
        w, b = k("conv2")
        twin.conv2.weight.copy_(torch.from_numpy(w.transpose(3, 2, 0, 1).copy()))
        twin.conv2.bias.copy_(torch.from_numpy(b))
        w, b = k("fc")
        twin.fc.weight.copy_(torch.from_numpy(w.T.copy()))
        twin.fc.bias.copy_(torch.from_numpy(b))
    return twin


def _images(n: int = 3) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (n, SIZE, SIZE, 3)).astype("uint8")


def _tflite(keras_model, path: Path, quantise: bool) -> Path:
    import tensorflow as tf

    saved = path.with_suffix(".savedmodel")
    keras_model.export(str(saved), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if quantise:
        calib = _images(16).astype("float32") / 255.0

        def representative():
            for x in calib:
                yield [x[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    path.write_bytes(converter.convert())
    return path


@pytest.fixture(scope="module")
def twins(tmp_path_factory, keras):
    """Lenses on the same network in Keras, PyTorch, ONNX, TFLite float and TFLite int8."""
    import torch

    tmp = tmp_path_factory.mktemp("agree")
    kmodel = _keras_model(keras)
    tmodel = _torch_twin(kmodel)
    onnx_path = tmp / "agree.onnx"
    torch.onnx.export(tmodel, (torch.zeros(1, 3, SIZE, SIZE),), str(onnx_path), input_names=["image"],
                      output_names=["logits"], dynamo=False)
    lenses = {
        "keras": Lens(kmodel, preprocess="unit"),
        "torch": Lens(tmodel, preprocess="unit"),
        "onnx": Lens(onnx_path, preprocess="unit"),
        "tflite": Lens(_tflite(kmodel, tmp / "float.tflite", quantise=False), preprocess="unit"),
        "tflite-int8": Lens(_tflite(kmodel, tmp / "int8.tflite", quantise=True), preprocess="unit"),
    }
    return kmodel, tmodel, lenses


def _by_kind(lens: Lens, kind: str) -> list[str]:
    return [layer.name for layer in lens.layers() if layer.kind == kind]


def _stage_outputs(lens: Lens, maps) -> dict[str, list[np.ndarray]]:
    """Per kind, the outputs in execution order; a conv followed by its activation counts as one
    stage whose output is the activation's (TFLite fuses the two)."""
    table = lens.layers()
    stages: dict[str, list[np.ndarray]] = {"conv": [], "pool": [], "dense": []}
    for i, layer in enumerate(table):
        if layer.kind not in stages:
            continue
        out = maps[layer.name]
        if layer.kind == "conv" and i + 1 < len(table) and table[i + 1].kind == "act":
            out = maps[table[i + 1].name]
        stages[layer.kind].append(out)
    return stages


FLOAT = ("torch", "onnx", "tflite")


def test_every_framework_lists_the_same_network(twins):
    _, _, lenses = twins
    for name, lens in lenses.items():
        assert lens.adapter.framework == name.split("-")[0]
        convs = [layer for layer in lens.layers() if layer.kind == "conv"]
        assert [c.kernel_shape for c in convs] == [(8, 3, 3, 3), (16, 1, 3, 3), (12, 16, 3, 3)], name
        # receptive fields: 3 -> pool 2/2: 4 -> dw 3x3 at jump 2: 8 -> conv 3x3/2 at jump 2: 12
        assert [(c.rf_size, c.rf_jump) for c in convs] == [
            ((3, 3), (1, 1)), ((8, 8), (2, 2)), ((12, 12), (4, 4))], name
        assert len(_by_kind(lens, "pool")) >= 1 and len(_by_kind(lens, "dense")) == 1, name


def test_float_feature_maps_agree_layer_by_layer(twins):
    _, _, lenses = twins
    images = _images()
    ref_lens = lenses["keras"]
    ref = _stage_outputs(ref_lens, ref_lens.feature_maps(list(images), layers="all"))
    raw_ref = [ref_lens.feature_maps(list(images), layers="conv")[n] for n in _by_kind(ref_lens, "conv")]
    assert [a.shape for a in ref["conv"]] == [(3, 30, 30, 8), (3, 13, 13, 16), (3, 6, 6, 12)]
    for name in FLOAT:
        lens = lenses[name]
        got = _stage_outputs(lens, lens.feature_maps(list(images), layers="all"))
        for kind in ("conv", "dense"):
            assert len(got[kind]) == len(ref[kind]), (name, kind)
            for want, have in zip(ref[kind], got[kind]):
                assert have.shape == want.shape, (name, kind)
                np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                                           err_msg=f"{name} {kind}")
        # max pool, then the global pool: (N, C) in Keras and TFLite, (N, 1, 1, C) where the
        # framework keeps the spatial axes (torch's AdaptiveAvgPool2d, ONNX GlobalAveragePool)
        assert len(got["pool"]) == len(ref["pool"]) == 2, name
        for want, have in zip(ref["pool"], got["pool"]):
            assert have.size == want.size, name
            np.testing.assert_allclose(have.reshape(want.shape), want, rtol=1e-4,
                                       atol=1e-4 * np.abs(want).max(), err_msg=f"{name} pool")
        if name != "tflite":  # TFLite has no separate pre-activation conv output
            raw = lens.feature_maps(list(images), layers="conv")
            for want, key in zip(raw_ref, _by_kind(lens, "conv")):
                np.testing.assert_allclose(raw[key], want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                                           err_msg=f"{name} raw conv {key}")
                assert (raw[key] < 0).any(), "pre-activation outputs keep their negatives"


def _quant_bound(want: np.ndarray, depth: int) -> float:
    """Quantisation error allowed at the ``depth``-th quantised stage.

    int8 activations carry an error of half a step, ``range / 255 / 2``, at
    each stage, and errors from earlier stages pass through (weights are int8
    too, adding about as much again). A stage may therefore be off by about
    ``(depth + 1)`` steps of its own range; we allow twice that.
    """
    step = (float(want.max()) - min(0.0, float(want.min()))) / 255.0
    return 2.0 * (depth + 1) * step


def test_int8_tflite_agrees_within_quantisation_error(twins):
    _, _, lenses = twins
    images = _images()
    ref_lens, q_lens = lenses["keras"], lenses["tflite-int8"]
    ref = _stage_outputs(ref_lens, ref_lens.feature_maps(list(images), layers="all"))
    got = _stage_outputs(q_lens, q_lens.feature_maps(list(images), layers="all"))
    for kind in ("conv", "dense"):
        assert len(got[kind]) == len(ref[kind]), kind
        for depth, (want, have) in enumerate(zip(ref[kind], got[kind])):
            assert have.shape == want.shape and have.dtype == np.float32
            err = float(np.abs(have - want).max())
            assert err <= _quant_bound(want, depth if kind == "conv" else 3), (kind, depth, err)
            # and it is the same picture: strongly correlated, not merely small
            assert np.corrcoef(have.ravel(), want.ravel())[0, 1] > 0.99, (kind, depth)


def test_kernels_agree(twins):
    kmodel, tmodel, lenses = twins
    ref_lens = lenses["keras"]
    ref = [ref_lens.filters(n)[n] for n in _by_kind(ref_lens, "conv")]
    np.testing.assert_array_equal(ref[0], tmodel.conv1.weight.detach().numpy())
    np.testing.assert_array_equal(ref[1], tmodel.dw.weight.detach().numpy())
    for name in FLOAT:
        lens = lenses[name]
        got = [lens.filters(n)[n] for n in _by_kind(lens, "conv")]
        for want, have in zip(ref, got):
            assert have.shape == want.shape, name
            np.testing.assert_allclose(have, want, rtol=0, atol=1e-6, err_msg=name)
    q_lens = lenses["tflite-int8"]
    got = [q_lens.filters(n)[n] for n in _by_kind(q_lens, "conv")]
    for want, have in zip(ref, got):
        assert have.shape == want.shape
        # per-output-channel symmetric int8: step = max|w| / 127; rounding is off by at most half
        half_step = np.abs(want).reshape(len(want), -1).max(axis=1) / 127 / 2
        assert (np.abs(have - want).reshape(len(want), -1).max(axis=1) <= half_step * 1.01 + 1e-8).all()


def test_stats_and_report_agree_across_frameworks(twins, tmp_path):
    """The later views (channel health, the HTML report) see the same network everywhere."""
    _, _, lenses = twins
    images = list(_images(2))
    ref_lens = lenses["keras"]
    ref = [s for s in ref_lens.channel_stats(images, layers="conv")]
    for name, lens in lenses.items():
        stats = lens.channel_stats(images, layers="conv")
        assert [s.channels for s in stats] == [8, 16, 12], name
        assert all(s.images == 2 for s in stats), name
        if name in ("torch", "onnx"):  # raw conv outputs, as in Keras
            for want, have in zip(ref, stats):
                np.testing.assert_allclose(have.mean, want.mean, rtol=1e-4, atol=1e-6, err_msg=name)
                np.testing.assert_allclose(have.max, want.max, rtol=1e-4, atol=1e-6, err_msg=name)
        out = tmp_path / f"{name}.html"
        lens.report(images, layers="conv", out=out)
        page = out.read_text()
        convs = [layer.name for layer in lens.layers() if layer.kind == "conv"]
        for layer in convs:  # each framework's own names reach the page
            assert layer.replace("&", "&amp;") in page, (name, layer)


GRADIENTS = ("keras", "torch", "onnx")


@pytest.fixture(scope="module")
def gradient_twins(tmp_path_factory, keras):
    """Adapters on the network in Keras (the backend under test), PyTorch and ONNX: no TFLite, whose
    conversion needs Keras on TensorFlow, so that this part runs under every Keras backend."""
    import torch

    from convlens.adapters import open_model

    kmodel = _keras_model(keras)
    tmodel = _torch_twin(kmodel)
    onnx_path = tmp_path_factory.mktemp("agree-gradients") / "agree.onnx"
    torch.onnx.export(tmodel, (torch.zeros(1, 3, SIZE, SIZE),), str(onnx_path), input_names=["image"],
                      output_names=["logits"], dynamo=False)
    return {"keras": open_model(kmodel), "torch": open_model(tmodel), "onnx": open_model(onnx_path)}


def _close(have: np.ndarray, want: np.ndarray, what: str) -> None:
    assert have.shape == want.shape, what
    np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4 * max(float(np.abs(want).max()), 1e-12),
                               err_msg=what)


@pytest.mark.keras
@pytest.mark.gradients
def test_gradients_agree_across_frameworks(gradient_twins):
    """A class score's gradients at every conv and at the input, and a conv channel's mean's
    gradients at the earlier convs, are the same in every framework that has gradients."""
    x = _images().astype(np.float32) / 255.0
    got = {}
    for name in GRADIENTS:
        adapter = gradient_twins[name]
        assert adapter.gradients_unavailable() is None, name
        convs = [t.index for t in adapter.layers() if t.kind == "conv"]
        # without the input gradient, ONNX runs the graph up to the first conv in onnxruntime
        by_class = adapter.gradients(x, Target(channels=(3, 7, 3)), layers=convs)
        by_channel = adapter.gradients(x, Target(layer=convs[2], channels=(5,), reduce="mean"),
                                       layers=convs[:2], wrt_input=True)
        got[name] = convs, by_class, by_channel
    ref_convs, ref_class, ref_channel = got["keras"]
    assert not ref_class.logits  # the network ends in a plain Dense
    assert all(np.abs(ref_class.grads[r]).max() > 0 for r in ref_convs)
    for name in GRADIENTS[1:]:
        convs, by_class, by_channel = got[name]
        for want, have, kind in ((ref_class, by_class, "class"), (ref_channel, by_channel, "channel")):
            _close(have.score, want.score, f"{name} {kind} score")
            if kind == "channel":
                _close(have.input_grad, want.input_grad, f"{name} {kind} input gradient")
            for r_ref, r in zip(ref_convs, convs):
                if r_ref in want.grads:
                    _close(have.activations[r], want.activations[r_ref], f"{name} {kind} activation {r}")
                    _close(have.grads[r], want.grads[r_ref], f"{name} {kind} gradient {r}")
        _close(by_class.output, ref_class.output, f"{name} output")
        assert by_channel.logits is by_class.logits is False


def test_tflite_refuses_gradients_naming_the_forward_only_methods(twins):
    _, _, lenses = twins
    for name in ("tflite", "tflite-int8"):
        adapter = lenses[name].adapter
        why = adapter.gradients_unavailable()
        assert "Score-CAM, Eigen-CAM, occlusion" in why and "\n" not in why
        with pytest.raises(UnsupportedModel, match="forward-only methods"):
            adapter.gradients(_images(1).astype(np.float32) / 255.0, Target())
