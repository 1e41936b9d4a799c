"""Feature visualisation: the image each channel, neuron or class wants to see.

Lucid's method (Olah et al., "Feature Visualization", Distill 2017,
https://distill.pub/2017/feature-visualization/) in numpy over any adapter that
gives input gradients:

* :mod:`.param`: Fourier-space image, decorrelated colour, sigmoid, preset;
* :mod:`.transform`: random pad, jitter, scale and rotation;
* :mod:`.objectives`: channel, neuron and class objectives, diversity;
* :mod:`.optimize`: Adam over a batch of objectives;
* :mod:`.result`: the :class:`Visualization` (atlas, files, notebook view).
"""

from __future__ import annotations

from .api import DEFAULTS, LIMITS, parse_channels, visualize
from .result import Visualization

__all__ = ["DEFAULTS", "LIMITS", "Visualization", "parse_channels", "visualize"]
