"""The inputs of a torch module or exported program, and how each call feeds them (several inputs).

A module's inputs are its ``forward`` parameters: the required ones, and
any optional one the user gives a value for (``inputs={NAME: array}``,
``--input NAME=FILE.npy``); their shapes are not declared (``None``), so a
held input must be given. An exported program (``.pt2``) declares its user
inputs in its graph's placeholders: their shapes (batch dropped, dynamic
dimensions ``None``) and dtypes, so an input left out is held at zeros.

:class:`CallPlan` says how one call passes the inputs: positionally in
``forward``'s order (a skipped optional parameter before a given one passes
its default), keyword-only parameters (and an exported program's keyword
inputs) by name. :func:`held_tensors` turns the held numpy values into
tensors next to the image tensor: floating point in the image tensor's dtype,
integers as they are.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._errors import UnsupportedModel
from .._inputs import HeldInputs, InputSlot, looks_like_image

__all__ = ["CallPlan", "exported_plan", "forward_plan", "held_tensors", "torch_is_image"]


@dataclass(frozen=True)
class _Default:
    """A skipped optional positional parameter before a given one: its default is passed."""

    value: Any


@dataclass(frozen=True)
class CallPlan:
    """A model's inputs and how one call passes them.

    Attributes:
        slots: the inputs, in the model's order.
        positional: what each positional argument is: a slot's index, or a skipped parameter's default.
        keywords: ``(name, slot index)`` of the inputs passed by keyword.
    """

    slots: tuple[InputSlot, ...]
    positional: tuple[int | _Default, ...]
    keywords: tuple[tuple[str, int], ...] = ()

    def call(self, module: Any, values: Sequence[Any]) -> Any:
        """``module`` called on ``values`` (one per slot, in the slots' order)."""
        args = [values[p] if isinstance(p, int) else p.value for p in self.positional]
        return module(*args, **{name: values[i] for name, i in self.keywords})


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _dtype_of(value: Any) -> str:
    """An undeclared input's dtype: the given value's when it holds integers or booleans, else float32."""
    if value is None:
        return "float32"
    kind = np.asarray(value).dtype.kind
    return str(np.asarray(value).dtype) if kind in "iub" else "float32"


def forward_plan(module: Any, given: Mapping[str, Any] | None = None) -> CallPlan:
    """The inputs of ``module.forward``: its required parameters and the optional ones ``given`` names.

    A ``forward`` without required parameters (``forward(self, x=None)``,
    ``forward(self, *args)``) takes the image as its first argument, named
    after its first parameter (else ``input``).
    """
    given = dict(given or {})
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    slots: list[InputSlot] = []
    positional: list[int | _Default] = []
    keywords: list[tuple[str, int]] = []
    skipped: list[_Default] = []
    for p in params:
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if p.default is not p.empty and p.name not in given:
            if p.kind in _POSITIONAL:
                skipped.append(_Default(p.default))
            continue
        slot = InputSlot(p.name, None, _dtype_of(given.get(p.name)))
        if p.kind in _POSITIONAL:
            positional.extend(skipped)
            skipped = []
            positional.append(len(slots))
        else:
            keywords.append((p.name, len(slots)))
        slots.append(slot)
    if not slots:
        first = next((p.name for p in params if p.kind in _POSITIONAL), "input")
        return CallPlan((InputSlot(first),), (0,))
    return CallPlan(tuple(slots), tuple(positional), tuple(keywords))


def _numpy_dtype(dtype: Any) -> str:
    """A placeholder's dtype as numpy names it: float32 for every floating type (held float arrays become the
    model's float dtype at each call), float32 for what numpy does not know (a non-tensor input)."""
    name = str(dtype).removeprefix("torch.")
    if "float" in name:
        return "float32"
    try:
        return str(np.dtype(name))
    except TypeError:
        return "float32"


def exported_plan(ep: Any) -> CallPlan:
    """The user inputs of an exported program, from its placeholders, and how its unflattened module takes them.

    Raises:
        UnsupportedModel: an input that is not one tensor (a list, a dict of tensors).
    """
    names = [str(n) for n in ep.graph_signature.user_inputs]
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    slots = []
    for name in names:
        val: Any = nodes[name].meta.get("val") if name in nodes else None
        shape = getattr(val, "shape", None)
        if shape is None or len(shape) == 0:
            slots.append(InputSlot(name, None if shape is None else (), _numpy_dtype(getattr(val, "dtype", ""))))
            continue
        dims = tuple(int(d) if isinstance(d, int) else None for d in shape[1:])
        slots.append(InputSlot(name, dims, _numpy_dtype(val.dtype)))
    n_args, kw_names = len(names), []
    spec = getattr(getattr(ep, "call_spec", None), "in_spec", None)
    try:
        children = spec.children() if hasattr(spec, "children") else spec.children_specs  # type: ignore[union-attr]
        args_spec, kwargs_spec = children[0], children[1]
        leaves = [*(args_spec.children() if hasattr(args_spec, "children") else args_spec.children_specs),
                  *(kwargs_spec.children() if hasattr(kwargs_spec, "children") else kwargs_spec.children_specs)]
        if any(not leaf.is_leaf() for leaf in leaves):
            raise UnsupportedModel(f"the exported program takes nested inputs ({spec}); convlens feeds tensors: "
                                   "export it with one tensor per input")
        n_args, kw_names = int(args_spec.num_children), [str(k) for k in kwargs_spec.context]
    except UnsupportedModel:
        raise
    except Exception:  # an older torch: pass everything by position
        n_args, kw_names = len(names), []
    if n_args + len(kw_names) != len(names):
        n_args, kw_names = len(names), []
    return CallPlan(tuple(slots), tuple(range(n_args)), tuple((k, n_args + i) for i, k in enumerate(kw_names)))


def torch_is_image(plan: CallPlan, given: Mapping[str, Any] | None) -> Any:
    """Whether a slot can be the image: a declared one as :func:`looks_like_image` says; an undeclared
    ``forward`` parameter when it is the first, or the user gave it one image-like item (C, H, W)."""
    first = plan.slots[0].name if plan.slots else None
    given = dict(given or {})

    def is_image(slot: InputSlot) -> bool:
        if slot.shape is not None:
            return looks_like_image(slot)
        if slot.name == first:
            return True
        value = given.get(slot.name)
        shape: tuple[int, ...] = tuple(np.shape(value)) if value is not None else ()
        return len(shape) == 3 and shape[0] in (1, 3, 4)

    return is_image


def held_tensors(torch: Any, held: HeldInputs, x: Any, cache: dict[tuple, list[Any]]) -> list[Any]:
    """Every input of one call: the image tensor ``x`` at its place, the held ones batched for ``x``'s batch,
    on ``x``'s device (floating point in ``x``'s dtype); kept in ``cache`` by (batch, device, dtype)."""
    n = int(x.shape[0])
    key = (n, str(x.device), x.dtype)
    tensors = cache.get(key)
    if tensors is None:
        tensors = []
        for i, value in enumerate(held.arguments(None, n)):
            if i == held.image:
                tensors.append(None)
                continue
            t = torch.from_numpy(np.array(value, copy=True))
            tensors.append(t.to(device=x.device, dtype=x.dtype if t.is_floating_point() else t.dtype))
        if len(cache) >= 4:
            cache.clear()
        cache[key] = tensors
    return [x if i == held.image else t for i, t in enumerate(tensors)]
