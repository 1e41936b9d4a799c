"""LayerCAM: each position's activation weighed by its own positive gradient.

https://ieeexplore.ieee.org/document/9462463
"""

from __future__ import annotations

import numpy as np

from ..core.cam import layer_cam
from .base import GradientCam

__all__ = ["LayerCAM"]


class LayerCAM(GradientCam):
    """LayerCAM: each position's activation weighed by its own positive gradient.

    One gradient pass from the target score back to the layer (never to the
    parameters or the input); the formula is :func:`convlens.core.cam.layer_cam`.
    """

    name = "layercam"
    title = "LayerCAM"
    paper = "https://ieeexplore.ieee.org/document/9462463"

    def combine(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        return layer_cam(acts, grads)
