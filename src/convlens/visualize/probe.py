"""Which channels are dead: zero on ordinary photos, whatever the optimisation did.

A feature visualisation tile that stays flat grey says nothing by itself: the
channel may never fire, or the optimisation may not have started. The atlas
calls a tile dead only when the channel is exactly zero at every position of
every probe image: scikit-image's photos ``chelsea``, ``astronaut``, ``coffee``
and ``rocket`` when scikit-image is installed, else the photo that ships with
convlens (Chelsea the cat, the same picture as scikit-image's ``chelsea``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ConvlensError
from ..images import prepare_batch
from ..model import Model
from ..passes import call_model

__all__ = ["PROBE_PHOTOS", "ChannelProbe", "probe_channels", "probe_photos"]

#: scikit-image's sample photos used as probes, by their ``skimage.data`` names.
PROBE_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")
_BUNDLED = Path(__file__).resolve().parent.parent / "data" / "photo.jpg"


@dataclass(frozen=True)
class ChannelProbe:
    """A layer's channels on the probe photos.

    Attributes:
        images: the probe images' names (e.g. ``["skimage chelsea", ...]``).
        peak: ``(C,)`` float64, each channel's largest value over every position of every probe image.
        dead: ``(C,)`` bool, the channel is exactly zero everywhere on every probe image.
    """

    images: list[str]
    peak: np.ndarray
    dead: np.ndarray


def probe_photos() -> tuple[list[np.ndarray], list[str]]:
    """The probe photos as ``(h, w, 3)`` uint8 arrays, and their names."""
    skdata: Any
    try:
        from skimage import data as skdata
    except ImportError:
        skdata = None
    if skdata is not None:
        photos, names = [], []
        for name in PROBE_PHOTOS:
            try:
                photos.append(np.asarray(getattr(skdata, name)()))
            except Exception:  # a sample missing from this scikit-image: the others still probe
                continue
            names.append(f"scikit-image {name}")
        if photos:
            return photos, names
    from PIL import Image

    with Image.open(_BUNDLED) as im:
        return [np.asarray(im.convert("RGB"))], ["convlens photo.jpg (Chelsea)"]


def probe_channels(model: Model, layer: int, *, preprocess: str, size: Sequence[int] | None,
                   channels: int) -> ChannelProbe | None:
    """The channels of row ``layer`` on the probe photos; ``None`` when the photos cannot be prepared for it.

    Args:
        model: the model.
        layer: the table row.
        preprocess: the preset the photos are prepared with.
        size: ``(h, w)`` the photos are resized to for a model of free size (default 224 x 224);
            a model of fixed size gets its own.
        channels: C, the layer's channels.
    """
    photos, names = probe_photos()
    h, w = model.input_shape[:2]
    target = None if h is not None and w is not None else (tuple(size) if size is not None else (224, 224))
    try:  # a grey model gets the photos in grey, as it gets any image
        prepared = prepare_batch(photos, model.input_shape, size=target, preprocess=preprocess,
                                 model_name=model.name)
    except ConvlensError:
        return None
    peak = np.full(channels, -np.inf)
    dead = np.ones(channels, bool)
    for array in prepared.arrays:  # one at a time: the photos differ in size
        got: list[np.ndarray] = []

        def keep(_row: int, a: np.ndarray, got: list[np.ndarray] = got) -> None:
            got.append(a)

        call_model(model, array[None], [layer], keep)
        if not got:
            return None
        a = np.asarray(got[0], np.float64).reshape(-1, got[0].shape[-1])
        if a.shape[1] != channels:
            return None
        peak = np.maximum(peak, np.nanmax(a, axis=0))
        dead &= np.all(a == 0, axis=0)
    return ChannelProbe(images=names, peak=peak, dead=dead)
