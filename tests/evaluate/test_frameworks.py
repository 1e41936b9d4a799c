"""``evaluate`` on one network in four frameworks: the randomisation draws the same weights everywhere.

The agreement network of tests/adapters/test_agreement.py (Keras with seeded
weights, its PyTorch twin, the twin's ONNX export, the Keras model's float
and int8 TFLite conversions). Every adapter re-draws a layer's kernel from
the same Glorot numbers in the canonical layout, so the randomised networks
are the same network: their outputs agree to float32 rounding, and the
evaluation's numbers agree across Keras (on the backend under test),
PyTorch and ONNX for gradient methods, and across all four (float TFLite)
for the forward-only ones. The int8 file is randomised too (its kernels
quantised with their own scales): its outputs follow the float ones within
its quantisation error.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from convlens import Model
from convlens.core.evaluation import weighted_rows
from convlens.evaluate import evaluate

SIZE = 32


def _agreement_module():
    path = Path(__file__).parent.parent / "adapters" / "test_agreement.py"
    spec = importlib.util.spec_from_file_location("convlens_tests_agreement_evaluate", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gradient_models(tmp_path_factory, keras):
    """Keras (on the backend under test), the PyTorch twin and its ONNX export."""
    import torch

    agr = _agreement_module()
    tmp = tmp_path_factory.mktemp("evaluate-agree")
    kmodel = agr._keras_model(keras)
    tmodel = agr._torch_twin(kmodel)
    onnx_path = tmp / "agree.onnx"
    torch.onnx.export(tmodel, (torch.zeros(1, 3, SIZE, SIZE),), str(onnx_path), input_names=["image"],
                      output_names=["logits"], dynamo=False)
    out = {"keras": Model.open(kmodel, preprocess="unit"), "torch": Model.open(tmodel, preprocess="unit"),
           "onnx": Model.open(onnx_path, preprocess="unit")}
    return out, list(agr._images(3)), (agr, kmodel, tmp)


@pytest.fixture(scope="module")
def models(gradient_models):
    """The same, and the Keras model's float and int8 TFLite conversions (TensorFlow's converter)."""
    out, images, (agr, kmodel, tmp) = gradient_models
    out = {**out,
           "tflite": Model.open(agr._tflite(kmodel, tmp / "float.tflite", quantise=False), preprocess="unit"),
           "int8": Model.open(agr._tflite(kmodel, tmp / "int8.tflite", quantise=True), preprocess="unit")}
    return out, images


def _run(model):
    return lambda x: model.adapter.run(np.asarray(x, np.float32), [], lambda i, a: None)


def test_every_framework_draws_the_same_random_network(models):
    lenses, images = models
    x = np.stack(images).astype(np.float32) / 255.0
    outs = {}
    for name, model in lenses.items():
        rows = weighted_rows(model.layers())
        assert len(rows) == 4, name
        twin = model.adapter.randomized(rows[::-1][:2], seed=5)  # fc and conv2
        outs[name] = twin.run(x, [], lambda i, a: None)
        # the original is untouched
        np.testing.assert_allclose(_run(model)(x), _run(lenses["keras"])(x), rtol=1e-4,
                                   atol=0.05 if name == "int8" else 1e-5, err_msg=name)
    ref = outs["keras"]
    for name in ("torch", "onnx", "tflite"):
        np.testing.assert_allclose(outs[name], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=name)
    assert np.abs(outs["int8"] - ref).max() < 0.1 * np.abs(ref).max() + 0.05
    assert not np.allclose(ref, _run(lenses["keras"])(x), atol=1e-3)


@pytest.mark.keras
def test_gradient_methods_agree_across_keras_torch_and_onnx(gradient_models):
    lenses, images, _ = gradient_models
    _agree(lenses, images, "gradcam,saliency", ("keras", "torch", "onnx"))


def test_forward_only_methods_agree_across_all_four(models):
    lenses, images = models
    _agree(lenses, images, "scorecam,eigencam", ("keras", "torch", "onnx", "tflite"))


def _agree(lenses, images, method, frameworks):
    results = {name: evaluate(lenses[name], images, method, metrics="randomisation,random-logit,deletion",
                              steps=8) for name in frameworks}
    ref = results["keras"]
    for name in frameworks[1:]:
        got = results[name]
        assert got.randomised_layers.__len__() == ref.randomised_layers.__len__() == 4
        np.testing.assert_array_equal(got.classes, ref.classes)
        for m, s in got.scores.items():
            r = ref.scores[m]
            np.testing.assert_allclose(s.maps, r.maps, atol=2e-3, err_msg=f"{name} {m} maps")
            np.testing.assert_allclose(s.rand_spearman, r.rand_spearman, atol=2e-2, err_msg=f"{name} {m} rho")
            np.testing.assert_allclose(s.logit_ssim, r.logit_ssim, atol=2e-2, err_msg=f"{name} {m} logit")
            np.testing.assert_allclose(s.curves["deletion"], r.curves["deletion"], atol=1e-3,
                                       err_msg=f"{name} {m} deletion")


def test_a_quantised_tflite_file_is_evaluated_with_forward_only_methods(models):
    lenses, images = models
    ev = evaluate(lenses["int8"], images, "scorecam", metrics="randomisation,deletion", steps=4)
    s = ev.scores["scorecam"]
    assert s.rand_spearman.shape == (4, 3) and np.isfinite(s.rand_spearman).all()
    assert "Score-CAM" in ev.summary() and ev.randomised_layers[0].endswith("fc_1")
