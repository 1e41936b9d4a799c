"""Grad-CAM: each channel weighed by the spatial mean of its gradient.

https://arxiv.org/abs/1610.02391
"""

from __future__ import annotations

import numpy as np

from ..core.cam import grad_cam
from .base import GradientCam

__all__ = ["GradCAM"]


class GradCAM(GradientCam):
    """Grad-CAM: each channel weighed by the spatial mean of its gradient.

    One gradient pass from the target score back to the layer (never to the
    parameters or the input); the formula is :func:`convlens.core.cam.grad_cam`.
    """

    name = "gradcam"
    title = "Grad-CAM"
    paper = "https://arxiv.org/abs/1610.02391"

    def combine(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        return grad_cam(acts, grads)
