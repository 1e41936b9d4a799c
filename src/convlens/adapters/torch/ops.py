"""Functional operations between module calls: which are rows, and the ``__torch_function__`` mode that sees them.

Work a container does between its children's calls (ResNet's ``out += identity``,
a U-Net's ``torch.cat`` and ``F.interpolate``, ``torch.flatten`` before the
classifier) has no module to hook. While an :func:`op_watch` mode is active,
every torch function call reaches one callback with its result, which it may
replace; that is how the probe pass finds these rows and how a later pass
captures (or makes a gradient leaf of) their outputs.

A functional row is identified by where it runs: the ``occurrence``-th call of
an op of that name made by the ``call``-th call of a module with children,
while none of its children ran. Occurrences count every call of the op
there, row or not, so a pass that cannot tell which operands come from the
image (:func:`is_row` needs the probe's provenance) finds the same one.

``torch.fx`` would give the same ops from the graph of a model that traces,
but its graph flattens the containers whose calls are rows and holds no hooks;
the mode works for every model, traced or not, with the module hooks intact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["OP_KINDS", "interpolate_args", "is_row", "op_of", "op_watch", "pad_amounts"]

#: torch function names -> the functional row's op (also its table ``type``).
_OPS = {
    "add": "add", "__add__": "add", "__radd__": "add", "__iadd__": "add", "add_": "add",
    "cat": "cat", "concat": "cat", "concatenate": "cat",
    "interpolate": "interpolate", "upsample": "interpolate", "upsample_nearest": "interpolate",
    "upsample_bilinear": "interpolate",
    "pad": "pad", "constant_pad_nd": "pad",
    "flatten": "flatten",
    # the aten operators a ``torch.export`` program's unflattened modules call
    "upsample_nearest2d": "interpolate", "upsample_bilinear2d": "interpolate", "upsample_bicubic2d": "interpolate",
    "_upsample_nearest_exact2d": "interpolate",
}
#: The kind of each op's row: a residual add and a concatenation merge branches, the others change geometry.
OP_KINDS = {"add": "merge", "cat": "merge", "interpolate": "reshape", "pad": "reshape", "flatten": "reshape"}


def op_of(func: Any) -> str | None:
    """The functional row op of a torch function (``Tensor.add_`` -> ``"add"``), or ``None``."""
    name = getattr(func, "__name__", "")
    if type(func).__name__ == "OpOverload":  # ``aten.add.Tensor`` is called ``add.Tensor``
        name = name.split(".", 1)[0]
    return _OPS.get(name)


def is_row(op: str, operands: Sequence[Any], from_image: Callable[[Any], bool]) -> bool:
    """Whether an op call with these tensor operands is a row.

    An addition merges branches only when two operands come from the image
    (``x + self.pos_embedding`` does not); the other ops need one.
    """
    n = sum(1 for t in operands if t.is_floating_point() and from_image(t))
    return n >= (2 if op == "add" else 1)


def pad_amounts(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(top, left)`` of an ``F.pad`` call (``pad`` is ``(left, right, top, bottom, ...)``); ``None``: not ints."""
    pad = kwargs.get("pad", args[1] if len(args) > 1 else None)
    try:
        amounts = [int(p) for p in pad]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if len(amounts) >= 4:
        return amounts[2], amounts[0]
    if len(amounts) >= 2:
        return 0, amounts[0]
    return None


def interpolate_args(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """How an interpolation call maps coordinates: ``{"mode", "align_corners", "scale"}`` (``scale`` may be ``None``).

    ``F.interpolate(input, size, scale_factor, mode, align_corners, ...)`` and
    the aten ``upsample_<mode>2d`` operators of exported programs (whose
    mode is in their name); ``mode`` is ``None`` where it cannot be read.
    """
    name = getattr(func, "__name__", "").split(".", 1)[0]
    if name in _ATEN_MODES:
        mode = _ATEN_MODES[name]
        corners = kwargs.get("align_corners", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
        return {"mode": mode, "align_corners": bool(corners), "scale": None}
    mode = kwargs.get("mode", args[3] if len(args) > 3 else "nearest")
    if name == "upsample_bilinear":
        mode = "bilinear"
    corners = kwargs.get("align_corners", args[4] if len(args) > 4 else None)
    factor = kwargs.get("scale_factor", args[2] if len(args) > 2 else None)
    scale: tuple[float, float] | None = None
    try:
        if isinstance(factor, (int, float)):
            scale = (float(factor), float(factor))
        elif factor is not None:
            values = [float(f) for f in factor]
            scale = (values[-2], values[-1]) if len(values) >= 2 else (values[0], values[0])
    except (TypeError, ValueError):
        scale = None
    return {"mode": str(mode) if isinstance(mode, str) else None, "align_corners": bool(corners), "scale": scale}


_WATCH: Any = None
_ATEN_MODES = {"upsample_nearest2d": "nearest", "_upsample_nearest_exact2d": "nearest-exact",
               "upsample_bilinear2d": "bilinear", "upsample_bicubic2d": "bicubic"}


def op_watch(on_call: Callable[[Any, tuple, dict, Any], Any]) -> Any:
    """A ``__torch_function__`` mode (a context manager) that hands every torch call's result to ``on_call``.

    ``on_call(func, args, kwargs, out)`` returns what the caller gets (``out``
    or a replacement). The mode is off while ``func`` runs, so the ops inside
    ``F.interpolate`` are not seen, only the call itself. torch is imported
    here, on first use, as everywhere in the adapter.
    """
    global _WATCH
    if _WATCH is None:
        from torch.overrides import TorchFunctionMode

        class OpWatch(TorchFunctionMode):
            def __init__(self, on_call: Callable[[Any, tuple, dict, Any], Any]) -> None:
                super().__init__()
                self.on_call = on_call

            def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                                   kwargs: dict | None = None) -> Any:
                kwargs = kwargs or {}
                return self.on_call(func, args, kwargs, func(*args, **kwargs))

        _WATCH = OpWatch
    return _WATCH(on_call)
