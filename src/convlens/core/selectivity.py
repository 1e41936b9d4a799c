"""Class selectivity of channels: which class drives a channel most, and how exclusively.

Per class, the mean over images of each channel's per-image mean activation is
streamed as sums and counts (float64), so partial results merge by addition.
The selectivity index is that of Morcos et al. (2018), "On the importance of
single directions for generalization", https://arxiv.org/abs/1803.06959 :

    index = (mu_best - mu_rest) / (mu_best + mu_rest)

with ``mu_best`` the highest class mean and ``mu_rest`` the mean of the other
classes' means. For a channel that is never negative (after a ReLU) it lies in
[0, 1]: 0 when every class drives it equally, 1 when only one class drives it
at all. A channel that can be negative has no such reading: its index can
leave [0, 1], and where ``mu_best + mu_rest <= 0`` the ratio changes sign or
divides by zero, so it is NaN there (as it is with fewer than two classes
seen, or no finite value).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .._errors import BadArgument

__all__ = ["ClassMeans", "ClassSelectivity", "selectivity"]


@dataclass(frozen=True, eq=False)
class ClassSelectivity:
    """Per channel, its mean per class, the best class and the selectivity index.

    Attributes:
        means: ``(K, C)`` float64, the mean over a class's images of the
            channel's per-image mean; NaN for a class with no image.
        counts: ``(K,)`` int64, images per class.
        best: ``(C,)`` int64, the class with the highest mean (ties: the
            smaller class index); -1 for a channel without any finite mean.
        index: ``(C,)`` float64, the selectivity index (see the module); NaN
            where it is undefined.
    """

    means: np.ndarray
    counts: np.ndarray
    best: np.ndarray
    index: np.ndarray


def selectivity(means: np.ndarray, counts: np.ndarray) -> ClassSelectivity:
    """The best class and selectivity index of each channel from its class means.

    Args:
        means: ``(K, C)`` class means (NaN for a class without data).
        counts: ``(K,)`` images per class.

    Returns:
        :class:`ClassSelectivity`.
    """
    m = np.asarray(means, np.float64)
    has = np.isfinite(m)
    n_has = has.sum(axis=0)
    filled = np.where(has, m, -np.inf)
    best = np.argmax(filled, axis=0).astype(np.int64) if m.shape[0] else np.zeros(m.shape[1], np.int64)
    best[n_has == 0] = -1
    cols = np.arange(m.shape[1])
    mu_best = filled[np.maximum(best, 0), cols] if m.shape[0] else np.full(m.shape[1], np.nan)
    total = np.where(has, m, 0.0).sum(axis=0)
    with np.errstate(all="ignore"):
        mu_rest = (total - mu_best) / (n_has - 1)
        denom = mu_best + mu_rest
        index = (mu_best - mu_rest) / denom
    index = np.where((n_has >= 2) & (denom > 0) & np.isfinite(index), index, np.nan)
    return ClassSelectivity(means=m, counts=np.asarray(counts, np.int64), best=best, index=index)


class ClassMeans:
    """Per class, the running mean of each channel's per-image mean activation.

    Args:
        channels: C.
        classes: K, the number of classes (labels are 0..K-1).
    """

    def __init__(self, channels: int, classes: int) -> None:
        if int(classes) < 1 or int(channels) < 0:
            raise BadArgument(f"class means need at least one class and 0+ channels, got "
                              f"{classes} classes and {channels} channels")
        self.channels, self.classes = int(channels), int(classes)
        self._sums = np.zeros((self.classes, self.channels), np.float64)
        self._finite = np.zeros((self.classes, self.channels), np.int64)
        self._images = np.zeros(self.classes, np.int64)

    def add(self, values: np.ndarray, labels: np.ndarray) -> None:
        """Fold in one batch.

        Args:
            values: ``(N, C)`` per-image channel means; non-finite entries are
                left out of their class's mean.
            labels: ``(N,)`` int class indices; -1 (unlabelled) rows are skipped.

        Raises:
            BadArgument: shapes that disagree, or a label outside -1..K-1.
        """
        v = np.asarray(values)
        lab = np.asarray(labels, np.int64).reshape(-1)
        if v.shape != (lab.shape[0], self.channels):
            raise BadArgument(f"ClassMeans.add needs values (N, {self.channels}) and labels (N,), "
                              f"got {v.shape} and {lab.shape}")
        if lab.size and (lab.min() < -1 or lab.max() >= self.classes):
            raise BadArgument(f"labels must lie in -1..{self.classes - 1}, got {lab.min()}..{lab.max()}")
        keep = lab >= 0
        if not keep.any():
            return
        # Rows grouped by class (a stable sort keeps their order), then one reduceat per group.
        order = np.argsort(lab[keep], kind="stable")
        lab, v = lab[keep][order], v[keep][order].astype(np.float64)
        finite = np.isfinite(v)
        starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
        present = lab[starts]
        self._sums[present] += np.add.reduceat(np.where(finite, v, 0.0), starts, axis=0)
        self._finite[present] += np.add.reduceat(finite.astype(np.int64), starts, axis=0)
        self._images += np.bincount(lab, minlength=self.classes)

    def merge(self, other: ClassMeans) -> None:
        """Fold in another :class:`ClassMeans` of the same shape (addition: any order)."""
        if (other.channels, other.classes) != (self.channels, self.classes):
            raise BadArgument(f"cannot merge class means of {other.classes} classes x "
                              f"{other.channels} channels into {self.classes} x {self.channels}")
        self._sums += other._sums
        self._finite += other._finite
        self._images += other._images

    def result(self) -> ClassSelectivity:
        """Means, counts, best class and selectivity index of everything folded in."""
        with np.errstate(all="ignore"):
            means = np.where(self._finite > 0, self._sums / np.maximum(self._finite, 1), np.nan)
        return selectivity(means, self._images.copy())

    def state(self) -> dict[str, np.ndarray]:
        """Plain arrays only, for ``np.savez`` (loadable with ``allow_pickle=False``)."""
        return {"sums": self._sums.copy(), "finite": self._finite.copy(),
                "images": self._images.copy()}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> ClassMeans:
        """The class means :meth:`state` saved.

        Raises:
            BadArgument: missing arrays or shapes that do not agree.
        """
        try:
            sums = np.asarray(state["sums"], np.float64)
            finite = np.asarray(state["finite"], np.int64)
            images = np.asarray(state["images"], np.int64)
        except KeyError as e:
            raise BadArgument(f"a class-means state lacks {e.args[0]!r}; the checkpoint is "
                              "damaged, delete it and run again") from None
        if sums.ndim != 2 or finite.shape != sums.shape or images.shape != (sums.shape[0],):
            raise BadArgument("a class-means state has shapes that disagree; the checkpoint is "
                              "damaged, delete it and run again")
        out = cls(sums.shape[1], sums.shape[0])
        out._sums, out._finite, out._images = sums.copy(), finite.copy(), images.copy()
        return out
