"""PNG bytes (writing them to disk is :mod:`convlens.output`'s job).

:func:`encode_png` writes PNGs itself (numpy + zlib) rather than through PIL:
PIL tries five row filters on every row, which triples the cost of a
1800x1800 feature-map grid. Grids are mostly runs of identical colormap
colours, which compress best unfiltered. Deflate itself dominates what is
left, so the ISA-L library (``pip install isal``) is used when present.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from .._errors import BadArgument

__all__ = ["encode_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (gray, RGB, RGBA)

try:  # optional: the `isal` package (ISA-L), several times faster than zlib
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - depends on the environment
    _isal = None  # type: ignore[assignment]  # the module or None

# The same CRC-32 either way; ISA-L's is over ten times faster on a grid's megabytes.
_crc32 = zlib.crc32 if _isal is None else _isal.crc32


def encode_png(rgb: np.ndarray, *, compress_level: int = 1, palette: np.ndarray | None = None) -> bytes:
    """Encode a picture as PNG bytes.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB; ``(H, W)`` or ``(H, W, 1)`` gray and
            ``(H, W, 4)`` RGBA also work; with ``palette``, ``(H, W)`` uint8
            indices into it (one byte per pixel: a third of RGB's bytes to
            deflate, which is most of the cost of writing a grid).
        palette: ``(n, 3)`` uint8 colours, ``n <= 256``, for indexed pictures.
        compress_level: zlib level 0-9; 1 (the default) is several times
            faster than 6 for a few percent more bytes. With ISA-L, levels
            above 3 act as 3.

    Returns:
        A complete PNG file.
    """
    a = np.asarray(rgb)
    plte = b""
    if palette is not None:
        pal = np.asarray(palette)
        if pal.ndim != 2 or pal.shape[1] != 3 or not 1 <= pal.shape[0] <= 256 or pal.dtype != np.uint8:
            raise BadArgument(f"palette must be (n <= 256, 3) uint8, got {pal.shape} {pal.dtype}")
        if a.ndim != 2 or a.dtype != np.uint8:
            raise BadArgument(f"an indexed picture is (H, W) uint8, got {a.shape} {a.dtype}")
        plte = b"".join(_chunk(b"PLTE", np.ascontiguousarray(pal).tobytes()))
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in _COLOR_TYPES or a.dtype != np.uint8:
        raise BadArgument(f"encode_png needs an (H, W, 3) uint8 picture, got shape {np.shape(rgb)} "
                          f"dtype {a.dtype}")
    h, w, channels = a.shape
    if h == 0 or w == 0:
        raise BadArgument(f"cannot encode an empty picture of shape {a.shape}")
    if not 0 <= int(compress_level) <= 9:
        raise BadArgument(f"compress_level must be 0-9, got {compress_level}")
    # Every row starts with its filter type; 0 ("none") keeps colour runs intact.
    raw = np.empty((h, w * channels + 1), dtype=np.uint8)
    raw[:, 0] = 0
    raw[:, 1:] = a.reshape(h, w * channels)
    color_type = 3 if plte else _COLOR_TYPES[channels]
    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return b"".join((  # one copy of the compressed bytes, not one per chunk
        _SIGNATURE,
        *_chunk(b"IHDR", header),
        plte,
        *_chunk(b"IDAT", _deflate(raw.data.cast("B"), int(compress_level))),
        *_chunk(b"IEND", b""),
    ))


def _chunk(tag: bytes, data: bytes) -> tuple[bytes, ...]:
    """A PNG chunk's parts: length, tag, data, CRC-32 of tag and data."""
    return struct.pack(">I", len(data)), tag, data, struct.pack(">I", _crc32(data, _crc32(tag, 0)))


def _deflate(data: memoryview, level: int) -> bytes:
    """A zlib stream of ``data``: ISA-L when installed, else the standard zlib."""
    if _isal is not None and level > 0:
        # ISA-L level 1 deflates a 10 MB grid about 4x faster than zlib level 1,
        # for ~15% more bytes; its levels stop at 3.
        return _isal.compress(data, min(level, 3))
    return zlib.compress(data, level)
