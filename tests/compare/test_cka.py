"""CKA against direct implementations of the published formulas (numpy, random data)."""

from __future__ import annotations

import numpy as np
import pytest

from convlens.core.cka import (
    MinibatchCKA,
    gram_linear,
    hsic_biased,
    hsic_unbiased,
    linear_cka,
    unbiased_hsic_matrix,
)


def _kornblith_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019, eq. for linear CKA in feature space: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),
    columns centred."""
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def _song_unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. 2012, eq. (5), written out term by term with explicit matrices."""
    n = k.shape[0]
    kt = k.copy()
    lt = l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones((n, 1))
    term1 = np.trace(kt @ lt)
    term2 = (one.T @ kt @ one).item() * (one.T @ lt @ one).item() / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one.T @ kt @ lt @ one).item()
    return (term1 + term2 - term3) / (n * (n - 3))


def _nguyen_minibatch_cka(xs: list[np.ndarray], ys: list[np.ndarray]) -> float:
    """Nguyen et al. 2021, eq. (3): the unbiased HSIC averaged over minibatches, then normalised."""
    kl = np.mean([_song_unbiased_hsic(x @ x.T, y @ y.T) for x, y in zip(xs, ys)])
    kk = np.mean([_song_unbiased_hsic(x @ x.T, x @ x.T) for x in xs])
    ll = np.mean([_song_unbiased_hsic(y @ y.T, y @ y.T) for y in ys])
    return float(kl / np.sqrt(kk * ll))


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 30))
    y = x @ rng.normal(size=(30, 20)) + 0.5 * rng.normal(size=(40, 20))  # related, not equal
    return x, y


def test_linear_cka_equals_the_published_formula(data):
    x, y = data
    assert linear_cka(x, y) == pytest.approx(_kornblith_linear_cka(x, y), abs=1e-6)
    assert 0.2 < linear_cka(x, y) < 0.99  # a related but different representation
    unrelated = np.random.default_rng(9).normal(size=(40, 20))
    assert linear_cka(x, unrelated) < linear_cka(x, y)


def test_biased_hsic_is_the_centred_trace(data):
    x, y = data
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, l = x @ x.T, y @ y.T  # noqa: E741
    assert hsic_biased(k, l) == pytest.approx(np.trace(k @ h @ l @ h) / (n - 1) ** 2, rel=1e-9)


def test_cka_of_a_representation_with_itself_is_one(data):
    x, _ = data
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    rotated = 3.0 * x @ np.linalg.qr(np.random.default_rng(1).normal(size=(30, 30)))[0]
    assert linear_cka(x, rotated) == pytest.approx(1.0, abs=1e-9)  # invariant to rotation and scale
    acc = MinibatchCKA(1, 1)
    for i in range(0, 40, 8):
        acc.add([gram_linear(x[i:i + 8])], [gram_linear(rotated[i:i + 8])])
    assert acc.matrix()[0, 0] == pytest.approx(1.0, abs=1e-9)


def test_unbiased_hsic_equals_song_et_al(data):
    x, y = data
    k, l = x @ x.T, y @ y.T  # noqa: E741
    assert hsic_unbiased(k, l) == pytest.approx(_song_unbiased_hsic(k, l), rel=1e-9, abs=1e-6)
    # the matrix form: every pair of a stack at once
    rng = np.random.default_rng(2)
    ks = np.stack([gram_linear(rng.normal(size=(6, d))) for d in (3, 5)])
    ls = np.stack([gram_linear(rng.normal(size=(6, d))) for d in (4, 2, 7)])
    got = unbiased_hsic_matrix(ks, ls)
    want = np.array([[_song_unbiased_hsic(k, l) for l in ls] for k in ks])  # noqa: E741
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="n >= 4"):
        unbiased_hsic_matrix(ks[:, :3, :3], ls[:, :3, :3])


def test_minibatch_cka_equals_nguyen_et_al(data):
    x, y = data
    xs = [x[i:i + 10] for i in range(0, 40, 10)]
    ys = [y[i:i + 10] for i in range(0, 40, 10)]
    acc = MinibatchCKA(2, 1)
    for bx, by in zip(xs, ys):
        acc.add([gram_linear(bx), gram_linear(bx[:, :7])], [gram_linear(by)])
    m = acc.matrix()
    assert m.shape == (2, 1) and acc.batches == 4 and acc.examples == 40
    assert m[0, 0] == pytest.approx(_nguyen_minibatch_cka(xs, ys), abs=1e-6)
    assert m[1, 0] == pytest.approx(_nguyen_minibatch_cka([b[:, :7] for b in xs], ys), abs=1e-6)
    # only the pairs asked for
    only = MinibatchCKA(2, 1, pairs=[(1, 0)])
    for bx, by in zip(xs, ys):
        only.add([gram_linear(bx), gram_linear(bx[:, :7])], [gram_linear(by)])
    assert np.isnan(only.matrix()[0, 0]) and only.matrix()[1, 0] == pytest.approx(m[1, 0], abs=1e-12)


def test_memory_does_not_grow_with_batches(data):
    x, y = data
    acc = MinibatchCKA(1, 1)
    for _ in range(50):
        acc.add([gram_linear(x[:8])], [gram_linear(y[:8])])
    assert acc.cross.shape == (1, 1) and acc.batches == 50  # running sums, nothing kept per batch
    assert np.isnan(MinibatchCKA(2, 2).matrix()).all()  # no batch yet
