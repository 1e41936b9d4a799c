"""Numbers, shapes and counts as text: the one copy every table, page and message uses.

Pure Python (math only), so every layer may import it, ``core`` included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["count", "number", "pair_text", "percent", "plural", "probability", "shape_text", "sort_key"]


def shape_text(shape: Sequence[Any] | None, *, times: bool = False, free: str = "?",
               unknown: str = "?") -> str:
    """A shape as text.

    Args:
        shape: dimensions; ``None`` in it is a free dimension.
        times: ``False`` (the default): a tuple, ``"(224, 224, 3)"``, a
            one-dimensional shape keeping its comma, ``"(1000,)"``, as Python
            prints it (terminal tables, error messages). ``True``: ``"224×224×3"``
            (the HTML report, where a multiplication sign reads best).
        free: the text of a free dimension (``"None"`` in the layer table, as
            Keras prints it).
        unknown: the text when the whole shape is unknown (``shape is None``).

    Examples:
        >>> shape_text((None, 7, 7, 512), free="None")
        '(None, 7, 7, 512)'
        >>> shape_text((10,))
        '(10,)'
        >>> shape_text((28, 28, 16), times=True)
        '28×28×16'
    """
    if shape is None:
        return unknown
    dims = [free if d is None else str(d) for d in shape]
    if times:
        return "×".join(dims)
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def pair_text(pair: Sequence[int] | None, *, times: str = "x") -> str:
    """A ``(height, width)`` pair: ``"3"`` when both are equal, else ``"3x5"``; ``"-"`` when absent.

    Args:
        pair: e.g. a stride, a receptive field or a jump.
        times: the separator, ``"x"`` for terminals, ``"×"`` in the HTML report.
    """
    if not pair:
        return "-"
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}{times}{pair[1]}"


def number(value: float | None) -> str:
    """A statistic in a table cell: 4 significant digits, ``"-"`` when undefined (None, NaN, inf)."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4g}"


def sort_key(value: float | None) -> str:
    """A number as a sort key for the report's tables (6 significant digits; ``""`` sorts last)."""
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.6g}"


def percent(fraction: float) -> str:
    """A fraction in 0..1 as a percentage, rounded DOWN to 0.1: 99.97 % zeros must not read as 100.0 %.

    ``"-"`` when undefined (NaN).
    """
    if not math.isfinite(fraction):
        return "-"
    return f"{math.floor(fraction * 1000) / 10:.1f}%"


def probability(p: float) -> str:
    """A probability as text, the one format of heatmap captions, the report and the command line.

    Three decimals, or two significant digits below 0.001, where three decimals
    would read as zero: ``"0.412"``, ``"1.7e-08"``; ``"0"`` for zero and ``"-"``
    when undefined (NaN).
    """
    if not math.isfinite(p):
        return "-"
    if p == 0:
        return "0"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.2g}"


def plural(n: int, one: str, many: str) -> str:
    """``one`` when ``n == 1``, else ``many`` (the word only)."""
    return one if n == 1 else many


def count(n: int, one: str, many: str) -> str:
    """``"1 layer"``, ``"3 layers"``: the number and the word."""
    return f"{n} {plural(n, one, many)}"
