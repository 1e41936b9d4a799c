"""The evaluation's pictures: numbers in, PNG bytes out (numpy, the shared renderers, no plotting library).

* :func:`curve_chart`: lines over a shared x axis (deletion and insertion
  curves, the randomisation curves), a legend, a dashed threshold.
* :func:`strip_picture`: per method, the map of the trained model and the maps
  as the layers are randomised from the output down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..render.colormap import apply_lut, lut
from ..render.grid import draw_texts, text_width
from ..render.png import encode_png

__all__ = ["curve_chart", "strip_picture"]

_INK = (40, 40, 40)
_GRID = (225, 225, 225)
#: line colours (Tableau 10), then grey for the baselines
_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (188, 189, 34), (23, 190, 207), (127, 127, 127)]
_BASELINE = {"random map": (150, 150, 150), "edge map (Sobel)": (90, 90, 90)}


def _line(canvas: np.ndarray, p: tuple[float, float], q: tuple[float, float], colour: tuple[int, int, int],
          width: int = 2, dashed: bool = False) -> None:
    n = int(max(abs(q[0] - p[0]), abs(q[1] - p[1]))) + 1
    xs = np.linspace(p[0], q[0], n)
    ys = np.linspace(p[1], q[1], n)
    if dashed:
        keep = (np.arange(n) // 6) % 2 == 0
        xs, ys = xs[keep], ys[keep]
    h, w = canvas.shape[:2]
    for dx in range(width):
        for dy in range(width):
            xi = np.clip(np.rint(xs).astype(int) + dx - width // 2, 0, w - 1)
            yi = np.clip(np.rint(ys).astype(int) + dy - width // 2, 0, h - 1)
            canvas[yi, xi] = colour


def curve_chart(x: Sequence[float], series: Mapping[str, Sequence[float]], *, title: str, x_label: str,
                y_label: str, y_range: tuple[float, float] | None = None, threshold: float | None = None,
                width: int = 720, height: int = 340) -> bytes:
    """A line chart as PNG bytes.

    Args:
        x: the x of each point, ascending.
        series: name -> one y per x (non-finite values leave gaps). Names in
            ``_BASELINE`` are drawn in grey, dashed.
        title, x_label, y_label: the texts.
        y_range: fixed ``(lo, hi)``; default the data's range.
        threshold: a dashed horizontal line.
    """
    legend_w = min(260, 24 + max([text_width(str(k)) for k in series] or [40]))
    left, right, top, bottom = 56, legend_w + 16, 30, 40
    canvas = np.full((height, width, 3), 255, np.uint8)
    pw, ph = width - left - right, height - top - bottom
    xv = np.asarray(x, np.float64)
    ys = [np.asarray(v, np.float64) for v in series.values()]
    finite = np.concatenate([v[np.isfinite(v)] for v in ys] + [np.zeros(0)])
    lo, hi = y_range if y_range is not None else ((float(finite.min()), float(finite.max())) if finite.size
                                                  else (0.0, 1.0))
    if threshold is not None and y_range is None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        hi = lo + 1.0
    x0, x1 = (float(xv.min()), float(xv.max())) if xv.size else (0.0, 1.0)
    x1 = x1 if x1 > x0 else x0 + 1.0

    def px(a: float, b: float) -> tuple[float, float]:
        return left + (a - x0) / (x1 - x0) * pw, top + ph - (b - lo) / (hi - lo) * ph

    texts: list[tuple[int, int, str]] = [(left, 12, title)]
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        _, yy = px(x0, v)
        _line(canvas, (left, yy), (left + pw, yy), _GRID, 1)
        texts.append((4, int(yy), f"{v:.3g}"))
    for k in range(5):
        v = x0 + (x1 - x0) * k / 4
        xx, _ = px(v, lo)
        texts.append((int(xx) - 8, top + ph + 12, f"{v:.3g}"))
    _line(canvas, (left, top), (left, top + ph), _INK, 1)
    _line(canvas, (left, top + ph), (left + pw, top + ph), _INK, 1)
    texts.append((left + pw // 2 - text_width(x_label) // 2, height - 10, x_label))
    texts.append((left + 4, top + 8, y_label))
    if threshold is not None:
        _, yy = px(x0, threshold)
        _line(canvas, (left, yy), (left + pw, yy), (200, 40, 40), 1, dashed=True)
    colour_i = 0
    for row, (name, values) in enumerate(series.items()):
        line = np.asarray(values, np.float64)
        base = name in _BASELINE
        colour = _BASELINE.get(name) or _COLOURS[colour_i % len(_COLOURS)]
        colour_i += 0 if base else 1
        pts = [px(a, b) for a, b in zip(xv, line)]
        for (a, b), p, q in zip(zip(line[:-1], line[1:]), pts[:-1], pts[1:]):
            if np.isfinite(a) and np.isfinite(b):
                _line(canvas, p, q, colour, 2, dashed=base)
        ly = top + 10 + 18 * row
        _line(canvas, (width - right + 8, ly), (width - right + 22, ly), colour, 3, dashed=base)
        texts.append((width - right + 26, ly, str(name)))
    return encode_png(draw_texts(canvas, texts, color=_INK))


def strip_picture(rows: Mapping[str, np.ndarray], columns: Sequence[str], *, cell: int = 72,
                  marks: Mapping[str, int | None] | None = None, image: np.ndarray | None = None) -> bytes:
    """Per method a row of maps: the trained model's, then one per randomisation step.

    Args:
        rows: method title -> ``(1 + S, H, W)`` maps (0..1; signed maps are shown by magnitude).
        columns: ``1 + S`` column titles (``"trained"``, then the layer randomised last).
        cell: the side of each map in pixels.
        marks: method title -> the column where the rank correlation fell
            below the threshold (outlined red), or ``None``.
        image: ``(H, W, C)`` the input the maps explain, drawn first in every row
            (stretched from its minimum to its maximum).
    """
    if image is not None:
        pic = np.asarray(image, np.float64)
        pic = (pic - pic.min()) / max(float(np.ptp(pic)), 1e-12)
        pic = np.repeat(pic, 3, axis=-1) if pic.shape[-1] == 1 else pic[..., :3]
        columns = ["image", *columns]
        first: np.ndarray | None = np.clip(np.rint(pic * 255), 0, 255).astype(np.uint8)
    else:
        first = None
    label_w = 12 + max([text_width(k) for k in rows] or [40])
    head = 64
    ncol = len(columns)
    width, height = label_w + ncol * (cell + 4), head + len(rows) * (cell + 4) + 4
    canvas = np.full((height, width, 3), 255, np.uint8)
    table = lut("inferno")
    texts: list[tuple[int, int, str]] = []
    shift = 1 if first is not None else 0
    for r, (name, maps) in enumerate(rows.items()):
        y = head + r * (cell + 4)
        texts.append((6, y + cell // 2, name))
        if first is not None:
            h, w = first.shape[:2]
            ri = np.minimum((np.arange(cell) * h) // cell, h - 1)
            ci = np.minimum((np.arange(cell) * w) // cell, w - 1)
            canvas[y:y + cell, label_w:label_w + cell] = first[ri][:, ci]
        for c0 in range(min(ncol - shift, len(maps))):
            c = c0 + shift
            m = np.abs(np.nan_to_num(np.asarray(maps[c0], np.float64)))
            top = float(m.max())
            m = m / top if top > 0 else m
            h, w = m.shape
            ri = np.minimum((np.arange(cell) * h) // cell, h - 1)
            ci = np.minimum((np.arange(cell) * w) // cell, w - 1)
            idx = np.clip(np.rint(m[ri][:, ci] * 255), 0, 255).astype(np.uint8)
            x = label_w + c * (cell + 4)
            canvas[y:y + cell, x:x + cell] = apply_lut(idx, table)
            if marks is not None and marks.get(name) == c0:
                for t in range(2):
                    canvas[y - 2 + t, x - 2:x + cell + 2] = (220, 30, 30)
                    canvas[y + cell + t, x - 2:x + cell + 2] = (220, 30, 30)
                    canvas[y - 2:y + cell + 2, x - 2 + t] = (220, 30, 30)
                    canvas[y - 2:y + cell + 2, x + cell + t] = (220, 30, 30)
    for c, title in enumerate(columns):
        x = label_w + c * (cell + 4)
        short = title if len(title) <= 12 else "…" + title[-11:]
        texts.append((x, 14 + (c % 3) * 16, short))
    return encode_png(draw_texts(canvas, texts, size=10, color=_INK))
