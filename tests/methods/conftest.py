"""Framework-free fake adapters: numpy networks whose gradients are written out by hand.

They implement the adapter contract (``layers``, ``run``, ``gradients``) so that
the methods' pipeline can be checked to exact numbers without a framework, and
they count every item they run, so that tests can check the work done.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from convlens._errors import UnsupportedModel
from convlens.adapters.base import Gradients, LayerInfo, Target, target_cotangent


class _Fake:
    framework = "fake"
    name = "fake"
    preprocess = "unit"
    class_names: list[str] | None = None
    class_names_source = ""
    final_activation: str | None = None

    def __init__(self, *, grads: bool = True) -> None:
        self.can_grad = grads
        self.items_run = 0  # batch items through run()
        self.items_grad = 0  # batch items through gradients()
        self.batches: list[np.ndarray] = []  # every batch given to gradients()

    def gradients_unavailable(self) -> str | None:
        return None if self.can_grad else "the fake says it has no gradients"

    def kernels(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def run(self, batch: np.ndarray, wanted: Sequence[int], on_output) -> np.ndarray:
        self.items_run += len(batch)
        outs = self.forward(np.asarray(batch, np.float64))
        for i in wanted:
            on_output(i, outs[i].astype(np.float32))
        return outs[-1].astype(np.float32)

    def gradients(
        self,
        batch: np.ndarray,
        target: Target,
        layers: Sequence[int] = (),
        *,
        wrt_input: bool = False,
        need_output: bool = True,
    ) -> Gradients:
        if not self.can_grad:
            raise UnsupportedModel("no gradients")
        self.items_grad += len(batch)
        self.batches.append(np.array(batch))
        outs = self.forward(np.asarray(batch, np.float64))
        cot = target_cotangent(target, outs[-1].shape).astype(np.float64)
        back = self.backward(outs, cot)
        return Gradients(
            output=outs[-1].astype(np.float32) if need_output else None,
            score=(outs[-1] * cot).reshape(len(batch), -1).sum(axis=1),
            activations={i: outs[i].astype(np.float32) for i in layers},
            grads={i: back[i].astype(np.float32) for i in layers},
            input_grad=back[0].astype(np.float32) if wrt_input else None,
        )


class CamNet(_Fake):
    """input (N, H, W, C) -> 1x1 conv (w1 (C, K), b1) -> ReLU -> mean -> dense (w2 (K, J), b2).

    With ``seg=True`` the head is a 1x1 conv instead: the output is a map ``(N, H, W, J)``.
    """

    def __init__(
        self, w1, b1, w2, b2, *, size=(None, None), seg: bool = False, grads: bool = True
    ) -> None:
        super().__init__(grads=grads)
        self.w1, self.b1 = np.asarray(w1, float), np.asarray(b1, float)
        self.w2, self.b2 = np.asarray(w2, float), np.asarray(b2, float)
        self.seg = seg
        h, w = size
        c, k = self.w1.shape
        j = self.w2.shape[1]
        self.input_shape = (h, w, c)
        rows = [
            LayerInfo(0, "input", "Input", "input", (h, w, c)),
            LayerInfo(1, "conv", "Conv", "conv", (h, w, k), parents=(0,)),
            LayerInfo(2, "relu", "ReLU", "act", (h, w, k), parents=(1,)),
        ]
        if seg:
            rows.append(LayerInfo(3, "head", "Conv", "conv", (h, w, j), parents=(2,)))
        else:
            rows += [
                LayerInfo(3, "gap", "GlobalAveragePooling", "pool", (k,), parents=(2,)),
                LayerInfo(4, "dense", "Dense", "dense", (j,), parents=(3,)),
            ]
        self._rows = rows

    def layers(self) -> list[LayerInfo]:
        return list(self._rows)

    def forward(self, x: np.ndarray) -> list[np.ndarray]:
        conv = x @ self.w1 + self.b1
        relu = np.maximum(conv, 0)
        if self.seg:
            return [x, conv, relu, relu @ self.w2 + self.b2]
        gap = relu.mean(axis=(1, 2))
        return [x, conv, relu, gap, gap @ self.w2 + self.b2]

    def backward(self, outs: list[np.ndarray], cot: np.ndarray) -> list[np.ndarray]:
        x, conv = outs[0], outs[1]
        if self.seg:
            d_relu = cot @ self.w2.T
            tail = [cot]
        else:
            d_gap = cot @ self.w2.T
            hw = x.shape[1] * x.shape[2]
            d_relu = np.broadcast_to(d_gap[:, None, None, :] / hw, conv.shape).copy()
            tail = [d_gap, cot]
        d_conv = d_relu * (conv > 0)
        return [d_conv @ self.w1.T, d_conv, d_relu, *tail]


class LinearNet(_Fake):
    """``out[n, j] = sum(w[..., j] * x[n]) + b[j]``: a linear model on ``(H, W, C)`` images."""

    def __init__(self, w, b=None, *, grads: bool = True) -> None:
        super().__init__(grads=grads)
        self.w = np.asarray(w, float)
        h, wd, c, j = self.w.shape
        self.b = np.zeros(j) if b is None else np.asarray(b, float)
        self.input_shape = (h, wd, c)
        self._rows = [
            LayerInfo(0, "input", "Input", "input", (h, wd, c)),
            LayerInfo(1, "dense", "Dense", "dense", (j,), parents=(0,)),
        ]

    def layers(self) -> list[LayerInfo]:
        return list(self._rows)

    def forward(self, x: np.ndarray) -> list[np.ndarray]:
        return [x, np.einsum("nhwc,hwcj->nj", x, self.w) + self.b]

    def backward(self, outs: list[np.ndarray], cot: np.ndarray) -> list[np.ndarray]:
        return [np.einsum("nj,hwcj->nhwc", cot, self.w), cot]


@pytest.fixture
def tiny():
    """The hand-worked CAM network of test_exact.py: for x >= 0, channel 0 = x, channel 1 = 5 - x,
    logits (mean0 + 2 mean1, mean1 - mean0)."""
    return CamNet([[1.0, -1.0]], [0.0, 5.0], [[1.0, -1.0], [2.0, 1.0]], [0.0, 0.0])


@pytest.fixture
def cam_net():
    return CamNet


@pytest.fixture
def linear_net():
    return LinearNet
