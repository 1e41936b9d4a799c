"""Class means and the selectivity index (Morcos et al. 2018) on hand-set numbers."""

from __future__ import annotations

import io

import numpy as np
import pytest

from convlens import BadArgument
from convlens.core.selectivity import ClassMeans, selectivity


def test_hand_set_means_best_class_and_index():
    cm = ClassMeans(channels=3, classes=3)
    values = np.array([
        [4.0, 1.0, -1.0],   # class 0
        [2.0, 1.0, 1.0],    # class 0
        [0.0, 1.0, 3.0],    # class 1
        [1.0, 1.0, 0.0],    # class 2
        [9.0, 9.0, 9.0],    # unlabelled: skipped
    ])
    cm.add(values, np.array([0, 0, 1, 2, -1]))
    r = cm.result()
    assert r.counts.tolist() == [2, 1, 1]
    np.testing.assert_array_equal(r.means, [[3.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 1.0, 0.0]])
    assert r.best.tolist() == [0, 0, 1]  # a tie (channel 1) goes to the smaller class
    # channel 0: best 3, rest (0 + 1) / 2 = 0.5 -> 2.5 / 3.5; channel 1: all equal -> 0;
    # channel 2: best 3, rest 0 -> 1 (only one class drives it).
    np.testing.assert_allclose(r.index, [2.5 / 3.5, 0.0, 1.0], rtol=0, atol=1e-15)


def test_undefined_index_is_nan():
    # One class seen only; a channel with negative means summing to <= 0; a NaN-only channel.
    cm = ClassMeans(3, 2)
    cm.add(np.array([[1.0, -2.0, np.nan]]), np.array([0]))
    r = cm.result()
    assert np.isnan(r.index).all()
    assert np.isnan(r.means[1]).all() and r.counts.tolist() == [1, 0]
    assert r.best.tolist() == [0, 0, -1]
    s = selectivity(np.array([[-1.0], [-3.0]]), np.array([1, 1]))
    assert s.best.tolist() == [0] and np.isnan(s.index[0])


@pytest.mark.parametrize("seed", range(4))
def test_merge_of_shuffled_splits_equals_one_pass(seed):
    rng = np.random.default_rng(seed)
    n, c, k = 200, 5, 4
    values = rng.normal(size=(n, c))
    values[rng.random((n, c)) < 0.02] = np.nan
    labels = rng.integers(-1, k, n)
    one = ClassMeans(c, k)
    one.add(values, labels)
    merged = ClassMeans(c, k)
    for chunk in np.array_split(rng.permutation(n), 7):
        part = ClassMeans(c, k)
        part.add(values[chunk], labels[chunk])
        merged.merge(part)
    a, b = one.result(), merged.result()
    np.testing.assert_allclose(a.means, b.means, rtol=1e-12)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.best, b.best)
    # and against plain numpy, class by class
    for cls in range(k):
        rows = values[labels == cls]
        np.testing.assert_allclose(a.means[cls], np.nanmean(rows, axis=0), rtol=1e-12)


def test_state_round_trip():
    cm = ClassMeans(2, 3)
    cm.add(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0, 2]))
    buf = io.BytesIO()
    np.savez(buf, **cm.state())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        back = ClassMeans.from_state(dict(f))
    np.testing.assert_array_equal(back.result().means, cm.result().means)
    np.testing.assert_array_equal(back.result().counts, [1, 0, 1])


def test_bad_labels_and_shapes():
    cm = ClassMeans(2, 3)
    with pytest.raises(BadArgument, match="labels must lie"):
        cm.add(np.zeros((1, 2)), np.array([3]))
    with pytest.raises(BadArgument, match="values"):
        cm.add(np.zeros((1, 3)), np.array([0]))
    with pytest.raises(BadArgument, match="merge"):
        cm.merge(ClassMeans(2, 4))
