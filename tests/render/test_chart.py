"""Inline SVG line charts: exact tick values, pixel positions, gaps and escaping."""

from __future__ import annotations

import re

import pytest

from convlens.render.chart import PALETTE, line_chart, nice_ticks


@pytest.mark.parametrize("lo, hi, n, expected", [
    (0.0, 1.0, 5, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),  # raw step 0.25: the nearest nice one is 0.2
    (0.0, 0.37, 5, [0.0, 0.1, 0.2, 0.3, 0.4]),
    (16.0, 48.0, 6, [15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0]),
    (-3.0, 7.0, 5, [-4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0]),
    (2.0, 2.0, 5, [2.0]),
])
def test_nice_ticks(lo, hi, n, expected):
    assert nice_ticks(lo, hi, n) == pytest.approx(expected)


def test_points_sit_where_the_scales_put_them():
    chart = line_chart([0, 5, 10], {"a": [0.0, 0.5, 1.0]}, title="t", y_range=(0.0, 1.0),
                       width=600, height=260, legend_width=130)
    # plot area: x from 58 to 600 - 142 = 458, y from 28 to 260 - 40 = 220
    assert chart.x_pixels == [58.0, 258.0, 458.0]
    circles = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', chart.svg)
    assert circles == [("58.0", "220.0"), ("258.0", "124.0"), ("458.0", "28.0")]
    assert chart.colors == {"a": PALETTE[0]}
    assert chart.svg.count("<polyline") == 1 and 'class="cl-cursor" x1="58.0"' in chart.svg


def test_missing_values_leave_gaps_and_a_log_axis_skips_non_positive_ones():
    chart = line_chart([1, 2, 3, 4], {"a": [1.0, None, 3.0, float("nan")], "b": [0.0, 0.01, 0.1, 1.0]},
                       title="t", log=True)
    a = re.search(r'data-series="a">(.*?)</g>', chart.svg).group(1)
    assert a.count("<circle") == 2 and "<polyline" not in a  # two lone points, no line across the gap
    b = re.search(r'data-series="b">(.*?)</g>', chart.svg).group(1)
    assert b.count("<circle") == 3 and b.count("<polyline") == 1  # 0 has no place on a log axis
    ticks = re.findall(r'text-anchor="end" font-size="11">([^<]+)</text>', chart.svg)
    assert ticks == ["0.01", "0.1", "1", "10"]


def test_names_and_titles_are_escaped_and_the_threshold_drawn():
    evil = "<script>alert(1)</script>"
    chart = line_chart([0, 1], {evil: [0.2, 0.7]}, title=evil, percent=True, y_range=(0, 1), threshold=0.5)
    assert "<script>" not in chart.svg and "&lt;script&gt;" in chart.svg
    assert 'class="cl-threshold"' in chart.svg and "threshold 50%" in chart.svg
    assert ">70%</title>" not in chart.svg and "70% at step 1" in chart.svg
