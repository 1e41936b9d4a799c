"""Small models with two inputs, the same numbers in every framework (issue 19, several inputs).

No tests here: the PyTorch builders, the weights as numpy arrays, and a numpy
reference forward pass, so that the Keras and ONNX tests (and a cross-framework
agreement test) can build EQUAL models from :func:`two_input_weights` /
:func:`siamese_weights` and check them against :func:`two_input_reference` /
:func:`siamese_reference`. Import it as the tests import ``torch_models``::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # from tests/adapters/
    from two_input_models import two_input_weights, two_input_reference, torch_two_input

Image + vector model (:func:`torch_two_input`), inputs in this order:

* ``image``: (N, 3, 16, 16) float32 (PyTorch layout; Keras takes (N, 16, 16, 3))
* ``vector``: (N, 4) float32

::

    h1 = conv1(image)                 3x3, stride 1, padding 1 ("same"), 3 -> 4 channels, with bias
    h1 = h1 + dense(vector)[:, :, None, None]   Linear 4 -> 4 (y = v @ W.T + b), a per-channel bias
                                                broadcast over H and W
    h1 = relu1(h1)                    ReLU
    h2 = relu2(conv2(h1))             3x3, stride 1, padding 1, 4 -> 6 channels, with bias; ReLU
    g  = pool(h2).flatten(1)          global average pool over H, W -> (N, 6)
    y  = fc(g)                        Linear 6 -> 3 (three class logits, no softmax)

PyTorch modules (rows of convlens's layer table): ``conv1``, ``dense``, ``relu1``,
``conv2``, ``relu2``, ``pool``, ``fc``. The vector enters after ``conv1``: maps
of ``relu1`` and later depend on it, ``conv1``'s do not.

Siamese model (:func:`torch_siamese`), inputs in this order:

* ``left``: (N, 3, 16, 16) float32, ``right``: (N, 3, 16, 16) float32

::

    a = left_relu(left_conv(left))     3x3, padding 1, 3 -> 4, with bias; ReLU
    b = right_relu(right_conv(right))  3x3, padding 1, 3 -> 4, with bias; ReLU (its OWN weights: two towers,
                                       so each image has its own layer rows)
    h = relu(conv(cat([a, b], channel axis)))   3x3, padding 1, 8 -> 6 (channels 0-3 from left, 4-7 from right)
    y = fc(pool(h).flatten(1))        global average pool, Linear 6 -> 3

Weights (torch layout: conv ``(out, in, kh, kw)``, Linear ``(out, in)``, biases ``(out,)``; Keras
Conv2D kernels are ``w.transpose(2, 3, 1, 0)``, Dense kernels ``w.T``) are drawn from
``numpy.random.RandomState(seed)`` in the order of the dict's keys, each
``rng.standard_normal(shape) * scale`` as float32, with ``scale = 1 / sqrt(fan_in)`` for weights
(fan_in = in * kh * kw for a conv, in for a Linear) and ``0.1`` for biases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["IMAGE_SHAPE", "SIAMESE_NAMES", "TWO_INPUT_NAMES", "VECTOR_SHAPE", "SiameseNet", "TwoInputNet",
           "siamese_reference", "siamese_weights", "torch_siamese", "torch_two_input", "two_input_reference",
           "two_input_weights"]

IMAGE_SHAPE = (3, 16, 16)   # one image, channels first
VECTOR_SHAPE = (4,)
TWO_INPUT_NAMES = ("image", "vector")
SIAMESE_NAMES = ("left", "right")

_TWO_INPUT_LAYOUT: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("conv1.weight", (4, 3, 3, 3)), ("conv1.bias", (4,)),
    ("dense.weight", (4, 4)), ("dense.bias", (4,)),
    ("conv2.weight", (6, 4, 3, 3)), ("conv2.bias", (6,)),
    ("fc.weight", (3, 6)), ("fc.bias", (3,)),
)
_SIAMESE_LAYOUT: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("left_conv.weight", (4, 3, 3, 3)), ("left_conv.bias", (4,)),
    ("right_conv.weight", (4, 3, 3, 3)), ("right_conv.bias", (4,)),
    ("conv.weight", (6, 8, 3, 3)), ("conv.bias", (6,)),
    ("fc.weight", (3, 6)), ("fc.bias", (3,)),
)


def _draw(layout: Sequence[tuple[str, tuple[int, ...]]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in layout:
        scale = 0.1 if name.endswith(".bias") else 1.0 / np.sqrt(float(np.prod(shape[1:])))
        out[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return out


def two_input_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """The image + vector model's weights by PyTorch state-dict name, torch layout, float32."""
    return _draw(_TWO_INPUT_LAYOUT, seed)


def siamese_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """The Siamese model's weights by PyTorch state-dict name, torch layout, float32."""
    return _draw(_SIAMESE_LAYOUT, seed)


# -- numpy reference (float64, channels first) --------------------------------------------------------------


def _conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, C, H, W) * (O, C, 3, 3), stride 1, zero padding 1 (cross-correlation, as every framework)."""
    n, _, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return out + b[None, :, None, None]


def two_input_reference(weights: dict[str, np.ndarray], image: Any, vector: Any) -> dict[str, np.ndarray]:
    """The image + vector model in numpy: ``image`` (N, 3, H, W), ``vector`` (N, 4); every stage by module
    name (``conv1``, ``relu1`` (after the vector's bias), ``conv2``, ``relu2``, ``pool`` (N, 6), ``fc``)."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    x, v = np.asarray(image, np.float64), np.asarray(vector, np.float64)
    conv1 = _conv3x3(x, w["conv1.weight"], w["conv1.bias"])
    dense = v @ w["dense.weight"].T + w["dense.bias"]
    relu1 = np.maximum(conv1 + dense[:, :, None, None], 0.0)
    conv2 = _conv3x3(relu1, w["conv2.weight"], w["conv2.bias"])
    relu2 = np.maximum(conv2, 0.0)
    pool = relu2.mean(axis=(2, 3))
    fc = pool @ w["fc.weight"].T + w["fc.bias"]
    return {"conv1": conv1, "dense": dense, "relu1": relu1, "conv2": conv2, "relu2": relu2, "pool": pool, "fc": fc}


def siamese_reference(weights: dict[str, np.ndarray], left: Any, right: Any) -> dict[str, np.ndarray]:
    """The Siamese model in numpy, ``left`` and ``right`` (N, 3, H, W); every stage by module name."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    a = np.maximum(_conv3x3(np.asarray(left, np.float64), w["left_conv.weight"], w["left_conv.bias"]), 0.0)
    b = np.maximum(_conv3x3(np.asarray(right, np.float64), w["right_conv.weight"], w["right_conv.bias"]), 0.0)
    h = np.maximum(_conv3x3(np.concatenate([a, b], axis=1), w["conv.weight"], w["conv.bias"]), 0.0)
    pool = h.mean(axis=(2, 3))
    fc = pool @ w["fc.weight"].T + w["fc.bias"]
    return {"left_relu": a, "right_relu": b, "relu": h, "pool": pool, "fc": fc}


# -- PyTorch -----------------------------------------------------------------------------------------------


class TwoInputNet(nn.Module):
    """Image + vector: the vector, through a Linear, is a per-channel bias after the first conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.dense = nn.Linear(4, 4)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, image: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        h = self.conv1(image) + self.dense(vector)[:, :, None, None]
        h = self.relu2(self.conv2(self.relu1(h)))
        return self.fc(torch.flatten(self.pool(h), 1))


class SiameseNet(nn.Module):
    """Two images, each through its own conv tower, joined along channels."""

    def __init__(self) -> None:
        super().__init__()
        self.left_conv = nn.Conv2d(3, 4, 3, padding=1)
        self.left_relu = nn.ReLU()
        self.right_conv = nn.Conv2d(3, 4, 3, padding=1)
        self.right_relu = nn.ReLU()
        self.conv = nn.Conv2d(8, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        a = self.left_relu(self.left_conv(left))
        b = self.right_relu(self.right_conv(right))
        h = self.relu(self.conv(torch.cat([a, b], dim=1)))
        return self.fc(torch.flatten(self.pool(h), 1))


def _load(module: Any, weights: dict[str, np.ndarray]) -> Any:
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    return module.eval()


def torch_two_input(seed: int = 0) -> TwoInputNet:
    """The image + vector model as an ``nn.Module`` (eval mode) with :func:`two_input_weights` ``(seed)``;
    ``forward(image, vector)``."""
    return _load(TwoInputNet(), two_input_weights(seed))


def torch_siamese(seed: int = 0) -> SiameseNet:
    """The Siamese model as an ``nn.Module`` (eval mode) with :func:`siamese_weights` ``(seed)``;
    ``forward(left, right)``."""
    return _load(SiameseNet(), siamese_weights(seed))
