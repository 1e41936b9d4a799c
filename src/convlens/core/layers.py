"""The layer table's record, shared by every adapter and front end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["KINDS", "LayerInfo"]

#: Layer kinds that selections understand.
KINDS = ("input", "conv", "pool", "act", "dense", "norm", "merge", "reshape", "block", "model", "other")


@dataclass(frozen=True)
class LayerInfo:
    """One row of the layer table.

    Attributes:
        index: position in execution order, the input layer being 0.
        name: unique name; nested layers are ``outer/inner``.
        type: the framework's class name, e.g. ``Conv2D``.
        kind: one of :data:`KINDS`.
        output_shape: shape without the batch axis in the canonical layout
            (``None`` for a free dimension), or ``None`` when unknown.
        params: number of weights (trainable and not).
        kernel_shape: kernel in canonical ``(O, I, kh, kw)`` order, or ``None``.
        kernel_size: spatial window ``(kh, kw)`` of convs and pools, else ``None``.
        stride: ``(sh, sw)`` for convs and pools, else ``None``.
        dilation: ``(dh, dw)`` for convs, else ``None``.
        parents: indexes of the layers whose outputs feed this one.
        rf_size: receptive field in input pixels ``(h, w)``; ``None`` when the
            output has no spatial layout any more (dense, flatten) or is unknown.
        rf_jump: distance in input pixels between neighbouring outputs ``(h, w)``.
        global_rf: True when each output sees the whole input (dense, global pool).
        parent: index of the enclosing container's row (the nesting of module
            calls), or ``None`` at the top level; distinct from ``parents``.
        padding: ``(top, left)`` zero padding the op adds before its window
            (convs, pools, pads), or ``None`` when unknown or not applicable.
        upsample: output/input scale ``(h, w)`` of upsampling and transposed
            convs (the jump divides by it), else ``None``.
        rf_offset: input-pixel coordinate ``(h, w)`` of the top-left corner of
            unit ``(0, 0)``'s receptive box (negative with padding), or ``None``.
    """

    index: int
    name: str
    type: str
    kind: str
    output_shape: tuple[int | None, ...] | None
    params: int = 0
    kernel_shape: tuple[int, ...] | None = None
    kernel_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    dilation: tuple[int, int] | None = None
    parents: tuple[int, ...] = ()
    rf_size: tuple[int, int] | None = None
    rf_jump: tuple[int, int] | None = None
    global_rf: bool = False
    parent: int | None = None
    padding: tuple[int, int] | None = None
    upsample: tuple[float, float] | None = None
    rf_offset: tuple[float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def has_kernels(self) -> bool:
        return self.kernel_shape is not None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the public fields."""
        return {
            "index": self.index,
            "name": self.name,
            "type": self.type,
            "kind": self.kind,
            "output_shape": list(self.output_shape) if self.output_shape is not None else None,
            "params": self.params,
            "kernel_shape": list(self.kernel_shape) if self.kernel_shape else None,
            "kernel_size": list(self.kernel_size) if self.kernel_size else None,
            "stride": list(self.stride) if self.stride else None,
            "dilation": list(self.dilation) if self.dilation else None,
            "parents": list(self.parents),
            "rf_size": list(self.rf_size) if self.rf_size else None,
            "rf_jump": list(self.rf_jump) if self.rf_jump else None,
            "global_rf": self.global_rf,
            "parent": self.parent,
            "padding": list(self.padding) if self.padding is not None else None,
            "upsample": list(self.upsample) if self.upsample is not None else None,
            "rf_offset": list(self.rf_offset) if self.rf_offset is not None else None,
        }
