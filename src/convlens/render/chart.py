"""Line charts as inline SVG text: numbers in, markup out, no plotting library.

The timeline page draws channel health and weight change over training with
these. Every name and number that reaches the markup is escaped; the SVG
needs no script or style from outside (its look comes from the page's CSS
classes, with inline fallbacks for colours).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["PALETTE", "Chart", "line_chart", "nice_ticks"]

#: Series colours (Tableau 10, as matplotlib's default cycle), repeated past ten series.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass
class Chart:
    """A drawn chart.

    Attributes:
        svg: the ``<svg>`` element as text (escaped, self-contained).
        x_pixels: for each x value given, its horizontal position in the SVG's
            own coordinates (the page moves a cursor line to it).
        colors: the colour of each series, by name.
    """

    svg: str
    x_pixels: list[float]
    colors: dict[str, str] = field(default_factory=dict)


def _fmt(v: float) -> str:
    """A tick or tooltip number in at most ~6 characters."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.3g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]`` (steps of 1, 2 or 5 times a power of ten).

    Reference: Heckbert, "Nice numbers for graph labels", Graphics Gems (1990).

    Args:
        lo, hi: the range; ``hi > lo``.
        n: roughly how many ticks.

    Returns:
        Ascending ticks, the first ``<= lo`` and the last ``>= hi``.
    """
    span = hi - lo
    if not (math.isfinite(span) and span > 0):
        return [lo]
    raw = span / max(n - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    f = raw / power  # Heckbert's "nice numbers": the step nearest the raw one
    step = power * (1 if f < 1.5 else 2 if f < 3 else 5 if f < 7 else 10)
    first = math.floor(lo / step + 1e-9) * step
    ticks = []
    k = 0
    while True:
        t = first + k * step
        ticks.append(round(t, 12))
        if t >= hi - 1e-9 * step:
            return ticks
        k += 1


def line_chart(x: Sequence[float], series: Mapping[str, Sequence[float | None]], *, title: str,
               x_label: str = "step", y_label: str = "", log: bool = False,
               y_range: tuple[float, float] | None = None, threshold: float | None = None,
               percent: bool = False, width: int = 640, height: int = 260,
               legend_width: int = 150, css_class: str = "cl-chart") -> Chart:
    """One line per series over shared x values, with axes, a legend and point tooltips.

    Args:
        x: the x value of each point (training steps), ascending.
        series: name -> one y value per x; ``None`` or a non-finite value
            (or, on a log scale, a value <= 0) leaves a gap.
        title: drawn above the plot.
        x_label, y_label: axis titles.
        log: logarithmic y axis (base 10).
        y_range: fixed ``(lo, hi)`` for a linear axis; default from the data.
        threshold: a dashed horizontal line at this y value.
        percent: y values are fractions shown as percentages.
        width, height: the SVG's size in pixels, legend included.
        legend_width: pixels to the right of the plot for the legend.
        css_class: class of the ``<svg>`` element.

    Returns:
        A :class:`Chart`.
    """
    e = html.escape
    left, right, top, bottom = 58, legend_width + 12, 28, 40
    pw, ph = max(width - left - right, 10), max(height - top - bottom, 10)
    xs = [float(v) for v in x]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1

    def ok(v: float | None) -> bool:
        return v is not None and math.isfinite(v) and (not log or v > 0)

    values = [float(v) for ys in series.values() for v in ys if ok(v)]  # type: ignore[arg-type]
    if log:
        lo_v, hi_v = (min(values), max(values)) if values else (1e-3, 1.0)
        lo_e, hi_e = math.floor(math.log10(lo_v)), math.ceil(math.log10(hi_v))
        if hi_e == lo_e:
            hi_e += 1
        ticks = [10.0 ** k for k in range(lo_e, hi_e + 1)]
        if len(ticks) > 7:  # every other power when the span is wide
            ticks = ticks[::math.ceil(len(ticks) / 6)]
        y_lo, y_hi = math.log10(10.0 ** lo_e), math.log10(10.0 ** hi_e)

        def ty(v: float) -> float:
            return top + ph - (math.log10(v) - y_lo) / (y_hi - y_lo) * ph
    else:
        if y_range is not None:
            y_lo, y_hi = float(y_range[0]), float(y_range[1])
        else:
            y_lo = min([*values, 0.0]) if values else 0.0
            y_hi = max(values) if values else 1.0
        if threshold is not None and y_range is None:
            y_hi = max(y_hi, threshold)
        if y_hi <= y_lo:
            y_hi = y_lo + 1
        ticks = nice_ticks(y_lo, y_hi)
        if y_range is None:
            y_lo, y_hi = min(ticks[0], y_lo), max(ticks[-1], y_hi)

        def ty(v: float) -> float:
            return top + ph - (v - y_lo) / (y_hi - y_lo) * ph

    def tx(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * pw

    def label(v: float) -> str:
        return f"{100 * v:.0f}%" if percent else _fmt(v)

    parts = [(f'<svg class="{e(css_class)}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
              f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{e(title)}">'),
             f'<text class="cl-chart-title" x="{left}" y="16" font-size="13" font-weight="600">{e(title)}</text>']
    # grid lines and y ticks
    for t in ticks:
        y = ty(t)
        parts.append(f'<line class="cl-grid" x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#e4e4e4"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
                     f'{e(label(t))}</text>')
    # x ticks: the steps themselves when few, else round values
    x_ticks = sorted(set(xs)) if 0 < len(set(xs)) <= 8 else nice_ticks(x_lo, x_hi, 6)
    for t in x_ticks:
        if x_lo - 1e-9 <= t <= x_hi + 1e-9:
            parts.append(f'<text x="{tx(t):.1f}" y="{top + ph + 16}" text-anchor="middle" font-size="11">'
                         f'{e(_fmt(t))}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle" font-size="11">'
                 f'{e(x_label)}</text>')
    if y_label:
        parts.append(f'<text transform="translate(13 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
                     f'font-size="11">{e(y_label)}</text>')
    if threshold is not None and (not log or threshold > 0):
        y = ty(threshold)
        parts.append(f'<line class="cl-threshold" x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#c00" stroke-dasharray="5 4"/>')
        parts.append(f'<text x="{left + pw - 4}" y="{y - 4:.1f}" text-anchor="end" font-size="10" '
                     f'fill="#c00">threshold {e(label(threshold))}</text>')
    colors: dict[str, str] = {}
    for k, (name, ys) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        colors[name] = color
        runs: list[list[tuple[float, float, float, float]]] = [[]]
        for xv, yv in zip(xs, ys):
            if ok(yv):
                runs[-1].append((tx(xv), ty(float(yv)), xv, float(yv)))  # type: ignore[arg-type]
            elif runs[-1]:
                runs.append([])
        parts.append(f'<g class="cl-series" data-series="{e(name)}">')
        for run in runs:
            if len(run) > 1:
                pts = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in run)
                parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
            for px, py, xv, yv in run:
                parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}">'
                             f'<title>{e(name)}: {e(label(yv))} at {e(x_label)} {e(_fmt(xv))}</title></circle>')
        parts.append("</g>")
    # legend
    lx = left + pw + 14
    for k, name in enumerate(colors):
        y = top + 6 + 16 * k
        if y > height - 8:
            parts.append(f'<text x="{lx}" y="{y}" font-size="11">+{len(colors) - k} more</text>')
            break
        short = name if len(name) <= 20 else name[:9] + "…" + name[-10:]
        parts.append(f'<rect x="{lx}" y="{y - 9}" width="10" height="10" fill="{colors[name]}"/>'
                     f'<text x="{lx + 15}" y="{y}" font-size="11"><title>{e(name)}</title>{e(short)}</text>')
    x_pixels = [round(tx(v), 1) for v in xs]
    first = x_pixels[0] if x_pixels else left
    parts.append(f'<line class="cl-cursor" x1="{first}" x2="{first}" y1="{top}" y2="{top + ph}" '
                 'stroke="#333" stroke-width="1.5" stroke-dasharray="2 2"/>')
    parts.append("</svg>")
    return Chart(svg="".join(parts), x_pixels=x_pixels, colors=colors)
