"""Animated GIFs of pictures that change over time (a layer's maps across training).

Pure: RGB frames in, GIF bytes out (PIL's encoder); only writers touch disk.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from .._errors import BadArgument

__all__ = ["encode_gif", "pad_frames"]

_WHITE = 255


def pad_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Frames of different sizes on one canvas each: top-left aligned, padded with white.

    Args:
        frames: ``(H_i, W_i, 3)`` uint8 pictures.

    Returns:
        ``(max H, max W, 3)`` uint8 copies.
    """
    arrays = [np.asarray(f) for f in frames]
    for a in arrays:
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise BadArgument(f"a frame must be an (H, W, 3) uint8 picture, got {a.shape} {a.dtype}")
    h = max(a.shape[0] for a in arrays)
    w = max(a.shape[1] for a in arrays)
    out = []
    for a in arrays:
        canvas = np.full((h, w, 3), _WHITE, dtype=np.uint8)
        canvas[: a.shape[0], : a.shape[1]] = a
        out.append(canvas)
    return out


def encode_gif(frames: Sequence[np.ndarray], *, duration_ms: int = 800, loop: bool = True,
               last_ms: int | None = 1600) -> bytes:
    """An animated GIF, one frame per picture.

    Each frame gets its own 256-colour palette (median cut), which keeps a
    colormap's gradients and the titles' anti-aliased text; frames of
    different sizes are padded (:func:`pad_frames`).

    Args:
        frames: ``(H, W, 3)`` uint8 pictures, in order; at least one.
        duration_ms: how long each frame shows.
        loop: repeat forever (else play once).
        last_ms: how long the last frame shows (a pause before the loop
            starts over); ``None``: as long as the others.

    Returns:
        The GIF file's bytes.
    """
    from PIL import Image

    if not frames:
        raise BadArgument("an animation needs at least one frame")
    if duration_ms < 20:
        raise BadArgument(f"duration_ms must be at least 20 (browsers slow faster frames), got {duration_ms}")
    pictures = [Image.fromarray(f).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
                for f in pad_frames(frames)]
    durations = [int(duration_ms)] * len(pictures)
    if last_ms is not None:
        durations[-1] = int(last_ms)
    buf = io.BytesIO()
    options = {"loop": 0} if loop else {}
    pictures[0].save(buf, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=durations if len(pictures) > 1 else durations[0], disposal=1, **options)
    return buf.getvalue()
