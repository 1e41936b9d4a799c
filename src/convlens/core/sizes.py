"""Which input sizes a network can take, for error messages that say how to pick one.

Read from the layer table's receptive-field jumps (see :mod:`convlens.core.receptive`):

* A network that downsamples to a jump of ``J`` input pixels, upsamples that
  map again and merges it (adds, concatenates, multiplies) with a map of
  another path (a U-Net, an FPN, YOLO's neck) needs the two maps to have the
  same size, which they only do for every input when its sides are multiples
  of ``J`` (a side of 300 gives a 10-wide map at jump 32, upsampled to 20,
  against 19 at jump 16). The size multiple is the least common multiple of
  the jumps at the inputs of the upsamplings whose maps are merged so
  (:func:`size_multiple`). Maps that are downsampled further and never come
  back (RetinaNet's P6 and P7 at jumps 64 and 128, a classifier's last
  stage) constrain nothing.
* Without such a merge, the guess is the network's total stride
  (:func:`total_stride`): the largest jump of a row that still holds a map of
  the image. Rows past a flatten or a reshape into a sequence or a vector (a
  detection head's ``(anchors, 4 + classes)`` tensor), global rows and rows
  whose geometry is unknown do not count: their positions are not the image's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .layers import LayerInfo

__all__ = ["DEFAULT_MULTIPLE", "nearest_multiple", "size_hint", "size_multiple", "total_stride"]

#: What to suggest when the table does not tell the total stride: most detectors need it.
DEFAULT_MULTIPLE = 32

#: Rows between an upsampling and the merge it feeds that keep the map's size (a conv, a norm, an
#: activation, a block) are followed this far.
_MAX_WALK = 64


def _holds_map(layer: LayerInfo) -> bool:
    """Whether a row's output is still a 2-D map of the image with a known jump."""
    if layer.rf_jump is None or layer.global_rf:
        return False
    shape = layer.output_shape
    return shape is None or len(shape) >= 3  # (H, W, C); a vector or a (positions, C) sequence is not


def _jump(layer: LayerInfo) -> tuple[int, int] | None:
    """A row's whole jump ``(h, w)``, or ``None`` (unknown, or a fraction after an upsampling)."""
    if layer.rf_jump is None:
        return None
    jh, jw = layer.rf_jump
    if float(jh) != int(jh) or float(jw) != int(jw) or min(jh, jw) < 1:
        return None
    return int(jh), int(jw)


def total_stride(layers: Sequence[LayerInfo]) -> tuple[int, int] | None:
    """The largest jump ``(h, w)`` of a row that holds a map of the image, or ``None`` when no such row
    downsamples or none is known (see the module docstring)."""
    jumps = [j for layer in layers if _holds_map(layer) and (j := _jump(layer)) is not None]
    if not jumps:
        return None
    best = (max(j[0] for j in jumps), max(j[1] for j in jumps))
    return best if max(best) > 1 else None


def _parents(layers: Sequence[LayerInfo], pos: int) -> tuple[int, ...]:
    """A row's inputs as :func:`convlens.core.receptive.with_receptive_fields` reads them."""
    found = tuple(p for p in layers[pos].parents if 0 <= p < pos)
    return found or ((pos - 1,) if pos else ())


def _merged(layers: Sequence[LayerInfo], up: int) -> bool:
    """Whether upsampling row ``up``'s map (or a map made from it at the same size) meets a map of
    another path in a row with several inputs."""
    chain = {up}
    for pos in range(up + 1, min(len(layers), up + 1 + _MAX_WALK)):
        parents = _parents(layers, pos)
        if not chain.intersection(parents):
            continue
        if any(p not in chain for p in parents):
            return True  # an add, a concatenation or a product with another path
        layer = layers[pos]
        if layer.upsample is None and layer.stride in (None, (1, 1)):
            chain.add(pos)  # the same map, passed on
    return False


def size_multiple(layers: Sequence[LayerInfo]) -> tuple[tuple[int, int], bool] | None:
    """What the input's sides should be multiples of, read from the table's jumps.

    Args:
        layers: a layer table with receptive fields (its ``rf_jump`` and ``upsample`` fields).

    Returns:
        ``((h, w), merged)``: with ``merged`` True, the least common multiple of
        the jumps at the inputs of upsamplings whose maps are merged with
        another path's (the sides they need); False, the total stride
        (:func:`total_stride`, a guess). ``None`` when neither is known.
    """
    needs: list[tuple[int, int]] = []
    for pos, layer in enumerate(layers):
        if layer.upsample is None or not _merged(layers, pos):
            continue
        for p in _parents(layers, pos):
            j = _jump(layers[p]) if _holds_map(layers[p]) else None
            if j is not None:
                needs.append(j)
    if needs:
        best = (math.lcm(*(j[0] for j in needs)), math.lcm(*(j[1] for j in needs)))
        if max(best) > 1:
            return best, True
    stride = total_stride(layers)
    return (stride, False) if stride is not None else None


def nearest_multiple(value: int, multiple: int) -> int:
    """The multiple of ``multiple`` nearest to ``value``, at least ``multiple`` itself."""
    multiple = max(int(multiple), 1)
    return max(multiple, round(value / multiple) * multiple)


def size_hint(layers: Sequence[LayerInfo], height: int, width: int) -> str:
    """A phrase saying how to pick an input size, after an error at ``height`` x ``width``.

    Args:
        layers: the model's layer table (see :func:`size_multiple`).
        height: the height the model failed on.
        width: the width the model failed on.

    Returns:
        e.g. "it merges maps of its layers at a stride of 32 with upsampled ones,
        so it needs sides that are multiples of 32: try --size 96x160
        (size=(96, 160) in Python)", the nearest such size; without such a
        merge "its layers downsample by 32 in all, so it may need ..."; when no
        layer downsamples (or the table does not say), a general phrase that
        still names a multiple of 32.
    """
    found = size_multiple(layers)
    if found is not None:
        (sh, sw), merged = found
        h, w = nearest_multiple(height, sh), nearest_multiple(width, sw)
        by = f"{sh}" if sh == sw else f"{sh}x{sw}"
        why = (f"it upsamples maps of stride {by} and merges them with another path's, so it needs"
               if merged else f"its layers downsample by {by} in all, so it may need")
        return f"{why} sides that are multiples of {by}: try --size {h}x{w} (size=({h}, {w}) in Python)"
    m = DEFAULT_MULTIPLE
    h, w = nearest_multiple(height, m), nearest_multiple(width, m)
    return (f"if it needs another input size, pass --size HxW (size=(H, W) in Python); if it needs "
            f"sides that are multiples of {m}, as detectors often do, try --size with a multiple of {m} "
            f"such as {h}x{w}")
