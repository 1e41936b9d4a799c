"""Grad-CAM++: channels weighed by positive gradients times closed-form alphas.

https://arxiv.org/abs/1710.11063
"""

from __future__ import annotations

import numpy as np

from ..core.cam import grad_cam_pp
from .base import GradientCam

__all__ = ["GradCAMPlusPlus"]


class GradCAMPlusPlus(GradientCam):
    """Grad-CAM++: channels weighed by positive gradients times the closed-form alphas (eq. 19).

    One gradient pass from the target score back to the layer (never to the
    parameters or the input); the formula is :func:`convlens.core.cam.grad_cam_pp`.
    """

    name = "gradcam++"
    title = "Grad-CAM++"
    paper = "https://arxiv.org/abs/1710.11063"

    def combine(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        return grad_cam_pp(acts, grads)
