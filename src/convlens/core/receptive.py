"""Receptive fields of every layer, from kernel sizes, strides and dilations.

For a layer with kernel ``k``, stride ``s`` and dilation ``d`` fed by a layer
with receptive field ``r`` and jump ``j`` (distance in input pixels between
neighbouring outputs): ``r' = r + (k - 1) * d * j`` and ``j' = j * s``
(Araujo et al., "Computing Receptive Fields of Convolutional Neural Networks",
Distill 2019, https://distill.pub/2019/computing-receptive-fields/). Where
branches merge, the widest field and the largest jump win.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from .layers import LayerInfo

__all__ = ["with_receptive_fields"]


def _is_vector(layer: LayerInfo) -> bool:
    return layer.output_shape is not None and len(layer.output_shape) == 1


def with_receptive_fields(layers: Sequence[LayerInfo]) -> list[LayerInfo]:
    """Return copies of ``layers`` with ``rf_size``, ``rf_jump`` and ``global_rf`` set.

    Args:
        layers: the layer table in execution order; ``parents`` index into it.
            A layer without parents (other than the first) is taken to follow
            the layer before it.
    """
    out: list[LayerInfo] = []
    for pos, layer in enumerate(layers):
        parents = [p for p in layer.parents if 0 <= p < pos] or ([pos - 1] if pos else [])
        if not parents:
            out.append(replace(layer, rf_size=(1, 1), rf_jump=(1, 1), global_rf=False))
            continue
        feeding = [out[p] for p in parents]
        if any(f.global_rf for f in feeding) or _is_vector(layer) or layer.extra.get("global"):
            out.append(replace(layer, rf_size=None, rf_jump=None, global_rf=True))
            continue
        known = [f for f in feeding if f.rf_size is not None and f.rf_jump is not None]
        if not known:
            out.append(replace(layer, rf_size=None, rf_jump=None, global_rf=False))
            continue
        size = tuple(max(f.rf_size[a] for f in known) for a in range(2))  # type: ignore[index]
        jump = tuple(max(f.rf_jump[a] for f in known) for a in range(2))  # type: ignore[index]
        if layer.kernel_size is not None:
            k = layer.kernel_size
            s = layer.stride or (1, 1)
            d = layer.dilation or (1, 1)
            size = tuple(size[a] + (k[a] - 1) * d[a] * jump[a] for a in range(2))
            jump = tuple(jump[a] * s[a] for a in range(2))
        out.append(replace(layer, rf_size=size, rf_jump=jump, global_rf=False))  # type: ignore[arg-type]
    return out
