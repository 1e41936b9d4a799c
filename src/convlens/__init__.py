"""convlens: see what a convolutional network sees.

>>> from convlens import Lens
>>> lens = Lens("vgg16", weights="none")
>>> print(lens.layers())
>>> maps = lens.feature_maps("cat.jpg", layers="blocks")
>>> maps.save("out/")                      # -> Path("out/index.json")

Every result (:class:`FeatureMaps`, :class:`Filters`, :class:`ChannelStats`,
:class:`Heatmaps`, :class:`Visualization`, :class:`DatasetResult`,
:class:`Report`, :class:`Timeline`) has ``.save(out) -> Path`` (the
``index.json``, or the page, it wrote), ``.to_json() -> dict`` and an inline
view in Jupyter (``_repr_html_``).
"""

from __future__ import annotations

from ._errors import (
    BadArgument,
    BadImage,
    BadModel,
    ConvlensError,
    LayerNotFound,
    MissingDependency,
    OutOfMemory,
    OutputError,
    UnsafeModel,
    UnsupportedModel,
    WeightsUnavailable,
)
from ._version import __version__
from .adapters import DATA_DIR, open_model
from .compare import Comparison, compare
from .core.layers import LayerInfo
from .dataset.result import DatasetResult
from .evaluate import Evaluation
from .heatmaps import Heatmap, Heatmaps
from .images import load_image
from .lens import FeatureMaps, Filters, LayerTable, Lens
from .model import Model, ModelSpec
from .render.maps import RenderOptions
from .report import Report, register_section
from .selection import DEFAULT_FILTER_SELECTION, DEFAULT_SELECTION, DEFAULT_TRAINING_SELECTION, select
from .stats import ChannelStats, LayerStats
from .timeline import Timeline
from .visualize import Visualization

#: The built-in default: a small CNN trained on MNIST, and a digit it classifies.
DEMO_MODEL = DATA_DIR / "demo_cnn.keras"
DEMO_IMAGE = DATA_DIR / "digit.png"
#: A redistributable photo (scikit-image's "chelsea", CC0) for ImageNet models.
SAMPLE_PHOTO = DATA_DIR / "photo.jpg"

__all__ = [
    "DEFAULT_FILTER_SELECTION",
    "DEFAULT_SELECTION",
    "DEFAULT_TRAINING_SELECTION",
    "DEMO_IMAGE",
    "DEMO_MODEL",
    "SAMPLE_PHOTO",
    "BadArgument",
    "BadImage",
    "BadModel",
    "ChannelStats",
    "Comparison",
    "ConvlensError",
    "OutOfMemory",
    "DatasetResult",
    "Evaluation",
    "FeatureMaps",
    "Filters",
    "Heatmap",
    "Heatmaps",
    "LayerInfo",
    "LayerNotFound",
    "LayerStats",
    "LayerTable",
    "Lens",
    "Model",
    "ModelSpec",
    "MissingDependency",
    "OutputError",
    "RenderOptions",
    "Report",
    "Timeline",
    "UnsafeModel",
    "UnsupportedModel",
    "Visualization",
    "WeightsUnavailable",
    "__version__",
    "compare",
    "load_image",
    "open_model",
    "register_section",
    "select",
]
