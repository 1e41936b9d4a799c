"""The one contract every framework adapter implements.

Canonical layouts (what adapters hand over; nothing after this boundary
branches on the framework):

* feature maps, one batch: ``(N, H, W, C)`` for 2-D maps, ``(N, L, C)`` for
  1-D maps, ``(N, C)`` for vectors; ``float32`` numpy arrays, channels last.
* kernels: ``(O, I, kh, kw)`` float32 numpy arrays: O output filters, I input
  channels each filter sees (1 for depthwise), 1-D kernels have ``kh == 1``.
* input shape: ``(H, W, C)`` channels last, ``None`` for a free dimension.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..core.layers import KINDS, LayerInfo

__all__ = ["Adapter", "LayerInfo", "OnOutput", "KINDS", "first_line"]

#: Called once per captured layer output during a forward pass: (layer index, array).
OnOutput = Callable[[int, np.ndarray], None]


@runtime_checkable
class Adapter(Protocol):
    """What convlens needs from a framework.

    Attributes:
        framework: short name such as ``"keras"``.
        name: the model's name.
        input_shape: ``(H, W, C)`` with ``None`` for free dimensions.
        preprocess: the preprocessing preset the model expects, if known.
        supports_gradients: whether gradient methods can run on this model.
    """

    framework: str
    name: str
    input_shape: tuple[int | None, ...]
    preprocess: str | None
    supports_gradients: bool

    def layers(self) -> list[LayerInfo]:
        """Every layer in execution order, the input first."""
        ...

    def run(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput) -> np.ndarray:
        """One forward pass of ``batch`` (``(N, H, W, C)`` float32, preprocessed).

        Calls ``on_output(index, array)`` for every wanted layer as soon as its
        output exists, in the canonical layout; returns the model's output.
        """
        ...

    def kernels(self, index: int) -> np.ndarray:
        """The kernel of a layer as ``(O, I, kh, kw)`` float32."""
        ...


def first_line(text: str) -> str:
    """The first line of a framework's error message, at most 300 characters, for one-line errors."""
    return (text.strip().splitlines() or [""])[0][:300]
