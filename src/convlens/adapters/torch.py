"""PyTorch modules, ``torch.export`` programs (``.pt2``) and torchvision models.

Intermediate outputs are captured with forward hooks, registered for one
forward pass and removed in ``finally`` (even when the pass raises). The layer
table comes from one probe pass on zeros with hooks on every module.

What a row is:

* one *innermost* module call: a call of a module during which no other
  module was called. Leaf modules (``Conv2d``, ``ReLU``...) are rows; so is a
  module with children that computes everything itself (``MultiheadAttention``
  calls its weights functionally). Work done by a parent module between its
  children's calls (ResNet's ``out += identity``, ``torch.flatten``) has no
  row of its own.
* rows are in call order, the input being row 0; names follow
  ``named_modules()`` (``layer1.0.conv1``); the k-th call of a module called
  several times is ``name#k`` (torchvision's ``BasicBlock`` calls its ``relu``
  twice: ``layer1.0.relu`` and ``layer1.0.relu#2``).
* tuple, list and dict outputs: each floating-point tensor in the output is a
  row. When there is only one (``MaxPool2d(return_indices=True)`` gives the
  pooled map and integer indices) the row keeps the module's name; otherwise
  rows are ``name:KEY`` with KEY the position or dict key, nested keys joined
  by dots (``lstm:0``, ``lstm:1.0``, ``heads:logits``). Integer tensors
  (indices, masks) are not rows. The model's own output (what ``run`` returns)
  is the first floating-point tensor of whatever ``forward`` returns.

Layouts (the contract of :mod:`convlens.adapters.base`): batches arrive
``(N, H, W, C)`` and go into torch as ``(N, C, H, W)``; captured outputs with
3 or more axes have their channel axis (axis 1 in torch) moved last, except
outputs that are channels-last already (``Linear``/``LayerNorm`` on ConvNeXt's
``(N, H, W, C)`` or on transformer tokens ``(N, L, C)``; see
:func:`_is_channels_last`); kernels are ``(O, I, kh, kw)``, which is torch's
own ``Conv2d`` layout.

Input shape of a module that does not say: ``(224, 224, C)`` with ``C`` the
first convolution's ``in_channels`` is probed; a second probe at 160x160 tells
whether the module accepts any size, in which case the input shape is
``(None, None, C)`` and every output dimension that changed between the two
probes is ``None`` in the table.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import io
import json
import logging
import os
import pickle
import socket
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import BadModel, ConvlensError, MissingDependency, UnsafeModel, UnsupportedModel, WeightsUnavailable
from ..core.kinds import kind_of
from ..core.layers import LayerInfo
from ..core.receptive import with_receptive_fields
from ..core.sizes import size_hint
from .base import Gradients, OnOutput, RankedGradients, Target, check_rows, target_cotangent
from .base import first_line as _first_line  # one-line error messages

__all__ = ["HookedRow", "TorchAdapter", "hooked_gradients", "import_torch", "load_state_dict_file",
           "open_torch_file", "open_torchvision"]

#: Spatial size of the probe pass for modules that do not know their input size.
PROBE_SIZE = 224
#: A second, different size: a module that also runs on it accepts any size.
SECOND_PROBE_SIZE = 160
#: Seconds a weights download may stall (connect or read) before it counts as offline.
DOWNLOAD_TIMEOUT = 20.0

_SAVE_HINT = ("export it with torch.export.save(torch.export.export(model.eval(), (example,)), 'model.pt2') "
              "and open the .pt2 file, or build the module in Python and pass it to convlens.Lens(module)")


def import_torch() -> Any:
    """Import PyTorch or say which extra to install."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(f"PyTorch is not installed ({exc}); run: pip install 'convlens[torch]'") from None
    return torch


def _import_torchvision() -> Any:
    try:
        import torchvision
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(f"torchvision is not installed ({exc}); run: pip install 'convlens[torch]'") from None
    return torchvision


# --------------------------------------------------------------------------- outputs


def _float_tensors(out: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """``(key path, tensor)`` for every floating-point tensor in a nested output, in order."""
    import torch

    if isinstance(out, torch.Tensor):
        if out.is_floating_point():
            yield path, out
    elif isinstance(out, Mapping):
        for k, v in out.items():
            yield from _float_tensors(v, (*path, str(k)))
    elif isinstance(out, (tuple, list)):
        for i, v in enumerate(out):
            yield from _float_tensors(v, (*path, i))


def _pick(out: Any, path: tuple) -> Any:
    for k in path:
        if isinstance(out, Mapping):
            out = out[k] if k in out else next(v for kk, v in out.items() if str(kk) == k)
        else:
            out = out[int(k)]
    return out


def _all_tensors(args: Any, kwargs: Mapping[str, Any] | None = None) -> list[Any]:
    import torch

    found: list[Any] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            found.append(obj)
        elif isinstance(obj, Mapping):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (tuple, list)):
            for v in obj:
                walk(v)

    walk(args)
    if kwargs:
        walk(kwargs)
    return found


def _canonical_shape(shape: Sequence[int], channels_last: bool = False) -> tuple[int, ...]:
    """A torch shape without its batch axis, channels last when there are 3 or more axes."""
    dims = tuple(int(d) for d in shape)
    if len(dims) >= 3 and not channels_last:
        dims = (dims[0], *dims[2:], dims[1])
    return dims[1:]


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


def _to_numpy(t: Any, channels_last: bool = False) -> np.ndarray:
    """One captured tensor as a float32 numpy array in the canonical layout.

    Always a copy, made inside the hook: the tensor may be overwritten by an
    in-place op (``ReLU(inplace=True)``) right after, and ``.numpy()`` shares
    memory. ``clone`` after ``movedim`` is that one copy, channels last.
    """
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype != torch.float32:
        t = t.float()
    if t.ndim >= 3 and not channels_last:
        t = t.movedim(1, -1)
    return t.clone(memory_format=torch.contiguous_format).numpy()


def _replaced(out: Any, new: Mapping[tuple, Any]) -> Any:
    """A module's output with the tensors at the given key paths replaced (a copy of its containers)."""
    if () in new:
        return new[()]
    if isinstance(out, Mapping):
        items = {k: _replaced(v, {p[1:]: t for p, t in new.items() if p[0] == str(k)})
                 for k, v in out.items()}
        try:
            return type(out)(items)  # type: ignore[call-arg]
        except TypeError:
            return items
    if isinstance(out, (tuple, list)):
        vals = [_replaced(v, {p[1:]: t for p, t in new.items() if p[0] == i}) if any(p[0] == i for p in new)
                else v for i, v in enumerate(out)]
        if isinstance(out, tuple) and hasattr(out, "_fields"):  # a namedtuple
            return type(out)(*vals)
        return type(out)(vals)
    return out


class _StopForward(BaseException):
    """Raised from a hook once the last row a gradient pass needs has run (``need_output=False``).

    A ``BaseException``, as ``GeneratorExit`` is: a model's own ``except Exception``
    (and any caller's error wrapping) lets it through to :func:`hooked_gradients`.
    """


#: A final module of these types turns logits into probabilities: a class score is read before it.
_SOFTMAX_TYPES = ("Softmax", "LogSoftmax", "Softmax2d")


# --------------------------------------------------------------------------- module facts


def _type_name(module: Any) -> str:
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


def _params(module: Any) -> int:
    """Weights of a module: parameters and floating-point buffers (BatchNorm's running stats), as Keras counts."""
    n = sum(int(p.numel()) for p in module.parameters() if not _is_lazy(p))
    n += sum(int(b.numel()) for b in module.buffers() if b.is_floating_point())
    return n


def _required_inputs(module: Any) -> list[str]:
    """Names of the arguments ``forward`` needs, as its signature says."""
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
             inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in sig.parameters.values() if p.kind in kinds and p.default is p.empty]


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
    channels_last: bool = False  # the torch tensor already holds its channels last (see _is_channels_last)


class TorchAdapter:
    """A ``torch.nn.Module`` behind convlens's adapter contract.

    Args:
        module: any ``torch.nn.Module`` taking one tensor (also a module from
            ``torch.export.unflatten``).
        input_shape: ``(H, W, C)`` (``None`` for a free dimension); ``(H, W)``
            takes ``C`` from the first convolution. Default: probed (see the
            module docstring).
        preprocess: the preprocessing preset the model expects, if known.
        name: the model's name; default its class name.

    Raises:
        UnsupportedModel: a TorchScript module, or a ``forward`` that needs
            several inputs.
    """

    framework = "torch"
    class_names: list[str] | None = None
    class_names_source = ""

    def __init__(self, module: Any, *, input_shape: Sequence[int | None] | None = None,
                 preprocess: str | None = None, name: str | None = None) -> None:
        torch = import_torch()
        self.torch = torch
        self._probe_sizes: tuple[list[int], list[int]] | None = None
        if isinstance(module, torch.export.ExportedProgram):
            shape, self._probe_sizes = _exported_input_shape(module)
            input_shape = input_shape if input_shape is not None else shape
            module = _unflatten(module)
        if type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None),
                                                                     torch.nn.Module):
            module = module._orig_mod  # torch.compile: hooks belong on the original, eager module
        if isinstance(module, torch.jit.ScriptModule):
            raise UnsupportedModel(f"{type(module).__name__} is a TorchScript module, whose layers cannot be "
                                   f"hooked; {_SAVE_HINT}")
        if not isinstance(module, torch.nn.Module):
            raise UnsupportedModel(f"expected a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.name = name or _type_name(module)
        self.preprocess = preprocess
        needed = _required_inputs(module)
        if len(needed) > 1:
            raise UnsupportedModel(
                f"{self.name}.forward takes {len(needed)} inputs ({', '.join(needed)}); convlens feeds one "
                "image tensor: wrap the model in a module whose forward(x) calls it with x and the other "
                "inputs fixed, and pass that")
        self._given = tuple(input_shape) if input_shape is not None else None
        self._input_shape: tuple[int | None, ...] | None = None
        self._layers: list[LayerInfo] | None = None
        self._records: list[_Record] = []
        self._output_row: int | None = None  # the probe row whose tensor the model returned
        self._final_activation: str | None = None  # set by hand: overrides what the probe found
        first = next((p for p in module.parameters() if p.is_floating_point() and not _is_lazy(p)), None)
        self._dtype = first.dtype if first is not None else torch.float32
        self._device = first.device if first is not None else torch.device("cpu")
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
            if kind_of(_type_name(m)) == "conv" and _weight(m) is not None:
                return m
        return None

    def _probe_shape(self) -> tuple[list[int], list[int]]:
        """The canonical probe shape, and which of its axes are free (not given)."""
        given = self._given
        conv = self._first_conv()
        spatial_axes = _weight(conv).ndim - 2 if conv is not None else 2
        if given is None or (len(given) == spatial_axes and spatial_axes == 2):
            if conv is None:
                raise UnsupportedModel(f"{self.name} has no convolution to tell its input channels from; "
                                       "pass --input-shape H,W,C (input_shape=(H, W, C) in Python)")
            w = _weight(conv)
            if "Transpose" in _type_name(conv):
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

    def _to_torch(self, batch: np.ndarray) -> Any:
        x = self.torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if x.ndim >= 3:
            x = x.movedim(-1, 1).contiguous()
        return x.to(device=self._device, dtype=self._dtype)

    def _forward(self, x: Any, *, probe: bool = False) -> Any:
        try:
            return self.module(x)
        except ConvlensError:
            raise
        except Exception as exc:
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
        """One pass on zeros of canonical ``shape`` with hooks on every module; the rows it finds."""
        x = self._to_torch(np.zeros((1, *shape), dtype=np.float32))
        records: list[_Record] = []
        owner: dict[int, int] = {id(x): 0}
        keep: list[Any] = [x]  # outputs stay alive so that their ids stay unique during the probe
        calls: dict[int, int] = {}
        stack: list[list[bool]] = []  # one frame per running module call: [called another module]

        def pre_hook(module: Any, args: Any) -> None:
            if stack:
                stack[-1][0] = True
            stack.append([False])

        def hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            k = calls.get(id(module), 0)
            calls[id(module)] = k + 1
            frame = stack.pop() if stack else [True]
            if frame[0]:
                return  # not innermost: its children's calls are the rows
            inputs = _all_tensors(args, kwargs)
            parents = sorted({owner[id(t)] for t in inputs if id(t) in owner}) or [len(records)]
            in_shape = tuple(inputs[0].shape) if inputs else None
            outs = list(_float_tensors(output))
            parent = records[parents[0] - 1] if parents[0] > 0 else None  # row 0: the NCHW input
            parent_last = parent is not None and parent.channels_last
            parent_shape = parent.shape if parent is not None else _canonical_shape(x.shape)
            parent_channels = parent_shape[-1] if parent_shape else None
            for key, t in outs:
                last = _is_channels_last(module, _type_name(module), tuple(t.shape), parent_last,
                                         parent_channels)
                records.append(_Record(module, k, key, len(outs) > 1, _canonical_shape(t.shape, last),
                                       parents, in_shape, last))
                owner[id(t)] = len(records)  # row 0 is the input
                keep.append(t)

        with self._evaluating(), self._hooked(list(self.module.modules()), hook, pre_hook):
            out = self._forward(x, probe=True)
        returned = next(iter(_float_tensors(out)), None)
        self._output_row = owner.get(id(returned[1])) if returned is not None else None
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
            self._records = records
            rows = [LayerInfo(index=0, name="input", type="Input", kind="input", output_shape=self._input_shape)]
            for j, rec in enumerate(records):
                rows.append(self._info(len(rows), rec, out_free[j]))
            self._layers = with_receptive_fields(rows)
        return self._layers

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

    def _info(self, index: int, rec: _Record, free: set[int]) -> LayerInfo:
        module = rec.module
        type_name = _type_name(module)
        kind = kind_of(type_name)
        if kind in ("model", "input"):
            kind = "other"
        base = self._names.get(id(module), type_name)
        label = base if rec.call == 0 else f"{base}#{rec.call + 1}"
        if rec.named:
            label += ":" + ".".join(str(k) for k in rec.key)
        shape = tuple(None if i in free else d for i, d in enumerate(rec.shape))
        one_d = type_name.endswith("1d") or (rec.in_shape is not None and len(rec.in_shape) == 3)
        size = stride = dilation = None
        kernel_shape = None
        extra: dict[str, Any] = {"global": False}
        w = _weight(module)
        if kind == "conv" and w is not None:
            groups = int(_attr(module, "groups") or 1)
            kernel_shape = _kernel_layout(w.shape, type_name, groups)
            size = _pair(tuple(w.shape[2:]), one_d)
            stride = _pair(_attr(module, "stride"), one_d)
            dilation = _pair(_attr(module, "dilation"), one_d)
            if "Transpose" in type_name:  # upsampling: the field does not grow by stride
                stride = (1, 1)
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
        elif kind == "pool":
            size = _pair(_attr(module, "kernel_size"), one_d)
            stride = _pair(_attr(module, "stride") or _attr(module, "kernel_size"), one_d)
            d = _pair(_attr(module, "dilation"), one_d)
            dilation = d if d not in (None, (1, 1)) else None
        return LayerInfo(
            index=index, name=label, type=type_name, kind=kind, output_shape=shape,
            params=_params(module), kernel_shape=kernel_shape, kernel_size=size, stride=stride,
            dilation=dilation, parents=tuple(rec.parents), extra=extra,
        )

    # ----------------------------------------------------------------- running

    def run(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput) -> np.ndarray:
        """One forward pass; ``on_output`` gets each wanted layer's output as its module returns it.

        Hooks sit only on the modules of wanted rows, for this pass only; each
        output is copied to numpy inside its hook (see :func:`_to_numpy`).
        """
        self.layers()
        wanted_set = set(wanted)
        batch = np.asarray(batch, dtype=np.float32)
        if 0 in wanted_set:
            on_output(0, batch)
        targets: dict[int, dict[int, list[tuple[int, tuple, bool]]]] = {}
        modules: dict[int, Any] = {}
        for row, rec in enumerate(self._records, start=1):
            if row in wanted_set:
                targets.setdefault(id(rec.module), {}).setdefault(rec.call, []).append(
                    (row, rec.key, rec.channels_last))
                modules[id(rec.module)] = rec.module
        calls: dict[int, int] = {}

        def hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            k = calls.get(id(module), 0)
            calls[id(module)] = k + 1
            for row, key, last in targets[id(module)].get(k, ()):
                on_output(row, _to_numpy(_pick(output, key), last))

        x = self._to_torch(batch)
        with self._evaluating(), self._hooked(list(modules.values()), hook):
            y = self._forward(x)
        first = next(iter(_float_tensors(y)), None)
        return _to_numpy(first[1]) if first is not None else np.zeros((len(batch), 0), np.float32)

    # ----------------------------------------------------------------- gradients

    def gradients_unavailable(self) -> str | None:
        return None

    def gradients(self, batch: np.ndarray, target: Target, layers: Sequence[int] = (), *,
                  wrt_input: bool = False, need_output: bool = True) -> Gradients:
        """One forward and one backward pass with autograd (see :func:`hooked_gradients`)."""
        table = self.layers()
        rows = check_rows(table, layers, target, self.name)
        needed = set(rows) | ({int(target.layer)} if target.layer is not None else set())
        hooked = {r: HookedRow(rec.module, rec.call, rec.key, rec.channels_last)
                  for r, rec in enumerate(self._records, start=1) if r in needed}
        last = self._records[-1] if self._records else None
        softmax = last.module if last is not None and _type_name(last.module) in _SOFTMAX_TYPES else None
        where = None if target.layer is None else table[int(target.layer)].name
        batch = np.asarray(batch, dtype=np.float32)
        return hooked_gradients(
            self.module, self._forward, self._to_torch(batch), batch, hooked, rows, target.layer,
            lambda shape: target_cotangent(target, shape, where), wrt_input=wrt_input,
            need_output=need_output, softmax=softmax,
            no_output=lambda r: UnsupportedModel(
                f"layer {table[r].name} (row {r}) gave no output in this pass of {self.name} (its module was "
                "not called for this input); pick another layer"))

    def run_ranked(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput, *, layer: int,
                   top: int) -> RankedGradients:
        """:meth:`run` that also records the top classes' gradients at ``layer`` (see :class:`RankedGradients`).

        One forward pass with autograd on from ``layer`` only (its output is
        detached and made the one leaf, no parameter records a gradient, eval
        mode; all restored after), then one ``autograd.grad`` per rank from the
        score (the input of a final softmax module, else the output) back to
        that leaf. The wanted outputs are copied in their hooks and handed to
        ``on_output`` after the pass, so a failed pass hands nothing over.

        Raises:
            UnsupportedModel: an output that is not ``(N, K)``, or ``layer`` gave no output.
        """
        import torch

        table = self.layers()
        wanted_set = set(wanted)
        check_rows(table, [*wanted_set, layer], Target(), self.name)
        last_shape = table[-1].output_shape
        if not last_shape or len(last_shape) != 1 or last_shape[0] is None:
            raise UnsupportedModel(f"{self.name}: the output is not one score per class")
        batch = np.asarray(batch, dtype=np.float32)
        targets: dict[int, dict[int, list[tuple[int, tuple, bool]]]] = {}
        modules: dict[int, Any] = {}
        for row, rec in enumerate(self._records, start=1):
            if row in wanted_set or row == layer:
                targets.setdefault(id(rec.module), {}).setdefault(rec.call, []).append(
                    (row, rec.key, rec.channels_last))
                modules[id(rec.module)] = rec.module
        last = self._records[-1] if self._records else None
        softmax = last.module if last is not None and _type_name(last.module) in _SOFTMAX_TYPES else None
        if softmax is not None:
            modules[id(softmax)] = softmax
        calls: dict[int, int] = {}
        kept: list[tuple[int, np.ndarray]] = []
        cam: list[Any] = []
        pre_softmax: list[Any] = []

        def hook(module: Any, args: Any, kwargs: Any, output: Any) -> Any:
            k = calls.get(id(module), 0)
            calls[id(module)] = k + 1
            if module is softmax:
                inputs = _all_tensors(args, kwargs)
                pre_softmax[:] = [inputs[0] if inputs else None, output]
            replace: dict[tuple, Any] = {}
            for row, key, channels_last in targets.get(id(module), {}).get(k, ()):
                t = _pick(output, key)
                if row in wanted_set:
                    kept.append((row, _to_numpy(t, channels_last)))
                if row == layer and not cam:
                    leaf = t.detach().requires_grad_()
                    cam[:] = [leaf, channels_last]
                    replace[key] = leaf.clone()  # an in-place op after this module changes the clone only
            return _replaced(output, replace) if replace else None

        params = [(p, p.requires_grad) for p in self.module.parameters()]
        flags = [(m, m.training) for m in self.module.modules()]
        try:
            for p, _ in params:
                p.requires_grad_(False)
            self.module.eval()
            with torch.enable_grad(), self._hooked(list(modules.values()), hook):
                y = self._forward(self._to_torch(batch))
            first = next(iter(_float_tensors(y)), None)
            out_t = first[1] if first is not None else None
            if out_t is None or out_t.ndim != 2:
                raise UnsupportedModel(f"{self.name}: the output is not one score per class")
            if not cam:
                raise UnsupportedModel(f"layer {table[layer].name} (row {layer}) gave no output in this pass "
                                       f"of {self.name}; pick another layer")
            score_t, logits = out_t, False
            if softmax is not None and len(pre_softmax) == 2 and pre_softmax[1] is out_t \
                    and pre_softmax[0] is not None and pre_softmax[0].shape == out_t.shape:
                score_t, logits = pre_softmax[0], True
            output = _to_numpy(out_t)
            k = max(1, min(int(top), output.shape[1]))
            classes = np.argsort(-output, axis=1, kind="stable")[:, :k]
            leaf, channels_last = cam
            grads = []
            for r in range(k):
                cot = torch.zeros_like(score_t)
                cot[torch.arange(len(cot)), torch.from_numpy(classes[:, r]).to(cot.device)] = 1
                got = torch.autograd.grad([score_t], [leaf], [cot], retain_graph=r < k - 1, allow_unused=True) \
                    if score_t.requires_grad else (None,)
                grads.append(_to_numpy(got[0], channels_last) if got[0] is not None
                             else np.zeros(_to_numpy(leaf, channels_last).shape, np.float32))
        finally:
            for m, flag in flags:
                m.training = flag
            for p, flag in params:
                p.requires_grad_(flag)
        if 0 in wanted_set:
            on_output(0, batch)
        for row, a in kept:
            on_output(row, a)
        return RankedGradients(output=output, layer=int(layer), activations=_to_numpy(leaf, channels_last),
                               classes=classes.astype(np.int64), grads=np.stack(grads), logits=logits)

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


# --------------------------------------------------------------------------- gradients


@dataclass(frozen=True)
class HookedRow:
    """Where a table row's tensor appears in a module tree: the ``call``-th call of ``module``,
    at ``key`` in its output, channels last already or not (see :func:`hooked_gradients`)."""

    module: Any
    call: int
    key: tuple
    channels_last: bool = False


def hooked_gradients(module: Any, forward: Callable[[Any], Any], x: Any, batch: np.ndarray,
                     hooked: Mapping[int, HookedRow], rows: Sequence[int], target_layer: int | None,
                     cotangent: Callable[[tuple[int, ...]], np.ndarray], *, wrt_input: bool,
                     need_output: bool, softmax: Any = None, input_channels_last: bool = False,
                     output_channels_last: bool = False, given: Mapping[int, Any] | None = None,
                     no_output: Callable[[int], Exception]) -> Gradients:
    """One forward and one backward pass through a torch module, tensors captured by forward hooks.

    No parameter gets a gradient: every ``requires_grad`` flag is off for the
    pass, and every submodule's ``training`` flag is off (both restored after;
    hooks are removed in ``finally``). Without ``wrt_input``, the output of the
    earliest needed row is detached and made the one leaf in its hook, so
    autograd records only the network after it: a Grad-CAM pass at the last
    conv layer costs about one forward pass. A later needed row that does not
    depend on an earlier one (a parallel branch, a ResNet shortcut) becomes a
    leaf of its own in the same way. Each captured output is handed on
    as a clone, so an in-place op after it (``ReLU(inplace=True)``) changes
    neither the captured values nor their gradient. With ``need_output=False``
    and a layer target, the pass stops once the last needed row has run.

    Args:
        module: the module whose parameters and modes are switched off for the pass.
        forward: runs the module on ``x`` (with the caller's error handling).
        x: the input tensor, in the module's own layout and dtype.
        batch: the same input, canonical ``(N, H, W, C)``; row 0's activation.
        hooked: for each needed row above 0 (requested or target), where its tensor is.
        rows: the rows whose activations and gradients are returned (0: the input).
        target_layer: the row holding the score; ``None``: the model's output
            (its first floating-point tensor), or ``softmax``'s input when
            ``softmax``'s last call gave that output.
        cotangent: the canonical cotangent for the canonical shape of the score's tensor.
        wrt_input: also differentiate the input.
        need_output: ``False`` lets the pass stop after the last needed row.
        softmax: the module that may turn logits into the model's output.
        input_channels_last: ``x`` is NHWC already (an ONNX graph taking NHWC).
        output_channels_last: the model's output is channels-last already.
        given: tensors of needed rows computed elsewhere (by onnxruntime), which
            ``forward`` uses as they are: they become leaves (``requires_grad``
            set in place) and their modules are not hooked.
        no_output: the error for a needed row that gave no output.
    """
    import torch

    needed = set(rows) | ({int(target_layer)} if target_layer is not None else set())
    start = 0 if wrt_input or 0 in needed else min(needed, default=None)
    stop_after = max(needed) if not need_output and target_layer is not None else None
    plan: dict[int, dict[int, list[tuple[int, tuple]]]] = {}
    modules: dict[int, Any] = {}
    given = dict(given or {})
    for row in needed - {0} - set(given):
        h = hooked[row]
        plan.setdefault(id(h.module), {}).setdefault(h.call, []).append((row, h.key))
        modules[id(h.module)] = h.module
    if target_layer is not None:
        softmax = None
    if softmax is not None:
        modules[id(softmax)] = softmax
    captured: dict[int, Any] = {}
    pre_softmax: list[Any] = []  # (input, output) of the softmax's last call
    calls: dict[int, int] = {}

    def hook(mod: Any, args: Any, kwargs: Any, output: Any) -> Any:
        k = calls.get(id(mod), 0)
        calls[id(mod)] = k + 1
        if mod is softmax:
            inputs = _all_tensors(args, kwargs)
            pre_softmax[:] = [inputs[0] if inputs else None, output]
        replace: dict[tuple, Any] = {}
        for row, key in plan.get(id(mod), {}).get(k, ()):
            t = _pick(output, key)
            if not t.requires_grad:  # a leaf: autograd records only what comes after it
                t = t.detach().requires_grad_()
            captured[row] = t
            replace[key] = t.clone()  # an in-place op after this module changes the clone only
        if stop_after is not None and needed <= captured.keys():
            raise _StopForward
        return _replaced(output, replace) if replace else None

    if start == 0:
        x = x.detach().requires_grad_()
        captured[0] = x
    for row, t in given.items():
        captured[row] = t.requires_grad_() if not t.requires_grad else t
    params = [(p, p.requires_grad) for p in module.parameters()]
    flags = [(m, m.training) for m in module.modules()]
    handles: list[Any] = []
    try:
        for p, _ in params:
            p.requires_grad_(False)
        module.eval()
        for m in modules.values():
            handles.append(m.register_forward_hook(hook, with_kwargs=True))
        with torch.enable_grad():
            try:
                if stop_after is not None and needed <= captured.keys():
                    raise _StopForward  # everything needed is given
                y = forward(x)
            except _StopForward:
                y = None
        for h in handles:
            h.remove()
        handles.clear()
        out_t = next(iter(_float_tensors(y)), (None, None))[1] if y is not None else None
        logits = False
        if target_layer is None:
            if out_t is None:
                raise UnsupportedModel("the model returned no floating-point output to take a class score "
                                       "from; pick a layer as the target")
            score_t, score_last = out_t, output_channels_last
            if softmax is not None and len(pre_softmax) == 2 and pre_softmax[1] is out_t \
                    and pre_softmax[0] is not None and pre_softmax[0].shape == out_t.shape:
                score_t, logits = pre_softmax[0], True
        else:
            if int(target_layer) not in captured:
                raise no_output(int(target_layer))
            score_t = captured[int(target_layer)]
            score_last = int(target_layer) == 0 or hooked[int(target_layer)].channels_last
        missing = [r for r in rows if r not in captured]
        if missing:
            raise no_output(missing[0])
        cot_np = cotangent((score_t.shape[0], *_canonical_shape(score_t.shape, score_last)))
        cot = torch.from_numpy(np.ascontiguousarray(cot_np))
        if cot.ndim >= 3 and not score_last:
            cot = cot.movedim(-1, 1)
        cot = cot.to(device=score_t.device, dtype=score_t.dtype)
        with torch.no_grad():
            score = (score_t.detach() * cot).flatten(1).sum(1).double().cpu().numpy()
        wanted = [r for r in rows if captured[r].requires_grad]
        if wrt_input and 0 not in wanted:
            wanted.append(0)
        grads_t: list[Any] = [None] * len(wanted)
        if wanted and score_t.requires_grad:
            grads_t = list(torch.autograd.grad([score_t], [captured[r] for r in wanted], [cot],
                                               allow_unused=True))
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag
        for p, flag in params:
            p.requires_grad_(flag)

    def last(r: int) -> bool:
        return input_channels_last if r == 0 else hooked[r].channels_last

    by_row = dict(zip(wanted, grads_t))
    activations: dict[int, np.ndarray] = {}
    grads: dict[int, np.ndarray] = {}
    for r in rows:
        activations[r] = batch.copy() if r == 0 else _to_numpy(captured[r], last(r))
        g = by_row.get(r)
        grads[r] = _to_numpy(g, last(r)) if g is not None else np.zeros_like(activations[r])
    input_grad = None
    if wrt_input:
        g = by_row.get(0)
        input_grad = _to_numpy(g, input_channels_last) if g is not None else np.zeros_like(batch)
    output = _to_numpy(out_t, output_channels_last) if out_t is not None else None
    return Gradients(output=output, score=score, activations=activations, grads=grads,
                     input_grad=input_grad, logits=logits)
# --------------------------------------------------------------------------- final activation

#: Modules that hand their input's values on unchanged: a softmax behind them still makes the output.
_TORCH_PASS_THROUGH = {"Flatten", "Unflatten", "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
                       "AlphaDropout"}
#: Modules whose output is a linear function of their input: scores, not probabilities.
_TORCH_LINEAR = {"Linear", "LazyLinear", "Bilinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
                 "ConvTranspose2d", "ConvTranspose3d", "LazyConv2d"}


def torch_final_activation(records: Sequence[_Record], output_row: int | None) -> str | None:
    """What makes a module's output: ``"softmax"``, ``"sigmoid"``, ``"linear"`` or ``None``.

    ``output_row`` is the probe row whose tensor ``forward`` returned (``None``
    when the output was computed outside any module, e.g. by
    ``torch.softmax`` in ``forward``: then the graph does not say). The walk
    goes back through modules that pass values on unchanged (``Flatten``,
    ``Dropout``, ``Identity``) to an ``nn.Softmax`` (``"softmax"``), an
    ``nn.Sigmoid`` (``"sigmoid"``) or a ``Linear``/conv module (``"linear"``).
    """
    row = output_row
    for _ in range(len(records) + 1):
        if row is None or not 0 < row <= len(records):
            return None
        rec = records[row - 1]
        name = _type_name(rec.module)
        if name in ("Softmax", "Softmax2d"):
            return "softmax"
        if name == "Sigmoid":
            return "sigmoid"
        if name in _TORCH_LINEAR:
            return "linear"
        if name not in _TORCH_PASS_THROUGH or not rec.parents:
            return None
        row = rec.parents[0]
    return None


# --------------------------------------------------------------------------- files


def _unflatten(ep: Any) -> Any:
    """An exported program as a module tree whose names follow the original ``named_modules()``."""
    torch = import_torch()
    try:
        return torch.export.unflatten(ep)
    except Exception as exc:
        raise UnsupportedModel(f"cannot rebuild the module tree of this exported program "
                               f"({type(exc).__name__}: {_first_line(str(exc))})") from None


def _check_pt2_safe(path: Path, names: list[str], zf: zipfile.ZipFile) -> None:
    """Refuse a ``.pt2`` whose loading would unpickle (run code): ``torch.export.load`` falls back
    to ``torch.load(weights_only=False)`` for pickled tensors, custom objects, legacy weights and
    sample inputs that are not plain tensors."""
    torch = import_torch()
    why = None
    for name in names:
        base = name.split("/", 1)[-1] if "/" in name else name
        if base.startswith("data/aotinductor/"):
            # an AOTInductor package: torch.export.load extracts and dlopens its shared library
            raise UnsafeModel(f"{path} holds an AOTInductor-compiled model ({base}), whose native code "
                              "torch.export.load would run; pass --trust (trust=True) only if you trust "
                              "its author, or save the program alone with torch.export.save")
        try:
            if base.endswith("_config.json") and base.startswith(("data/weights/", "data/constants/")):
                config = json.loads(zf.read(name)).get("config", {})
                for fqn, meta in config.items():
                    if meta.get("use_pickle"):
                        why = f"tensor {fqn} is stored as a pickle"
                    elif not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
                        why = f"constant {fqn} is a pickled object"
            elif base.endswith(".pt") and base.startswith(("data/", "models/")):
                torch.load(io.BytesIO(zf.read(name)), weights_only=True)  # sample inputs, legacy weights
        except pickle.UnpicklingError:
            why = f"{base} holds pickled objects besides tensors"
        except Exception as exc:
            raise BadModel(f"cannot read {path}: {base} is damaged ({type(exc).__name__}); is it a complete "
                           "file written by torch.export.save?") from None
        if why:
            raise UnsafeModel(f"{path} cannot be loaded without unpickling ({why}), which runs code from the "
                              "file; pass --trust (trust=True) only if you trust its author")


class _Swallow(logging.Handler):
    """Keeps the exceptions that log records carry, prints nothing."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


@contextmanager
def _quiet_logger(name: str) -> Iterator[_Swallow]:
    """Keep a logger's warnings (and its children's) off stderr for the block; collect their exceptions."""
    logger = logging.getLogger(name)
    handler = _Swallow()
    saved = logger.handlers[:], logger.propagate  # torch puts its stderr handler on this logger itself
    logger.handlers, logger.propagate = [handler], False
    try:
        yield handler
    finally:
        logger.handlers, logger.propagate = saved


def _open_exported(path: Path, *, input_shape: Sequence[int | None] | None, trust: bool,
                   preprocess: str | None) -> TorchAdapter:
    torch = import_torch()
    if not _is_zip(path):
        raise BadModel(f"{path} is not a .pt2 file (a .pt2 file is a zip archive written by torch.export.save)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if not any(n.endswith(".json") and "/models/" in f"/{n}" for n in names):
                raise BadModel(f"{path} holds no exported program (no models/*.json); write it with "
                               "torch.export.save(torch.export.export(model, (example,)), 'model.pt2')")
            if not trust:
                _check_pt2_safe(path, names, zf)
    except zipfile.BadZipFile as exc:
        raise BadModel(f"cannot read {path}: {exc}") from None
    try:
        # torch logs a failed load's traceback as a warning on stderr; ours below is the one line
        with _quiet_logger("torch.export") as logged:
            ep = torch.export.load(path)
    except ConvlensError:
        raise
    except Exception as exc:
        cause = logged.errors[-1] if logged.errors else exc  # torch's own error is the one it logged
        raise BadModel(f"cannot read {path}: {type(cause).__name__}: {_first_line(str(cause))}; is it a "
                       "complete file written by torch.export.save?") from None
    return TorchAdapter(ep, input_shape=input_shape, preprocess=preprocess, name=path.stem)


def _exported_input_shape(ep: Any) -> tuple[tuple[int | None, ...] | None, tuple[list[int], list[int]] | None]:
    """The canonical input shape of an exported program's one input, dynamic dimensions ``None``.

    Also two probe shapes that respect the program's ranges for its dynamic
    dimensions: the example input's and another size within range.
    """
    user_inputs = list(ep.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise UnsupportedModel(f"the exported program takes {len(user_inputs)} inputs "
                               f"({', '.join(map(str, user_inputs))}); convlens feeds one image tensor: export "
                               "a module whose forward(x) takes one tensor (wrap the model, fixing the others)")
    node = next((n for n in ep.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0]), None)
    val = node.meta.get("val") if node is not None else None
    if val is None or not hasattr(val, "shape"):
        return None, None
    dims: list[int | None] = []
    first: list[int] = []
    other: list[int] = []
    for d in val.shape:
        if isinstance(d, int):
            dims.append(int(d))
            first.append(int(d))
            other.append(int(d))
            continue
        dims.append(None)  # a SymInt: a dynamic dimension
        try:
            hint = int(d.node.hint)
            bounds = ep.range_constraints.get(d.node.expr)
            low = int(bounds.lower) if bounds is not None else 1
            high = int(bounds.upper) if bounds is not None and bounds.upper.is_finite else hint + 64
        except Exception:
            hint, low, high = PROBE_SIZE, 1, PROBE_SIZE + 64
        first.append(hint)
        # grow by the largest power of two dividing the example size (64 -> 128, 224 -> 256): a
        # dimension exported as a multiple (32 * h) stays one
        grown = hint + (hint & -hint)
        other.append(grown if grown <= high else hint - 8 if hint - 8 >= low else min(high, hint + 8))
    shapes = []
    for dd in (dims, first, other):
        dd = list(dd)
        if len(dd) >= 3:
            dd = [dd[0], *dd[2:], dd[1]]
        shapes.append(dd[1:])
    return tuple(shapes[0]), (shapes[1], shapes[2])  # type: ignore[return-value]  # probe sizes are all ints


def _is_zip(path: Path) -> bool:
    """``zipfile.is_zipfile``, which raises BadZipFile itself on some damaged end records."""
    try:
        return zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _torch_load(path: Path, *, trust: bool, what: str = "model") -> Any:
    """``torch.load`` with ``weights_only=True`` unless ``trust``; our errors for every failure."""
    torch = import_torch()
    if _is_zip(path):
        try:
            with zipfile.ZipFile(path) as zf:
                torchscript = any(n.endswith("constants.pkl") for n in zf.namelist())
        except zipfile.BadZipFile:
            torchscript = False
        if torchscript:
            raise UnsupportedModel(f"{path} is a TorchScript archive; convlens cannot hook the layers of "
                                   f"TorchScript modules: {_SAVE_HINT}")
    try:
        with warnings.catch_warnings():  # a protocol above 2 is answered below, in our own words
            warnings.filterwarnings("ignore", message=r".*Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise BadModel(f"cannot read {path}: {_first_line(str(exc))}; is it a complete file written by "
                           "torch.save?") from None
        if not trust and "unsupported global" not in str(exc).lower():
            # not a class the file names (that is an object) but an opcode torch's safe loader lacks:
            # random bytes, or a pickle protocol above 2, which only full unpickling reads
            lines = [ln.strip() for ln in str(exc).splitlines()]
            reason = next((ln for ln in lines if ln.startswith("Unsupported")), "an unsupported instruction")
            raise UnsafeModel(
                f"{path} is not plain weights that torch's safe loader reads ({reason}): it is damaged, not "
                "written by torch.save, or pickled with features only full unpickling reads, which runs "
                "code from the file; check the file, and pass --trust (trust=True) only if you trust its "
                "author") from None
        if not trust:
            raise UnsafeModel(
                f"{path} holds pickled Python objects (such as a whole nn.Module), and unpickling runs code "
                f"from the file; pass --trust (trust=True) only if you trust its author, or save the "
                f"{what} as a state dict (torch.save(model.state_dict(), PATH)) or a .pt2 program") from None
    except Exception as exc:
        raise BadModel(f"cannot read {path}: {type(exc).__name__}: {_first_line(str(exc))}; is it a complete "
                       "file written by torch.save?") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise BadModel(f"cannot read {path} even trusted: {type(exc).__name__}: {_first_line(str(exc))} "
                       "(the classes it was pickled with must be importable)") from None


def open_torch_file(path: str | os.PathLike[str], *, input_shape: Sequence[int | None] | None = None,
                    trust: bool = False, preprocess: str | None = None) -> TorchAdapter:
    """An adapter for a ``.pt2`` program or a ``.pt``/``.pth``/``.bin`` file holding a module.

    Args:
        path: a ``torch.export.save`` program (``.pt2``), or a ``torch.save``
            file of a whole ``nn.Module`` (needs ``trust``: unpickling runs code).
        input_shape: ``(H, W, C)``; ``.pt2`` files know theirs.
        trust: allow unpickling Python objects from the file.
        preprocess: the preprocessing preset; default ``unit``.

    Raises:
        BadModel: missing, corrupt, or a state dict (weights without an architecture).
        UnsafeModel: loading would unpickle objects and ``trust`` is off.
        UnsupportedModel: a TorchScript archive, or a model with several inputs.
    """
    torch = import_torch()
    p = Path(path)
    if not p.is_file():
        raise BadModel(f"model file not found: {p}; check the path")
    if p.suffix.lower() == ".pt2":
        return _open_exported(p, input_shape=input_shape, trust=trust, preprocess=preprocess)
    obj = _torch_load(p, trust=trust)
    if isinstance(obj, torch.nn.Module):
        return TorchAdapter(obj, input_shape=input_shape, preprocess=preprocess, name=p.stem)
    if isinstance(obj, Mapping):
        raise BadModel(
            f"{p} is a state dict: it holds weights only, without the network that uses them; use "
            f"torchvision:NAME --weights {p} if it belongs to a torchvision model, or build the module in "
            "Python, load_state_dict() it and pass the module to convlens.Lens(module)")
    raise BadModel(f"{p} holds a {type(obj).__name__}, not a torch.nn.Module")


# --------------------------------------------------------------------------- torchvision


def load_state_dict_file(model: Any, path: str | os.PathLike[str], *, trust: bool = False,
                         label: str = "the model") -> None:
    """Load a state dict file into ``model``; names a few mismatching keys when it does not fit.

    Accepts a plain state dict, one wrapped as ``{"state_dict": ...}`` or
    ``{"model": ...}``, keys prefixed ``module.`` (DataParallel), or (trusted)
    a whole pickled module.

    Raises:
        WeightsUnavailable: the file is missing, unreadable or does not fit.
        UnsafeModel: the file holds pickled objects and ``trust`` is off.
    """
    torch = import_torch()
    p = Path(path)
    if not p.is_file():
        raise WeightsUnavailable(f"weights file not found: {p}; use --weights default, --weights none, or the "
                                 "path of a state dict saved with torch.save(model.state_dict(), PATH)")
    try:
        obj = _torch_load(p, trust=trust, what="weights")
    except (BadModel, UnsupportedModel) as exc:
        raise WeightsUnavailable(str(exc)) from None
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailable(f"{p} is not a state dict (a mapping of names to tensors); save one with "
                                 "torch.save(model.state_dict(), PATH)")
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (e.g. {', '.join(wrong[:3])})")
        raise WeightsUnavailable(f"{p} does not fit {label}: keys {'; '.join(parts)}; is it the state dict of "
                                 "this architecture?")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise WeightsUnavailable(f"cannot load {p} into {label}: {_first_line(str(exc))}") from None


def open_torchvision(name: str, *, weights: str | None = None, input_shape: Sequence[int | None] | None = None,
                     trust: bool = False, preprocess: str | None = None) -> TorchAdapter:
    """A torchvision model by name, e.g. ``resnet18`` (from ``torchvision:resnet18``).

    Args:
        name: a name from ``torchvision.models.list_models()``.
        weights: ``default``/``imagenet``/``None`` for the architecture's
            DEFAULT pretrained weights (downloaded once into torch's hub cache),
            ``none`` for random weights, or the path of a state dict file.
        input_shape: ``(H, W, C)`` or ``(H, W)``; default the weights' crop
            size (224 for most), 3 channels.
        trust: allow a weights file that holds pickled objects.
        preprocess: default ``torch`` (ImageNet mean and std).

    Raises:
        BadModel: an unknown name.
        WeightsUnavailable: the download failed (offline) or the file does not fit.
    """
    tv = _import_torchvision()
    key = name.strip().lower()
    known = tv.models.list_models()
    if key not in known:
        classification = tv.models.list_models(module=tv.models)
        close = difflib.get_close_matches(key, known, n=4, cutoff=0.6)
        raise BadModel(f"unknown torchvision model {name!r}"
                       + (f" (closest: {', '.join(close)})" if close else "")
                       + f"; classification models include {', '.join(classification[:24])} ... "
                       f"(torchvision.models.list_models(module=torchvision.models) lists all {len(classification)})")
    w = "default" if weights is None else str(weights).strip()
    size = PROBE_SIZE
    try:
        default = tv.models.get_model_weights(key).DEFAULT
        size = int(getattr(default.transforms, "keywords", {}).get("crop_size", PROBE_SIZE))
    except Exception:
        default = None
    builder_args = set(inspect.signature(tv.models.get_model_builder(key)).parameters)
    random_kw: dict[str, Any] = {"weights": None}
    if "weights_backbone" in builder_args:  # detection/segmentation: no backbone download either
        random_kw["weights_backbone"] = None
    if w.lower() in ("default", "imagenet"):
        if default is None:
            raise WeightsUnavailable(f"torchvision:{key} has no pretrained weights; use --weights none")
        model = _download_model(tv, key, default)
    else:
        try:
            with warnings.catch_warnings():  # GoogLeNet's and Inception's notes to model authors
                warnings.simplefilter("ignore", FutureWarning)
                model = tv.models.get_model(key, **random_kw)
        except Exception as exc:
            raise UnsupportedModel(f"cannot build torchvision:{key}: {_first_line(str(exc))}") from None
        if w.lower() != "none":
            load_state_dict_file(model, w, trust=trust, label=f"torchvision:{key}")
    if input_shape is not None:
        dims = tuple(input_shape)
        shape: tuple[int | None, ...] = (*dims, 3) if len(dims) == 2 else dims
    else:
        shape = (size, size, 3)
    return TorchAdapter(model, input_shape=shape, preprocess=preprocess or "torch", name=key)


def _download_model(tv: Any, key: str, weights: Any) -> Any:
    """Build ``key`` with its pretrained weights; offline or a bad download is WeightsUnavailable.

    A socket timeout bounds every connect and read of the download, so a
    network that drops packets fails in :data:`DOWNLOAD_TIMEOUT` seconds
    instead of hanging.
    """
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        # torch.hub announces "Downloading: URL" on stdout even with progress=False; library code
        # does not print, and a failed download must stay one line of convlens's own.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return tv.models.get_model(key, weights=weights, progress=False)
    except Exception as exc:
        raise WeightsUnavailable(
            f"could not get the pretrained weights of torchvision:{key} from {getattr(weights, 'url', '?')} "
            f"({type(exc).__name__}: {_first_line(str(exc))}); use --weights none for random weights or "
            "--weights PATH for a state dict file (torch.save(model.state_dict(), PATH))") from None
    finally:
        socket.setdefaulttimeout(old)
