"""XGrad-CAM: channels weighed by gradient times activation over the activation sum.

https://arxiv.org/abs/2008.02312
"""

from __future__ import annotations

import numpy as np

from ..core.cam import xgrad_cam
from .base import GradientCam

__all__ = ["XGradCAM"]


class XGradCAM(GradientCam):
    """XGrad-CAM: each channel weighed by gradient times activation over its activation sum.

    One gradient pass from the target score back to the layer (never to the
    parameters or the input); the formula is :func:`convlens.core.cam.xgrad_cam`.
    """

    name = "xgradcam"
    title = "XGrad-CAM"
    paper = "https://arxiv.org/abs/2008.02312"

    def combine(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        return xgrad_cam(acts, grads)
