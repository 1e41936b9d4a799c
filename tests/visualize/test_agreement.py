"""The same seed gives the same images in Keras (TensorFlow or torch backend), PyTorch and ONNX.

The agreement network of tests/adapters/test_agreement.py is built in Keras
with seeded weights, copied into its PyTorch twin and exported to ONNX (whose
gradients come through onnx2torch). The optimisation runs in
numpy; the frameworks only give input gradients, so after the first steps the
images may differ only by float32 rounding: within 1e-5 (measured: about 2e-7
after 4 steps). Over many steps the paths may part (a ReLU or max-pool tie
decided the other way, then amplified), so only the first steps are compared.
This file runs once per Keras backend (``make test``): Keras-TF = PyTorch =
ONNX and Keras-torch = PyTorch = ONNX.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from convlens import Lens

pytestmark = [pytest.mark.keras, pytest.mark.gradients]

STEPS = 4
TOLERANCE = 1e-5


def _agreement_builders():
    path = Path(__file__).resolve().parent.parent / "adapters" / "test_agreement.py"
    spec = importlib.util.spec_from_file_location("_agreement_builders", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def twins(keras, tmp_path_factory):
    import torch

    builders = _agreement_builders()
    kmodel = builders._keras_model(keras)
    tmodel = builders._torch_twin(kmodel)
    size = builders.SIZE
    onnx_path = tmp_path_factory.mktemp("vis_agree") / "agree.onnx"
    torch.onnx.export(tmodel, (torch.zeros(1, 3, size, size),), str(onnx_path), input_names=["image"],
                      output_names=["logits"], dynamo=False)
    # the twin takes any size: give it the Keras model's, so all see the same input
    return {"keras": Lens(kmodel, preprocess="unit"),
            "torch": Lens(tmodel, preprocess="unit", input_shape=(size, size, 3)),
            "onnx": Lens(onnx_path, preprocess="unit")}


ONNX_NAMES = {"conv2": "/conv2/Conv", "relu2": "/relu2/Relu"}


@pytest.mark.parametrize("objective,layer,channels", [
    ("channel", "conv2", "all"),
    ("neuron", "relu2", "0-5"),
    ("class", None, "all"),
])
def test_first_steps_give_the_same_images(twins, objective, layer, channels, monkeypatch):
    import keras

    if keras.backend.backend() == "jax":  # Keras-JAX cannot redirect yet (redirect_unavailable): compare without
        monkeypatch.setattr("convlens.visualize.optimize.redirect_steps", lambda steps, adapter=None: 0)
    runs = {name: lens.visualize(ONNX_NAMES.get(layer, layer) if name == "onnx" else layer, channels,
                                 objective=objective, steps=STEPS, size=32, seed=3)
            for name, lens in twins.items()}
    a = runs["keras"]
    assert np.abs(a.images - 0.5).max() > 0.05  # the images did move
    for name in ("torch", "onnx"):
        b = runs[name]
        assert a.images.shape == b.images.shape and a.channels == b.channels, name
        np.testing.assert_allclose(a.images, b.images, rtol=0, atol=TOLERANCE, err_msg=name)
        np.testing.assert_allclose(a.activations, b.activations, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(a.history, b.history, rtol=1e-4, atol=1e-6, err_msg=name)
