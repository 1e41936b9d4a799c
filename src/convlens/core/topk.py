"""Per-channel top-k candidates (score, image id, position), streamed and mergeable.

The dataset view keeps, for every channel of a layer, the k images that score
highest (e.g. the channel's maximum over the map) and where in the map that
happened, while images stream past: O(C x k) memory whatever the number of
images. The order is total, score descending then image id ascending, so the
kept set is a function of the set of candidates seen, not of the order they
came in: adding in any batching, or merging partial results in any grouping
(a Ray cluster's workers), gives the same arrays. An image id seen twice (a
retried batch) is kept once.

Every step is vectorised over channels: one ``np.partition`` finds each
channel's k-th score of the batch plus the kept candidates, and only the
survivors (usually exactly k per channel) are sorted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .._errors import BadArgument

__all__ = ["TopK"]


def _order(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per row, indices sorting by score descending, then id ascending.

    Ids are unique per row once duplicates are dropped (placeholders, id -1,
    all score -inf and are blanked afterwards), so this order is total.

    Args:
        scores: ``(C, M)`` float64; ids ``(C, M)`` int64.

    Returns:
        ``(C, M)`` int64 indices into axis 1.
    """
    return np.lexsort((ids, -scores), axis=-1)


class TopK:
    """Per channel, the k best candidates (score, image id, position); exact and order-independent.

    Args:
        channels: C, the number of channels.
        k: how many candidates each channel keeps (>= 1).

    Example:
        >>> top = TopK(channels=64, k=9)
        >>> top.add(maxima, ids, positions)     # (N, 64), (N,), (N, 64, 2) per batch
        >>> scores, ids, positions = top.result()
    """

    def __init__(self, channels: int, k: int) -> None:
        if int(k) < 1:
            raise BadArgument(f"k must be at least 1, got {k}")
        if int(channels) < 0:
            raise BadArgument(f"channels must be at least 0, got {channels}")
        self.channels, self.k = int(channels), int(k)
        self._scores = np.full((self.channels, self.k), -np.inf)
        self._ids = np.full((self.channels, self.k), -1, np.int64)
        self._pos = np.full((self.channels, self.k, 2), -1, np.int32)

    def add(self, scores: np.ndarray, ids: np.ndarray, positions: np.ndarray) -> None:
        """Offer one batch of candidates: one per image and channel.

        Args:
            scores: ``(N, C)`` real; NaN and +-inf are ignored (never kept).
            ids: ``(N,)`` int, unique image ids (>= 0).
            positions: ``(N, C, 2)`` int, the ``(y, x)`` of each score in the
                layer's map (``(0, l)`` for 1-D maps, ``(0, 0)`` for vectors).

        Raises:
            BadArgument: shapes that do not agree with each other or with C.
        """
        s = np.asarray(scores)
        i = np.asarray(ids, dtype=np.int64).reshape(-1)
        p = np.asarray(positions)
        n = i.shape[0]
        if s.shape != (n, self.channels) or p.shape != (n, self.channels, 2):
            raise BadArgument(f"TopK.add needs scores (N, {self.channels}), ids (N,) and positions "
                              f"(N, {self.channels}, 2); got {s.shape}, {i.shape}, {p.shape}")
        if n == 0:
            return
        self._fold(s.T.astype(np.float64), np.broadcast_to(i, (self.channels, n)),
                   p.transpose(1, 0, 2).astype(np.int32, copy=False),
                   overlap=_overlaps(i, self._ids))

    def merge(self, other: TopK) -> None:
        """Fold in another ranking of the same channels and k (associative and commutative).

        An image id present on both sides is kept once, so merging a retried
        batch twice changes nothing.

        Raises:
            BadArgument: the other ranking has other channels or another k.
        """
        if (other.channels, other.k) != (self.channels, self.k):
            raise BadArgument(f"cannot merge a top-{other.k} of {other.channels} channels into a "
                              f"top-{self.k} of {self.channels} channels")
        self._fold(other._scores, other._ids, other._pos, overlap=_overlaps(other._ids, self._ids))

    def _fold(self, scores: np.ndarray, ids: np.ndarray, pos: np.ndarray, *, overlap: bool) -> None:
        """Keep the k best of the kept candidates and ``(C, M)`` new ones."""
        self._scores, self._ids, self._pos = _fold(self._scores, self._ids, self._pos, scores, ids, pos,
                                                   self.k, overlap)

    @staticmethod
    def add_together(tops: Sequence[TopK], scores: Sequence[np.ndarray], ids: np.ndarray,
                     positions: Sequence[np.ndarray]) -> None:
        """:meth:`add` to several rankings of the same channels and k at once (the same images).

        One fold for all: each channel's row is folded on its own, so stacking
        the rankings' rows leaves every ranking exactly as its own ``add`` would,
        with a third of the calls for the dataset view's three rankings.

        Args:
            tops: the rankings (same channels and k).
            scores, positions: per ranking, as for :meth:`add`.
            ids: ``(N,)`` the images' ids, shared.

        Raises:
            BadArgument: shapes that do not agree, or rankings of other channels or k.
        """
        if len(tops) != len(scores) or len(tops) != len(positions):
            raise BadArgument("TopK.add_together needs one scores and one positions array per ranking")
        if len(tops) == 1:
            tops[0].add(scores[0], ids, positions[0])
            return
        if not tops:
            return
        c, k = tops[0].channels, tops[0].k
        i = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = i.shape[0]
        for top, s, p in zip(tops, scores, positions):
            if (top.channels, top.k) != (c, k) or np.shape(s) != (n, c) or np.shape(p) != (n, c, 2):
                raise BadArgument(f"TopK.add_together needs rankings of {c} channels and k={k}, scores "
                                  f"(N, {c}), ids (N,) and positions (N, {c}, 2)")
        if n == 0:
            return
        new_s = np.concatenate([np.asarray(s).T.astype(np.float64) for s in scores])
        new_p = np.concatenate([np.asarray(p).transpose(1, 0, 2).astype(np.int32, copy=False)
                                for p in positions])
        kept_i = np.concatenate([top._ids for top in tops])
        got = _fold(np.concatenate([top._scores for top in tops]), kept_i,
                    np.concatenate([top._pos for top in tops]), new_s,
                    np.broadcast_to(i, (len(tops) * c, n)), new_p, k, _overlaps(i, kept_i))
        for r, top in enumerate(tops):
            rows = slice(r * c, (r + 1) * c)
            top._scores, top._ids, top._pos = (a[rows] for a in got)

    @staticmethod
    def merge_together(tops: Sequence[TopK], others: Sequence[TopK]) -> None:
        """:meth:`merge` ``others[r]`` into ``tops[r]`` for several rankings of the same channels and k, in one fold.

        Raises:
            BadArgument: rankings of other channels or k.
        """
        if len(tops) != len(others):
            raise BadArgument("TopK.merge_together needs one other ranking per ranking")
        if not tops:
            return
        c, k = tops[0].channels, tops[0].k
        if any((t.channels, t.k) != (c, k) for t in (*tops, *others)):
            raise BadArgument(f"TopK.merge_together needs rankings of {c} channels and k={k} on both sides")
        kept_i = np.concatenate([top._ids for top in tops])
        new_i = np.concatenate([other._ids for other in others])
        got = _fold(np.concatenate([top._scores for top in tops]), kept_i,
                    np.concatenate([top._pos for top in tops]),
                    np.concatenate([other._scores for other in others]), new_i,
                    np.concatenate([other._pos for other in others]), k, _overlaps(new_i, kept_i))
        for r, top in enumerate(tops):
            rows = slice(r * c, (r + 1) * c)
            top._scores, top._ids, top._pos = (a[rows] for a in got)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The kept candidates, best first.

        Returns:
            ``scores`` ``(C, k)`` float64 (``-inf`` where fewer than k were
            seen), ``ids`` ``(C, k)`` int64 (-1 there), ``positions``
            ``(C, k, 2)`` int32 ``(y, x)`` (-1 there). Ties: smaller id first.
        """
        return self._scores.copy(), self._ids.copy(), self._pos.copy()

    def state(self) -> dict[str, np.ndarray]:
        """Plain arrays only, for ``np.savez`` (loadable with ``allow_pickle=False``)."""
        return {"scores": self._scores.copy(), "ids": self._ids.copy(),
                "positions": self._pos.copy()}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> TopK:
        """The ranking :meth:`state` saved.

        Raises:
            BadArgument: missing arrays or shapes that do not agree.
        """
        try:
            s = np.asarray(state["scores"], np.float64)
            i = np.asarray(state["ids"], np.int64)
            p = np.asarray(state["positions"], np.int32)
        except KeyError as e:
            raise BadArgument(f"a top-k state lacks {e.args[0]!r}; the checkpoint is damaged, "
                              "delete it and run again") from None
        if s.ndim != 2 or i.shape != s.shape or p.shape != (*s.shape, 2) or s.shape[1] < 1:
            raise BadArgument(f"a top-k state has shapes {s.shape}, {i.shape}, {p.shape}; the "
                              "checkpoint is damaged, delete it and run again")
        top = cls(s.shape[0], s.shape[1])
        top._scores, top._ids, top._pos = s.copy(), i.copy(), p.copy()
        return top


def _overlaps(new_ids: np.ndarray, kept_ids: np.ndarray) -> bool:
    """Whether an id (>= 0) of ``new_ids`` is among ``kept_ids`` (-1: empty slot).

    Engines read in order, so new ids usually all follow the kept ones: a range
    check answers first, ``np.isin`` only when the ranges meet.
    """
    new = new_ids[new_ids >= 0]
    kept = kept_ids[kept_ids >= 0]
    if not new.size or not kept.size or kept.max() < new.min() or kept.min() > new.max():
        return False
    return bool(np.isin(new, kept).any())


def _fold(kept_s: np.ndarray, kept_i: np.ndarray, kept_p: np.ndarray, scores: np.ndarray, ids: np.ndarray,
          pos: np.ndarray, k: int, overlap: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k best per row of kept ``(R, k)`` candidates and ``(R, M)`` new ones (rows are independent).

    Returns:
        ``(scores (R, k), ids (R, k), positions (R, k, 2))``, best first, empty slots -inf / -1.
    """
    # A candidate strictly below its row's k-th kept score loses to all k kept ones (ties may
    # still win by a smaller id, so they stay): the columns where every row's candidate is
    # such (most, once the rankings fill up) are dropped before anything is sorted. A row not
    # yet full has -inf there and takes every candidate; NaN compares False and is ignored.
    live = scores >= kept_s[:, -1:]
    if not live.all():
        cols = np.flatnonzero(live.any(axis=0))
        if not cols.size:
            return kept_s, kept_i, kept_p
        scores, ids, pos = scores[:, cols], ids[:, cols], pos[:, cols]
    s = np.concatenate([kept_s, scores], axis=1)
    s[~np.isfinite(s)] = -np.inf
    i = np.concatenate([kept_i, ids], axis=1)
    p = np.concatenate([kept_p, pos], axis=1)
    if overlap:
        # Rare (a retried batch): per row, every entry of an id after its best one is dropped.
        order = np.lexsort((p[..., 1], p[..., 0], -s, i), axis=-1)
        si = np.take_along_axis(i, order, axis=1)
        dup = np.zeros_like(si, dtype=bool)
        dup[:, 1:] = (si[:, 1:] == si[:, :-1]) & (si[:, 1:] >= 0)
        r, c = np.nonzero(dup)
        s[r, order[r, c]] = -np.inf
    m = s.shape[1]
    if m > k:
        # Each row's k-th best score; everything strictly below it cannot be kept.
        kth = -np.partition(-s, k - 1, axis=1)[:, k - 1]
        keep = s >= kth[:, None]
        tied = keep.sum(axis=1) != k
        take = np.empty((s.shape[0], k), np.int64)
        plain = ~tied
        take[plain] = np.nonzero(keep[plain])[1].reshape(-1, k)
        if tied.any():  # ties at the boundary (a dead channel's zeros): sort those rows whole
            take[tied] = _order(s[tied], i[tied])[:, :k]
        s = np.take_along_axis(s, take, axis=1)
        i = np.take_along_axis(i, take, axis=1)
        p = np.take_along_axis(p, take[..., None], axis=1)
    order = _order(s, i)
    s = np.take_along_axis(s, order, axis=1)
    i = np.take_along_axis(i, order, axis=1)
    p = np.take_along_axis(p, order[..., None], axis=1)
    empty = s == -np.inf
    i[empty] = -1
    p[empty] = -1
    return s, i, p
