"""The one copy of each text helper: shapes, pairs, numbers, percentages, counts."""

from __future__ import annotations

import math

from convlens.core.text import count, number, pair_text, percent, plural, shape_text, sort_key


def test_shapes_as_tuples_and_with_times():
    assert shape_text((None, 7, 7, 512), free="None") == "(None, 7, 7, 512)"
    assert shape_text((10,)) == "(10,)" and shape_text(()) == "()"
    assert shape_text((28, None, 16), times=True) == "28×?×16"
    assert shape_text(None) == "?" and shape_text(None, unknown="(unknown shape)") == "(unknown shape)"


def test_pairs():
    assert pair_text((3, 3)) == "3" and pair_text((3, 5)) == "3x5" and pair_text((3, 5), times="×") == "3×5"
    assert pair_text(None) == "-" and pair_text(()) == "-"


def test_numbers_and_sort_keys():
    assert number(0.123456) == "0.1235" and number(12345678.0) == "1.235e+07"
    assert number(None) == "-" and number(math.nan) == "-" and number(math.inf) == "-"
    assert sort_key(1 / 3) == "0.333333" and sort_key(math.nan) == ""


def test_percent_rounds_down():
    assert percent(0.9997) == "99.9%"  # never 100.0% unless every value is
    assert percent(1.0) == "100.0%" and percent(0.5) == "50.0%" and percent(0.0) == "0.0%"
    assert percent(math.nan) == "-"


def test_plural_and_count():
    assert plural(1, "is", "are") == "is" and plural(0, "is", "are") == "are"
    assert count(1, "layer", "layers") == "1 layer" and count(3, "layer", "layers") == "3 layers"
