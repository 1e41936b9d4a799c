"""convlens: see what a convolutional network sees.

>>> from convlens import Lens
>>> lens = Lens("vgg16", weights="none")
>>> print(lens.layers())
>>> maps = lens.feature_maps("cat.jpg", layers="blocks")
>>> lens.save_maps("cat.jpg", "out/", layers="conv,pool")
"""

from __future__ import annotations

from ._errors import (
    BadArgument,
    BadImage,
    BadModel,
    ConvlensError,
    LayerNotFound,
    MissingDependency,
    OutputError,
    UnsafeModel,
    UnsupportedModel,
    WeightsUnavailable,
)
from ._version import __version__
from .adapters import DATA_DIR, open_model
from .compare import Comparison, compare
from .core.layers import LayerInfo
from .images import load_image
from .lens import FeatureMaps, LayerTable, Lens
from .model import Model, ModelSpec
from .report import Report, register_section
from .selection import select
from .stats import ChannelStats, LayerStats

#: The built-in default: a small CNN trained on MNIST, and a digit it classifies.
DEMO_MODEL = DATA_DIR / "demo_cnn.keras"
DEMO_IMAGE = DATA_DIR / "digit.png"
#: A redistributable photo (scikit-image's "chelsea", CC0) for ImageNet models.
SAMPLE_PHOTO = DATA_DIR / "photo.jpg"

__all__ = [
    "DEMO_IMAGE",
    "DEMO_MODEL",
    "SAMPLE_PHOTO",
    "BadArgument",
    "BadImage",
    "BadModel",
    "ChannelStats",
    "Comparison",
    "ConvlensError",
    "FeatureMaps",
    "LayerInfo",
    "LayerNotFound",
    "LayerStats",
    "LayerTable",
    "Lens",
    "Model",
    "ModelSpec",
    "MissingDependency",
    "OutputError",
    "Report",
    "UnsafeModel",
    "UnsupportedModel",
    "WeightsUnavailable",
    "__version__",
    "compare",
    "load_image",
    "open_model",
    "register_section",
    "select",
]
