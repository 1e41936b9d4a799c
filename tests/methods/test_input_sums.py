"""The PyTorch fast path of the input-gradient methods: items made and summed in torch.

Saliency, SmoothGrad and Integrated Gradients hand a declarative
:class:`~convlens.adapters.base.InputItems` to the adapter's
``input_gradient_sums`` when it has one (PyTorch), and make the items in numpy
otherwise. The two paths must give the same attributions (IG and saliency to
float32 rounding); SmoothGrad's noise is drawn by torch on the fast path, so it
is checked by its level and its seed instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convlens import methods
from convlens.adapters import open_model


class HostOnly:
    """The same adapter without its fast path: the methods make the items in numpy."""

    def __init__(self, adapter) -> None:
        self._adapter = adapter

    def __getattr__(self, name: str):
        if name == "input_gradient_sums":
            raise AttributeError(name)
        return getattr(self._adapter, name)


class Calls(HostOnly):
    """The fast path, counting its calls and the batch size each got."""

    def __init__(self, adapter) -> None:
        super().__init__(adapter)
        self.sums: list[int] = []

    def input_gradient_sums(self, items, target, *, batch_size, on_batch=None):
        self.sums.append(batch_size)
        return self._adapter.input_gradient_sums(items, target, batch_size=batch_size, on_batch=on_batch)


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()
    return open_model(net, input_shape=(12, 12, 3), preprocess="raw")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(4).uniform(-1, 1, size=(2, 12, 12, 3)).astype(np.float32)


def test_ig_and_saliency_agree_with_the_host_path(cnn, images):
    fast = Calls(cnn)
    for name, options in (("ig", {"steps": 12, "batch_size": 5, "baseline": "blur"}), ("saliency", {})):
        got = methods.create(name, **options).compute(fast, images, target=[1, 3])
        want = methods.create(name, **options).compute(HostOnly(cnn), images, target=[1, 3])
        np.testing.assert_allclose(got.raw, want.raw, rtol=1e-4, atol=1e-6 * np.abs(want.raw).max())
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5)
        assert got.classes.tolist() == want.classes.tolist() == [1, 3, 1, 3]
        if name == "ig":
            np.testing.assert_allclose(got.extra["completeness_gap"], want.extra["completeness_gap"],
                                       atol=1e-4 * np.abs(want.extra["score_difference"]).max())
    assert fast.sums == [5, 64]  # both went through the fast path: IG in batches of 5


def test_smoothgrad_noise_level_seed_and_batches():
    # f(x) = sum(x^2) / 2 has gradient x: SmoothGrad averages |x + noise|. Pixels at 0 give
    # E|noise| = sigma * sqrt(2 / pi), pixels at 4 give 4 on average (the noise never flips their sign).
    class Square(nn.Module):
        def forward(self, x):
            return torch.stack([0.5 * (x * x).flatten(1).sum(1), x.flatten(1).sum(1)], 1)

    adapter = open_model(nn.Sequential(Square()).eval(), input_shape=(16, 16, 1), preprocess="raw")
    x = np.zeros((1, 16, 16, 1), np.float32)
    x[0, :8] = 4.0
    sigma = 0.1 * 4.0
    r = methods.create("smoothgrad", samples=40, noise=0.1, batch_size=7).compute(Calls(adapter), x, target=0)
    zero = r.raw[0, 8:]
    assert zero.mean() == pytest.approx(sigma * np.sqrt(2 / np.pi), rel=0.05)
    assert r.raw[0, :8].mean() == pytest.approx(4.0, rel=0.01) and r.raw[0, :8].min() > 2
    again = methods.create("smoothgrad", samples=40, noise=0.1, batch_size=16).compute(adapter, x, target=0)
    np.testing.assert_allclose(again.raw, r.raw, rtol=1e-6)  # seeded, whatever the batches
    other = methods.create("smoothgrad", samples=40, noise=0.1, seed=1).compute(adapter, x, target=0)
    assert not np.allclose(other.raw, r.raw)


def test_smoothgrad_without_noise_is_saliency(cnn, images):
    sg = methods.create("smoothgrad", samples=3, noise=0.0).compute(cnn, images, target=2)
    sal = methods.create("saliency").compute(cnn, images, target=2)
    np.testing.assert_allclose(sg.raw, sal.raw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sg.maps, sal.maps, atol=1e-5)


def test_a_float64_module_sums_in_its_own_dtype(images):
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 3)).double().eval()
    adapter = open_model(net, input_shape=(12, 12, 3), preprocess="raw")
    ig = methods.create("ig", steps=8).compute(adapter, images[:1], target=0)
    host = methods.create("ig", steps=8).compute(HostOnly(adapter), images[:1], target=0)
    assert ig.raw.dtype == np.float32 and np.isfinite(ig.raw).all()
    np.testing.assert_allclose(ig.raw, host.raw, rtol=1e-5, atol=1e-7)
