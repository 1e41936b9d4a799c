"""Objectives as targets; the diversity penalty and its gradient."""

from __future__ import annotations

import numpy as np
import pytest

from convlens.visualize.objectives import Diversity, Objective, batch_target, scores


def test_batch_target_per_kind():
    t = batch_target([Objective("channel", 3, 1), Objective("channel", 3, 4, negative=True)])
    assert (t.layer, t.channels, t.reduce, t.weights) == (3, (1, 4), "mean", (1.0, -1.0))
    assert batch_target([Objective("neuron", 2, 0)]).reduce == "center"
    assert batch_target([Objective("class", None, 7)]).layer is None
    with pytest.raises(ValueError):
        batch_target([Objective("channel", 3, 1), Objective("neuron", 3, 1)])


def test_scores_are_means_centres_and_logits():
    acts = np.arange(2 * 3 * 3 * 2, dtype=np.float64).reshape(2, 3, 3, 2)
    mean = scores(batch_target([Objective("channel", 1, 0), Objective("channel", 1, 1, True)]), acts)
    np.testing.assert_allclose(mean, [acts[0, ..., 0].mean(), -acts[1, ..., 1].mean()])
    centre = scores(batch_target([Objective("neuron", 1, 1), Objective("neuron", 1, 0)]), acts)
    np.testing.assert_allclose(centre, [acts[0, 1, 1, 1], acts[1, 1, 1, 0]])
    logits = np.array([[1.0, 5.0, 2.0], [0.5, -1.0, 3.0]])
    np.testing.assert_allclose(scores(batch_target([Objective("class", None, 1), Objective("class", None, 2)]),
                                      logits), [5.0, 3.0])


def test_diversity_of_identical_copies_is_group_size_minus_one():
    a = np.random.default_rng(0).random((1, 4, 4, 3))
    acts = np.concatenate([a, a, 2 * a])  # Gram matrices differ only in scale: cosine 1
    value, _ = Diversity(1.0).value_and_grad(acts, [0, 0, 0])
    assert value == pytest.approx(2.0)
    value, grad = Diversity(1.0).value_and_grad(acts, [0, 1, 2])  # no group of two: nothing
    assert value == 0.0 and not grad.any()


def test_diversity_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    acts = rng.random((5, 3, 3, 4))
    groups = [0, 0, 0, 1, 1]
    div = Diversity(2.5)
    _, grad = div.value_and_grad(acts, groups)
    d = rng.standard_normal(acts.shape) * 1e-6
    numeric = (div.value_and_grad(acts + d, groups)[0] - div.value_and_grad(acts - d, groups)[0]) / 2
    assert float((grad * d).sum()) == pytest.approx(numeric, rel=1e-5)
