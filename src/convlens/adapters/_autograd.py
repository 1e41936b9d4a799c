"""Torch autograd through forward hooks: one forward and one backward pass of a torch module.

Shared by the PyTorch adapter and the ONNX adapter's gradient path (its onnx2torch twin), with
the helpers that walk and convert the tensors a module returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import BadArgument, UnsupportedModel
from .base import Gradients

# --------------------------------------------------------------------------- outputs


def float_tensors(out: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """``(key path, tensor)`` for every floating-point tensor in a nested output, in order."""
    import torch

    if isinstance(out, torch.Tensor):
        if out.is_floating_point():
            yield path, out
    elif isinstance(out, Mapping):
        for k, v in out.items():
            yield from float_tensors(v, (*path, str(k)))
    elif isinstance(out, (tuple, list)):
        for i, v in enumerate(out):
            yield from float_tensors(v, (*path, i))


def pick(out: Any, path: tuple) -> Any:
    for k in path:
        if isinstance(out, Mapping):
            out = out[k] if k in out else next(v for kk, v in out.items() if str(kk) == k)
        else:
            out = out[int(k)]
    return out


def is_detection_list(out: Any) -> bool:
    """A torchvision detector's output: a list of dicts, each with ``boxes``, ``scores`` and ``labels``."""
    return isinstance(out, (list, tuple)) and len(out) > 0 and all(
        isinstance(d, Mapping) and {"boxes", "scores", "labels"} <= set(d) for d in out)


def detection_tensor(out: Any, slots: int) -> Any:
    """A torchvision detector's list of dicts as one ``(N, slots, 6)`` tensor, channels last.

    Each row is ``(x0, y0, x1, y1, score, label)``; rows past an image's own
    detections are zeros with label ``-1``. Built from the model's own tensors
    with ``cat``, so autograd reaches the boxes and scores through it. The
    padding is a fixed size (the model's ``detections_per_img``) so that every
    pass of the same images has the same shape.
    """
    import torch

    rows = []
    for d in out:
        boxes, scores = d["boxes"], d["scores"]
        labels = d["labels"].to(boxes.dtype)
        k = min(int(boxes.shape[0]), slots)
        got = torch.cat([boxes[:k], scores[:k, None], labels[:k, None]], dim=1)
        pad = torch.zeros((slots - k, 6), dtype=boxes.dtype, device=boxes.device)
        pad[:, 5] = -1
        rows.append(torch.cat([got, pad]))
    return torch.stack(rows)


def model_outputs(out: Any, slots: int = 100) -> list[tuple[str, Any, bool]]:
    """A model's outputs in order as ``(name, tensor, channels_last)``: every floating-point tensor,
    a torchvision detector's list of dicts as one ``detections`` tensor (:func:`detection_tensor`)."""
    if is_detection_list(out):
        return [("detections", detection_tensor(out, slots), True)]
    return [(".".join(map(str, path)) or "output", t, False) for path, t in float_tensors(out)]


def detection_slots(module: Any) -> int:
    """How many detections per image a torchvision detector returns at most (its padding size)."""
    for owner in (module, getattr(module, "roi_heads", None)):
        n = getattr(owner, "detections_per_img", None)
        if isinstance(n, int) and n > 0:
            return n
    return 100


def all_tensors(args: Any, kwargs: Mapping[str, Any] | None = None) -> list[Any]:
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


def canonical_shape(shape: Sequence[int], channels_last: bool = False) -> tuple[int, ...]:
    """A torch shape without its batch axis, channels last when there are 3 or more axes."""
    dims = tuple(int(d) for d in shape)
    if len(dims) >= 3 and not channels_last:
        dims = (dims[0], *dims[2:], dims[1])
    return dims[1:]


def to_numpy(t: Any, channels_last: bool = False) -> np.ndarray:
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


def replaced(out: Any, new: Mapping[tuple, Any]) -> Any:
    """A module's output with the tensors at the given key paths replaced (a copy of its containers)."""
    if () in new:
        return new[()]
    if isinstance(out, Mapping):
        items = {k: replaced(v, {p[1:]: t for p, t in new.items() if p[0] == str(k)})
                 for k, v in out.items()}
        try:
            return type(out)(items)  # type: ignore[call-arg]
        except TypeError:
            return items
    if isinstance(out, (tuple, list)):
        vals = [replaced(v, {p[1:]: t for p, t in new.items() if p[0] == i}) if any(p[0] == i for p in new)
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
                     no_output: Callable[[int], Exception], output: int | None = None,
                     slots: int = 100) -> Gradients:
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
        output: which of the model's outputs (:func:`model_outputs`) holds the
            score and is returned; ``None``: the first.
        slots: a torchvision detector's padding size (:func:`detection_tensor`).
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
            inputs = all_tensors(args, kwargs)
            pre_softmax[:] = [inputs[0] if inputs else None, output]
        replace: dict[tuple, Any] = {}
        for row, key in plan.get(id(mod), {}).get(k, ()):
            t = pick(output, key)
            if not t.requires_grad:  # a leaf: autograd records only what comes after it
                t = t.detach().requires_grad_()
            captured[row] = t
            replace[key] = t.clone()  # an in-place op after this module changes the clone only
        if stop_after is not None and needed <= captured.keys():
            raise _StopForward
        return replaced(output, replace) if replace else None

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
        out_t, out_last = _pick_output(y, output, slots, output_channels_last)
        logits = False
        if target_layer is None:
            if out_t is None:
                raise UnsupportedModel("the model returned no floating-point output to take a class score "
                                       "from; pick a layer as the target")
            score_t, score_last = out_t, out_last
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
        cot_np = cotangent((score_t.shape[0], *canonical_shape(score_t.shape, score_last)))
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
        activations[r] = batch.copy() if r == 0 else to_numpy(captured[r], last(r))
        g = by_row.get(r)
        grads[r] = to_numpy(g, last(r)) if g is not None else np.zeros_like(activations[r])
    input_grad = None
    if wrt_input:
        g = by_row.get(0)
        input_grad = to_numpy(g, input_channels_last) if g is not None else np.zeros_like(batch)
    out_np = to_numpy(out_t, out_last) if out_t is not None else None
    return Gradients(output=out_np, score=score, activations=activations, grads=grads,
                     input_grad=input_grad, logits=logits)



def _pick_output(y: Any, output: int | None, slots: int, channels_last: bool) -> tuple[Any, bool]:
    """The output tensor a gradient pass reads its score from, and whether it is channels last."""
    if y is None:
        return None, channels_last
    outs = model_outputs(y, slots)
    if not outs:
        return None, channels_last
    k = 0 if output is None else int(output)
    if not 0 <= k < len(outs):
        raise BadArgument(f"output {k} does not exist: the model has {len(outs)} outputs "
                          f"({', '.join(n for n, _, _ in outs)}); pick one of 0-{len(outs) - 1}")
    _, t, last = outs[k]
    return t, last or channels_last
