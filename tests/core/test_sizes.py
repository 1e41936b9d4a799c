"""How an error about the input size says which size to pick."""

from __future__ import annotations

from convlens.core.layers import LayerInfo
from convlens.core.sizes import nearest_multiple, size_hint, total_stride


def _row(index: int, jump: tuple[int, int] | None) -> LayerInfo:
    return LayerInfo(index=index, name=f"l{index}", type="Conv", kind="conv", output_shape=None, rf_jump=jump)


def test_total_stride_is_the_largest_jump():
    assert total_stride([_row(0, (1, 1)), _row(1, (4, 4)), _row(2, (32, 32)), _row(3, (8, 8))]) == (32, 32)
    assert total_stride([_row(0, (1, 1)), _row(1, (2, 4))]) == (2, 4)
    assert total_stride([_row(0, (1, 1)), _row(1, None)]) is None
    assert total_stride([]) is None


def test_nearest_multiple_is_at_least_the_multiple():
    assert nearest_multiple(100, 32) == 96
    assert nearest_multiple(150, 32) == 160
    assert nearest_multiple(3, 32) == 32
    assert nearest_multiple(64, 32) == 64
    assert nearest_multiple(7, 1) == 7


def test_hint_from_the_table():
    hint = size_hint([_row(0, (1, 1)), _row(1, (32, 32))], 100, 150)
    assert hint == ("its layers downsample by 32 in all, so it may need sides that are multiples of 32: "
                    "try --size 96x160 (size=(96, 160) in Python)")
    assert "multiples of 8x16: try --size 96x144" in size_hint([_row(1, (8, 16))], 100, 150)


def test_hint_without_a_known_stride_suggests_32():
    hint = size_hint([_row(0, (1, 1))], 300, 451)
    assert hint == ("if it needs another input size, pass --size HxW (size=(H, W) in Python); if it needs "
                    "sides that are multiples of 32, as detectors often do, try --size with a multiple of 32 "
                    "such as 288x448")
