"""Layer kinds from class names, for every framework's naming."""

from __future__ import annotations

import re

__all__ = ["kind_of"]

_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("input", re.compile(r"^(InputLayer|Input|Placeholder)$", re.I)),
    ("model", re.compile(r"^(Functional|Sequential|Model)$")),
    ("pool", re.compile(r"pool", re.I)),
    ("conv", re.compile(r"conv", re.I)),
    ("act", re.compile(r"^(Activation|ReLU\d*|LeakyReLU|PReLU|ELU|SELU|GELU|SiLU|Swish|Mish|"
                       r"Hardswish|Hardsigmoid|Sigmoid|Tanh|Softmax|LogSoftmax|ThresholdedReLU|Clip)$", re.I)),
    ("dense", re.compile(r"^(Dense|EinsumDense|Linear|Gemm|MatMul|FullyConnected)$", re.I)),
    ("norm", re.compile(r"norm", re.I)),
    ("merge", re.compile(r"^(Add|Concatenate|Concat|Multiply|Mul|Average|Maximum|Minimum|Subtract|Sub)$", re.I)),
    ("reshape", re.compile(r"^(Flatten|Reshape|Permute|ZeroPadding\dD|Cropping\dD|Pad|Dropout\w*|"
                           r"SpatialDropout\dD|Rescaling|Resizing|Identity|UpSampling\dD|Upsample|"
                           r"(Zero|Constant|Reflection|Replication|Circular)Pad\dd|"
                           r"Upsampling(Nearest|Bilinear)2d|PixelShuffle|PixelUnshuffle)$", re.I)),
)


def kind_of(type_name: str) -> str:
    """The kind of a layer from its class name.

    Args:
        type_name: a class or operator name such as ``Conv2D``, ``MaxPool2d``,
            ``ReLU`` or ``Gemm``.

    Returns:
        One of ``input conv pool act dense norm merge reshape model other``.
    """
    for kind, pattern in _RULES:
        if pattern.search(type_name):
            return kind
    return "other"
