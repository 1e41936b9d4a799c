"""Filter atlases: what the convolution kernels themselves look like.

Kernels arrive in the canonical ``(O, I, kh, kw)`` float32 layout (O filters,
I input channels each, see :mod:`convlens.adapters.base`). Two pictures:

* :func:`rgb_composites` for first layers that see an RGB image: each filter
  as one small colour patch, the way the VGG16 tutorial shows block1_conv1
  (:func:`first_layer_composites` also takes gray first layers).
* :func:`filter_grid` for any layer: filters down, input channels across,
  so a 64x64-channel layer is one picture instead of 4,096 subplots.
"""

from __future__ import annotations

import math

import numpy as np

from .._errors import BadArgument
from ..core.normalize import normalize_channels
from .grid import check_lut, draw_texts, grid_shape, mosaic, text_width, upscale_factor

__all__ = ["filter_grid", "filter_norms", "first_layer_composites", "rgb_composites"]

_WHITE = (255, 255, 255)
_EMPTY = (235, 235, 235)
_LABEL_SIZE = 11
_MIN_ROW = 14  # pixels: room for a label next to each filter, also for 1-D kernels


def filter_norms(kernels: np.ndarray) -> np.ndarray:
    """L2 norm of each whole filter (all its inputs and taps).

    Args:
        kernels: ``(O, I, kh, kw)``.

    Returns:
        ``(O,)`` float64.
    """
    k = _check_kernels(kernels)
    flat = k.reshape(k.shape[0], -1).astype(np.float64)
    return np.sqrt(np.einsum("ij,ij->i", flat, flat))


def rgb_composites(kernels: np.ndarray, *, max_filters: int = 64, columns: int | None = None,
                   cell: int = 32) -> np.ndarray:
    """First-layer filters as colour patches in a near-square grid.

    Each filter is min-max normalised on its own (the tutorial's 0-1 scaling,
    per filter so weak filters are not washed out); its 3 input channels,
    taken as R, G, B, make a ``(kh, kw)`` colour patch. A constant filter is
    mid-gray.

    Args:
        kernels: ``(O, 3, kh, kw)``, input channels in RGB order.
        max_filters: draw the first this many filters.
        columns: grid columns; ``None`` for near-square.
        cell: patches are enlarged (nearest neighbour) by the integer factor
            ``ceil(cell / max(kh, kw))``.

    Returns:
        RGB uint8 grid with 1-pixel white separators.

    Raises:
        BadArgument: the filters do not have exactly 3 input channels.
    """
    k = _check_kernels(kernels)
    if k.shape[1] != 3:
        raise BadArgument(f"RGB composites need filters with 3 input channels (a first conv layer "
                          f"on RGB images); these have {k.shape[1]}: draw them with filter_grid")
    k = k[: _at_least_one(max_filters, "max_filters")]
    _, _, kh, kw = k.shape
    patches = _per_filter(k).transpose(0, 2, 3, 1)  # (F, kh, kw, RGB)
    f = upscale_factor(max(kh, kw), cell)
    if f > 1:
        patches = patches.repeat(f, axis=1).repeat(f, axis=2)
    rows, cols = grid_shape(k.shape[0], columns)
    canvas, _ = mosaic(np.ascontiguousarray(patches), rows, cols, 1, _WHITE, _EMPTY)
    return canvas


def first_layer_composites(kernels: np.ndarray, max_filters: int) -> np.ndarray:
    """A first layer's filters as one patch each: RGB for 3 inputs, gray for 1.

    Args:
        kernels: ``(O, I, kh, kw)`` with ``I`` 1 or 3.
        max_filters: draw the first this many filters.

    Returns:
        RGB uint8 grid (:func:`rgb_composites`; a gray filter is its one input repeated).
    """
    return rgb_composites(np.repeat(kernels, 3, axis=1) if kernels.shape[1] == 1 else kernels,
                          max_filters=max_filters)


def filter_grid(kernels: np.ndarray, lut: np.ndarray, *, max_filters: int = 64,
                max_inputs: int = 16, cell: int | None = None) -> np.ndarray:
    """Filters down, input channels across, with each filter's number and L2 norm.

    Every cell is one ``(kh, kw)`` kernel slice. Slices are normalised per
    filter (min and max over the filter's drawn slices, so a filter's inputs
    compare; a constant filter is mid-colour) and coloured with ``lut``. The
    label column reads e.g. ``12 |w|=0.41``, the norm taken over the whole
    filter (all inputs, drawn or not); a header row numbers the inputs.

    Args:
        kernels: ``(O, I, kh, kw)``; 1-D kernels have ``kh == 1`` and are drawn
            as horizontal strips.
        lut: ``(256, 3)`` uint8 colormap table.
        max_filters: rows: the first this many filters.
        max_inputs: columns: the first this many input channels.
        cell: cells are enlarged by ``ceil(cell / max(kh, kw))``; default
            aims at about 24 pixels. Rows are at least 14 pixels tall.

    Returns:
        RGB uint8 picture.
    """
    k_all = _check_kernels(kernels)
    check_lut(lut)
    n_filters = _at_least_one(max_filters, "max_filters")
    k = k_all[:n_filters, : _at_least_one(max_inputs, "max_inputs")]
    n_out, n_in, kh, kw = k.shape
    fx = upscale_factor(max(kh, kw), 24 if cell is None else int(cell))
    fy = max(fx, math.ceil(_MIN_ROW / kh))
    ch, cw = kh * fy, kw * fx
    cells = _per_filter(k).reshape(n_out * n_in, kh, kw).repeat(fy, axis=1).repeat(fx, axis=2)
    grid, _ = mosaic(cells, n_out, n_in, 1, _WHITE, _EMPTY, lut)

    norms = filter_norms(k_all[:n_filters])
    labels = [f"{o} |w|={_short(v)}" for o, v in enumerate(norms)]
    corner = "filter \\ input"
    label_w = max(text_width(t, _LABEL_SIZE) for t in [*labels, corner]) + 12
    header_h = 16
    out = np.full((header_h + grid.shape[0], label_w + grid.shape[1], 3), 255, dtype=np.uint8)
    out[header_h:, label_w:] = grid
    items = [(6, header_h + 1 + o * (ch + 1) + ch // 2, t) for o, t in enumerate(labels)]
    items.append((6, header_h // 2, corner))
    numbers = [str(i) for i in range(n_in)]
    widths = [text_width(t, _LABEL_SIZE) for t in numbers]
    if max(widths) <= cw + 1:  # number the inputs only where the numbers fit
        items += [(label_w + 1 + i * (cw + 1) + (cw - wd) // 2, header_h // 2, t)
                  for i, (t, wd) in enumerate(zip(numbers, widths))]
    return draw_texts(out, items, size=_LABEL_SIZE)


def _per_filter(k: np.ndarray) -> np.ndarray:
    """``(F, ...)`` kernels -> uint8 indices of the same shape, min-max per filter.

    A constant filter is 128 (mid) rather than 0: its weights are not "low".
    """
    idx, flags = normalize_channels(k.reshape(k.shape[0], -1, k.shape[-1]), "minmax")
    idx = idx.reshape(k.shape)
    if flags.constant.any():
        flat = np.isfinite(k[flags.constant])
        idx[flags.constant] = np.where(flat, 128, 0)
    return idx


def _check_kernels(kernels: np.ndarray) -> np.ndarray:
    k = np.asarray(kernels)
    if k.ndim != 4 or 0 in k.shape:
        raise BadArgument(f"kernels must be a non-empty (O, I, kh, kw) array, got shape {k.shape}")
    if not (np.issubdtype(k.dtype, np.floating) or np.issubdtype(k.dtype, np.integer)):
        raise BadArgument(f"kernels must be real numbers, got dtype {k.dtype}")
    return k


def _at_least_one(value: int, name: str) -> int:
    if int(value) < 1:
        raise BadArgument(f"{name} must be at least 1, got {value}")
    return int(value)


def _short(v: float) -> str:
    """A norm in at most ~7 characters: 0.412, 12.3, 1.23e+04."""
    if not math.isfinite(v):
        return str(v)
    if v == 0 or 0.01 <= abs(v) < 1000:
        return f"{v:.3g}"
    return f"{v:.2e}"
