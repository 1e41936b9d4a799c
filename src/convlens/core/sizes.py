"""Which input sizes a network can take, for error messages that say how to pick one.

A network that downsamples by a total stride of 32 and then upsamples again
(a U-Net, a text or object detector) adds or concatenates maps of the two
paths, which only line up when the input's sides are multiples of 32. The
total stride is the largest receptive-field jump in the layer table (see
:mod:`convlens.core.receptive`).
"""

from __future__ import annotations

from collections.abc import Sequence

from .layers import LayerInfo

__all__ = ["DEFAULT_MULTIPLE", "nearest_multiple", "size_hint", "total_stride"]

#: What to suggest when the table does not tell the total stride: most detectors need it.
DEFAULT_MULTIPLE = 32


def total_stride(layers: Sequence[LayerInfo]) -> tuple[int, int] | None:
    """The largest jump ``(h, w)`` of any layer, or ``None`` when no layer downsamples or none is known."""
    jumps = [layer.rf_jump for layer in layers if layer.rf_jump is not None]
    if not jumps:
        return None
    best = (max(int(j[0]) for j in jumps), max(int(j[1]) for j in jumps))
    return best if max(best) > 1 else None


def nearest_multiple(value: int, multiple: int) -> int:
    """The multiple of ``multiple`` nearest to ``value``, at least ``multiple`` itself."""
    multiple = max(int(multiple), 1)
    return max(multiple, round(value / multiple) * multiple)


def size_hint(layers: Sequence[LayerInfo], height: int, width: int) -> str:
    """A phrase saying how to pick an input size, after an error at ``height`` x ``width``.

    Args:
        layers: the model's layer table (its jumps give the total stride).
        height: the height the model failed on.
        width: the width the model failed on.

    Returns:
        e.g. "its layers downsample by 32 in all, so it may need sides that are
        multiples of 32: try --size 96x160 (size=(96, 160) in Python)"; when no
        layer downsamples (or the table does not say), a general phrase that
        still names a multiple of 32.
    """
    stride = total_stride(layers)
    if stride is not None:
        sh, sw = stride
        h, w = nearest_multiple(height, sh), nearest_multiple(width, sw)
        by = f"{sh}" if sh == sw else f"{sh}x{sw}"
        return (f"its layers downsample by {by} in all, so it may need sides that are multiples of {by}: "
                f"try --size {h}x{w} (size=({h}, {w}) in Python)")
    m = DEFAULT_MULTIPLE
    h, w = nearest_multiple(height, m), nearest_multiple(width, m)
    return (f"if it needs another input size, pass --size HxW (size=(H, W) in Python); if it needs "
            f"sides that are multiples of {m}, as detectors often do, try --size with a multiple of {m} "
            f"such as {h}x{w}")
