"""The comparison's pictures: numbers in, PNG bytes out (numpy and the shared renderers, no plotting library).

* :func:`error_chart`: one bar per layer pair in network order, the relative
  error on a log axis, the tolerance dashed, the first divergent pair red and
  the worst one marked: how the error grows along the network.
* :func:`maps_picture`: A, B and ``|A - B|`` side by side for one layer.
* :func:`cka_picture`: the CKA matrix as a heatmap, the best match of each row boxed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..render.colormap import apply_lut, lut
from ..render.grid import add_title, draw_texts, text_width
from ..render.png import encode_png

__all__ = ["cka_picture", "error_chart", "maps_picture"]

_INK = (40, 40, 40)
_GRID = (225, 225, 225)
_BAR = (70, 120, 180)
_RED = (200, 40, 40)
_ORANGE = (230, 140, 20)


def _fmt(v: float) -> str:
    return f"1e{int(round(math.log10(v)))}"


def error_chart(names: Sequence[str], errors: Sequence[float | None], *, tolerance: float | None,
                first: int | None, worst: int | None, title: str, floor: float = 1e-9) -> bytes:
    """A horizontal bar chart of the relative error of each pair, on a log axis.

    Args:
        names: a label per pair (``"a ~ b"``).
        errors: the relative error per pair; ``None`` where it could not be computed; 0 draws no bar.
        tolerance: drawn as a dashed line.
        first: the index of the first divergent pair (red).
        worst: the index of the worst pair (marked ``worst``).
        title: above the chart.
        floor: the left end of the axis at the lowest (errors below it, and 0, draw no bar).

    Returns:
        PNG bytes.
    """
    values = [v for v in errors if v is not None and v > 0 and math.isfinite(v)]
    span = values + ([tolerance] if tolerance is not None and tolerance > 0 else [])
    # one decade below the smallest error (or the tolerance) to the decade above the largest
    lo = max(math.floor(math.log10(min(span))) - 1, math.floor(math.log10(floor))) if span else -9
    hi = max(math.ceil(math.log10(max(span))), lo + 2) if span else 0
    row, size = 15, 11
    label_w = min(max([text_width(n, size) for n in names] + [60]) + 16, 420)
    plot_w, note_w = 420, 70
    top, bottom = 10, 34
    width = label_w + plot_w + note_w
    height = top + row * max(len(names), 1) + bottom
    canvas = np.full((height, width, 3), 255, np.uint8)

    def x_of(v: float) -> int:
        return label_w + int(round((math.log10(v) - lo) / (hi - lo) * (plot_w - 1)))

    texts: list[tuple[int, int, str]] = []
    for e in range(lo, hi + 1):
        x = x_of(10.0 ** e)
        canvas[top:height - bottom + 4, x] = _GRID
        if (e - lo) % max(1, (hi - lo) // 6) == 0:
            texts.append((x - 12, height - bottom + 14, _fmt(10.0 ** e)))
    if tolerance is not None and tolerance > 0 and 10.0 ** lo < tolerance <= 10.0 ** hi:
        x = x_of(tolerance)
        for y in range(top, height - bottom, 6):
            canvas[y:y + 3, x] = _RED
    for i, (name, v) in enumerate(zip(names, errors)):
        y0 = top + i * row
        texts.append((4, y0 + row // 2, name if text_width(name, size) < label_w - 8 else name[: 48] + "..."))
        if v is None or not math.isfinite(v):
            texts.append((label_w + 4, y0 + row // 2, "n/a" if v is None else "inf"))
            continue
        color = _RED if i == first else _ORANGE if i == worst else _BAR
        if v > 0:
            canvas[y0 + 2:y0 + row - 2, label_w:max(x_of(max(v, 10.0 ** lo)), label_w + 1)] = color
        marks = [m for m, on in (("first", i == first), ("worst", i == worst)) if on]
        if marks:
            texts.append((label_w + plot_w + 4, y0 + row // 2, " ".join(marks)))
    texts.append((label_w + plot_w // 2 - 60, height - 8, "relative error (log)"))
    canvas = draw_texts(canvas, texts, size=size, color=_INK)
    return encode_png(add_title(canvas, title))


def _scaled(x: np.ndarray, lo: float, hi: float, cmap: str, side: int) -> np.ndarray:
    idx = np.clip((np.nan_to_num(x) - lo) / (hi - lo if hi > lo else 1.0) * 255, 0, 255).astype(np.uint8)
    rgb = apply_lut(idx, lut(cmap))
    h, w = idx.shape
    f = max(1, side // max(h, w))
    rep_h = f if h > 1 else max(1, min(side // 4, 24))
    return np.repeat(np.repeat(rgb, rep_h, axis=0), f, axis=1)


def maps_picture(a: np.ndarray, b: np.ndarray, diff: np.ndarray, *, title: str, labels: Sequence[str],
                 side: int = 160) -> bytes:
    """``A | B | |A - B|``: A and B on one colour scale (viridis), the difference on its own (magma).

    Args:
        a, b: ``(H, W)`` maps (a vector is ``(1, C)``).
        diff: ``(H, W)`` absolute difference.
        title: above the three panels.
        labels: the three panels' captions.
        side: panels are enlarged by a whole factor up to about this many pixels.
    """
    finite = np.concatenate([np.ravel(a), np.ravel(b)])
    finite = finite[np.isfinite(finite)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    dmax = float(np.nanmax(diff)) if np.size(diff) else 0.0
    panels = [_scaled(a, lo, hi, "viridis", side), _scaled(b, lo, hi, "viridis", side),
              _scaled(diff, 0.0, dmax if dmax > 0 else 1.0, "magma", side)]
    titled = [add_title(p, t) for p, t in zip(panels, labels)]
    h = max(p.shape[0] for p in titled)
    gap = np.full((h, 8, 3), 255, np.uint8)
    row = []
    for p in titled:
        padded = np.full((h, p.shape[1], 3), 255, np.uint8)
        padded[: p.shape[0]] = p
        row.extend([padded, gap])
    return encode_png(add_title(np.concatenate(row[:-1], axis=1), title))


def cka_picture(matrix: np.ndarray, names_a: Sequence[str], names_b: Sequence[str], *, title: str) -> bytes:
    """The CKA matrix: a row per layer of A, a column per layer of B, 0 dark to 1 bright (magma).

    The best-matching column of each row is boxed in white.
    """
    m = np.asarray(matrix, np.float64)
    p, q = m.shape
    cell = max(4, min(24, 480 // max(p, q, 1)))
    size = 11
    label_w = min(max([text_width(n, size) for n in names_a] + [40]) + 12, 300)
    top = 22
    width, height = label_w + q * cell + 10, top + p * cell + 26
    canvas = np.full((height, width, 3), 255, np.uint8)
    idx = np.clip(np.nan_to_num(m, nan=0.0) * 255, 0, 255).astype(np.uint8)
    cells = apply_lut(idx, lut("magma"))
    cells[np.isnan(m)] = (200, 200, 200)
    block = np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)
    canvas[top:top + p * cell, label_w:label_w + q * cell] = block
    for i in range(p):
        if np.all(np.isnan(m[i])):
            continue
        j = int(np.nanargmax(m[i]))
        y0, x0 = top + i * cell, label_w + j * cell
        canvas[y0, x0:x0 + cell] = canvas[y0 + cell - 1, x0:x0 + cell] = 255
        canvas[y0:y0 + cell, x0] = canvas[y0:y0 + cell, x0 + cell - 1] = 255
    step = max(1, math.ceil(size / cell))
    texts = [(4, top + i * cell + cell // 2, names_a[i][:40]) for i in range(0, p, step)]
    texts.append((label_w, 10, f"layers of B (0-{q - 1}, left to right); boxed: best match"))
    texts += [(label_w + j * cell, top + p * cell + 10, str(j)) for j in range(0, q, max(step, 5))]
    return encode_png(add_title(draw_texts(canvas, texts, size=size, color=_INK), title))
