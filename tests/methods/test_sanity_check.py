"""The model parameter randomisation test (Adebayo et al. 2018, https://arxiv.org/abs/1810.03292).

A map that still looks the same once the network's weights are random
explains the image, not the model. On the trained demo CNN, every layer with
weights is re-initialised as Keras initialises it before training (kernels
Glorot-uniform, biases zero, fixed seed), from the top layer down to the
first; each gradient method's map of 20 held-out digits (2 per class, for the
class the trained model predicts) is then compared with the trained model's
map by Spearman's rank correlation, as each method gives it (Integrated
Gradients signed, the others non-negative), averaged over the digits.

The stated threshold is 0.5 (the maps then share less than a quarter of their
rank variance). Measured on this model (``make benchmark-heatmaps`` prints the
whole cascade): Grad-CAM, XGrad-CAM and Integrated Gradients fall below it.
Five methods do not, and are marked as expected failures with the reason
(strict: the test fails if one of them starts to pass, so this stays true).
A random network's activations still trace the digit, and these maps lean on
activations (LayerCAM, HiResCAM, Grad-CAM++'s positive weights) or on where
the gradient can flow (saliency: with zero biases, units that see only the
black background are dead in a random ReLU network, so its gradient sits on
the digit too; SmoothGrad averages that over noise).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from convlens import DEMO_MODEL, Lens, methods
from convlens.core.evaluation import spearman

ROOT = Path(__file__).resolve().parents[2]
THRESHOLD = 0.5
#: measured after the whole cascade, mean over the 20 digits (Keras on TensorFlow), and why
FAILS = {
    "gradcam++": (0.70, "positive gradient weights: the map is a sum of activations, which trace the digit"),
    "layercam": (0.77, "ReLU(gradient) x activation: the random network's activations trace the digit"),
    "hirescam": (0.57, "gradient x activation element-wise: the activations trace the digit"),
    "saliency": (0.55, "a random ReLU network with zero biases is dead on the black background"),
    "smoothgrad": (0.52, "the mean |gradient| over noisy copies keeps where the digit is"),
}

# Not marked ``keras``: the check is about the methods, not the backend, and it runs once (on
# TensorFlow) to keep the suite fast.


def held_out_digits(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` digits of each class from the demo model's held-out split, preprocessed (x / 255)."""
    spec = importlib.util.spec_from_file_location("train_demo_model", ROOT / "scripts" / "train_demo_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, _, x_test, y_test, _ = module.load_split()
    idx = np.concatenate([np.flatnonzero(y_test == d)[:per_class] for d in range(10)])
    return (x_test[idx].astype(np.float32) / 255.0)[..., None], y_test[idx]


def randomised(keras, model, layers: int, seed: int = 0):
    """A copy of ``model`` whose top ``layers`` layers with weights are re-initialised.

    As Keras initialises Conv2D and Dense layers before training: kernels
    Glorot-uniform (``U(-l, l)``, ``l = sqrt(6 / (fan_in + fan_out))``), biases
    zero; drawn with numpy from ``seed``, so that the copy is reproducible.
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    rng = np.random.default_rng(seed)
    for layer in [layer for layer in copy.layers if layer.weights][::-1][:layers]:
        kernel, *rest = layer.get_weights()
        field = int(np.prod(kernel.shape[:-2])) if kernel.ndim > 2 else 1
        limit = np.sqrt(6.0 / (kernel.shape[-2] * field + kernel.shape[-1] * field))
        fresh = rng.uniform(-limit, limit, kernel.shape).astype(np.float32)
        layer.set_weights([fresh, *(np.zeros_like(w) for w in rest)])
    return copy


@pytest.fixture(scope="module")
def cascade(keras):
    x, _ = held_out_digits(2)
    trained = keras.models.load_model(DEMO_MODEL, compile=False)
    lens = Lens(trained)
    top = lens.adapter.run(x, [], lambda i, a: None).argmax(axis=1)
    every = len([layer for layer in trained.layers if layer.weights])
    return x, top, lens, Lens(randomised(keras, trained, every))


def _maps(lens: Lens, name: str, x: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Each digit's map for the trained model's top class (one call per class)."""
    out = np.empty(x.shape[:3], np.float32)
    method = methods.create(name)
    for c in np.unique(top):
        mine = np.flatnonzero(top == c)
        out[mine] = method.compute(lens.adapter, x[mine], target=int(c)).maps
    return out


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=f"measured {FAILS[n][0]}: {FAILS[n][1]}"))
    if n in FAILS else n for n in methods.gradient_methods()])
def test_randomising_every_layer_drives_the_rank_correlation_below_the_threshold(cascade, name):
    x, top, trained, random = cascade
    before, after = _maps(trained, name, x, top), _maps(random, name, x, top)
    rho = float(np.mean([spearman(a, b) for a, b in zip(before, after)]))
    assert rho < THRESHOLD, f"{name}: mean Spearman {rho:.2f} after randomising every layer"

