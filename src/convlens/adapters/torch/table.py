"""The layer table of a torch module: the module's facts, the probe pass and its rows, the final activation."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..._errors import ConvlensError, UnsupportedModel
from ...core.kinds import kind_of
from ...core.layers import LayerInfo
from ...core.receptive import resample_geometry, with_receptive_fields
from ...core.sizes import size_hint
from .._autograd import all_tensors, batch_to_torch, canonical_shape, float_tensors
from .._device import is_out_of_memory, module_device, out_of_memory, place_module
from .._graph import LOGIT_ROLES, Producer, walk_final_activation
from .._inputs import HeldInputs, hold_inputs
from .._tokens import (
    Layout,
    attends_globally,
    attends_in_windows,
    declared_image_size,
    find_token_grids,
    grid_free,
    mark_token_row,
)
from ..base import first_line as _first_line
from .inputs import CallPlan, exported_plan, forward_plan, held_tensors, torch_is_image
from .load import (
    PROBE_SIZE,
    SAVE_HINT,
    SECOND_PROBE_SIZE,
    exported_batch,
    exported_input_shape,
    import_torch,
    unflatten,
)
from .ops import OP_KINDS, interpolate_args, is_row, op_of, op_watch, pad_amounts

#: Modules that work on the last axis: their 3-D and 4-D outputs are channels-last already
#: (transformer tokens ``(N, L, C)``, ConvNeXt's ``Linear`` layers on ``(N, H, W, C)``).
_LAST_AXIS_TYPES = {"Linear", "LazyLinear", "NonDynamicallyQuantizableLinear", "Bilinear", "LayerNorm",
                    "RMSNorm", "MultiheadAttention", "Embedding", "EmbeddingBag"}


def _permute_dims(module: Any) -> list[int] | None:
    """The ``dims`` of a permuting module (torchvision's ``Permute``), also from an unflattened graph."""
    dims = getattr(module, "dims", None)
    if isinstance(dims, (list, tuple)) and all(isinstance(d, int) for d in dims):
        return list(dims)
    graph = getattr(module, "graph", None)
    for node in getattr(graph, "nodes", ()):
        if node.op == "call_function" and "permute" in str(node.target) and len(node.args) > 1:
            return [int(d) for d in node.args[1]]
    return None


def _is_channels_last(module: Any, type_name: str, shape: Sequence[int], parent_last: bool,
                      parent_channels: int | None) -> bool:
    """Whether a module's output tensor (torch ``shape``, batch first) holds its channels last.

    Convolutions and pools give channels first, modules in :data:`_LAST_AXIS_TYPES`
    channels last, a ``Permute`` moves the channel axis where its dims say.
    Anything else (activations, dropout, additions) keeps its input's channel
    count: the axis that has it, when only one does (the input may have been
    permuted by plain code between two modules), else the input's layout.
    """
    ndim = len(shape)
    if ndim < 3:
        return False
    # a LayerNorm over (C, H, W) of a channels-first map normalises more than the last axis
    if type_name in _LAST_AXIS_TYPES and len(getattr(module, "normalized_shape", ())) <= 1:
        return True
    if kind_of(type_name) in ("conv", "pool"):
        return False
    dims = _permute_dims(module) if "ermute" in type_name else None
    if dims is not None and len(dims) == ndim:
        channel = ndim - 1 if parent_last else 1
        return [d % ndim for d in dims].index(channel) == ndim - 1
    if parent_channels is not None and (shape[1] == parent_channels) != (shape[-1] == parent_channels):
        return shape[-1] == parent_channels
    return parent_last


# --------------------------------------------------------------------------- module facts


def module_type(module: Any) -> str:
    """The class name of a module; for ``torch.export.unflatten`` modules, the original class."""
    getter = getattr(module, "type_name", None)
    if callable(getter) and type(module).__name__ in ("InterpreterModule", "UnflattenedModule",
                                                      "InterpreterModuleDispatcher"):
        try:
            name = getter()
        except Exception:
            name = None
        if name:
            return str(name).rsplit(".", 1)[-1]
    return type(module).__name__


def _op_args(module: Any) -> dict[str, Any]:
    """Arguments of the first conv or pool aten op in an unflattened module's graph, by name."""
    graph = getattr(module, "graph", None)
    if graph is None:
        return {}
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None:
            continue
        if not any(w in schema.name for w in ("conv", "pool")):
            continue
        values: dict[str, Any] = {}
        for arg, value in zip(schema.arguments, node.args):
            values[arg.name] = value
        values.update(node.kwargs)
        for arg in schema.arguments:
            if arg.name not in values and arg.has_default_value():
                values[arg.name] = arg.default_value
        return values
    return {}


def _attr(module: Any, name: str) -> Any:
    """A module's attribute (``stride``, ``groups``...), or the same argument of its aten op."""
    if name in vars(module) or hasattr(type(module), name):
        return getattr(module, name)
    return _op_args(module).get(name)


def _pair(value: Any, one_d: bool) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        v = int(value)
        return (1, v) if one_d else (v, v)
    vals = tuple(int(v) for v in value)
    if not vals:
        return None
    if len(vals) == 1:
        return (1, vals[0]) if one_d else (vals[0], vals[0])
    return (vals[-2], vals[-1])


def _weight(module: Any) -> Any:
    w = getattr(module, "weight", None)
    import torch

    if isinstance(w, torch.Tensor) and w.ndim in (3, 4) and not _is_lazy(w):
        return w
    return None


def _is_lazy(t: Any) -> bool:
    import torch

    return isinstance(t, torch.nn.parameter.UninitializedParameter)


def _kernel_layout(shape: Sequence[int], type_name: str, groups: int) -> tuple[int, ...]:
    """The canonical ``(O, I, kh, kw)`` shape of a torch conv weight."""
    shape = tuple(int(d) for d in shape)
    if "Transpose" in type_name:  # (I, O/groups, *k): each output sees I/groups inputs
        i, o_g, *k = shape
        shape = (o_g * groups, i // groups, *k)
    if len(shape) == 3:
        shape = (shape[0], shape[1], 1, shape[2])
    return shape


def _canonical_kernel(w: np.ndarray, type_name: str, groups: int) -> np.ndarray:
    """A torch conv weight as ``(O, I, kh, kw)`` float32.

    ``Conv2d`` ``(O, I/groups, kh, kw)`` already is; ``Conv1d`` ``(O, I, k)``
    gains ``kh = 1``; ``ConvTranspose`` ``(I, O/groups, kh, kw)`` is regrouped
    per output channel.
    """
    w = np.asarray(w, dtype=np.float32)
    if "Transpose" in type_name:
        i, o_g, *k = w.shape
        w = w.reshape(groups, i // groups, o_g, *k).swapaxes(1, 2).reshape(groups * o_g, i // groups, *k)
    if w.ndim == 3:
        w = w[:, :, None, :]
    return np.ascontiguousarray(w)


def _params(module: Any, recurse: bool = True) -> int:
    """Weights of a module: parameters and floating-point buffers (BatchNorm's running stats), as Keras counts.

    A container's row counts only its own (``recurse=False``: a conv subclass's
    kernel, a ConvNeXt block's layer scale): its children's rows count theirs,
    so the table's total is the model's.
    """
    n = sum(int(p.numel()) for p in module.parameters(recurse=recurse) if not _is_lazy(p))
    n += sum(int(b.numel()) for b in module.buffers(recurse=recurse) if b.is_floating_point())
    return n


def _torch_kind(module: Any, type_name: str, container: bool) -> str:
    """A row's kind: a conv, pool or norm subclass keeps that kind, any other container is a ``block``.

    A leaf goes by its class name (:func:`~convlens.core.kinds.kind_of`, which also
    reads ``torch.export.unflatten``'s copies), unless it subclasses a torch conv,
    pool or norm under another name. A container goes by its classes only:
    torchvision's ``Conv2dNormActivation`` is a ``Sequential`` (a block), an
    EfficientNet's static-same-padding ``Conv2d`` subclass calling its own
    ``ZeroPad2d`` is a conv.
    """
    import torch.nn.modules as mods

    by_class = None
    if isinstance(module, mods.conv._ConvNd):
        by_class = "conv"
    elif isinstance(module, (mods.pooling._MaxPoolNd, mods.pooling._AvgPoolNd, mods.pooling._AdaptiveAvgPoolNd,
                             mods.pooling._AdaptiveMaxPoolNd, mods.pooling._LPPoolNd)):
        by_class = "pool"
    elif isinstance(module, (mods.batchnorm._NormBase, mods.normalization.GroupNorm,
                             mods.normalization.LayerNorm, mods.normalization.LocalResponseNorm)):
        by_class = "norm"
    if container:
        return by_class or "block"
    kind = kind_of(type_name)
    if kind in ("model", "input"):
        kind = "other"
    return by_class or kind


def _padding(value: Any, size: tuple[int, int] | None, dilation: tuple[int, int] | None,
             one_d: bool) -> tuple[int, int] | None:
    """``(top, left)`` zero padding of a conv or pool from its ``padding`` argument (``"same"`` included)."""
    if isinstance(value, str):
        if value == "valid":
            return (0, 0)
        if value == "same" and size is not None:
            d = dilation or (1, 1)
            # torch pads "same" with the smaller half before the window
            return ((size[0] - 1) * d[0] // 2, (size[1] - 1) * d[1] // 2)
        return None
    try:
        return _pair(value, one_d) if value is not None else None
    except (TypeError, ValueError):
        return None


def _pad_module(value: Any, one_d: bool) -> tuple[int, int] | None:
    """``(top, left)`` of a padding module (``ZeroPad2d``'s ``padding`` is ``(left, right, top, bottom)``)."""
    if isinstance(value, (int, np.integer)):
        return (0, int(value)) if one_d else (int(value), int(value))
    try:
        vals = [int(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(vals) >= 4:
        return vals[2], vals[0]
    if len(vals) == 2:
        return 0, vals[0]
    return None


def _resamples(type_name: str) -> bool:
    return type_name in ("Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "PixelShuffle", "PixelUnshuffle")


def _interpolation(rec: _Record) -> dict[str, Any] | None:
    """An ``F.interpolate`` row's fields from its mode, ``align_corners`` and scale
    (:func:`~convlens.core.receptive.resample_geometry`), or ``None`` where they cannot be read."""
    args = (rec.geometry or {}).get("interpolate")
    if not args or not args.get("mode") or rec.in_shape is None or len(rec.in_shape) != 4 or len(rec.shape) != 3:
        return None
    mode, corners = str(args["mode"]), bool(args.get("align_corners"))
    last = bool(rec.channels_last)
    in_hw = tuple(rec.in_shape[1:3]) if last else tuple(rec.in_shape[2:])
    return resample_geometry(
        mode.replace("nearest-exact", "nearest"), in_hw, rec.shape[:2],
        scale=None if corners else args.get("scale"),
        coordinates="align_corners" if corners else "half_pixel" if mode != "nearest" else "asymmetric",
        rounding="round_prefer_ceil" if mode == "nearest-exact" else "floor")


def _scale(in_shape: Sequence[int] | None, out_shape: Sequence[int], channels_last: bool) -> tuple[float, float] | None:
    """Output/input size ``(h, w)`` of a resampling row (torch ``in_shape`` with batch, canonical ``out_shape``)."""
    if in_shape is None or len(in_shape) not in (3, 4) or len(out_shape) != len(in_shape) - 1:
        return None
    spatial_in = list(in_shape[1:-1]) if channels_last else list(in_shape[2:])
    spatial_out = list(out_shape[:-1])
    if len(spatial_in) == 1:
        spatial_in, spatial_out = [1, *spatial_in], [1, *spatial_out]
    if any(int(d) == 0 for d in spatial_in):
        return None
    return (spatial_out[0] / spatial_in[0], spatial_out[1] / spatial_in[1])


@dataclass
class _Record:
    """A row found by the probe pass."""

    module: Any
    call: int  # the k-th call of this module (0-based)
    key: tuple  # where the tensor sits in the module's output
    named: bool  # whether the row name needs ``:KEY``
    shape: tuple[int, ...]  # canonical, without batch
    parents: list[int]
    in_shape: tuple[int, ...] | None  # torch shape of the first input tensor
    channels_last: Layout = False  # the torch tensor holds its channels last (see _is_channels_last), or tokens
    parent: int | None = None  # the enclosing container's row (set when the container's call ends)
    container: bool = False  # a module call during which other modules were called
    op: str | None = None  # a functional row: "add", "cat", "interpolate", "pad" or "flatten" ...
    occurrence: int = 0  # ... the occurrence-th such op run by ``module``'s ``call``-th call itself
    geometry: dict[str, Any] | None = None  # a functional row's arguments (pad amounts), a leaf's inner F.pad
@dataclass
class _Frame:
    """One running module call during the probe pass."""

    module: Any
    call: int
    called: bool = False  # another module was called during this one: a container call
    rows: list[int] = field(default_factory=list)  # rows made directly inside it (children, functional ops)
    ops: dict[str, int] = field(default_factory=dict)  # functional ops run by it, by name
    pads: list[tuple[int, int]] = field(default_factory=list)  # a leaf's own F.pad calls: (top, left)


def _not_a_map(output: Any) -> str:
    """What a module returned that holds no floating-point tensor, in words (for an error message)."""
    import torch

    ints = [t for t in all_tensors(output) if isinstance(t, torch.Tensor)]
    if ints:
        t = ints[0]
        return f"an integer tensor ({str(t.dtype).replace('torch.', '')}, shape {tuple(t.shape)})"
    if isinstance(output, torch.Size):
        return f"a shape {tuple(output)}"
    return f"a {type(output).__name__}, not a tensor"




# --------------------------------------------------------------------------- final activation

#: Modules that hand their input's values on unchanged: a softmax behind them still makes the output.
_TORCH_PASS_THROUGH = {"Flatten", "Unflatten", "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
                       "AlphaDropout"}
#: Modules whose output is a linear function of their input: scores, not probabilities.
_TORCH_LINEAR = {"Linear", "LazyLinear", "Bilinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
                 "ConvTranspose2d", "ConvTranspose3d", "LazyConv2d"}


#: What a module does to the values on the way back from the output (:mod:`convlens.adapters._graph`).
TORCH_ROLES: dict[str, str] = {
    "Softmax": "softmax", "Softmax2d": "softmax", "LogSoftmax": "log_softmax", "Sigmoid": "sigmoid",
    **{name: "linear" for name in _TORCH_LINEAR}, **{name: "pass" for name in _TORCH_PASS_THROUGH},
}


def torch_final_activation(records: Sequence[_Record], output_row: int | None) -> str | None:
    """What makes a module's output: ``"softmax"``, ``"sigmoid"``, ``"linear"`` or ``None``.

    ``output_row`` is the probe row whose tensor ``forward`` returned (``None``
    when the output was computed outside any module, e.g. by
    ``torch.softmax`` in ``forward``: then the graph does not say). The walk
    (:func:`convlens.adapters._graph.walk_final_activation`) goes back through
    modules that pass values on unchanged (``Flatten``, ``Dropout``,
    ``Identity``) to an ``nn.Softmax`` (``"softmax"``), an ``nn.Sigmoid``
    (``"sigmoid"``) or a ``Linear``/conv module (``"linear"``); an
    ``nn.LogSoftmax`` gives ``None``, as in every adapter.
    """

    def producer(row: int) -> Producer[int] | None:
        if not 0 < row <= len(records):
            return None
        rec = records[row - 1]
        return Producer(_role_type(rec), rec.parents[:1])

    return walk_final_activation(output_row, producer, TORCH_ROLES, limit=len(records) + 1).answer


def _geometry(module: Any, type_name: str, kind: str, size: tuple[int, int] | None,
              dilation: tuple[int, int] | None, one_d: bool, rec: _Record) -> dict[str, Any]:
    """The row's ``padding`` and ``upsample`` (and an upsampling's taps) for :mod:`convlens.core.receptive`.

    A conv or pool's padding is the zeros before its window (``padding="same"``
    pads ``(k - 1) * d // 2`` first); it stays ``None`` where it cannot be read
    or is not zeros outside the map (``padding_mode="circular"`` brings the
    far side in). A transposed conv upsamples by its stride and pads like the
    conv on the zero-stuffed input, ``(k - 1) * d - p``. ``nn.Upsample`` gives
    its mode's taps (:func:`~convlens.core.receptive.resample_geometry`). A pad
    module (``nn.ZeroPad2d``, reflection, replication; not circular) gives its
    top and left amounts.
    """
    if type_name in ("Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d"):
        mode = str(getattr(module, "mode", "nearest"))
        corners = bool(getattr(module, "align_corners", False)) or type_name == "UpsamplingBilinear2d"
        factor = getattr(module, "scale_factor", None)
        in_hw = tuple(rec.in_shape[2:]) if rec.in_shape is not None and len(rec.in_shape) == 4 else ()
        scale = None if factor is None else (factor, factor) if isinstance(factor, (int, float)) else factor
        found = resample_geometry(
            mode.replace("nearest-exact", "nearest"), in_hw, rec.shape[:2], scale=None if corners else scale,
            coordinates="align_corners" if corners else "half_pixel" if mode != "nearest" else "asymmetric",
            rounding="round_prefer_ceil" if mode == "nearest-exact" else "floor")
        return found if found is not None and len(in_hw) == 2 else {}
    if type_name.endswith(("Pad1d", "Pad2d")) and not type_name.startswith("Circular"):
        lrtb = tuple(int(v) for v in getattr(module, "padding", ()))  # (left, right[, top, bottom])
        if len(lrtb) == 2:
            return {"padding": (0, lrtb[0])}
        return {"padding": (lrtb[2], lrtb[0])} if len(lrtb) == 4 else {}
    if size is None or kind not in ("conv", "pool"):
        return {}
    raw = _attr(module, "padding")
    if raw is None and ("Adaptive" in type_name or "LPPool" in type_name):
        raw = 0  # an evenly split adaptive pool and LPPool never pad
    d = dilation or (1, 1)
    pad: tuple[int, int] | None
    if isinstance(raw, str):
        pad = (0, 0) if raw == "valid" else (((size[0] - 1) * d[0]) // 2, ((size[1] - 1) * d[1]) // 2)
    elif raw is None:
        pad = None
    else:
        values = (int(raw),) * 2 if isinstance(raw, (int, np.integer)) else tuple(int(v) for v in raw)
        pad = (0, values[-1]) if one_d else (values[-2], values[-1]) if len(values) >= 2 else None
    if getattr(module, "padding_mode", "zeros") == "circular":
        pad = None
    if "Transpose" not in type_name:
        return {"padding": pad}
    step = _pair(_attr(module, "stride"), one_d)
    if pad is None or step is None:
        return {}
    return {"padding": ((size[0] - 1) * d[0] - pad[0], (size[1] - 1) * d[1] - pad[1]),
            "upsample": (float(step[0]), float(step[1]))}


def _role_type(rec: _Record) -> str:
    """The type a row has in :data:`TORCH_ROLES`: a block hands on its inner row's values, a
    conv subclass is a ``Conv2d``, ``flatten`` a ``Flatten``."""
    if rec.op is not None:
        return "Flatten" if rec.op == "flatten" else rec.op
    if rec.container:
        kind = _torch_kind(rec.module, module_type(rec.module), True)
        return "Conv2d" if kind == "conv" else "Identity" if kind == "block" else module_type(rec.module)
    return module_type(rec.module)


def logit_module(records: Sequence[_Record], output_row: int | None) -> Any:
    """The softmax-like module (``Softmax``, ``LogSoftmax``) that makes the model's output, else ``None``.

    From the row ``forward`` returned (the last row when ``None``), through the
    blocks handing it on, to the module that computed it; a gradient pass
    reads the class score at its input.
    """
    row = output_row if output_row else len(records)
    for _ in range(len(records)):
        if not 0 < row <= len(records):
            return None
        rec = records[row - 1]
        if rec.op is None and rec.container and _role_type(rec) == "Identity" and rec.parents:
            row = rec.parents[0]
            continue
        if rec.op is None and TORCH_ROLES.get(module_type(rec.module)) in LOGIT_ROLES:
            return rec.module
        return None
    return None


#: the provenance of a held input's tensors in the probe pass (rows are 0 and up)
_HELD = -1


class TorchTable:
    """A torch module's set-up and layer table (the rows of the probe pass); see :class:`TorchAdapter`."""

    framework = "torch"
    class_names: list[str] | None = None
    class_names_source = ""

    def __init__(self, module: Any, *, input_shape: Sequence[int | None] | None = None,
                 preprocess: str | None = None, name: str | None = None, device: Any = None,
                 image_input: str | None = None, inputs: Mapping[str, Any] | None = None) -> None:
        torch = self.torch = import_torch()
        self._probe_sizes: tuple[list[int], list[int]] | None = None
        #: the batch size the model only accepts (an exported program's static batch), else ``None``
        self.fixed_batch: int | None = None
        exported = module if isinstance(module, torch.export.ExportedProgram) else None
        if exported is not None:
            module = unflatten(exported)
        if type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None),
                                                                     torch.nn.Module):
            module = module._orig_mod  # torch.compile: hooks belong on the original, eager module
        if isinstance(module, torch.jit.ScriptModule):
            raise UnsupportedModel(f"{type(module).__name__} is a TorchScript module, whose layers cannot be "
                                   f"hooked; {SAVE_HINT}")
        if not isinstance(module, torch.nn.Module):
            raise UnsupportedModel(f"expected a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.name = name or module_type(module)
        self.preprocess = preprocess
        #: the model's inputs and how a call passes them (:mod:`convlens.adapters.torch.inputs`)
        self._plan: CallPlan = exported_plan(exported) if exported is not None else forward_plan(module, inputs)
        #: a model with several inputs: the image's and the values the others are held at; else ``None``
        self.held_inputs: HeldInputs | None = hold_inputs(
            self.name, self._plan.slots, image_input=image_input, inputs=inputs,
            is_image=torch_is_image(self._plan, inputs))
        self.input_name = self._plan.slots[self.held_inputs.image if self.held_inputs is not None else 0].name
        self._held_cache: dict[tuple, list[Any]] = {}
        if exported is not None:
            shape, self._probe_sizes = exported_input_shape(exported, self.input_name)
            self.fixed_batch = exported_batch(exported, self.input_name)
            input_shape = input_shape if input_shape is not None else shape
        self._given = tuple(input_shape) if input_shape is not None else None
        self._input_shape: tuple[int | None, ...] | None = None
        self._layers: list[LayerInfo] | None = None
        self._records: list[_Record] = []
        self._output_row: int | None = None  # the probe row whose tensor the model returned
        self._final_activation: str | None = None  # set by hand: overrides what the probe found
        place_module(module, device, self.name)  # device None: where the user put it (one device)
        #: modules whose output holds no floating-point tensor: id -> (call, what it returned)
        self._not_maps: dict[int, tuple[int, str]] = {}
        self._functional_failed = False  # the model failed under the op watch: no functional rows
        self._names = self._module_names()

    # ----------------------------------------------------------------- set-up

    def _module_names(self) -> dict[int, str]:
        names: dict[int, str] = {}
        for name, m in self.module.named_modules():
            # unflatten names the extra copies of a module called twice ``name@1``: one name for both
            names.setdefault(id(m), ".".join(part.split("@")[0] for part in name.split(".")) or self.name)
        return names

    def _first_conv(self) -> Any:
        for m in self.module.modules():
            if kind_of(module_type(m)) == "conv" and _weight(m) is not None:
                return m
        return None

    def _probe_shape(self) -> tuple[list[int], list[int]]:
        """The canonical probe shape, and which of its axes are free (not given)."""
        given = self._given if self._given is not None else declared_image_size(self.module) or \
            self._held_image_size()
        conv = self._first_conv()
        spatial_axes = _weight(conv).ndim - 2 if conv is not None else 2
        if given is None or (len(given) == spatial_axes and spatial_axes == 2):
            if conv is None:
                raise UnsupportedModel(f"{self.name} has no convolution to tell its input channels from; "
                                       "pass --input-shape H,W,C (input_shape=(H, W, C) in Python)")
            w = _weight(conv)
            if "Transpose" in module_type(conv):
                channels = int(w.shape[0])
            else:
                channels = int(w.shape[1]) * int(_attr(conv, "groups") or 1)
            dims: list[int | None] = [*(given or [None] * spatial_axes), channels]
        else:
            dims = list(given)
        shape = [PROBE_SIZE if d is None else int(d) for d in dims]
        if self._probe_sizes is not None and len(self._probe_sizes[0]) == len(shape):
            # an exported program's dynamic dimensions have ranges: probe at its example size
            shape = [p if d is None else s for d, s, p in zip(dims, shape, self._probe_sizes[0])]
        free = [i for i, d in enumerate(dims) if d is None]
        return shape, free

    def _held_image_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of another image input's held value (a Siamese network's other image), whose size the
        image input must share: the probe's size, when nothing else gives one."""
        held = self.held_inputs
        if held is None:
            return None
        for slot in held.slots:
            value = held.values.get(slot.name)
            if slot.shape is None and value is not None and value.ndim == 3 and value.shape[0] in (1, 3, 4):
                return int(value.shape[1]), int(value.shape[2])
        return None

    def _second_probe_shape(self, shape: list[int], free: list[int]) -> list[int]:
        if self._probe_sizes is not None and len(self._probe_sizes[1]) == len(shape):
            return [o if i in free else d for i, (d, o) in enumerate(zip(shape, self._probe_sizes[1]))]
        return [SECOND_PROBE_SIZE if i in free else d for i, d in enumerate(shape)]

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Eval mode and no autograd for one pass; every submodule's ``training`` flag restored after."""
        flags = [(m, m.training) for m in self.module.modules()]
        try:
            self.module.eval()
            with self.torch.no_grad():
                yield
        finally:
            for m, flag in flags:
                m.training = flag

    @contextmanager
    def _hooked(self, modules: Sequence[Any], hook: Callable[..., Any],
                pre_hook: Callable[..., Any] | None = None) -> Iterator[None]:
        """Forward hooks on ``modules`` for the duration of the block; removed in ``finally``."""
        handles: list[Any] = []
        try:
            for m in modules:
                if pre_hook is not None:
                    handles.append(m.register_forward_pre_hook(pre_hook))
                handles.append(m.register_forward_hook(hook, with_kwargs=True))
            yield
        finally:
            for h in handles:
                h.remove()

    @property
    def device(self) -> str:
        """Where the module runs now (``"cpu"``, ``"cuda:0"``...), read from its parameters at each call."""
        return str(module_device(self.module)[0])

    def _to_torch(self, batch: np.ndarray) -> Any:
        return batch_to_torch(batch, self.module)

    def _call(self, x: Any) -> Any:
        """The module called on the image tensor ``x`` and the held inputs (batched to ``x``'s batch)."""
        if self.held_inputs is None:
            return self.module(x)
        return self._plan.call(self.module, held_tensors(self.torch, self.held_inputs, x, self._held_cache))

    def _forward(self, x: Any, *, probe: bool = False) -> Any:
        try:
            return self._call(x)
        except ConvlensError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                raise out_of_memory(str(x.device), f"a batch of {int(x.shape[0])} through {self.name}") from None
            # the probe's size is ours (--input-shape changes it); an image's size is the user's (--size)
            free = not probe and self._input_shape is not None and None in self._input_shape
            hint = ("if it needs another input size, pass --input-shape H,W,C "
                    "(input_shape=(H, W, C) in Python)")
            if free and x.ndim == 4 and self._layers is not None:
                hint = size_hint(self._layers, int(x.shape[2]), int(x.shape[3]))
            elif free:
                hint = "if it needs another input size, pass --size HxW (size=(H, W) in Python)"
            raise UnsupportedModel(
                f"{self.name} failed on an input of shape {tuple(x.shape)} (N, C, H, W): "
                f"{type(exc).__name__}: {_first_line(str(exc))}; {hint}") from exc

    # ----------------------------------------------------------------- table

    def _probe(self, shape: Sequence[int]) -> list[_Record]:
        """One pass on zeros of canonical ``shape`` with hooks on every module; the rows it finds.

        The functional ops between module calls are watched by an
        :func:`~convlens.adapters.torch.ops.op_watch` mode; a model that
        fails under the mode is probed again without it (module rows only).
        """
        try:
            return self._probe_pass(shape, functional=True)
        except UnsupportedModel:
            records = self._probe_pass(shape, functional=False)
            self._functional_failed = True
            return records

    def _probe_pass(self, shape: Sequence[int], *, functional: bool) -> list[_Record]:
        from torch.utils.weak import WeakIdKeyDictionary

        torch = self.torch
        x = self._to_torch(np.zeros((1, *shape), dtype=np.float32))
        records: list[_Record] = []
        # where each tensor's values come from (rows; _HELD: a held input), and which row made this very tensor
        prov: Any = WeakIdKeyDictionary()
        owner: Any = WeakIdKeyDictionary()
        prov[x], owner[x] = frozenset({0}), 0
        if self.held_inputs is not None:  # the other inputs: what only they reach is no row of the image
            for t in held_tensors(torch, self.held_inputs, x, self._held_cache):
                if t is not x:
                    prov[t] = frozenset({_HELD})
        calls: dict[int, int] = {}
        stack: list[_Frame] = []
        has_children = {id(m): next(m.children(), None) is not None for m in self.module.modules()}
        self._not_maps = {}

        def rows_of(tensors: Sequence[Any]) -> list[int]:
            return sorted({r for t in tensors for r in prov.get(t, ()) if r != _HELD})

        def layout(parents: Sequence[int]) -> tuple[bool, int | None]:
            rec = records[parents[0] - 1] if parents and parents[0] > 0 else None
            shape_ = rec.shape if rec is not None else canonical_shape(x.shape)
            return (rec is not None and bool(rec.channels_last)), (shape_[-1] if shape_ else None)

        def add(rec: _Record, t: Any) -> None:
            records.append(rec)
            row = len(records)  # row 0 is the input
            prov[t], owner[t] = frozenset({row}), row
            if stack:
                stack[-1].rows.append(row)

        def pre_hook(module: Any, args: Any) -> None:
            if stack:
                stack[-1].called = True
            k = calls.get(id(module), 0)
            calls[id(module)] = k + 1
            stack.append(_Frame(module, k))

        def hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            frame = stack.pop() if stack and stack[-1].module is module else _Frame(module, 0)
            if module is self.module and frame.called:
                return  # the model itself: its contents are the table
            inputs = all_tensors(args, kwargs)
            if {r for t in inputs for r in prov.get(t, ())} == {_HELD}:  # fed by held inputs only: no row
                for _, t in float_tensors(output):
                    prov[t] = frozenset({_HELD})
                if stack:
                    stack[-1].rows.extend(frame.rows)
                return
            parents = rows_of(inputs) or [len(records)]
            in_shape = tuple(inputs[0].shape) if inputs else None
            outs = list(float_tensors(output))
            if not outs:
                self._not_maps[id(module)] = (frame.call, _not_a_map(output))
                if stack:
                    stack[-1].rows.extend(frame.rows)
                return
            first = len(records) + 1
            for key, t in outs:
                rows = rows_of([t]) if frame.called else parents
                made = owner.get(t)
                if frame.called and made is not None and made > 0:
                    last = records[made - 1].channels_last  # a container handing on a row's own tensor
                else:
                    parent_last, parent_channels = layout(rows or parents)
                    last = _is_channels_last(module, module_type(module), tuple(t.shape), parent_last,
                                             parent_channels)
                add(_Record(module, frame.call, key, len(outs) > 1, canonical_shape(t.shape, last),
                            rows or parents, in_shape, last, container=frame.called,
                            geometry={"pad": frame.pads[0]} if frame.pads and not frame.called else None), t)
            for row in frame.rows:
                records[row - 1].parent = first

        def on_call(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
            operands = all_tensors(args, kwargs)
            source = frozenset(r for t in operands for r in prov.get(t, ()))
            results = [out] if isinstance(out, torch.Tensor) else all_tensors(out)
            for t in results:
                prov[t] = source
            op = op_of(func)
            if op is None or not stack:
                return out
            frame = stack[-1]
            if not has_children.get(id(frame.module), False):
                if op == "pad":  # a leaf that pads in forward (dynamic "same" padding): the row's own padding
                    amounts = pad_amounts(args, kwargs)
                    if amounts is not None:
                        frame.pads.append(amounts)
                return out
            j = frame.ops.get(op, 0)
            frame.ops[op] = j + 1
            if not isinstance(out, torch.Tensor) or not out.is_floating_point() \
                    or not is_row(op, operands, lambda t: bool(prov.get(t, frozenset()) - {_HELD})):
                return out
            parents = sorted(source - {_HELD}) or [len(records)]
            parent_last, parent_channels = layout(parents)
            parent_ndim = len(records[parents[0] - 1].shape) + 1 if parents and parents[0] > 0 else x.ndim
            # an op on its input row's own layout keeps it (a U-Net's cat, a residual add); after plain code
            # reshaped it (ViT's class-token cat of (N, h*w, C) patches), the axis with the channel count is C
            last = parent_last if out.ndim == parent_ndim else \
                _is_channels_last(None, op, tuple(out.shape), parent_last, parent_channels)
            geometry = {"pad": pad_amounts(args, kwargs)} if op == "pad" else \
                {"interpolate": interpolate_args(func, args, kwargs)} if op == "interpolate" else None
            in_shape = tuple(operands[0].shape) if operands else None
            add(_Record(frame.module, frame.call, (), False, canonical_shape(out.shape, last), parents, in_shape,
                        last, op=op, occurrence=j, geometry=geometry), out)
            return out

        watch = op_watch(on_call) if functional else nullcontext()
        with self._evaluating(), self._hooked(list(self.module.modules()), hook, pre_hook), watch:
            out = self._forward(x, probe=True)
        returned = next(iter(float_tensors(out)), None)
        self._output_row = owner.get(returned[1]) if returned is not None else None
        return records

    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            shape, free = self._probe_shape()
            records = self._probe(shape)
            out_free: list[set[int]] = [set() for _ in records]
            input_shape: list[int | None] = list(shape)
            if free:
                other = self._second_probe_shape(shape, free)
                try:
                    second = self._probe(other)
                except ConvlensError:
                    second = None  # a fixed-size model: report the probed size
                if second is not None and len(second) == len(records):
                    input_shape = [None if i in free else d for i, d in enumerate(shape)]
                    for j, (a, b) in enumerate(zip(records, second)):
                        out_free[j] = {i for i, (da, db) in enumerate(zip(a.shape, b.shape)) if da != db}
            self._input_shape = tuple(input_shape)
            tokens = self._token_rows(records, out_free)
            self._records = records
            labels = self._labels(records)
            rows = [LayerInfo(index=0, name="input", type="Input", kind="input", output_shape=self._input_shape,
                              extra={"not_maps": self._not_map_names()})]
            for j, rec in enumerate(records):
                rows.append(self._info(len(rows), rec, out_free[j], labels[j]))
                if j in tokens:
                    mark_token_row(rows[-1].extra, tokens[j])
                if attends_globally(rec.module, module_type(rec.module), rec.shape, j in tokens):
                    rows[-1].extra["global"] = True  # every token attends to every patch
                elif attends_in_windows(rec.module, module_type(rec.module), rec.shape):
                    rows[-1].extra["geometry"] = "unknown"  # Swin's windows: not modelled, so shown as ?
            self._layers = with_receptive_fields(rows)
        return self._layers

    @staticmethod
    def _token_rows(records: list[_Record], out_free: list[set[int]]) -> dict[int, Any]:
        """Token rows (ViT's ``(N, 1 + h * w, C)``) made ``(h, w, C)`` maps, in place; ``{position: TokenGrid}``.

        Each record's layout becomes its :class:`~convlens.adapters._tokens.TokenGrid`, so every pass
        hands over (and takes cotangents as) the canonical map (see :mod:`convlens.adapters._tokens`).
        """
        grids = find_token_grids([(rec.shape, rec.channels_last, kind_of(module_type(rec.module)) == "conv")
                                  for rec in records])
        for j, grid in grids.items():
            rec = records[j]
            records[j] = replace(rec, shape=grid.map_shape(rec.shape[-1]), channels_last=grid)
            out_free[j] = grid_free(out_free[j])
        return grids

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        if self._input_shape is None:
            self.layers()
        return self._input_shape  # type: ignore[return-value]

    @property
    def final_activation(self) -> str | None:
        """What makes the model's output, from the probe pass (see :func:`torch_final_activation`)."""
        if self._final_activation is not None:
            return self._final_activation
        self.layers()
        return torch_final_activation(self._records, self._output_row)

    @final_activation.setter
    def final_activation(self, value: str | None) -> None:  # the contract's attribute is settable
        self._final_activation = value

    def _label(self, module: Any, call: int) -> str:
        base = self._names.get(id(module), module_type(module))
        return base if call == 0 else f"{base}#{call + 1}"

    def _labels(self, records: Sequence[_Record]) -> list[str]:
        """Each row's unique name (see the package docstring)."""
        labels: list[str] = []
        seen: set[str] = set()
        count: dict[tuple[int, int, str], int] = {}
        # a module's calls are numbered among those that are rows: a shared tower whose first call saw only
        # a held input (a Siamese network's other image) is named by its image call, without a "#2"
        calls: dict[int, set[int]] = {}
        for rec in records:
            calls.setdefault(id(rec.module), set()).add(rec.call)
        ranks = {(m, c): i for m, made in calls.items() for i, c in enumerate(sorted(made))}
        for rec in records:
            if rec.op is None:
                label = self._label(rec.module, ranks[(id(rec.module), rec.call)])
                if rec.named:
                    label += ":" + ".".join(str(k) for k in rec.key)
            else:
                where = (id(rec.module), rec.call, rec.op)
                n = count[where] = count.get(where, 0) + 1
                label = rec.op if n == 1 else f"{rec.op}#{n}"
                if rec.module is not self.module:
                    label = f"{self._label(rec.module, ranks[(id(rec.module), rec.call)])}.{label}"
                while label in seen:  # a child module named like the op
                    label += "()"
            seen.add(label)
            labels.append(label)
        return labels

    def _not_map_names(self) -> dict[str, dict[str, Any]]:
        """Modules whose output is no floating-point map, by name: what they returned (row 0's ``extra``)."""
        modules = {id(m): m for m in self.module.modules()}
        return {self._label(modules[i], call): {"type": module_type(modules[i]), "output": what, "module_id": i}
                for i, (call, what) in self._not_maps.items() if i in modules}

    def _info(self, index: int, rec: _Record, free: set[int], label: str) -> LayerInfo:
        module = rec.module
        shape = tuple(None if i in free else d for i, d in enumerate(rec.shape))
        if rec.op is not None:
            return self._op_info(index, rec, shape, label)
        type_name = module_type(module)
        kind = _torch_kind(module, type_name, rec.container)
        one_d = type_name.endswith("1d") or (rec.in_shape is not None and len(rec.in_shape) == 3)
        size = stride = dilation = padding = None
        upsample: tuple[float, float] | None = None
        kernel_shape = None
        extra: dict[str, Any] = {"global": False, "module_id": id(module)}
        w = _weight(module)
        if kind == "conv" and w is not None:
            groups = int(_attr(module, "groups") or 1)
            kernel_shape = _kernel_layout(w.shape, type_name, groups)
            size = _pair(tuple(w.shape[2:]), one_d)
            stride = _pair(_attr(module, "stride"), one_d)
            dilation = _pair(_attr(module, "dilation"), one_d)
        elif kind == "pool" and "Adaptive" in type_name:
            spatial_in = rec.in_shape[2:] if rec.in_shape is not None else ()
            spatial_out = rec.shape[:-1]
            if spatial_out and all(d == 1 for d in spatial_out):
                extra["global"] = True
            elif spatial_in and len(spatial_in) == len(spatial_out) and len(spatial_in) in (1, 2) \
                    and all(i % o == 0 for i, o in zip(spatial_in, spatial_out)):
                steps = [i // o for i, o in zip(spatial_in, spatial_out)]  # an even split: a plain pool
                ks = [i - (o - 1) * s for i, o, s in zip(spatial_in, spatial_out, steps)]
                size, stride = _pair(ks, len(ks) == 1), _pair(steps, len(steps) == 1)
                padding = (0, 0)
        elif kind == "pool":
            size = _pair(_attr(module, "kernel_size"), one_d)
            stride = _pair(_attr(module, "stride") or _attr(module, "kernel_size"), one_d)
            d = _pair(_attr(module, "dilation"), one_d)
            dilation = d if d not in (None, (1, 1)) else None
        geometry = _geometry(module, type_name, kind, size, dilation, one_d, rec) if not (
            rec.container and kind not in ("conv", "pool")) else {}
        extra.update(geometry.pop("extra", {}))
        size = geometry.pop("kernel_size", size)
        padding = geometry.get("padding", padding)
        upsample = geometry.get("upsample", upsample)
        if not geometry and not rec.container and _resamples(type_name):
            upsample = _scale(rec.in_shape, rec.shape, bool(rec.channels_last))  # no taps known: the field shows ?
        if kind in ("conv", "pool") and rec.geometry and rec.geometry.get("pad") is not None and padding is not None \
                and getattr(module, "padding_mode", "zeros") == "zeros":  # reflect/replicate: torch's own F.pad
            top, left = rec.geometry["pad"]  # the leaf pads its input itself before its window
            padding = (padding[0] + top, padding[1] + left)
        return LayerInfo(
            index=index, name=label, type=type_name, kind=kind, output_shape=shape,
            params=_params(module, recurse=not rec.container),
            kernel_shape=kernel_shape, kernel_size=size, stride=stride,
            dilation=dilation, parents=tuple(rec.parents), parent=rec.parent, padding=padding,
            upsample=upsample, extra=extra,
        )

    def _op_info(self, index: int, rec: _Record, shape: tuple[int | None, ...], label: str) -> LayerInfo:
        """The row of a functional op (``add``, ``cat``, ``interpolate``, ``pad``, ``flatten``)."""
        op = rec.op or ""
        padding = None
        upsample = None
        if op == "pad" and rec.geometry and rec.geometry.get("pad") is not None:
            padding = tuple(rec.geometry["pad"])
        elif op == "interpolate":
            found = _interpolation(rec)
            if found is not None:
                return LayerInfo(index=index, name=label, type=op, kind=OP_KINDS[op], output_shape=shape,
                                 parents=tuple(rec.parents), parent=rec.parent, padding=found["padding"],
                                 upsample=found["upsample"], kernel_size=found["kernel_size"],
                                 extra={"global": False, "op": op, **found.get("extra", {})})
            upsample = _scale(rec.in_shape, rec.shape, bool(rec.channels_last))  # no taps: the field shows ?
        return LayerInfo(index=index, name=label, type=op, kind=OP_KINDS[op], output_shape=shape,
                         parents=tuple(rec.parents), parent=rec.parent, padding=padding,  # type: ignore[arg-type]
                         upsample=upsample, extra={"global": False, "op": op})

    def kernels(self, index: int) -> np.ndarray:
        table = self.layers()
        if not 0 < index < len(table) or table[index].kernel_shape is None:
            info = table[index] if 0 <= index < len(table) else None
            what = f"{info.name} ({info.type})" if info else f"index {index}"
            raise UnsupportedModel(f"layer {what} has no convolution kernel; select conv layers (--layers conv)")
        module = self._records[index - 1].module
        w = _weight(module)
        groups = int(_attr(module, "groups") or 1)
        return _canonical_kernel(w.detach().cpu().float().numpy(), table[index].type, groups)

