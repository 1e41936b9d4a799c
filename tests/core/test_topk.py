"""TopK: exact hand-set rankings, ties, non-finite scores, dedupe, order independence, state."""

from __future__ import annotations

import io

import numpy as np
import pytest

from convlens import BadArgument
from convlens.core.topk import TopK


def pos(n: int, c: int, fill: int = 0) -> np.ndarray:
    return np.full((n, c, 2), fill, np.int32)


def brute(scores, ids, positions, k):
    """Per channel, sort every finite candidate by (-score, id) in Python and keep k."""
    c = scores.shape[1]
    out_s = np.full((c, k), -np.inf)
    out_i = np.full((c, k), -1, np.int64)
    out_p = np.full((c, k, 2), -1, np.int32)
    for ch in range(c):
        rows = sorted((-scores[n, ch], ids[n], n) for n in range(len(ids))
                      if np.isfinite(scores[n, ch]))[:k]
        for j, (neg, i, n) in enumerate(rows):
            out_s[ch, j], out_i[ch, j], out_p[ch, j] = -neg, i, positions[n, ch]
    return out_s, out_i, out_p


def test_hand_set_ranking_ties_and_nan():
    top = TopK(channels=2, k=3)
    scores = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, np.nan], [3.0, 1.0]])
    positions = np.arange(16, dtype=np.int32).reshape(4, 2, 2)
    top.add(scores, np.array([10, 11, 12, 13]), positions)
    s, i, p = top.result()
    assert s.tolist() == [[3.0, 3.0, 2.0], [5.0, 5.0, 1.0]]
    assert i.tolist() == [[11, 13, 12], [10, 11, 13]]  # tie at 3 and at 5: smaller id first
    assert p[0].tolist() == [[4, 5], [12, 13], [8, 9]]
    assert p[1].tolist() == [[2, 3], [6, 7], [14, 15]]
    assert s.dtype == np.float64 and i.dtype == np.int64 and p.dtype == np.int32


def test_fewer_candidates_than_k_leave_empty_slots():
    top = TopK(channels=1, k=4)
    top.add(np.array([[2.0], [np.inf]]), np.array([0, 1]), pos(2, 1, 7))
    s, i, p = top.result()
    assert s.tolist() == [[2.0, -np.inf, -np.inf, -np.inf]]
    assert i.tolist() == [[0, -1, -1, -1]]
    assert p.tolist() == [[[7, 7], [-1, -1], [-1, -1], [-1, -1]]]


def test_later_batches_replace_weaker_candidates():
    top = TopK(channels=1, k=2)
    top.add(np.array([[1.0], [2.0]]), np.array([0, 1]), pos(2, 1))
    top.add(np.array([[1.5], [9.0]]), np.array([2, 3]), pos(2, 1))
    assert top.result()[1].tolist() == [[3, 1]]
    assert top.result()[0].tolist() == [[9.0, 2.0]]


def test_all_ties_keep_the_smallest_ids_in_any_order():
    a, b = TopK(3, 4), TopK(3, 4)
    ids = np.arange(20)
    scores = np.zeros((20, 3))
    a.add(scores, ids, pos(20, 3))
    for chunk in np.array_split(np.random.default_rng(0).permutation(20), 5):
        b.add(scores[chunk], ids[chunk], pos(len(chunk), 3))
    assert a.result()[1].tolist() == [[0, 1, 2, 3]] * 3
    for x, y in zip(a.result(), b.result()):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("seed", range(6))
def test_shuffled_splits_and_merges_equal_one_pass(seed):
    rng = np.random.default_rng(seed)
    n, c, k = int(rng.integers(1, 120)), int(rng.integers(1, 9)), int(rng.integers(1, 12))
    # Few distinct values so ties are everywhere; some NaN and inf.
    scores = rng.integers(0, 5, (n, c)).astype(np.float64)
    scores[rng.random((n, c)) < 0.05] = np.nan
    scores[rng.random((n, c)) < 0.03] = -np.inf
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    positions = rng.integers(0, 50, (n, c, 2)).astype(np.int32)
    expected = brute(scores, ids, positions, k)

    one = TopK(c, k)
    one.add(scores, ids, positions)
    parts = []
    order = rng.permutation(n)
    for chunk in np.array_split(order, int(rng.integers(1, 7))):
        part = TopK(c, k)
        for sub in np.array_split(chunk, 2):
            part.add(scores[sub], ids[sub], positions[sub])
        parts.append(part)
    rng.shuffle(parts)
    merged = TopK(c, k)
    # A tree of merges in a random grouping: associativity and commutativity.
    while len(parts) > 1:
        a = parts.pop(int(rng.integers(len(parts))))
        b = parts.pop(int(rng.integers(len(parts))))
        b.merge(a)
        parts.append(b)
    merged.merge(parts[0])
    for got in (one.result(), merged.result()):
        for x, y in zip(got, expected):
            np.testing.assert_array_equal(x, y)


def test_a_retried_batch_is_kept_once():
    rng = np.random.default_rng(3)
    scores, ids, positions = rng.random((10, 4)), np.arange(10), rng.integers(0, 9, (10, 4, 2))
    once = TopK(4, 5)
    once.add(scores, ids, positions)
    twice = TopK(4, 5)
    twice.add(scores, ids, positions)
    twice.add(scores[3:8], ids[3:8], positions[3:8])      # the same images again
    again = TopK(4, 5)
    again.add(scores, ids, positions)
    twice.merge(again)
    for x, y in zip(once.result(), twice.result()):
        np.testing.assert_array_equal(x, y)
    assert all(len(set(row)) == 5 for row in twice.result()[1].tolist())


def test_state_round_trip_through_npz_without_pickle():
    rng = np.random.default_rng(1)
    top = TopK(3, 4)
    top.add(rng.random((6, 3)), np.arange(6), rng.integers(0, 5, (6, 3, 2)))
    buf = io.BytesIO()
    np.savez(buf, **top.state())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        back = TopK.from_state(dict(f))
    for x, y in zip(top.result(), back.result()):
        np.testing.assert_array_equal(x, y)
        assert x.dtype == y.dtype
    back.add(np.full((1, 3), 9.0), np.array([99]), pos(1, 3))
    assert back.result()[1][:, 0].tolist() == [99, 99, 99]


def test_bad_arguments():
    with pytest.raises(BadArgument, match="k must be"):
        TopK(3, 0)
    with pytest.raises(BadArgument, match="scores"):
        TopK(3, 2).add(np.zeros((2, 4)), np.arange(2), pos(2, 4))
    with pytest.raises(BadArgument, match="merge"):
        TopK(3, 2).merge(TopK(3, 3))
    with pytest.raises(BadArgument, match="damaged"):
        TopK.from_state({"scores": np.zeros((2, 2))})


@pytest.mark.parametrize("seed", range(3))
def test_rankings_folded_together_equal_each_folded_alone(seed):
    # Few distinct scores (ties at every boundary, so the pruning of candidates below the k-th kept
    # score meets equal scores), NaN and inf, out-of-order batches and a retried one.
    rng = np.random.default_rng(seed)
    c, k, n = 5, 4, 90
    scores = [rng.integers(-3, 4, (n, c)).astype(np.float64) for _ in range(3)]
    scores[1][rng.random((n, c)) < 0.05] = np.nan
    scores[2][rng.random((n, c)) < 0.05] = np.inf
    positions = [rng.integers(0, 9, (n, c, 2)) for _ in range(3)]
    alone = [TopK(c, k) for _ in range(3)]
    together = [TopK(c, k) for _ in range(3)]
    parts = [np.arange(40, 70), np.arange(0, 40), np.arange(70, 90), np.arange(0, 40)]
    for chunk in parts:
        for top, s, p in zip(alone, scores, positions):
            top.add(s[chunk], chunk, p[chunk])
        TopK.add_together(together, [s[chunk] for s in scores], chunk, [p[chunk] for p in positions])
    others = [TopK(c, k) for _ in range(3)]
    TopK.add_together(others, [s[50:60] + 1 for s in scores], np.arange(50, 60),
                      [p[50:60] for p in positions])
    for top, other in zip(alone, others):
        top.merge(other)
    TopK.merge_together(together, others)
    for a, b in zip(alone, together):
        for x, y in zip(a.result(), b.result()):
            np.testing.assert_array_equal(x, y)
    # and the pruned folds equal a brute-force sort of every finite candidate
    best = np.where(np.isfinite(scores[0]), scores[0], -np.inf)
    best[50:60] = np.maximum(best[50:60], scores[0][50:60] + 1)
    ids = np.arange(n)
    want = np.lexsort((np.broadcast_to(ids[:, None], best.shape), -best), axis=0)[:k].T
    np.testing.assert_array_equal(alone[0].result()[1], want)
    with pytest.raises(BadArgument, match="add_together"):
        TopK.add_together([TopK(c, k), TopK(c + 1, k)], scores[:2], ids, positions[:2])
