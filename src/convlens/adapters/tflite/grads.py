"""Gradients of a TFLite model: none (LiteRT runs forward only); the contract's answer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..._errors import UnsupportedModel
from ..base import Gradients, Target
from .forward import TFLiteForward


class TFLiteAdapter(TFLiteForward):
    """A ``.tflite`` file behind convlens's adapter contract.

    Args:
        path: the ``.tflite`` file.
        input_shape: ``(H, W, C)`` for models whose input has free dimensions
            (``-1`` in the shape signature); fixed models ignore it unless it
            contradicts them.
        preprocess: the preprocessing preset the model expects; by default the
            one a quantised input's range implies (see
            :meth:`_preset_from_quantisation`), else ``None``.

    Raises:
        BadModel: the file is missing, truncated or not a TFLite model.
        UnsupportedModel: the model takes several inputs, or an input that
            cannot be an image (integer ids, strings).
        MissingDependency: ``ai-edge-litert`` is not installed.
    """

    def randomized(self, rows: Sequence[int], seed: int) -> TFLiteAdapter:
        """A copy with ``rows``' weights re-drawn (see :mod:`convlens.adapters.tflite.randomize`)."""
        from .randomize import randomized

        return randomized(self, rows, seed)  # type: ignore[no-any-return]

    # ----------------------------------------------------------------- gradients

    def gradients_unavailable(self) -> str | None:
        """Always a reason: TFLite is forward-only."""
        return ("a TFLite interpreter computes no gradients, so gradient methods (Grad-CAM and its "
                "family, saliency, SmoothGrad, Integrated Gradients) cannot run on a .tflite file; the "
                "forward-only methods (Score-CAM, Eigen-CAM, occlusion) work, or open the model it was "
                "converted from (Keras, PyTorch, ONNX)")

    def gradients(self, batch: np.ndarray, target: Target, layers: Sequence[int] = (), *,
                  wrt_input: bool = False, need_output: bool = True) -> Gradients:
        raise UnsupportedModel(f"{self.name}: {self.gradients_unavailable()}")

