"""Agreement with Quantus 0.6 on the same maps and models, metric by metric.

One small PyTorch CNN (random weights, seed 0), eight random 16 x 16 pictures.
Each test hands Quantus and convlens the same model and the same maps (or
the same explain function: a convlens method), and states where the two
definitions differ:

* model parameter randomisation: Quantus re-initialises every module with
  ``reset_parameters`` (torch's default initialisers, BatchNorm included),
  one more per step from the top; convlens draws Glorot kernels and zero
  biases in the canonical layout so that four frameworks draw the same
  numbers. The test therefore feeds Quantus's own sequence of randomised
  models to convlens's similarity computation: per layer and image, the
  rank correlations agree to 1e-9.
* random logit: Quantus draws the other class with ``np.random.seed`` and
  compares the flattened maps by SSIM; convlens draws it with a numpy
  ``Generator`` and compares the 2-D maps. The test uses Quantus's classes
  and flattens the maps: the SSIMs agree to 1e-6 (the same formula as
  ``skimage.metrics.structural_similarity``, the same data range; skimage
  works in the maps' float32, convlens in float64).
* pointing game: the same rule (a hit when any position holding the
  maximum is in the mask); results are identical.
* max-sensitivity: Quantus adds uniform noise through its ``perturb_func``;
  here it is handed the same noise as convlens, and the values agree to 1e-6
  (float32 maps).
* deletion-style faithfulness: Quantus's ``PixelFlipping`` removes
  ``features_in_step`` pixels per step and records the probability after
  each step (no point at 0); convlens's deletion curve has ``steps + 1``
  points from 0. With one channel, maps without ties and the same constant
  baseline, Quantus's curve is convlens's without its first point (1e-6).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus
import torch
from quantus.helpers.model.pytorch_model import PyTorchModel
from torch import nn

from convlens import Model, methods
from convlens.adapters import open_model
from convlens.core.evaluation import max_sensitivity, perturbation_curves, pointing_hit, spearman, ssim
from convlens.evaluate import evaluate
from convlens.evaluate.api import method_maps

SIZE, N, K = 16, 8, 10


def _net(channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, K)).eval()


def _images(channels: int = 3) -> np.ndarray:
    return np.random.default_rng(1).random((N, SIZE, SIZE, channels)).astype(np.float32)


def _explain(name: str):
    """Quantus's explain_func over a convlens method: (N, C, H, W) in, (N, 1, H, W) maps out."""
    method = methods.create(name)

    def explain(model, inputs, targets, **kwargs):
        x = np.asarray(inputs, np.float32).transpose(0, 2, 3, 1)
        return method_maps(open_model(model, input_shape=(SIZE, SIZE, x.shape[-1])), method, x,
                           np.asarray(targets, int), layer=None, preprocess="raw")[:, None]
    return explain


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("name", ["gradcam", "saliency"])
def test_model_parameter_randomisation_agrees(name):
    net, x = _net(), _images()
    y = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).argmax(1).numpy()
    a = _explain(name)(net, x.transpose(0, 3, 1, 2), y)
    metric = quantus.MPRT(similarity_func=quantus.similarity_func.correlation_spearman, layer_order="top_down",
                          seed=42, abs=False, normalise=False, disable_warnings=True)
    theirs = metric(model=net, x_batch=x.transpose(0, 3, 1, 2), y_batch=y, a_batch=a, explain_func=_explain(name),
                    device="cpu")
    wrapped = PyTorchModel(net, channel_first=True, softmax=False, device="cpu")
    ours = {}
    method = methods.create(name)
    for layer, random_model in wrapped.get_random_layer_generator(order="top_down", seed=42):
        maps = method_maps(open_model(random_model, input_shape=(SIZE, SIZE, 3)), method, x, y, layer=None,
                           preprocess="raw")
        ours[layer] = [spearman(p, q) for p, q in zip(a[:, 0], maps)]
    assert list(ours) == [k for k in theirs if k != "original"]
    for layer, values in ours.items():
        np.testing.assert_allclose(values, theirs[layer], atol=1e-9, err_msg=layer)


@pytest.mark.parametrize("name", ["gradcam", "saliency"])
def test_random_logit_ssim_agrees(name):
    net, x = _net(), _images()
    xc = x.transpose(0, 3, 1, 2)
    y = net(torch.from_numpy(xc)).argmax(1).numpy()
    a = _explain(name)(net, xc, y)
    metric = quantus.RandomLogit(num_classes=K, seed=42, similarity_func=quantus.similarity_func.ssim,
                                 abs=False, normalise=False, disable_warnings=True)
    theirs = metric(model=net, x_batch=xc, y_batch=y, a_batch=a, explain_func=_explain(name), device="cpu")
    np.random.seed(42)  # Quantus's draw of the other class, as RandomLogit.evaluate_batch makes it
    others = np.stack([np.delete(np.arange(K), c) for c in y])[np.arange(N), np.random.randint(0, K - 1, N)]
    alt = _explain(name)(net, xc, others)
    ours = [ssim(p.ravel(), q.ravel()) for p, q in zip(a[:, 0], alt[:, 0])]
    np.testing.assert_allclose(ours, theirs, atol=1e-6)  # skimage computes float32 maps in float32


def test_pointing_game_agrees():
    net, x = _net(), _images()
    y = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).argmax(1).numpy()
    masks = np.zeros((N, SIZE, SIZE), bool)
    for i in range(N):
        masks[i, i:i + 6, 2 * (i % 4):2 * (i % 4) + 7] = True
    ev = evaluate(Model.open(net, input_shape=(SIZE, SIZE, 3), preprocess="raw"), list(x), "gradcam,saliency",
                  metrics="pointing", masks=list(masks))
    for name, s in ev.scores.items():
        theirs = quantus.PointingGame(abs=False, normalise=False, disable_warnings=True)(
            model=net, x_batch=x.transpose(0, 3, 1, 2), y_batch=y, a_batch=s.maps[:, None],
            s_batch=masks[:, None].astype(float), device="cpu")
        assert s.pointing == [bool(t) for t in theirs], name
        assert [pointing_hit(m, k) for m, k in zip(s.maps, masks)] == s.pointing


def test_max_sensitivity_agrees_with_the_same_noise():
    net, x = _net(), _images()
    xc = x.transpose(0, 3, 1, 2)
    y = net(torch.from_numpy(xc)).argmax(1).numpy()
    explain = _explain("saliency")
    a = explain(net, xc, y)
    samples = 5
    noise = [np.random.default_rng([7, k]).uniform(-0.05, 0.05, xc.shape).astype(np.float32) for k in range(samples)]
    calls = iter(noise)

    def perturb(arr, indices, **kwargs):
        return arr + next(calls).reshape(arr.shape)

    metric = quantus.MaxSensitivity(nr_samples=samples, perturb_func=perturb, abs=False, normalise=False,
                                    disable_warnings=True)
    theirs = metric(model=net, x_batch=xc, y_batch=y, a_batch=a, explain_func=explain, device="cpu")
    noisy = np.stack([explain(net, xc + eps, y)[:, 0] for eps in noise])
    ours = [max_sensitivity(a[i, 0], noisy[:, i]) for i in range(N)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_deletion_curve_agrees_with_pixel_flipping():
    net, x = _net(channels=1), _images(channels=1)
    xc = x.transpose(0, 3, 1, 2)
    y = net(torch.from_numpy(xc)).argmax(1).numpy()
    maps = np.random.default_rng(5).random((N, SIZE, SIZE))  # no ties: both orders are the same
    per_step = 16
    metric = quantus.PixelFlipping(features_in_step=per_step, perturb_baseline=0.0, abs=False, normalise=False,
                                   disable_warnings=True)
    theirs = np.asarray(metric(model=net, x_batch=xc, y_batch=y, a_batch=maps[:, None], device="cpu",
                               softmax=True))
    adapter = open_model(net, input_shape=(SIZE, SIZE, 1))

    def predict(batch: np.ndarray) -> np.ndarray:
        out = adapter.run(batch, [], lambda i, v: None).astype(np.float64)
        e = np.exp(out - out.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ours = perturbation_curves(predict, x, maps, y.tolist(), mode="deletion", baseline=0.0,
                               steps=SIZE * SIZE // per_step)
    np.testing.assert_allclose(ours[:, 1:], theirs, rtol=1e-5, atol=1e-6)
