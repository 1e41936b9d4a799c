"""StatsAccumulator.merge (Chan's merge) and state round trips."""

from __future__ import annotations

import io

import numpy as np
import pytest

from convlens import BadArgument
from convlens.core.stats import StatsAccumulator


def fields(s):
    return [s.mean, s.std, s.min, s.max, s.zero_fraction, s.count, s.dead, s.constant, s.nonfinite]


@pytest.mark.parametrize("seed", range(5))
def test_merge_of_shuffled_splits_equals_one_pass(seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(40, 3, 3, 6)) * 1e-2 + 1e4).astype(np.float32)
    x[..., 1] = 0                         # dead
    x[..., 2] = 2.5                       # constant
    x[..., 3] = np.maximum(x[..., 3] - 1e4, 0)
    x[rng.random(x.shape) < 0.01] = np.nan
    one = StatsAccumulator(4, "conv", "Conv2D")
    one.add(x)
    parts = []
    for chunk in np.array_split(rng.permutation(40), int(rng.integers(2, 8))):
        part = StatsAccumulator(4, "conv", "Conv2D")
        part.add(x[chunk])
        parts.append(part)
    rng.shuffle(parts)
    merged = StatsAccumulator(4, "conv", "Conv2D")
    merged.merge(StatsAccumulator(4, "conv", "Conv2D"))  # an empty one changes nothing
    for part in parts:
        merged.merge(part)
    a, b = one.result(), merged.result()
    assert (a.images, a.values_per_channel) == (b.images, b.values_per_channel) == (40, 9)
    # The spread of values near 1e4 is 1e-2: float64 rounding of the mean (1e4 * 1e-16)
    # shows in the spread at ~1e-11 relative; everything else agrees far below that.
    for u, v in zip(fields(a), fields(b)):
        np.testing.assert_allclose(u, v, rtol=1e-9, atol=0, equal_nan=True)
    np.testing.assert_array_equal(a.count, b.count)
    np.testing.assert_array_equal(a.min, b.min)
    np.testing.assert_array_equal(a.max, b.max)
    assert b.dead.tolist() == [False, True, False, False, False, False]
    assert b.constant[2] and b.mean[2] == 2.5 and b.std[2] == 0.0
    assert b.nonfinite.tolist() == np.isnan(x).reshape(-1, 6).any(axis=0).tolist()


def test_merge_into_empty_and_channel_mismatch():
    a = StatsAccumulator(1, "d")
    b = StatsAccumulator(1, "d")
    b.add(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    a.merge(b)
    assert a.result().mean.tolist() == [2.0, 3.0] and a.result().images == 2
    c = StatsAccumulator(1, "d")
    c.add(np.zeros((1, 3), np.float32))
    with pytest.raises(BadArgument, match="merge"):
        a.merge(c)


@pytest.mark.parametrize("empty", [False, True])
def test_state_round_trip_is_exact(empty):
    acc = StatsAccumulator(2, "conv", "Conv2D")
    if not empty:
        acc.add(np.random.default_rng(0).normal(size=(3, 4, 4, 5)).astype(np.float32))
    buf = io.BytesIO()
    np.savez(buf, **acc.state())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        back = StatsAccumulator.from_state(2, "conv", "Conv2D", dict(f))
    if empty:
        with pytest.raises(BadArgument):
            back.result()
        return
    for u, v in zip(fields(acc.result()), fields(back.result())):
        np.testing.assert_array_equal(u, v)
    more = np.ones((1, 4, 4, 5), np.float32)
    acc.add(more)
    back.add(more)
    for u, v in zip(fields(acc.result()), fields(back.result())):
        np.testing.assert_array_equal(u, v)
