"""Colormaps as 256-entry lookup tables.

A lookup table turns uint8 indices into RGB with one gather, instead of asking
matplotlib to colour every pixel; matplotlib is only needed to build a table,
and only imported then.
"""

from __future__ import annotations

import difflib
import functools

import numpy as np

from .._errors import BadArgument, MissingDependency

__all__ = ["apply_lut", "lut"]

_GRAY_NAMES = ("gray", "grey")


@functools.lru_cache(maxsize=32)
def lut(name: str = "viridis") -> np.ndarray:
    """The 256-colour lookup table of a colormap.

    Args:
        name: any matplotlib colormap name (``viridis``, ``magma``, ``RdBu_r``
            ...; matched case-insensitively when unambiguous), or ``gray`` /
            ``grey``, which need no matplotlib.

    Returns:
        ``(256, 3)`` uint8, read-only (shared between callers): entry ``i`` is
        the colormap at ``i / 255``, rounded to 0-255.

    Raises:
        BadArgument: unknown name; the message suggests close names.
        MissingDependency: matplotlib is not installed and the name is not gray.
    """
    if not isinstance(name, str) or not name.strip():
        raise BadArgument(f"colormap name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name.lower() in _GRAY_NAMES:
        table = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    else:
        try:
            import matplotlib
        except ImportError:  # pragma: no cover - matplotlib is a core dependency
            raise MissingDependency(f"colormap {name!r} needs matplotlib: pip install matplotlib "
                                    "(or use cmap 'gray')") from None
        cmap = matplotlib.colormaps.get(name) if name in matplotlib.colormaps else None
        if cmap is None:
            known = list(matplotlib.colormaps)
            folded = [k for k in known if k.lower() == name.lower()]
            if len(folded) != 1:
                close = difflib.get_close_matches(name, known + list(_GRAY_NAMES), n=3, cutoff=0.6)
                hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
                raise BadArgument(f"unknown colormap {name!r}; {hint}any matplotlib colormap "
                                  "name works (viridis, magma, inferno, plasma, cividis, gray, "
                                  "RdBu_r, ...)")
            cmap = matplotlib.colormaps[folded[0]]
        rgba = cmap(np.linspace(0.0, 1.0, 256))
        table = np.rint(np.asarray(rgba)[:, :3] * 255).astype(np.uint8)
    table.flags.writeable = False
    return table


def apply_lut(indices: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Colour uint8 indices.

    Args:
        indices: uint8 array of any shape ``S``.
        table: ``(256, 3)`` uint8 from :func:`lut`.

    Returns:
        ``S + (3,)`` uint8 RGB.
    """
    idx = np.asarray(indices)
    if idx.dtype != np.uint8:
        raise BadArgument(f"colormap indices must be uint8 (see normalize_channels), "
                          f"got {idx.dtype}")
    if table.shape != (256, 3) or table.dtype != np.uint8:
        raise BadArgument(f"a lookup table is (256, 3) uint8, got {table.shape} {table.dtype}")
    return np.take(table, idx, axis=0)
