"""Receptive fields of every layer: exact boxes from kernels, strides, dilations, padding and upsampling.

Along each axis a layer's field is three numbers: its ``size`` ``S``, its
``jump`` ``J`` (input pixels between neighbouring units) and its ``offset``
``O`` (the input-pixel edge coordinate where unit 0's box starts, negative
where padding reaches outside the image). Unit ``i``'s box is
``[O + i*J, O + i*J + S)``: pixel ``p`` covers ``[p, p + 1)``, so the input
itself is ``S = 1, J = 1, O = 0``.

A conv or pool with kernel ``k``, stride ``s``, dilation ``d`` and leading
zero padding ``p`` reads units ``i*s - p + t*d`` (``t < k``) of its input, so
``S' = S + (k - 1)*d*J``, ``J' = s*J``, ``O' = O - p*J`` (Araujo et al.,
"Computing Receptive Fields of Convolutional Neural Networks", Distill 2019,
https://distill.pub/2019/computing-receptive-fields/). A pad row is a 1x1 window
with padding (a crop is negative padding).

Upsampling by ``u`` (``LayerInfo.upsample``, output/input) divides the jump:
``J' = J/u``. Output unit ``o`` of an interpolation reads input units
``floor(o/u + c) - p ... + k - 1`` (``k`` taps in ``kernel_size``: 1 nearest,
2 linear, 4 cubic; ``p`` taps before, in ``padding``; ``c`` the sampling shift,
``extra["sample_offset"]``, by default 0 for one tap and ``0.5/u - 0.5``,
half-pixel centres, for more). A transposed conv (kind ``conv``) is a conv with
``padding`` on the input stuffed with ``u - 1`` zeros between units (its
``padding`` is that conv's, ``(k - 1)*d - p`` for PyTorch's ``padding=p``).
Those boxes are not evenly spaced (two neighbouring outputs of a nearest x2
upsampling read the same input unit), so the table keeps the tightest evenly
spaced boxes that hold every unit's box: the *envelope*, at most a jump wider
than the widest true box. Without upsampling the boxes are exact.

Where branches merge (addition, concatenation, multiplication) a unit's box is
the union of its inputs' boxes for that unit, so branches must agree on the
jump. A unit fed by anything global (global pooling, attention, a dense layer,
a squeeze-excitation gate) sees the whole input: ``global_rf``.

Anything that cannot be derived (a layer that changes the map's size without
saying how, branches with different jumps, an interpolation without its taps)
is unknown: ``rf_size`` is ``None`` and ``global_rf`` False, which tables show
as ``?``; a padding the adapter could not read leaves the size and jump exact
and only ``rf_offset`` unknown.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from .layers import LayerInfo

__all__ = ["resample_geometry", "unit_box", "with_receptive_fields"]

#: Comparisons of jumps and offsets, which are sums of products of small rationals.
_EPS = 1e-9
#: The most output units one period of an upsampling may span (scales like 1000/999 are not tracked).
_MAX_PERIOD = 4096


@dataclass(frozen=True)
class _Field:
    """One layer's field along both axes (see the module docstring); ``offset`` ``None``: unknown."""

    size: tuple[float, float]
    jump: tuple[float, float]
    offset: tuple[float, float] | None


_INPUT = _Field((1.0, 1.0), (1.0, 1.0), (0.0, 0.0))


def _is_vector(layer: LayerInfo) -> bool:
    return layer.output_shape is not None and len(layer.output_shape) == 1


def _spatial(layer: LayerInfo) -> tuple[int | None, int | None] | None:
    """``(H, W)`` of a layer's map (``(1, L)`` for a sequence), ``None`` when unknown or a vector."""
    shape = layer.output_shape
    if shape is None or len(shape) < 2:
        return None
    if len(shape) == 2:
        return (1, shape[0])
    return (shape[-3], shape[-2])


def _same_map(a: LayerInfo, b: LayerInfo) -> bool:
    """Whether two rows' maps have the same size, as far as both are known."""
    sa, sb = _spatial(a), _spatial(b)
    if sa is None or sb is None:
        return True
    return all(x is None or y is None or x == y for x, y in zip(sa, sb))


def _last_nested(layers: Sequence[LayerInfo]) -> dict[int, int]:
    """Row -> the last earlier row nested in it (through ``parent`` links): a container's output."""
    last: dict[int, int] = {}
    for r, layer in enumerate(layers):
        p, depth = layer.parent, 0
        while p is not None and r < p < len(layers) and depth < len(layers):
            last[p] = r  # rows come in order, so the last write is the latest row
            p, depth = layers[p].parent, depth + 1
    return last


def with_receptive_fields(layers: Sequence[LayerInfo]) -> list[LayerInfo]:
    """Return copies of ``layers`` with ``rf_size``, ``rf_jump``, ``rf_offset`` and ``global_rf`` set.

    Args:
        layers: the layer table in execution order; ``parents`` index into it.
            A layer without parents (other than the first) is taken to follow
            the layer before it. A row with rows nested in it (``parent``
            links: a container module) takes its input from the last of them,
            the one that made its output.

    Returns:
        the rows with their fields (see the module docstring): sizes and
        jumps are ints where whole, offsets too; unknown fields are ``None``
        with ``global_rf`` False.
    """
    fields: list[_Field | None] = []
    glob: list[bool] = []
    out: list[LayerInfo] = []
    nested = _last_nested(layers)
    for pos, layer in enumerate(layers):
        inner = nested.get(pos)
        parents = [p for p in layer.parents if 0 <= p < pos] or ([pos - 1] if pos else [])
        sources = [inner] if inner is not None else parents
        field: _Field | None
        is_global = False
        if not sources:
            field = _INPUT
        elif any(glob[s] for s in sources) or _is_vector(layer) or layer.extra.get("global"):
            field, is_global = None, True
        else:
            known = [fields[s] for s in sources]
            field = None
            if all(f is not None for f in known):
                merged = _union([f for f in known if f is not None])
                if merged is not None:
                    field = _apply(layer, merged, [layers[s] for s in sources])
        fields.append(field)
        glob.append(is_global)
        out.append(_with_field(layer, field, is_global))
    return out


def _union(fields: Sequence[_Field]) -> _Field | None:
    """The field of a unit fed by ``fields`` at the same position: their boxes' union; ``None``: jumps differ."""
    first = fields[0]
    if len(fields) == 1:
        return first
    if any(abs(f.jump[a] - first.jump[a]) > _EPS for f in fields for a in range(2)):
        return None
    if any(f.offset is None for f in fields):
        # the boxes' union depends on where each starts: only equal sizes are sure
        if all(f.size == first.size for f in fields):
            return _Field(first.size, first.jump, None)
        return None
    starts = [min(f.offset[a] for f in fields if f.offset is not None) for a in range(2)]
    ends = [max(f.offset[a] + f.size[a] for f in fields if f.offset is not None) for a in range(2)]
    return _Field((ends[0] - starts[0], ends[1] - starts[1]), first.jump, (starts[0], starts[1]))


def _apply(layer: LayerInfo, f: _Field, sources: Sequence[LayerInfo]) -> _Field | None:
    """The field after ``layer``'s own operation, given the field of what feeds it."""
    if layer.upsample is not None:
        return _upsampled(layer, f)
    if layer.kernel_size is None and layer.stride is None and layer.padding is None:
        # element-wise, normalisation, activation, merge: the map keeps its size, or something unsaid happened
        return f if all(_same_map(layer, s) for s in sources) else None
    k = layer.kernel_size or (1, 1)
    s = layer.stride or (1, 1)
    d = layer.dilation or (1, 1)
    size = (f.size[0] + (k[0] - 1) * d[0] * f.jump[0], f.size[1] + (k[1] - 1) * d[1] * f.jump[1])
    jump = (f.jump[0] * s[0], f.jump[1] * s[1])
    offset = None
    if f.offset is not None and layer.padding is not None:
        p = layer.padding
        offset = (f.offset[0] - p[0] * f.jump[0], f.offset[1] - p[1] * f.jump[1])
    return _Field(size, jump, offset)


def _upsampled(layer: LayerInfo, f: _Field) -> _Field | None:
    """The envelope field after an interpolation or a transposed conv (see the module docstring)."""
    assert layer.upsample is not None
    sizes, jumps, offsets = [], [], []
    for a in range(2):
        u = Fraction(float(layer.upsample[a])).limit_denominator(1000)
        if u <= 0 or u.numerator > _MAX_PERIOD:
            return None
        k = layer.kernel_size[a] if layer.kernel_size is not None else None
        p = layer.padding[a] if layer.padding is not None else None
        reach = _transposed_reach(layer, a, u, k, p) if layer.kind == "conv" else _sampled_reach(layer, a, u, k, p)
        if reach is None:
            return None
        lo_fn, hi_fn = reach
        # lo(o) - o/u and hi(o) - o/u repeat every u.numerator outputs
        lo = min(lo_fn(o) - Fraction(o) / u for o in range(u.numerator))
        hi = max(hi_fn(o) - Fraction(o) / u for o in range(u.numerator))
        if f.offset is not None:
            offsets.append(f.offset[a] + float(lo) * f.jump[a])
        sizes.append(f.size[a] + float(hi - lo) * f.jump[a])
        jumps.append(f.jump[a] / float(u))
    return _Field((sizes[0], sizes[1]), (jumps[0], jumps[1]),
                  (offsets[0], offsets[1]) if len(offsets) == 2 else None)


def _transposed_reach(layer: LayerInfo, a: int, u: Fraction, k: int | None,
                      p: int | None) -> tuple[Callable[[int], int], Callable[[int], int]] | None:
    """A transposed conv's output ``o`` reads input units ``i`` with ``i*u`` in ``[o - p, o - p + (k-1)*d]``."""
    if k is None or p is None or u.denominator != 1:
        return None
    s = u.numerator
    span = (k - 1) * (layer.dilation[a] if layer.dilation is not None else 1)
    return (lambda o: -((p - o) // s)), (lambda o: (o - p + span) // s)


def _sampled_reach(layer: LayerInfo, a: int, u: Fraction, k: int | None,
                   p: int | None) -> tuple[Callable[[int], int], Callable[[int], int]] | None:
    """An interpolation's output ``o`` samples ``x = o/u + c``: units ``floor(x) - p ... + k - 1``, or
    ``x`` alone where it falls on a unit and the kernel interpolates (``k > 1``: linear, cubic)."""
    if k is None:
        return None
    before = p or 0
    shift = layer.extra.get("sample_offset")
    c = Fraction(float(shift[a])).limit_denominator(1 << 20) if shift is not None \
        else (Fraction(0) if k == 1 else Fraction(1, 2) / u - Fraction(1, 2))

    def lo(o: int) -> int:
        x = Fraction(o) / u + c
        return int(x) if k > 1 and x.denominator == 1 else math.floor(x) - before

    def hi(o: int) -> int:
        x = Fraction(o) / u + c
        return int(x) if k > 1 and x.denominator == 1 else math.floor(x) - before + k - 1

    return lo, hi


#: Interpolation modes by their names across frameworks -> (taps, taps before ``floor(x)``).
_MODES = {"nearest": (1, 0), "linear": (2, 0), "bilinear": (2, 0), "trilinear": (2, 0),
          "cubic": (4, 1), "bicubic": (4, 1)}
#: Nearest-neighbour rounding -> what it adds to ``x`` before ``floor``.
_ROUNDING = {"floor": Fraction(0), "round_prefer_floor": Fraction(1, 2) - Fraction(1, 1 << 20),
             "round_prefer_ceil": Fraction(1, 2), "ceil": 1 - Fraction(1, 1 << 20)}


def resample_geometry(mode: str, in_hw: Sequence[int | None], out_hw: Sequence[int | None], *,
                      scale: Sequence[float] | None = None, coordinates: str = "half_pixel",
                      rounding: str = "floor") -> dict[str, Any] | None:
    """The layer-table fields of a resize, for :func:`with_receptive_fields`, or ``None`` if not derivable.

    Args:
        mode: ``"nearest"``, ``"linear"``/``"bilinear"`` or ``"cubic"``/``"bicubic"``.
        in_hw, out_hw: the map's ``(H, W)`` before and after (``None`` where free).
        scale: output/input scale per axis where the op is given one (PyTorch's
            ``scale_factor``, ONNX's ``scales``): it, not the sizes' ratio, maps
            coordinates; default ``out/in``.
        coordinates: how output ``o`` maps to input ``x``: ``"half_pixel"``
            (``(o + 0.5)/u - 0.5``: PyTorch ``align_corners=False``, TF2,
            ONNX's default), ``"asymmetric"`` (``o/u``: PyTorch's and Keras's
            nearest, TF1), ``"align_corners"`` (``o*(n - 1)/(m - 1)``).
        rounding: for nearest, how ``x`` becomes a unit: ``"floor"``,
            ``"round_prefer_floor"``, ``"round_prefer_ceil"``, ``"ceil"``.

    Returns:
        ``{"kernel_size", "padding", "upsample", "extra": {"sample_offset"}}``
        to set on the row.
    """
    taps = _MODES.get(mode.lower())
    if taps is None or len(in_hw) != 2 or len(out_hw) != 2:
        return None
    ups: list[Fraction] = []
    shifts: list[Fraction] = []
    for a in range(2):
        n, m = in_hw[a], out_hw[a]
        if coordinates == "align_corners":
            if n is None or m is None or m < 2 or n < 1:
                return None
            u, shift = Fraction(m - 1, max(n - 1, 1)) if n > 1 else Fraction(m), Fraction(0)
        else:
            if scale is not None and scale[a] > 0:
                u = Fraction(float(scale[a])).limit_denominator(1000)
            elif n and m:
                u = Fraction(m, n)
            else:
                return None
            if coordinates == "half_pixel":
                shift = Fraction(1, 2) / u - Fraction(1, 2)
            elif coordinates == "asymmetric":
                shift = Fraction(0)
            else:
                return None
        if taps[0] == 1:
            if rounding not in _ROUNDING:
                return None
            shift += _ROUNDING[rounding]
        ups.append(u)
        shifts.append(shift)
    return {"kernel_size": (taps[0], taps[0]), "padding": (taps[1], taps[1]),
            "upsample": (float(ups[0]), float(ups[1])),
            "extra": {"sample_offset": (float(shifts[0]), float(shifts[1]))}}


def _whole(values: tuple[float, float]) -> tuple[float, float]:
    """Whole numbers as ints (tables print ``3``, not ``3.0``); others rounded off float noise."""
    return tuple(int(round(v)) if abs(v - round(v)) < 1e-6 else round(v, 6) for v in values)  # type: ignore[return-value]


def _with_field(layer: LayerInfo, field: _Field | None, is_global: bool) -> LayerInfo:
    if field is None:
        return replace(layer, rf_size=None, rf_jump=None, rf_offset=None, global_rf=is_global)
    return replace(layer, rf_size=_whole(field.size), rf_jump=_whole(field.jump),  # type: ignore[arg-type]
                   rf_offset=_whole(field.offset) if field.offset is not None else None, global_rf=False)


def unit_box(layer: LayerInfo, i: int, j: int) -> tuple[float, float, float, float] | None:
    """The input box of unit ``(i, j)`` of ``layer``'s map, from its table row.

    Args:
        layer: a row of a table made by :func:`with_receptive_fields`.
        i, j: the unit's row and column in the map (``(0, l)`` for a 1-D map).

    Returns:
        ``(y0, x0, y1, x1)`` in input-pixel edge coordinates (pixel ``(y, x)``
        covers ``[y, y + 1) x [x, x + 1)``): ``[off_h + i*jump_h, off_h +
        i*jump_h + size_h)`` and the same across. It may reach past the image
        where padding does; clip it to the image for the pixels the unit
        reads. ``None`` for global layers and where the field or its offset is
        unknown.
    """
    if layer.global_rf or layer.rf_size is None or layer.rf_jump is None or layer.rf_offset is None:
        return None
    y0 = layer.rf_offset[0] + i * layer.rf_jump[0]
    x0 = layer.rf_offset[1] + j * layer.rf_jump[1]
    return (float(y0), float(x0), float(y0 + layer.rf_size[0]), float(x0 + layer.rf_size[1]))
