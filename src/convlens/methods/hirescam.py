"""HiResCAM: gradient times activation, position by position, summed over channels.

https://arxiv.org/abs/2011.08891
"""

from __future__ import annotations

import numpy as np

from ..core.cam import hires_cam
from .base import GradientCam

__all__ = ["HiResCAM"]


class HiResCAM(GradientCam):
    """HiResCAM: gradient times activation, position by position, summed over channels.

    One gradient pass from the target score back to the layer (never to the
    parameters or the input); the formula is :func:`convlens.core.cam.hires_cam`.
    """

    name = "hirescam"
    title = "HiResCAM"
    paper = "https://arxiv.org/abs/2011.08891"

    def combine(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        return hires_cam(acts, grads)
