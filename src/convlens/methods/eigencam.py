"""Eigen-CAM (https://arxiv.org/abs/2008.00299): the layer's first principal component."""

from __future__ import annotations

import numpy as np

from ..core.cam import eigen_cam
from .base import Context, Method

__all__ = ["EigenCAM"]


class EigenCAM(Method):
    """Eigen-CAM: each position's activations projected on their first principal component.

    Forward only (one pass), so it runs on every framework, TFLite included.
    Class-agnostic: every class of an image gets the same map (the scores
    still say which class was asked for). The component's sign is fixed so
    that the map is high where the layer is active (see
    :func:`convlens.core.cam.eigen_cam`); pytorch-grad-cam leaves it to LAPACK.
    """

    name = "eigencam"
    title = "Eigen-CAM"
    paper = "https://arxiv.org/abs/2008.00299"
    needs_target = False

    def raw_maps(self, ctx: Context) -> np.ndarray:
        return eigen_cam(ctx.activations())[ctx.rows.images]
