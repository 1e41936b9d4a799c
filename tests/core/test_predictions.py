"""Reading a classifier's outputs as probabilities: the graph's word first, then a tolerance that fits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convlens import BadArgument
from convlens.core.predictions import softmax, sum_tolerance, to_probabilities


def _uint8_softmax(logits: np.ndarray) -> np.ndarray:
    """What a uint8 softmax gives after dequantisation: probabilities rounded to steps of 1/256."""
    return np.round(softmax(logits) * 256).clip(0, 255) / 256


def test_the_issue_case_a_quantised_softmax_is_not_softmaxed_again():
    # 1000 classes, the top one at ~0.789, the outputs rounded to 1/256: they do not sum to 1
    logits = np.full((1, 1000), -2.0)
    logits[0, :40] = np.linspace(0.5, 1.5, 40)
    logits[0, 7] = 8.35
    q = _uint8_softmax(logits)
    assert abs(q.sum() - 1) > 1e-3  # the old rule (atol=1e-3) read these as logits
    for word in ("softmax", None):  # from the graph, or from the step when the graph does not say
        p, how = to_probabilities(q, word, 1 / 256)
        assert np.array_equal(p, q)  # the model's own numbers, untouched
        assert p[0].argmax() == 7 and p[0, 7] == pytest.approx(q[0, 7])
        assert p[0, 7] > 0.7
    assert to_probabilities(q, "softmax", 1 / 256)[1] == "the model's own probabilities (its graph ends in softmax)"
    assert to_probabilities(q, None, 1 / 256)[1] == ("the model's own probabilities (they sum to 1 within the "
                                                    "output's quantisation step 1/256)")
    # without the graph's word or the step, these are not probabilities: softmax, top ~0.27%
    p, how = to_probabilities(q)
    assert how == "softmax of the model's outputs (they are not probabilities)"
    assert p[0, 7] == pytest.approx(math.exp(q[0, 7]) / np.exp(q[0]).sum())
    assert p[0, 7] < 0.01


def test_float_probabilities_sum_to_one_within_float_rounding():
    z = np.random.default_rng(0).normal(size=(3, 10))
    probs = softmax(z).astype(np.float32)
    p, how = to_probabilities(probs)
    assert how == "the model's own probabilities (they sum to 1)"
    np.testing.assert_array_equal(p, probs.astype(np.float64))


def test_a_linear_graph_is_softmaxed_even_when_the_scores_look_like_probabilities():
    scores = np.array([[0.25, 0.25, 0.5]])
    p, how = to_probabilities(scores, "linear")
    assert how == "softmax of the model's outputs (its graph ends in a linear layer: scores)"
    np.testing.assert_allclose(p, np.exp(scores) / np.exp(scores).sum())


def test_sigmoid_outputs_are_each_a_probability_and_need_not_sum_to_one():
    s = np.array([[0.9, 0.8, 0.05]])
    p, how = to_probabilities(s, "sigmoid")
    assert np.array_equal(p, s)
    assert "sigmoid" in how and "own probabilities" in how
    assert to_probabilities(s)[1].startswith("softmax")  # without the graph: not a distribution


def test_a_softmax_graph_whose_outputs_are_out_of_range_is_softmaxed():
    # e.g. a log-softmax mistaken for a softmax: negative numbers are not probabilities
    logp = np.log(np.array([[0.7, 0.2, 0.1]]))
    p, how = to_probabilities(logp, "softmax")
    np.testing.assert_allclose(p, [[0.7, 0.2, 0.1]])
    assert how.startswith("softmax of the model's outputs")


def test_the_tolerance_grows_with_the_step_and_the_class_count():
    assert sum_tolerance(1000, None) == 1e-3
    assert sum_tolerance(10, 0.0) == 1e-3
    assert sum_tolerance(10, float("nan")) == 1e-3
    assert sum_tolerance(1000, 1 / 256) == pytest.approx(math.sqrt(1000) / 256)
    assert sum_tolerance(1, 1e-6) == 1e-3
    # a float output is not given a quantised output's slack: 0.996 is not 1 for floats
    q = np.array([[0.5, 0.496]])
    assert to_probabilities(q)[1].startswith("softmax")
    assert to_probabilities(q, None, 1 / 256)[1].endswith("quantisation step 1/256)")
    assert to_probabilities(q, None, 0.003)[1].endswith("quantisation step 0.003)")


def test_non_finite_scores_give_finite_probabilities():
    z = np.array([[np.nan, 1.0, np.inf], [np.nan, np.nan, np.nan], [-np.inf, -np.inf, 0.0]])
    p, _ = to_probabilities(z)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1)
    np.testing.assert_allclose(p[0], [0, 0, 1])
    np.testing.assert_allclose(p[1], [1 / 3] * 3)
    np.testing.assert_allclose(p[2], [0, 0, 1])


def test_bad_arguments_raise_convlens_errors():
    with pytest.raises(BadArgument, match="final_activation"):
        to_probabilities(np.ones((1, 3)) / 3, "relu")
    with pytest.raises(BadArgument, match="K >= 1"):
        to_probabilities(np.zeros((2, 0)))
