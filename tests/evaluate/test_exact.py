"""``convlens evaluate`` on hand-set tiny networks, where every number is known in closed form.

* A linear classifier ``logits = (s, -s)`` with ``s = w . x``: its saliency
  map is ``|w|`` (scaled by the largest), so deletion removes the pixels in
  the order of ``|w|``; with the mean as the replacement, the probability of
  class 0 after deleting the first k pixels is ``sigmoid(2 s_k)``, ``s_k =
  sum_j w_j (x_j if j is kept else mean(x))``, and the area under the curve
  is the trapezoid rule over those ``sigmoid`` values.
* Randomising the linear layer replaces ``w`` by the Glorot draw of
  :func:`glorot_kernel` (rank 0: the layer nearest the output): the map
  becomes ``|w'|`` and its rank correlation with ``|w|`` is scipy's.
* Eigen-CAM's map is a function of the CAM layer's activations only:
  randomising the layer above it leaves the map exactly as it was
  (Spearman 1, SSIM 1), randomising the conv below it changes it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from convlens import Model
from convlens.core.evaluation import curve_auc, glorot_kernel
from convlens.evaluate import evaluate

W = np.array([0.5, -2.0, 1.0, 0.25], np.float32)  # |w| order: pixel 1, 2, 0, 3
IMAGES = [np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)[..., None],
          np.array([[4.0, 1.0], [2.0, 3.0]], np.float32)[..., None]]


def _linear() -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(np.stack([W, -W])))
    return net


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_deletion_curve_and_auc_of_a_linear_model_in_closed_form():
    model = Model.open(_linear(), input_shape=(2, 2, 1), preprocess="raw")
    ev = evaluate(model, IMAGES, "saliency", metrics="deletion,insertion", target=0, steps=4, replace="mean")
    s = ev.scores["saliency"]
    np.testing.assert_allclose(s.maps[0], (np.abs(W) / np.abs(W).max()).reshape(2, 2), rtol=1e-6)
    order = [1, 2, 0, 3]
    for i, image in enumerate(IMAGES):
        x = image.ravel().astype(np.float64)
        mean = x.mean()
        deletion, insertion = [], []
        for k in range(5):
            gone = set(order[:k])
            kept = np.array([mean if j in gone else x[j] for j in range(4)])
            deletion.append(_sigmoid(2 * float(W @ kept)))
            put = np.array([x[j] if j in gone else mean for j in range(4)])
            insertion.append(_sigmoid(2 * float(W @ put)))
        np.testing.assert_allclose(s.curves["deletion"][i], deletion, rtol=1e-6)
        np.testing.assert_allclose(s.curves["insertion"][i], insertion, rtol=1e-6)
        trapezoid = (sum(deletion) - (deletion[0] + deletion[-1]) / 2) / 4
        assert curve_auc(s.curves["deletion"][i]) == pytest.approx(trapezoid, rel=1e-6)
    summary = ev.summary_of("saliency")
    assert summary["deletion"]["auc"] == pytest.approx(np.mean([curve_auc(c) for c in s.curves["deletion"]]))


def test_randomising_the_linear_layer_gives_the_known_rank_correlation():
    model = Model.open(_linear(), input_shape=(2, 2, 1), preprocess="raw")
    ev = evaluate(model, IMAGES, "saliency", metrics="randomisation", target=0, seed=3)
    fresh = glorot_kernel((2, 4), 3, 0)[0]  # the layer nearest the output has rank 0
    expected = spearmanr(np.abs(W), np.abs(fresh)).statistic
    s = ev.scores["saliency"]
    assert ev.randomised_layers == ["1"]
    np.testing.assert_allclose(s.rand_spearman[0], [expected, expected], rtol=1e-9)
    np.testing.assert_allclose(s.strip[0], (np.abs(fresh) / np.abs(fresh).max()).reshape(2, 2), rtol=1e-6)


def test_randomising_above_the_cam_layer_leaves_an_activation_map_unchanged():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 4)).eval()
    model = Model.open(net, input_shape=(6, 6, 1), preprocess="raw")
    rng = np.random.default_rng(0)
    images = [rng.random((6, 6, 1)).astype(np.float32) for _ in range(3)]
    ev = evaluate(model, images, "eigencam", metrics="randomisation", layer="1")
    s = ev.scores["eigencam"]
    assert ev.randomised_layers == ["3", "0"]  # the linear layer first, then the conv
    np.testing.assert_allclose(s.rand_spearman[0], 1.0, atol=1e-12)
    np.testing.assert_allclose(s.rand_ssim[0], 1.0, atol=1e-12)
    assert np.all(s.rand_spearman[1] < 0.99)
