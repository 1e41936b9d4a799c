"""Preparing: an :class:`~convlens.images.decode.Image` adapted to one model's input.

:func:`prepare` adapts one image to one model: channel count, size and a
preprocessing preset (:mod:`convlens.images.presets`), and returns human
sentences (notes) for every change the user should know about. The library
never prints them; the caller decides. :func:`prepare_batch` loads and
prepares a list of images for one model's input shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from convlens._errors import BadArgument, BadImage, UnsupportedModel

from .decode import Image, ImageSource, load_images
from .presets import apply_preset, check_preset

__all__ = [
    "PreparedBatch",
    "check_not_constant",
    "prepare",
    "prepare_batch",
]

# ITU-R 601-2 luma, the weights of PIL's "RGB" -> "L" conversion, without its rounding.
_LUMA_601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def prepare(
    image: Image,
    *,
    size: tuple[int | None, int | None] | None,
    channels: int | None,
    preprocess: str = "unit",
) -> tuple[np.ndarray, list[str]]:
    """Adapt an image to a model: channels, then size, then a preset.

    Resizing is bilinear and antialiased (PIL's ``BILINEAR`` filter, which
    widens with the reduction factor) on the float32 data, one channel at a
    time, so nothing is rounded to 8 bits. The aspect ratio is not kept: the
    image is stretched to ``size``, and a note says so.

    Args:
        image: an :class:`Image` from :func:`load_image`.
        size: ``(height, width)`` to resize to; ``None`` keeps the image's own
            size, and ``None`` for one side keeps that side.
        channels: 1 (luminance, ITU-R 601-2 weights 0.299, 0.587, 0.114 as in
            PIL's ``L`` mode, without its rounding), 3 (gray value repeated),
            or ``None`` to keep the image's own.
        preprocess: a key of :data:`~convlens.images.presets.PRESETS`.

    Returns:
        ``(array, notes)``: ``array`` is a new ``(h, w, c)`` float32 array
        (C-contiguous, never sharing memory with ``image.pixels``) in the
        preset's range; ``notes`` are sentences, the image's own loading notes
        first, then e.g. ``"resized cat.jpg from 640x480 to 224x224, changing
        its aspect ratio from 1.33 to 1.00"``. Sizes in notes are width x
        height, as image viewers show them. Notes do not say why the size was
        chosen (the model's fixed input or the user's ``--size``): the caller
        knows and may add it.

    Raises:
        BadArgument: unknown preset, unusable ``size`` or ``channels``, or
            ``image`` is not an :class:`Image`.
    """
    if not isinstance(image, Image):
        raise BadArgument(
            f"prepare() takes an Image, not a {type(image).__name__}; load it with "
            "convlens.images.load_image() first"
        )
    check_preset(preprocess)
    target_h, target_w = _check_size(size, image)
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise BadArgument(
            f"channels must be 1, 3 or None, not {channels!r}; convlens adapts images to "
            "grayscale or RGB models only"
        )

    label = Path(image.source).name if not image.source.startswith("<") else image.name
    notes = list(image.notes)
    x = image.pixels

    if channels is not None and channels != x.shape[-1]:
        if channels == 1:
            x = (x @ _LUMA_601)[..., None]
            notes.append(
                f"converted {label} from RGB to grayscale (ITU-R 601 luminance) because the "
                "model takes 1 channel"
            )
        else:
            x = np.repeat(x, 3, axis=-1)
            notes.append(
                f"converted {label} from grayscale to 3 channels (the gray value repeated) "
                "because the model takes 3 channels"
            )

    height, width = x.shape[:2]
    if (target_h, target_w) != (height, width):
        x = _resize(x, target_h, target_w)
        note = f"resized {label} from {width}x{height} to {target_w}x{target_h}"
        before, after = width / height, target_w / target_h
        if abs(after / before - 1.0) > 0.01:
            note += f", changing its aspect ratio from {before:.2f} to {after:.2f}"
        notes.append(note)

    return np.ascontiguousarray(apply_preset(x, preprocess), dtype=np.float32), notes




def _check_size(size: object, image: Image) -> tuple[int, int]:
    if size is None:
        return image.height, image.width
    if isinstance(size, (tuple, list)) and len(size) == 2:
        out = []
        for value, own in zip(size, (image.height, image.width)):
            if value is None:
                out.append(own)
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
                out.append(int(value))
            else:
                break
        else:
            return out[0], out[1]
    raise BadArgument(
        f"size must be (height, width) with positive integers (or None to keep a side), "
        f"not {size!r}"
    )


def _resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W, C)`` float32 -> ``(height, width, C)``, antialiased bilinear per channel."""
    out = np.empty((height, width, x.shape[-1]), dtype=np.float32)
    for k in range(x.shape[-1]):
        plane = PIL.Image.fromarray(np.ascontiguousarray(x[..., k], dtype=np.float32))
        out[..., k] = np.asarray(
            plane.resize((width, height), PIL.Image.Resampling.BILINEAR), dtype=np.float32
        )
    return out


# --------------------------------------------------------------------------- one model's batch


@dataclass(frozen=True)
class PreparedBatch:
    """Images loaded and prepared for one model (see :func:`prepare_batch`).

    Attributes:
        images: the images as loaded, in order.
        arrays: per image, the ``(h, w, c)`` float32 input the network sees (preprocessed).
        notes: what was done to them, in order (each resizing says why its size was chosen).
    """

    images: list[Image]
    arrays: list[np.ndarray]
    notes: list[str]


def prepare_batch(
    images: ImageSource | Sequence[ImageSource],
    input_shape: Sequence[int | None],
    *,
    size: int | Sequence[int] | None,
    preprocess: str,
    model_name: str,
) -> PreparedBatch:
    """Load images and prepare each for a model that takes ``input_shape``.

    Args:
        images: one image or a list (paths, PIL images, arrays; see :func:`load_images`).
        input_shape: the model's ``(H, W, C)``, ``None`` for a free dimension.
        size: ``H`` or ``(H, W)`` for a model that accepts any size; ``None``: the
            model's fixed size, or the image's own.
        preprocess: a key of :data:`~convlens.images.presets.PRESETS`.
        model_name: the model's name, for messages.

    Raises:
        UnsupportedModel: the model does not take images ``(H, W, C)``.
        BadArgument: ``size`` differs from the model's fixed input size.
    """
    if len(input_shape) != 3:
        raise UnsupportedModel(f"{model_name} takes input of shape {tuple(input_shape)}, not images "
                               "(H, W, C); its layer table and filters work, feature maps need an "
                               "image model")
    loaded = load_images(images)
    h, w, c = input_shape
    target: tuple[int, int] | None
    if size is not None:
        sh, sw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if (h is not None and h != sh) or (w is not None and w != sw):
            raise BadArgument(f"{model_name} takes a fixed input of {h}x{w}; --size {sh}x{sw} "
                              "cannot be used with it (leave --size out)")
        target = (sh, sw)
    elif h is not None and w is not None:
        target = (h, w)
    else:
        target = None
    why = "the size asked for" if size is not None else "the model's fixed input size"
    arrays: list[np.ndarray] = []
    notes: list[str] = []
    for image in loaded:
        arr, n = prepare(image, size=target, channels=c, preprocess=preprocess)
        arrays.append(arr)
        notes.extend(f"{note} ({why})" if note.startswith("resized") else note for note in n)
    return PreparedBatch(loaded, arrays, notes)


def check_not_constant(pixels: np.ndarray, label: str) -> None:
    """Refuse an image whose every pixel is the same: a heatmap has nothing to point at.

    The one check (and message) for the heatmap API and the methods' batch check.

    Args:
        pixels: ``(H, W, C)``, channels last, as loaded or prepared; an empty
            array passes (other checks report it).
        label: the image as the message names it (``cat``, ``image 1 of the batch``).

    Raises:
        BadImage: every pixel holds the same values (each channel constant).
    """
    x = np.asarray(pixels)
    if x.size == 0 or x.ndim == 0:
        return
    flat = x.reshape(-1, x.shape[-1])
    # every pixel equals the first; a sample of pixels settles it for almost every image
    if bool((flat[::max(1, len(flat) // 1024)] == flat[0]).all()) and bool((flat == flat[0]).all()):
        raise BadImage(
            f"{label} has the same value at every pixel: a heatmap has nothing to point at (no "
            "gradient signal, every map equal); give an image with content"
        )
