"""Animated GIFs of pictures that change over time (a layer's maps across training).

Pure: frames in, GIF bytes out (PIL's encoder); only writers touch disk.
A frame is an RGB picture, or palette indices with their palette, as
:class:`convlens.render.maps.Rendered` keeps feature-map grids: those go into
the GIF as they are (a colormap has at most 256 colours), which spares the
colour quantisation that costs most of the time for RGB frames.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._errors import BadArgument

__all__ = ["Frame", "encode_gif", "pad_frames"]

#: An ``(H, W, 3)`` uint8 RGB picture, or ``(indices (H, W) uint8, palette (n <= 256, 3) uint8)``.
Frame = np.ndarray | tuple[np.ndarray, np.ndarray]

_WHITE = 255


def _check(frame: Frame) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(frame, tuple):
        indices, pal = np.asarray(frame[0]), np.asarray(frame[1])
        if indices.ndim != 2 or indices.dtype != np.uint8 or pal.ndim != 2 or pal.shape[1] != 3 \
                or not 1 <= pal.shape[0] <= 256 or pal.dtype != np.uint8:
            raise BadArgument(f"an indexed frame is ((H, W) uint8 indices, (n <= 256, 3) uint8 palette), got "
                              f"{indices.shape} {indices.dtype} and {pal.shape} {pal.dtype}")
        return indices, pal
    a = np.asarray(frame)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise BadArgument(f"a frame must be an (H, W, 3) uint8 picture, got {a.shape} {a.dtype}")
    return a, None


def _whitest(pal: np.ndarray) -> int:
    return int(np.argmax(pal.astype(np.int32).sum(axis=1)))


def pad_frames(frames: Sequence[Frame]) -> list[Frame]:
    """Frames of different sizes on one canvas each: top-left aligned, padded with white.

    Args:
        frames: RGB pictures or ``(indices, palette)`` pairs (padded with the
            palette's whitest colour).

    Returns:
        Copies of the same kinds, all ``(max H, max W)``.
    """
    checked = [_check(f) for f in frames]
    h = max(a.shape[0] for a, _ in checked)
    w = max(a.shape[1] for a, _ in checked)
    out: list[Frame] = []
    for a, pal in checked:
        if pal is None:
            canvas = np.full((h, w, 3), _WHITE, dtype=np.uint8)
            canvas[: a.shape[0], : a.shape[1]] = a
            out.append(canvas)
        else:
            indices = np.full((h, w), _whitest(pal), dtype=np.uint8)
            indices[: a.shape[0], : a.shape[1]] = a
            out.append((indices, pal))
    return out


def _picture(frame: Frame) -> Any:
    from PIL import Image

    if isinstance(frame, tuple):
        indices, pal = frame
        im = Image.frombytes("P", (indices.shape[1], indices.shape[0]), np.ascontiguousarray(indices).tobytes())
        im.putpalette(np.ascontiguousarray(pal).tobytes())
        return im
    return Image.fromarray(frame).quantize(colors=256, method=Image.Quantize.FASTOCTREE,
                                           dither=Image.Dither.NONE)


def encode_gif(frames: Sequence[Frame], *, duration_ms: int = 800, loop: bool = True,
               last_ms: int | None = 1600) -> bytes:
    """An animated GIF, one frame per picture.

    Indexed frames keep their palette (lossless); RGB frames get their own
    256-colour palette (PIL's fast octree, no dithering: gradients and the
    titles' anti-aliased text keep their look). Frames of different sizes
    are padded (:func:`pad_frames`).

    Args:
        frames: RGB pictures or ``(indices, palette)`` pairs, in order; at least one.
        duration_ms: how long each frame shows.
        loop: repeat forever (else play once).
        last_ms: how long the last frame shows (a pause before the loop
            starts over); ``None``: as long as the others.

    Returns:
        The GIF file's bytes.
    """
    if not frames:
        raise BadArgument("an animation needs at least one frame")
    if duration_ms < 20:
        raise BadArgument(f"duration_ms must be at least 20 (browsers slow faster frames), got {duration_ms}")
    pictures = [_picture(f) for f in pad_frames(frames)]
    durations = [int(duration_ms)] * len(pictures)
    if last_ms is not None:
        durations[-1] = int(last_ms)
    buf = io.BytesIO()
    options = {"loop": 0} if loop else {}
    pictures[0].save(buf, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=durations if len(pictures) > 1 else durations[0], disposal=1, **options)
    return buf.getvalue()
