"""Load images and turn them into model inputs.

Two steps, kept apart so that callers can tell the user what happened:

* :func:`load_image` / :func:`load_images` read a file, a ``PIL.Image.Image``
  or a numpy array into an :class:`Image`: ``(H, W, C)`` float32 pixels in
  0..255, ``C`` 1 (gray) or 3 (colour), upright (EXIF orientation applied),
  transparency composited on white (:mod:`.decode`).
* :func:`prepare` adapts one :class:`Image` to one model: channel count, size
  and a preprocessing preset (:data:`PRESETS`, :mod:`.presets`), and returns
  human sentences (notes) for every change the user should know about. The
  library never prints them; the caller decides. :func:`prepare_batch` does
  both steps for a list of images and one model's input shape (:mod:`.prepare`).

Loading files is guarded against decompression bombs (:data:`MAX_PIXELS`) and
never accepts truncated files: this package never sets
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``.

The modules depend one way: ``decode`` <- ``presets`` <- ``prepare``.
``convlens.images.MAX_PIXELS`` is the limit that :mod:`.decode` reads at call
time: setting it here sets it there (the CLI's ``--max-pixels`` does).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from . import decode
from .decode import Image, ImageSource, load_image, load_image_bytes, load_images
from .prepare import PreparedBatch, check_not_constant, prepare, prepare_batch
from .presets import PRESET_NAMES, PRESET_TABLE, PRESETS, Preset, apply_preset, check_preset

if TYPE_CHECKING:
    from .decode import MAX_PIXELS

__all__ = [
    "MAX_PIXELS",
    "PRESETS",
    "PRESET_NAMES",
    "PRESET_TABLE",
    "Image",
    "ImageSource",
    "Preset",
    "PreparedBatch",
    "apply_preset",
    "check_not_constant",
    "check_preset",
    "load_image",
    "load_image_bytes",
    "load_images",
    "prepare",
    "prepare_batch",
]


class _ImagesPackage(types.ModuleType):
    """This package's module: ``MAX_PIXELS`` read and set in :mod:`.decode`, where loads read it."""

    @property
    def MAX_PIXELS(self) -> int:
        return decode.MAX_PIXELS

    @MAX_PIXELS.setter
    def MAX_PIXELS(self, value: int) -> None:
        decode.MAX_PIXELS = value


sys.modules[__name__].__class__ = _ImagesPackage
