"""Centred kernel alignment (CKA) between two sets of activations, in bounded memory.

Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network
Representations Revisited", https://arxiv.org/abs/1905.00414) compares two
representations of the same ``n`` examples, ``X`` of shape ``(n, p)`` and
``Y`` of shape ``(n, q)`` (``p`` and ``q`` may differ), through their Gram
matrices ``K = X X^T`` and ``L = Y Y^T``::

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

It is 1 for representations that differ by a rotation and an isotropic
scale, and near 0 for unrelated ones.

:func:`linear_cka` uses the biased HSIC estimator over all examples at once.
Over thousands of images that needs every activation at once; instead
:class:`MinibatchCKA` streams minibatches and averages the *unbiased* HSIC
estimator of Song et al. (2012) over them, as Nguyen, Raghu and Kornblith
(2021, "Do Wide and Deep Networks Learn the Same Things?",
https://arxiv.org/abs/2010.15327) do::

    CKA_minibatch = mean_i HSIC_1(K_i, L_i) / sqrt(mean_i HSIC_1(K_i, K_i) * mean_i HSIC_1(L_i, L_i))

    HSIC_1(K, L) = 1 / (n (n - 3)) * [ tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n - 1)(n - 2))
                                       - 2 / (n - 2) * 1^T K~ L~ 1 ]

where ``K~`` is ``K`` with its diagonal set to zero. Memory is one ``(n, n)``
Gram matrix per layer and one accumulator per pair of layers, whatever the
number of minibatches. A minibatch needs at least 4 examples.

Numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MIN_BATCH", "MinibatchCKA", "gram_linear", "hsic_biased", "hsic_unbiased", "linear_cka",
           "unbiased_hsic_matrix"]

#: The fewest examples the unbiased HSIC estimator is defined for (it divides by n - 3).
MIN_BATCH = 4


def gram_linear(x: np.ndarray) -> np.ndarray:
    """The linear kernel ``X X^T`` of ``n`` examples.

    Args:
        x: ``(n, ...)`` activations; everything after the first axis is one example's features.

    Returns:
        ``(n, n)`` float64. float32 input is multiplied in float32 (a layer of
        VGG16 holds millions of features per image) and returned as float64.
    """
    a = np.asarray(x)
    a = a.reshape(a.shape[0], -1)
    if a.dtype != np.float64:
        a = a.astype(np.float32, copy=False)
    return (a @ a.T).astype(np.float64)


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741 - L is the paper's name
    """The biased HSIC estimator ``tr(K H L H) / (n - 1)^2`` (Gretton et al. 2005), ``H = I - 11^T/n``."""
    k = np.asarray(k, np.float64)
    l = np.asarray(l, np.float64)  # noqa: E741
    kc = k - k.mean(axis=0, keepdims=True)
    kc = kc - kc.mean(axis=1, keepdims=True)
    lc = l - l.mean(axis=0, keepdims=True)
    lc = lc - lc.mean(axis=1, keepdims=True)
    n = k.shape[0]
    return float(np.sum(kc * lc) / (n - 1) ** 2)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same examples (biased HSIC, all examples at once).

    Args:
        x: ``(n, ...)`` activations of the first layer.
        y: ``(n, ...)`` activations of the second layer, the same ``n`` examples.

    Returns:
        CKA in ``[0, 1]``; ``nan`` when either representation is constant over the examples.
    """
    k, l = gram_linear(x), gram_linear(y)  # noqa: E741
    denom = np.sqrt(hsic_biased(k, k) * hsic_biased(l, l))
    return float(hsic_biased(k, l) / denom) if denom > 0 else float("nan")


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """The unbiased HSIC estimator of Song et al. (2012) for two ``(n, n)`` Gram matrices, ``n >= 4``."""
    return float(unbiased_hsic_matrix(np.asarray(k)[None], np.asarray(l)[None])[0, 0])


def unbiased_hsic_matrix(ks: np.ndarray, ls: np.ndarray) -> np.ndarray:
    """``HSIC_1(K_i, L_j)`` for every pair of Gram matrices of one minibatch.

    Args:
        ks: ``(p, n, n)`` Gram matrices of ``p`` layers over the same ``n >= 4`` examples.
        ls: ``(q, n, n)`` Gram matrices of ``q`` layers, the same examples.

    Returns:
        ``(p, q)`` float64.

    Raises:
        ValueError: fewer than 4 examples, or the two stacks disagree on ``n``.
    """
    ks = np.asarray(ks, np.float64)
    ls = np.asarray(ls, np.float64)
    n = ks.shape[-1]
    if n < MIN_BATCH or ls.shape[-1] != n:
        raise ValueError(f"the unbiased HSIC needs the same n >= {MIN_BATCH} examples on both sides, "
                         f"got {n} and {ls.shape[-1]}")
    eye = np.eye(n, dtype=bool)
    kt = np.where(eye, 0.0, ks)
    lt = np.where(eye, 0.0, ls)
    trace = np.einsum("pij,qij->pq", kt, lt)        # tr(K~ L~), both symmetric
    rk, rl = kt.sum(axis=2), lt.sum(axis=2)         # K~ 1, L~ 1: (p, n), (q, n)
    sk, sl = rk.sum(axis=1), rl.sum(axis=1)         # 1^T K~ 1
    cross = rk @ rl.T                               # 1^T K~ L~ 1 = (K~ 1)^T (L~ 1)
    return (trace + np.outer(sk, sl) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross) / (n * (n - 3))


class MinibatchCKA:
    """Streams minibatches of Gram matrices into a ``(p, q)`` CKA matrix (Nguyen et al. 2021).

    Args:
        p: layers on the first side.
        q: layers on the second side.
        pairs: when given, only these ``(i, j)`` entries are accumulated (the
            CKA of paired layers); the rest of :meth:`matrix` is ``nan``.
            Default: every entry.

    Example::

        acc = MinibatchCKA(2, 3)
        for batch in batches:                 # each of at least 4 examples
            acc.add([gram_linear(a) for a in layers_a(batch)], [gram_linear(b) for b in layers_b(batch)])
        acc.matrix()                          # (2, 3)
    """

    def __init__(self, p: int, q: int, pairs: Sequence[tuple[int, int]] | None = None) -> None:
        self.p, self.q = int(p), int(q)
        self.pairs = None if pairs is None else [(int(i), int(j)) for i, j in pairs]
        self.cross = np.zeros((self.p, self.q))
        self.self_a = np.zeros(self.p)
        self.self_b = np.zeros(self.q)
        self.batches = 0
        self.examples = 0

    def add(self, grams_a: Sequence[np.ndarray], grams_b: Sequence[np.ndarray]) -> None:
        """One minibatch: ``p`` and ``q`` Gram matrices ``(n, n)`` over the same ``n >= 4`` examples."""
        ks = np.stack([np.asarray(g, np.float64) for g in grams_a])
        ls = np.stack([np.asarray(g, np.float64) for g in grams_b])
        if len(ks) != self.p or len(ls) != self.q:
            raise ValueError(f"expected {self.p} and {self.q} Gram matrices, got {len(ks)} and {len(ls)}")
        if self.pairs is None:
            self.cross += unbiased_hsic_matrix(ks, ls)
        else:
            for i, j in self.pairs:
                self.cross[i, j] += unbiased_hsic_matrix(ks[i:i + 1], ls[j:j + 1])[0, 0]
        self.self_a += _self_hsic(ks)
        self.self_b += _self_hsic(ls)
        self.batches += 1
        self.examples += ks.shape[-1]

    def matrix(self) -> np.ndarray:
        """``(p, q)`` CKA; ``nan`` before any minibatch, for a layer constant over the examples,
        and for entries outside ``pairs``."""
        out = np.full((self.p, self.q), np.nan)
        if self.batches == 0:
            return out
        denom = np.sqrt(np.outer(np.clip(self.self_a, 0, None), np.clip(self.self_b, 0, None)))
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(denom > 0, self.cross / np.where(denom > 0, denom, 1.0), np.nan)
        if self.pairs is None:
            return values
        for i, j in self.pairs:
            out[i, j] = values[i, j]
        return out


def _self_hsic(gs: np.ndarray) -> np.ndarray:
    """``HSIC_1(G_i, G_i)`` for each of a stack of Gram matrices (the diagonal of the matrix, computed alone)."""
    return np.array([unbiased_hsic_matrix(g[None], g[None])[0, 0] for g in gs])
