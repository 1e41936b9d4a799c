"""Rank correlation and deletion/insertion curves, with exact expected numbers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from convlens import BadArgument
from convlens.core.evaluation import (
    curve_auc,
    perturbation_curve,
    perturbation_curves,
    ranks,
    spearman,
)


def test_ranks_average_ties():
    np.testing.assert_array_equal(ranks(np.array([10, 30, 20, 30])), [1, 3.5, 2, 3.5])


@pytest.mark.parametrize("a, b, expected", [
    ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),
    ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
    ([1, 2, 3, 4], [1, 3, 2, 4], 0.8),  # 1 - 6 * 2 / (4 * 15)
    ([0, 0, 1, 1], [5, 5, 5, 5], 0.0),  # a constant map shares no ranking
])
def test_spearman_exact(a, b, expected):
    assert spearman(np.array(a), np.array(b)) == pytest.approx(expected)


def test_spearman_agrees_with_scipy_on_maps_with_ties():
    rng = np.random.default_rng(1)
    a = np.round(rng.random((7, 9)), 1)  # many ties
    b = np.round(a + rng.normal(0, 0.3, a.shape), 1)
    assert spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)


def test_spearman_rejects_maps_of_different_sizes():
    with pytest.raises(BadArgument, match="same size"):
        spearman(np.zeros(4), np.zeros(5))


def _linear_model(weights: np.ndarray):
    """Class 0's score is the weighted sum of the pixels; class 1's is constant."""
    def predict(batch: np.ndarray) -> np.ndarray:
        s = (batch[..., 0] * weights).sum(axis=(1, 2))
        return np.stack([s, np.ones_like(s)], axis=1)
    return predict


def test_deletion_and_insertion_follow_the_map_order_exactly():
    weights = np.array([[4.0, 3.0], [2.0, 1.0]])
    image = np.ones((2, 2, 1), np.float32)
    predict = _linear_model(weights)
    perfect = weights  # ranks the pixels by their true contribution
    deletion = perturbation_curve(predict, image, perfect, 0, mode="deletion", steps=4)
    insertion = perturbation_curve(predict, image, perfect, 0, mode="insertion", steps=4)
    np.testing.assert_allclose(deletion, [10, 6, 3, 1, 0])
    np.testing.assert_allclose(insertion, [0, 4, 7, 9, 10])
    worst = perturbation_curve(predict, image, -weights, 0, mode="deletion", steps=4)
    np.testing.assert_allclose(worst, [10, 9, 7, 4, 0])
    assert curve_auc(deletion) == pytest.approx((10 + 2 * (6 + 3 + 1) + 0) / 8)
    assert curve_auc(deletion) < curve_auc(worst)


def test_ties_are_broken_by_a_fixed_random_order_and_a_baseline_image_is_used():
    weights = np.arange(16, dtype=np.float64).reshape(4, 4)
    image = np.ones((4, 4, 1), np.float32)
    flat = np.zeros((4, 4))
    a = perturbation_curve(_linear_model(weights), image, flat, 0, steps=16, seed=3, batch=5)
    b = perturbation_curve(_linear_model(weights), image, flat, 0, steps=16, seed=3)
    np.testing.assert_allclose(a, b)  # batching does not change the curve
    row_major = weights.sum() - np.concatenate([[0], np.cumsum(weights.ravel())])
    assert not np.allclose(a, row_major)  # a flat map is not read in row-major order
    assert a[0] == weights.sum() and a[-1] == 0
    half = np.full((4, 4, 1), 0.5, np.float32)
    c = perturbation_curve(_linear_model(weights), image, weights, 0, baseline=half, steps=1)
    np.testing.assert_allclose(c, [weights.sum(), weights.sum() / 2])


def test_bad_curve_arguments_raise():
    with pytest.raises(BadArgument, match="mode"):
        perturbation_curve(_linear_model(np.ones((2, 2))), np.ones((2, 2, 1)), np.ones((2, 2)), 0, mode="x")
    with pytest.raises(BadArgument, match="map"):
        perturbation_curve(_linear_model(np.ones((2, 2))), np.ones((2, 2, 1)), np.ones((3, 2)), 0)
    with pytest.raises(BadArgument, match="class"):
        perturbation_curve(_linear_model(np.ones((2, 2))), np.ones((2, 2, 1)), np.ones((2, 2)), 5)


def test_curves_of_many_images_equal_one_at_a_time():
    rng = np.random.default_rng(4)
    weights = rng.random((5, 5))
    images = rng.random((3, 5, 5, 1)).astype(np.float32)
    heats = rng.random((3, 5, 5))
    predict = _linear_model(weights)
    together = perturbation_curves(predict, images, heats, [0, 0, 1], mode="insertion", steps=5, batch=7)
    for i, cls in enumerate([0, 0, 1]):
        alone = perturbation_curve(predict, images[i], heats[i], cls, mode="insertion", steps=5)
        np.testing.assert_allclose(together[i], alone)
    np.testing.assert_allclose(together[2], 1.0)  # class 1 is constant
