"""The preprocessing presets: what a model expects its pixels (0..255) to be turned into.

:data:`PRESET_TABLE` is the one list of presets: each :class:`Preset` has its
name, its description and its function. Everything that names presets (the
CLI's ``--preprocess`` choices, :data:`PRESETS`, the messages that list valid
presets) reads them from it; :func:`apply_preset` runs a preset's function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from convlens._errors import BadArgument

__all__ = [
    "PRESETS",
    "PRESET_NAMES",
    "PRESET_TABLE",
    "Preset",
    "apply_preset",
    "check_preset",
]

_CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float64)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float64)
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float64)
_PRESET_BLOCK = 1 << 20  # elements per float64 block in apply_preset


def _unit(x: np.ndarray) -> np.ndarray:
    return x / 255.0


def _caffe(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] == 3:
        return x[:, ::-1] - _CAFFE_BGR_MEAN
    return x - _CAFFE_BGR_MEAN.mean()


def _torch(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] == 3:
        return (x / 255.0 - _TORCH_MEAN) / _TORCH_STD
    return (x / 255.0 - _TORCH_MEAN.mean()) / _TORCH_STD.mean()


def _tf(x: np.ndarray) -> np.ndarray:
    return x / 127.5 - 1.0


def _raw(x: np.ndarray) -> np.ndarray:
    return x


@dataclass(frozen=True)
class Preset:
    """One preprocessing preset.

    Attributes:
        name: what users pass (``preprocess="caffe"``, ``--preprocess caffe``).
        description: what it does to pixels ``x`` in 0..255, and which models use it.
        function: ``(N, C)`` float64 pixels in 0..255 -> the preprocessed ``(N, C)``
            float64 values (:func:`apply_preset` rounds them once to float32).
        channels: the channel counts it can take, or ``None`` for any.
    """

    name: str
    description: str
    function: Callable[[np.ndarray], np.ndarray]
    channels: tuple[int, ...] | None = None


#: Every preprocessing preset, in the order messages and ``--help`` list them.
PRESET_TABLE: tuple[Preset, ...] = (
    Preset("unit", "x / 255, range [0, 1] (the rescaling of the Keras tutorials)", _unit),
    Preset(
        "caffe",
        "RGB -> BGR, minus the ImageNet BGR means (103.939, 116.779, 123.68); "
        "VGG16/19 and ResNet50 in Keras",
        _caffe,
        channels=(1, 3),
    ),
    Preset(
        "torch",
        "x / 255, minus mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225); "
        "torchvision models, DenseNet in Keras",
        _torch,
        channels=(1, 3),
    ),
    Preset("tf", "x / 127.5 - 1, range [-1, 1]; MobileNet, Inception and Xception in Keras", _tf),
    Preset("raw", "0..255 unchanged; models that rescale inside, e.g. EfficientNet in Keras", _raw),
)

#: The presets' names, in table order (the CLI's ``--preprocess`` choices).
PRESET_NAMES: tuple[str, ...] = tuple(p.name for p in PRESET_TABLE)

#: Preprocessing presets: name -> what it does to pixels ``x`` in 0..255 (read from :data:`PRESET_TABLE`).
PRESETS: dict[str, str] = {p.name: p.description for p in PRESET_TABLE}

_BY_NAME: dict[str, Preset] = {p.name: p for p in PRESET_TABLE}


def _either(items: Sequence[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return " or ".join([", ".join(items[:-1]), items[-1]]) if len(items) > 1 else "".join(items)


def check_preset(preset: object) -> Preset:
    """The :class:`Preset` named ``preset``.

    Raises:
        BadArgument: ``preset`` is not a name in :data:`PRESET_TABLE`; the
            message lists every preset with its description.
    """
    if not isinstance(preset, str) or preset not in _BY_NAME:
        listing = "; ".join(f"{p.name}: {p.description}" for p in PRESET_TABLE)
        raise BadArgument(f"unknown preprocessing preset {preset!r}; choose one of: {listing}")
    return _BY_NAME[preset]


def apply_preset(x: np.ndarray, preset: str) -> np.ndarray:
    """Apply a preprocessing preset to pixels in 0..255.

    Arithmetic is done in float64 (in blocks, to bound memory) and rounded
    once to float32, so results are the float32 roundings of the formulas in
    :data:`PRESETS`.

    For one-channel input, ``caffe`` subtracts the mean of the three ImageNet
    means (114.799333...) and ``torch`` uses the mean of the three means and
    of the three stds (0.449 and 0.226); there is no channel order to flip.

    Args:
        x: ``(..., C)`` array in 0..255, channels last; ``caffe`` and
            ``torch`` need ``C`` 1 or 3, the others take any ``C``.
        preset: a key of :data:`PRESETS`.

    Returns:
        A new float32 array of the same shape.

    Raises:
        BadArgument: unknown preset, or a channel count the preset cannot use.
    """
    chosen = check_preset(preset)
    x = np.asarray(x)
    if x.ndim == 0:
        raise BadArgument("apply_preset needs an array with a channels-last axis, not a scalar")
    channels = x.shape[-1]
    if chosen.channels is not None and channels not in chosen.channels:
        others = [repr(p.name) for p in PRESET_TABLE if p.channels is None]
        raise BadArgument(
            f"the {preset!r} preset needs {_either([str(c) for c in chosen.channels])} channels "
            f"(channels last), not {channels}; use {_either(others)}, or convert the image to RGB"
        )
    if x.size == 0:
        return x.astype(np.float32)
    flat = x.reshape(-1, channels)
    out = np.empty(flat.shape, dtype=np.float32)
    # float64 arithmetic in blocks: exact results without a float64 copy of a large image.
    step = max(1, _PRESET_BLOCK // max(channels, 1))
    for start in range(0, flat.shape[0], step):
        out[start : start + step] = chosen.function(flat[start : start + step].astype(np.float64))
    return out.reshape(x.shape)
