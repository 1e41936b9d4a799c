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
upsampling read the same input unit): every unit's exact box is tracked (they
repeat with a period), and the table keeps the tightest evenly spaced boxes
that hold them all, the *envelope*, less than a jump wider than the widest true
box. Without upsampling the boxes are exact.

Where branches merge (addition, concatenation, multiplication) a unit's box is
the union of its inputs' boxes for that unit, so branches must agree on the
jump. A unit fed by anything global (global pooling, attention, a dense layer,
a squeeze-excitation gate) sees the whole input: ``global_rf``.

Anything that cannot be derived (a layer that changes the map's size without
saying how, branches with different jumps, an interpolation without its taps)
is unknown: ``rf_size`` is ``None`` and ``global_rf`` False, which tables show
as ``?`` (an adapter marks a row whose geometry it could not read with
``extra["geometry"] = "unknown"``, e.g. a pad whose amounts are computed at
run time); a padding the adapter could not read leaves the size and jump
exact and only ``rf_offset`` unknown.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from .layers import LayerInfo

__all__ = ["resample_geometry", "same_padding", "unit_box", "with_receptive_fields"]

#: The most output units one period of an upsampling may span (scales like 1000/999 are not tracked).
_MAX_PERIOD = 4096


@dataclass(frozen=True)
class _Axis:
    """Every unit's exact box along one axis, periodic: unit ``i = q*period + r`` covers
    ``[starts[r] + q*span, ends[r] + q*span)`` input pixels (``span``: pixels per period).

    Without upsampling the period is 1 and this is ``O``, ``O + S`` and ``J``;
    upsampling makes neighbouring boxes repeat with a longer period.
    """

    period: int
    span: int
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    def start(self, i: int) -> int:
        return self.starts[i % self.period] + (i // self.period) * self.span

    def end(self, i: int) -> int:
        return self.ends[i % self.period] + (i // self.period) * self.span

    def read(self, period: int, span: int, reach: Callable[[int], tuple[int, int, int]]) -> _Axis | None:
        """The axis of a layer whose unit ``o`` reads units ``lo, lo + step, ..., hi`` (``reach(o)``)."""
        if period > _MAX_PERIOD:
            return None
        starts, ends = [], []
        for o in range(period):
            lo, hi, step = reach(o)
            if hi < lo:
                return None  # a unit that reads nothing (a transposed conv with stride > kernel)
            starts.append(min(self.start(i) for i in range(lo, hi + 1, step)))
            ends.append(max(self.end(i) for i in range(lo, hi + 1, step)))
        return _Axis(period, span, tuple(starts), tuple(ends))

    def envelope(self) -> tuple[Fraction, Fraction, Fraction]:
        """``(size, jump, offset)`` of the tightest evenly spaced boxes holding every unit's box."""
        jump = Fraction(self.span, self.period)
        offset = min(self.starts[r] - r * jump for r in range(self.period))
        end = max(self.ends[r] - r * jump for r in range(self.period))
        return end - offset, jump, offset


@dataclass(frozen=True)
class _Field:
    """One layer's field along both axes; ``placed`` False: sizes and jumps are right, positions unknown
    (a padding the adapter could not read; boxes are computed as if it were 0)."""

    axes: tuple[_Axis, _Axis]
    placed: bool = True


_INPUT = _Field((_Axis(1, 1, (0,), (1,)), _Axis(1, 1, (0,), (1,))))


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
    axes = []
    for a in range(2):
        parts = [f.axes[a] for f in fields]
        if any(Fraction(x.span, x.period) != Fraction(parts[0].span, parts[0].period) for x in parts):
            return None
        period = math.lcm(*(x.period for x in parts))
        if period > _MAX_PERIOD:
            return None
        span = parts[0].span * (period // parts[0].period)
        axes.append(_Axis(period, span, tuple(min(x.start(r) for x in parts) for r in range(period)),
                          tuple(max(x.end(r) for x in parts) for r in range(period))))
    placed = all(f.placed for f in fields)
    if not placed and any(f.axes != first.axes for f in fields):
        return None  # where unplaced boxes overlap is unknown, so is their union
    return _Field((axes[0], axes[1]), placed)


def _apply(layer: LayerInfo, f: _Field, sources: Sequence[LayerInfo]) -> _Field | None:
    """The field after ``layer``'s own operation, given the field of what feeds it."""
    if layer.extra.get("geometry") == "unknown":
        return None
    if layer.upsample is not None:
        return _upsampled(layer, f)
    if layer.kernel_size is None and layer.stride is None and layer.padding is None:
        # element-wise, normalisation, activation, merge: the map keeps its size, or something unsaid happened
        return f if all(_same_map(layer, s) for s in sources) else None
    k = layer.kernel_size or (1, 1)
    s = layer.stride or (1, 1)
    d = layer.dilation or (1, 1)
    p = layer.padding or (0, 0)
    if layer.kernel_size is not None and not all(_window_fits(layer, src, k, s, d, p) for src in sources):
        return None
    axes = []
    for a in range(2):
        x = f.axes[a]
        if s[a] < 1 or d[a] < 1 or k[a] < 1:
            return None
        period = x.period // math.gcd(s[a], x.period)
        first, step, taps = -p[a], s[a], (k[a] - 1) * d[a]

        def window(o: int, first: int = first, step: int = step, taps: int = taps,
                   skip: int = d[a]) -> tuple[int, int, int]:
            return o * step + first, o * step + first + taps, skip

        axis = x.read(period, x.span * period * s[a] // x.period, window)
        if axis is None:
            return None
        axes.append(axis)
    return _Field((axes[0], axes[1]), f.placed and layer.padding is not None)


def _window_fits(layer: LayerInfo, source: LayerInfo, k: tuple[int, int], s: tuple[int, int],
                 d: tuple[int, int], p: tuple[int, int]) -> bool:
    """Whether a window's output can come from ``source``'s map: no conv or pool makes a map much
    larger than its input (the end padding is not kept; it is taken as at most ``max(p, (k-1)*d) + s``).
    A larger map means that the row the table names as its input is not (an upsampling in plain code
    in between), so the field would be wrong."""
    before, after = _spatial(source), _spatial(layer)
    if before is None or after is None:
        return True
    for a in range(2):
        n, m = before[a], after[a]
        if n is None or m is None:
            continue
        reach = max(abs(p[a]), (k[a] - 1) * d[a])
        if m > (n + 2 * reach + s[a]) // s[a] + 1:
            return False
    return True


def _upsampled(layer: LayerInfo, f: _Field) -> _Field | None:
    """The field after an interpolation or a transposed conv (see the module docstring)."""
    assert layer.upsample is not None
    axes = []
    for a in range(2):
        u = Fraction(float(layer.upsample[a])).limit_denominator(1000)
        if u <= 0:
            return None
        k = layer.kernel_size[a] if layer.kernel_size is not None else None
        p = layer.padding[a] if layer.padding is not None else None
        reach = _transposed_reach(layer, a, u, k, p) if layer.kind == "conv" else _sampled_reach(layer, a, u, k, p)
        if reach is None:
            return None
        x = f.axes[a]
        # u = n/m: n outputs for every m inputs, so the period grows until it holds whole input periods
        g = math.gcd(u.denominator, x.period)
        def every(o: int, reach: Callable[[int], tuple[int, int]] = reach) -> tuple[int, int, int]:
            lo, hi = reach(o)
            return lo, hi, 1

        axis = x.read(u.numerator * x.period // g, x.span * u.denominator // g, every)
        if axis is None:
            return None
        axes.append(axis)
    return _Field((axes[0], axes[1]), f.placed)


def _transposed_reach(layer: LayerInfo, a: int, u: Fraction, k: int | None,
                      p: int | None) -> Callable[[int], tuple[int, int]] | None:
    """A transposed conv's output ``o`` reads input units ``i`` with ``i*u`` in ``[o - p, o - p + (k-1)*d]``."""
    if k is None or p is None or u.denominator != 1:
        return None
    s = u.numerator
    span = (k - 1) * (layer.dilation[a] if layer.dilation is not None else 1)
    return lambda o: (-((p - o) // s), (o - p + span) // s)


def _sampled_reach(layer: LayerInfo, a: int, u: Fraction, k: int | None,
                   p: int | None) -> Callable[[int], tuple[int, int]] | None:
    """An interpolation's output ``o`` samples ``x = o/u + c``: units ``floor(x) - p ... + k - 1``, or
    ``x`` alone where it falls on a unit and the kernel interpolates (``k > 1``: linear, cubic)."""
    if k is None:
        return None
    before = p or 0
    shift = layer.extra.get("sample_offset")
    c = Fraction(float(shift[a])).limit_denominator(1 << 20) if shift is not None \
        else (Fraction(0) if k == 1 else Fraction(1, 2) / u - Fraction(1, 2))

    def reach(o: int) -> tuple[int, int]:
        x = Fraction(o) / u + c
        if k > 1 and x.denominator == 1:
            return int(x), int(x)
        lo = math.floor(x) - before
        return lo, lo + k - 1

    return reach


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


def same_padding(n: int | None, k: int, s: int = 1, d: int = 1, *, lower: bool = False) -> int | None:
    """The leading padding of TensorFlow's (and ONNX's ``SAME_UPPER``, TFLite's) ``"same"`` along one axis.

    The output is ``ceil(n / s)``; the total padding,
    ``max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)``, is split with the
    extra pixel at the end (``lower``: at the start, ONNX's ``SAME_LOWER``).

    Args:
        n: the input's size along the axis; ``None`` where free.
        k, s, d: kernel, stride, dilation.

    Returns:
        the padding before the first window, or ``None`` where it depends on
        an ``n`` that is not known (a strided window on a free size).
    """
    def lead(size: int) -> int:
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        return total - total // 2 if lower else total // 2

    if n is not None:
        return lead(int(n))
    found = {lead(size) for size in range(s, 2 * s)}  # the padding repeats with n's remainder
    return found.pop() if len(found) == 1 else None


def _number(value: Fraction) -> float:
    """Whole numbers as ints (tables print ``3``, not ``3.0``)."""
    return int(value) if value.denominator == 1 else float(value)


def _with_field(layer: LayerInfo, field: _Field | None, is_global: bool) -> LayerInfo:
    if field is None:
        return replace(layer, rf_size=None, rf_jump=None, rf_offset=None, global_rf=is_global)
    (sh, jh, oh), (sw, jw, ow) = field.axes[0].envelope(), field.axes[1].envelope()
    return replace(layer, rf_size=(_number(sh), _number(sw)), rf_jump=(_number(jh), _number(jw)),  # type: ignore[arg-type]
                   rf_offset=(_number(oh), _number(ow)) if field.placed else None, global_rf=False)


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
