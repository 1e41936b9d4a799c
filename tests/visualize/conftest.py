"""A tiny numpy network behind the adapter contract, with hand-written gradients.

It lets the optimisation be tested exactly and in milliseconds, apart from any
framework: conv 3x3 (same padding) + ReLU, global average pool, dense.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from convlens.adapters.base import Gradients, LayerInfo, Target


class NumpyNet:
    """Implements :class:`convlens.adapters.base.Adapter` for a 3-layer numpy network."""

    framework = "numpy"
    name = "numpynet"
    preprocess = "unit"
    class_names = None
    class_names_source = ""
    final_activation = "linear"

    def __init__(self, channels: int = 3, features: int = 4, classes: int = 3, size: int | None = None,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.input_shape = (size, size, channels)
        self.k = rng.standard_normal((3, 3, channels, features)) / 3.0
        self.b = rng.standard_normal(features) * 0.1
        self.w = rng.standard_normal((features, classes))
        self.calls = 0

    def layers(self) -> list[LayerInfo]:
        h, w, c = self.input_shape
        f, k = self.k.shape[-1], self.w.shape[-1]
        return [LayerInfo(0, "input", "InputLayer", "input", (h, w, c)),
                LayerInfo(1, "conv", "Conv2D", "conv", (h, w, f), kernel_shape=(f, c, 3, 3)),
                LayerInfo(2, "gap", "GlobalAveragePooling2D", "pool", (f,)),
                LayerInfo(3, "fc", "Dense", "dense", (k,))]

    def _forward(self, x: np.ndarray) -> list[np.ndarray]:
        xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
        h, w = x.shape[1:3]
        pre = sum(np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + w], self.k[i, j])
                  for i in range(3) for j in range(3)) + self.b
        conv = np.maximum(pre, 0.0)
        gap = conv.mean(axis=(1, 2))
        return [x, conv, gap, gap @ self.w]

    def run(self, batch, wanted, on_output):
        outs = self._forward(batch)
        for i in wanted:
            on_output(i, outs[i].astype(np.float32))
        return outs[-1].astype(np.float32)

    def kernels(self, index: int) -> np.ndarray:
        return self.k.transpose(3, 2, 0, 1).astype(np.float32)

    def gradients_unavailable(self) -> str | None:
        return None

    def gradients(self, batch: np.ndarray, target: Target, layers: Sequence[int] = (), *,
                  wrt_input: bool = False, need_output: bool = True) -> Gradients:
        self.calls += 1
        x, conv, gap, out = self._forward(batch)
        layer = 3 if target.layer is None else target.layer
        acts = [x, conv, gap, out][layer]
        cot = target.cotangent_for(acts.shape).astype(np.float64)
        score = (acts * cot).reshape(len(acts), -1).sum(axis=1)
        g = cot
        input_grad = None
        if wrt_input:
            if layer == 3:
                g = g @ self.w.T
            if layer >= 2:
                g = np.broadcast_to(g[:, None, None, :] / (conv.shape[1] * conv.shape[2]), conv.shape)
            if layer >= 1:
                pre_grad = g * (conv > 0)
                h, w = x.shape[1:3]
                gx = np.zeros((x.shape[0], h + 2, w + 2, x.shape[3]))
                for i in range(3):
                    for j in range(3):
                        gx[:, i:i + h, j:j + w] += pre_grad @ self.k[i, j].T
                g = gx[:, 1:-1, 1:-1]
            input_grad = g.astype(np.float32)
        return Gradients(output=out.astype(np.float32) if need_output else None, score=score,
                         activations={}, grads={}, input_grad=input_grad, logits=True)


@pytest.fixture
def numpy_net() -> NumpyNet:
    return NumpyNet()


@pytest.fixture
def make_numpy_net():
    """The class itself, for networks of other sizes."""
    return NumpyNet
