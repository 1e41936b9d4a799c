"""DatasetAccumulator: hand-set maps, positions, merges of splits, retried batches, npz state."""

from __future__ import annotations

import io

import numpy as np
import pytest

from convlens import BadArgument
from convlens.core.layers import LayerInfo
from convlens.dataset.accumulate import RANKINGS, DatasetAccumulator, reduce_maps

CONV = LayerInfo(3, "conv", "Conv2D", "conv", (4, 5, 3))
SEQ = LayerInfo(4, "seq", "Conv1D", "conv", (6, 2))
DENSE = LayerInfo(5, "dense", "Dense", "dense", (2,))
LAYERS = [CONV, SEQ, DENSE]


def batch(rng, n):
    return {"conv": rng.normal(size=(n, 4, 5, 3)).astype(np.float32),
            "seq": rng.normal(size=(n, 6, 2)).astype(np.float32),
            "dense": rng.integers(-2, 3, (n, 2)).astype(np.float32)}


def test_reduce_maps_hand_set_positions():
    a = np.zeros((1, 2, 3, 2), np.float32)
    a[0, 1, 2, 0] = 5.0       # channel 0: max at (1, 2)
    a[0, 0, 1, 0] = -4.0      # channel 0: min at (0, 1)
    a[0, :, :, 1] = 1.0       # channel 1: constant: first position for both
    red = reduce_maps(a)
    rankings, means, hw = red.rankings, red.means, red.map_hw
    assert hw == (2, 3)
    assert rankings["top"][0].tolist() == [[5.0, 1.0]]
    assert rankings["top"][1].tolist() == [[[1, 2], [0, 0]]]
    assert rankings["negative"][0].tolist() == [[4.0, -1.0]]
    assert rankings["negative"][1].tolist() == [[[0, 1], [0, 0]]]
    np.testing.assert_allclose(means, [[1 / 6, 1.0]])
    np.testing.assert_allclose(rankings["bottom"][0], [[-1 / 6, -1.0]])
    r1 = reduce_maps(np.array([[[0.0], [3.0], [1.0]]], np.float32))  # (1, L=3, C=1)
    assert r1.map_hw == (1, 3) and r1.rankings["top"][1].tolist() == [[[0, 1]]]
    r0 = reduce_maps(np.array([[2.0, -1.0]], np.float32))
    assert r0.map_hw is None and r0.rankings["top"][1].tolist() == [[[0, 0], [0, 0]]]
    assert r0.rankings["negative"][0].tolist() == [[-2.0, 1.0]] and r0.means.tolist() == [[2.0, -1.0]]


@pytest.mark.parametrize("case", ["plain", "offset", "nonfinite", "vector", "ints"])
def test_batch_moments_equal_the_stats_accumulator(case):
    from convlens.core.stats import StatsAccumulator

    rng = np.random.default_rng(7)
    a = np.maximum(rng.normal(size=(6, 5, 4, 7)), 0).astype(np.float32)
    a[..., 1] = 0           # dead
    a[..., 2] = 0.1         # constant, not exactly representable
    if case == "offset":    # values near 1e4 with a spread of 1e-2: the rounding of the mean matters
        a = (rng.normal(size=a.shape) * 1e-2 + 1e4).astype(np.float32)
    if case == "nonfinite":
        a[0, 0, 0, 3], a[1, 2, 2, 3], a[2, 1, 1, 4], a[3, 0, 0, 5] = np.nan, np.inf, -np.inf, np.nan
        a[..., 6] = np.nan
    if case == "vector":
        a = a[:, 0, 0, :]
    if case == "ints":
        a = rng.integers(-3, 4, (6, 5, 7)).astype(np.int64)
    ref = StatsAccumulator(1, "l")
    ref.add(a)
    got = StatsAccumulator.from_state(1, "l", "", reduce_maps(a).moments).result()
    want = ref.result()
    assert (got.images, got.values_per_channel, got.channels) == (want.images, want.values_per_channel,
                                                                  want.channels)
    for key in ("count", "min", "max", "dead", "constant", "nonfinite", "zero_fraction"):
        np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=key)
    # float32 pairwise sums: about 1e-7 of the values' magnitude (the spread of values near 1e4
    # keeps its own relative accuracy: the sums are of deviations from a shift near the mean)
    scale = float(np.nanmax(np.abs(np.where(np.isfinite(a), a, np.nan))))
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-6, atol=1e-6 * scale, equal_nan=True)
    np.testing.assert_allclose(got.std, want.std, rtol=1e-5, atol=1e-7, equal_nan=True)


def test_top_ranking_equals_brute_force_with_labels():
    rng = np.random.default_rng(0)
    acc = DatasetAccumulator(LAYERS, k=4, classes=3)
    data = batch(rng, 30)
    labels = rng.integers(-1, 3, 30)
    for chunk in np.array_split(np.arange(30), 4):
        acc.add_batch({k: v[chunk] for k, v in data.items()}, chunk + 100, labels[chunk])
    assert acc.images == 30 and acc.seen_ids().tolist() == list(range(100, 130))
    _, rankings, classes = acc.layer_parts("conv")
    scores, ids, positions = rankings["top"].result()
    maxima = data["conv"].reshape(30, -1, 3).max(axis=1)
    for c in range(3):
        order = sorted(range(30), key=lambda n: (-maxima[n, c], n))[:4]
        assert ids[c].tolist() == [n + 100 for n in order]
        assert scores[c].tolist() == [float(maxima[n, c]) for n in order]
        for j, n in enumerate(order):
            y, x = positions[c, j]
            assert data["conv"][n, y, x, c] == maxima[n, c]
    assert classes is not None
    sel = classes.result()
    means = data["conv"].astype(np.float64).mean(axis=(1, 2))
    np.testing.assert_allclose(sel.means[1], means[labels == 1].mean(axis=0), rtol=1e-6, atol=1e-7)
    assert acc.map_hw("conv") == (4, 5) and acc.map_hw("seq") == (1, 6) and acc.map_hw("dense") is None


def results_of(acc):
    out = {}
    for layer in LAYERS:
        stats, rankings, classes = acc.layer_parts(layer.name)
        s = stats.result()
        out[layer.name] = {"stats": [s.mean, s.std, s.min, s.max, s.count, s.zero_fraction],
                           **{k: r.result() for k, r in rankings.items()},
                           "classes": classes.result().means if classes else None}
    return out


def assert_same(a, b, rtol=0.0):
    for name in a:
        for key in RANKINGS:
            for x, y in zip(a[name][key], b[name][key]):
                np.testing.assert_array_equal(x, y)
        for x, y in zip(a[name]["stats"], b[name]["stats"]):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol / 10, equal_nan=True)
        np.testing.assert_allclose(a[name]["classes"], b[name]["classes"], rtol=rtol, atol=rtol / 10,
                                   equal_nan=True)


@pytest.mark.parametrize("seed", range(3))
def test_merge_of_shuffled_batches_equals_one_pass_and_retries_are_dropped(seed):
    rng = np.random.default_rng(seed)
    n = 40
    data = batch(rng, n)
    labels = rng.integers(0, 2, n)
    one = DatasetAccumulator(LAYERS, k=5, classes=2)
    one.add_batch(data, np.arange(n), labels)
    parts = []
    for chunk in np.array_split(rng.permutation(n), 5):
        part = DatasetAccumulator(LAYERS, k=5, classes=2)
        part.add_batch({k: v[chunk] for k, v in data.items()}, chunk, labels[chunk])
        parts.append(part)
    merged = DatasetAccumulator(LAYERS, k=5, classes=2)
    for part in parts[::-1]:
        merged.merge(part)
    merged.merge(parts[2])  # a retried batch: already seen, dropped whole
    assert merged.images == n and merged.seen_ids().tolist() == list(range(n))
    # float32 pairwise sums per batch (see reduce_maps): statistics agree to ~1e-7, rankings exactly
    assert_same(results_of(one), results_of(merged), rtol=1e-5)
    mixed = DatasetAccumulator(LAYERS, k=5, classes=2)
    mixed.add_batch({k: v[:3] for k, v in data.items()}, np.array([0, 1, 1000]), labels[:3])
    with pytest.raises(BadArgument, match="2 of 3 images were folded in already"):
        merged.merge(mixed)


def test_failures_and_seen_ids():
    acc = DatasetAccumulator(LAYERS, k=2)
    acc.add_failures(np.array([7, 3]), ["b.png", "a.png"], ["truncated", "not an image"])
    acc.add_batch(batch(np.random.default_rng(0), 2), np.array([5, 4]), None)
    assert acc.failures == [(3, "a.png", "not an image"), (7, "b.png", "truncated")]
    assert acc.seen_ids().tolist() == [3, 4, 5, 7] and acc.images == 2
    with pytest.raises(BadArgument, match="no output of layer"):
        DatasetAccumulator(LAYERS, k=2).layer_parts("conv")
    with pytest.raises(BadArgument, match="not among"):
        acc.add(LayerInfo(9, "other", "Dense", "dense", (2,)), np.zeros((1, 2)), np.array([9]), None)
    with pytest.raises(BadArgument, match="channels"):
        acc.add(CONV, np.zeros((1, 4, 5, 4), np.float32), np.array([9]), None)


def test_state_round_trip_through_npz_then_continue():
    rng = np.random.default_rng(5)
    first, second = batch(rng, 6), batch(rng, 5)
    straight = DatasetAccumulator(LAYERS, k=3, classes=2)
    straight.add_batch(first, np.arange(6), np.array([0, 1, 0, 1, -1, 0]))
    straight.add_failures(np.array([6]), ["x/ü.png"], ["cannot identify image"])
    buf = io.BytesIO()
    np.savez(buf, **straight.state())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        back = DatasetAccumulator.from_state(LAYERS, dict(f))
    assert back.failures == straight.failures and back.images == 6
    for acc in (straight, back):
        acc.add_batch(second, np.arange(7, 12), np.array([1, 1, 0, 0, 1]))
    assert_same(results_of(straight), results_of(back))
    assert back.seen_ids().tolist() == list(range(12))
    with pytest.raises(BadArgument, match="damaged"):
        DatasetAccumulator.from_state(LAYERS[:2], straight.state())
    empty = DatasetAccumulator.from_state(LAYERS, DatasetAccumulator(LAYERS, 3).state())
    assert empty.images == 0 and empty.seen_ids().size == 0


def test_id_set_ranges():
    from convlens.dataset.accumulate import IdSet

    s = IdSet()
    s.add(np.array([5, 3, 4, 9]))
    s.add(np.array([6, 4]))
    s.add_ranges(np.array([20, 10]), np.array([25, 12]))
    assert s.starts.tolist() == [3, 9, 20] and s.ends.tolist() == [7, 12, 25]
    assert len(s) == 12 and s.array().tolist() == [3, 4, 5, 6, 9, 10, 11, 20, 21, 22, 23, 24]
    assert s.contains(np.array([2, 3, 6, 7, 8, 11, 12, 24, 25])).tolist() == [
        False, True, True, False, False, True, False, True, False]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, 200)
    t = IdSet()
    for chunk in np.array_split(ids, 9):
        t.add(chunk)
    assert t.array().tolist() == np.unique(ids).tolist()
    assert t.contains(np.arange(300)).tolist() == np.isin(np.arange(300), ids).tolist()


@pytest.mark.parametrize("hw", [(255, 257), (256, 256), (300, 300)])
def test_zero_counts_are_exact_around_the_16_bit_limit_of_positions(hw):
    # 65,535 positions (every one zero in channel 0: the largest 16-bit count), 65,536 and more
    rng = np.random.default_rng(1)
    a = rng.integers(-1, 2, (2, *hw, 3)).astype(np.float32)
    a[:, :, :, 0] = 0.0
    zeros = reduce_maps(a).moments["zeros"]
    assert zeros.tolist() == (a == 0).sum(axis=(0, 1, 2)).tolist()
    assert zeros[0] == 2 * hw[0] * hw[1]
