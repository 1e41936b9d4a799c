"""Torch autograd through forward hooks: one forward and one backward pass of a torch module.

Shared by the PyTorch adapter and the ONNX adapter's gradient path (its onnx2torch twin), with
the helpers that walk and convert the tensors a module returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import BadArgument, UnsupportedModel
from ._tokens import Layout, TokenGrid, tokens_cotangent
from .base import Gradients, InputGradientSums, InputItems, Target, target_cotangent
from .redirect import torch_redirect_mode

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


def canonical_shape(shape: Sequence[int], channels_last: Layout = False) -> tuple[int, ...]:
    """A torch shape without its batch axis, channels last when there are 3 or more axes
    (tokens as their ``(h, w, C)`` map: :mod:`convlens.adapters._tokens`)."""
    dims = tuple(int(d) for d in shape)
    if isinstance(channels_last, TokenGrid):
        return channels_last.map_shape(dims[-1])
    if len(dims) >= 3 and not channels_last:
        dims = (dims[0], *dims[2:], dims[1])
    return dims[1:]


def to_numpy(t: Any, channels_last: Layout = False) -> np.ndarray:
    """One captured tensor as a float32 numpy array in the canonical layout (tokens as their map).

    Always a copy, made inside the hook: the tensor may be overwritten by an
    in-place op (``ReLU(inplace=True)``) right after, and ``.numpy()`` shares
    memory. Exactly one copy on the host: on an accelerator the channel move
    and the float32 conversion happen there and the transfer is the copy; on
    the CPU the conversion (float16, bfloat16, float64) or ``clone`` after
    ``movedim`` is it.
    """
    import torch

    t = t.detach()
    if isinstance(channels_last, TokenGrid):
        t = channels_last.to_grid(t)
    if t.ndim >= 3 and not channels_last:
        t = t.movedim(1, -1)
    if t.device.type != "cpu":
        return t.to(torch.float32, memory_format=torch.contiguous_format).cpu().numpy()
    if t.dtype != torch.float32:
        return t.to(torch.float32, memory_format=torch.contiguous_format).numpy()
    return t.clone(memory_format=torch.contiguous_format).numpy()


def batch_to_torch(batch: np.ndarray, module: Any, *, channels_first: bool = True) -> Any:
    """A canonical ``(N, H, W, C)`` batch as the module's input: ``(N, C, H, W)`` (unless not
    ``channels_first``), on the module's device and in its dtype, both read now (see
    :func:`convlens.adapters._device.module_device`)."""
    import torch

    from ._device import module_device

    device, dtype = module_device(module)
    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    x = x.to(device=device, dtype=dtype)  # converted where the module is (one transfer of float32)
    if x.ndim >= 3 and channels_first:
        x = x.movedim(-1, 1).contiguous()
    return x


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


#: Autograd nodes whose backward costs a pass over weights (convolutions, matrix products): where
#: :func:`skip_zero_branches` looks at the incoming gradient.
_COSTLY = ("Convolution", "MkldnnConvolution", "CudnnConvolution", "Addmm", "Mm", "Bmm", "Baddbmm", "Linear")


def skip_zero_branches(score: Any) -> None:
    """Let the backward pass from ``score`` skip the branches whose gradient is all zeros.

    A detection's cotangent is zero everywhere but one anchor, so a detector's
    heads for the other strides, and every layer only they read, receive a
    gradient of exact zeros, which autograd would still push through each
    convolution. A pre-hook on each convolution and matrix product of the
    graph turns such a gradient into none (autograd's "zero"), which the node
    and everything below it pass on without computing. A zero gradient gives
    zeros there (with finite weights) and adds nothing further down, so the
    gradients are the same to the bit. The hooks live on the graph, which the
    one backward frees. Each costs a read of the gradient (and on an
    accelerator a wait for it), so :func:`hooked_gradients` sets them for
    sparse cotangents of passes that stop at a layer only.
    """
    node = getattr(score, "grad_fn", None)
    if node is None:
        return

    def drop_zeros(grads: tuple) -> tuple:
        return tuple(g if g is None or bool(g.any()) else None for g in grads)

    seen: set[Any] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        if n.name().startswith(_COSTLY):
            n.register_prehook(drop_zeros)
        todo.extend(f for f, _ in n.next_functions)


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
    channels_last: Layout = False


def hooked_gradients(module: Any, forward: Callable[[Any], Any], x: Any, batch: np.ndarray,
                     hooked: Mapping[int, HookedRow], rows: Sequence[int], target_layer: int | None,
                     cotangent: Callable[[tuple[int, ...]], np.ndarray], *, wrt_input: bool,
                     need_output: bool, softmax: Any = None, input_channels_last: bool = False,
                     output_channels_last: bool = False, given: Mapping[int, Any] | None = None,
                     no_output: Callable[[int], Exception],
                     around: Callable[[Callable[[int, Any], Any]], AbstractContextManager] | None = None,
                     keep_tensors: bool = False, output: int | None = None, slots: int = 100) -> Gradients:
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
        around: for rows that no module returns (``hooked[row].module`` is
            ``None``: a torch adapter's functional rows), a context around the
            forward pass given ``take(row, tensor) -> replacement``, which it
            calls with each such row's tensor as the pass makes it.
        keep_tensors: ``input_grad`` and ``output`` stay torch tensors, detached, in the
            module's layout, dtype and device (:func:`summed_input_gradients` sums them there).
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
        if h.module is None:
            continue  # made by ``around``
        plan.setdefault(id(h.module), {}).setdefault(h.call, []).append((row, h.key))
        modules[id(h.module)] = h.module
    if target_layer is not None:
        softmax = None
    if softmax is not None:
        modules[id(softmax)] = softmax
    captured: dict[int, Any] = {}
    pre_softmax: list[Any] = []  # (input, output) of the softmax's last call
    calls: dict[int, int] = {}

    def take(row: int, t: Any) -> Any:
        if not t.requires_grad:  # a leaf: autograd records only what comes after it
            t = t.detach().requires_grad_()
        captured[row] = t
        return t.clone()  # an in-place op after this module changes the clone only

    def hook(mod: Any, args: Any, kwargs: Any, output: Any) -> Any:
        k = calls.get(id(mod), 0)
        calls[id(mod)] = k + 1
        if mod is softmax:
            inputs = all_tensors(args, kwargs)
            pre_softmax[:] = [inputs[0] if inputs else None, output]
        replace: dict[tuple, Any] = {}
        for row, key in plan.get(id(mod), {}).get(k, ()):
            replace[key] = take(row, pick(output, key))
        if stop_after is not None and needed <= captured.keys():
            raise _StopForward
        return replaced(output, replace) if replace else None

    if start == 0:
        x = x.detach().requires_grad_()
        captured[0] = x
    for row, t in given.items():
        captured[row] = t.requires_grad_() if not t.requires_grad else t
    # only the flags that are on are switched (and restored): a model in eval mode is left untouched
    params = [p for p in module.parameters() if p.requires_grad]
    training = [m for m in module.modules() if m.training]
    handles: list[Any] = []
    try:
        for p in params:
            p.requires_grad_(False)
        if training:
            module.eval()
        for m in modules.values():
            handles.append(m.register_forward_hook(hook, with_kwargs=True))
        with torch.enable_grad(), (around(take) if around is not None else nullcontext()):
            try:
                if stop_after is not None and needed <= captured.keys():
                    raise _StopForward  # everything needed is given
                with torch_redirect_mode():  # only inside redirected_gradients(): feature visualisation
                    y = forward(x)
            except _StopForward:
                y = None
        for h in handles:
            h.remove()
        handles.clear()
        out_t, out_last = _pick_output(y, output, slots, output_channels_last)
        logits = False
        score_last: Layout
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
        cot = torch.from_numpy(np.ascontiguousarray(tokens_cotangent(cot_np, score_last)))
        if cot.ndim >= 3 and not score_last:
            cot = cot.movedim(-1, 1)
        cot = cot.to(device=score_t.device, dtype=score_t.dtype)
        score, sparse = _score(score_t, cot)
        wanted = [r for r in rows if captured[r].requires_grad]
        if wrt_input and 0 not in wanted:
            wanted.append(0)
        grads_t: list[Any] = [None] * len(wanted)
        if wanted and score_t.requires_grad:
            if sparse and not wrt_input:  # a pass back to the input checks no branch (IG's many passes)
                skip_zero_branches(score_t)
            grads_t = list(torch.autograd.grad([score_t], [captured[r] for r in wanted], [cot],
                                               allow_unused=True))
    finally:
        for h in handles:
            h.remove()
        for m in training:
            m.training = True
        for p in params:
            p.requires_grad_(True)

    def last(r: int) -> Layout:
        return input_channels_last if r == 0 else hooked[r].channels_last

    by_row = dict(zip(wanted, grads_t))
    activations: dict[int, np.ndarray] = {}
    grads: dict[int, np.ndarray] = {}
    for r in rows:
        activations[r] = batch.copy() if r == 0 else to_numpy(captured[r], last(r))
        g = by_row.get(r)
        grads[r] = to_numpy(g, last(r)) if g is not None else np.zeros_like(activations[r])
    input_grad: Any = None
    if wrt_input and keep_tensors:
        g = by_row.get(0)
        input_grad = g if g is not None else torch.zeros_like(captured[0])
    elif wrt_input:
        g = by_row.get(0)
        input_grad = to_numpy(g, input_channels_last) if g is not None else np.zeros_like(batch)
    out_value: Any
    if keep_tensors:
        out_value = out_t.detach() if out_t is not None else None
    else:
        out_value = to_numpy(out_t, out_last) if out_t is not None else None
    return Gradients(output=out_value, score=score, activations=activations, grads=grads,
                     input_grad=input_grad, logits=logits)



# --------------------------------------------------------------------------- summed input gradients


def summed_input_gradients(module: Any, forward: Callable[[Any], Any], to_tensor: Callable[[np.ndarray], Any],
                           items: InputItems, target: Callable[[np.ndarray], Target], *, batch_size: int,
                           on_batch: Callable[[int], None] | None = None, softmax: Any = None,
                           input_channels_last: bool = False, output_channels_last: bool = False,
                           no_output: Callable[[int], Exception]) -> InputGradientSums:
    """Weighted sums of input gradients over many items per row, the items made and summed in torch.

    The adapters' ``input_gradient_sums`` (:class:`~convlens.adapters.base.InputGradientSums`):
    the rows' origins and directions go to the module's device once; each batch
    of items is made there (path points, Gaussian noise from a seeded
    ``torch.Generator`` on that device, drawn item by item so that the batch size
    does not change the numbers), differentiated by :func:`hooked_gradients`, and
    added into a float64 sum on the device (float32 where the device has no
    float64, MPS). Only each batch's ``(B,)`` scores, the kept items' outputs
    and, at the end, the ``(M, H, W, C)`` sums come back to the host.

    Args:
        module: the module whose parameters and modes are switched off for each pass.
        forward: runs the module on a tensor (with the caller's error handling).
        to_tensor: a canonical ``(N, H, W, C)`` float32 array as the module's input
            tensor (its layout, device and dtype).
        items: what to differentiate.
        target: the :class:`Target` of the items with the given indexes.
        batch_size: items per pass.
        on_batch: called with the number of items after each pass.
        softmax, input_channels_last, output_channels_last, no_output: as for
            :func:`hooked_gradients`.
    """
    import torch

    n_items = len(items.item_row)
    origin = to_tensor(np.ascontiguousarray(items.origin, np.float32))
    device, dtype = origin.device, origin.dtype
    # half-precision models: the items are made in float32 and rounded once, as the host path does
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    acc = torch.float32 if device.type == "mps" else torch.float64
    origin = origin.to(work)
    delta = None
    if items.delta is not None and items.alpha is not None:
        delta = to_tensor(np.ascontiguousarray(items.delta, np.float32)).to(work)
        alpha = torch.as_tensor(np.asarray(items.alpha, np.float64), dtype=work, device=device)
    sigma = None
    if items.sigma is not None:
        sigma = torch.as_tensor(np.asarray(items.sigma, np.float64), dtype=work, device=device)
        generator = torch.Generator(device=device)
        if items.seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(items.seed))
    weights = torch.as_tensor(np.asarray(items.weights, np.float64), dtype=acc, device=device)
    item_row = np.asarray(items.item_row, np.int64)
    rows_t = torch.as_tensor(item_row, device=device)
    keep = np.zeros(n_items, bool) if items.keep is None else np.asarray(items.keep, bool)
    total = torch.zeros(origin.shape, dtype=acc, device=device)
    score = np.zeros(n_items, np.float64)
    outputs: dict[int, np.ndarray] = {}
    logits = False
    spread = (-1,) + (1,) * (origin.ndim - 1)
    for start in range(0, n_items, max(1, int(batch_size))):
        idx = np.arange(start, min(start + int(batch_size), n_items))
        r = rows_t[start:start + len(idx)]
        x = origin.index_select(0, r)
        if delta is not None:
            x = x + alpha[start:start + len(idx)].view(spread) * delta.index_select(0, r)
        if sigma is not None:
            noise = torch.empty_like(x)
            for k in range(len(idx)):
                noise[k].normal_(generator=generator)
            x = x + sigma.index_select(0, r).view(spread) * noise
        batch_target = target(idx)

        def cotangent(shape: tuple[int, ...], batch_target: Target = batch_target) -> np.ndarray:
            return target_cotangent(batch_target, shape)

        g = hooked_gradients(
            module, forward, x.to(dtype), np.zeros((0,), np.float32), {}, [], None, cotangent, wrt_input=True,
            need_output=True, softmax=softmax, input_channels_last=input_channels_last,
            output_channels_last=output_channels_last, no_output=no_output, keep_tensors=True)
        grad: Any = g.input_grad  # a tensor (keep_tensors)
        grad = grad.to(acc)
        if items.absolute:
            grad = grad.abs_()
        total.index_add_(0, r, grad.mul_(weights[start:start + len(idx)].view(spread)))
        score[idx] = g.score
        logits = logits or bool(g.logits)
        kept = np.flatnonzero(keep[idx])
        out_t: Any = g.output
        if len(kept) and out_t is not None:
            out = to_numpy(out_t.index_select(0, torch.as_tensor(kept, device=out_t.device)), output_channels_last)
            outputs.update({int(idx[k]): out[n] for n, k in enumerate(kept)})
        if on_batch is not None:
            on_batch(len(idx))
    if total.ndim >= 3 and not input_channels_last:
        total = total.movedim(1, -1)
    return InputGradientSums(total=total.contiguous().cpu().numpy().astype(np.float64, copy=False), score=score,
                             outputs=outputs, logits=logits)


def _score(score_t: Any, cot: Any) -> tuple[np.ndarray, bool]:
    """``(N,)`` float64: each item's score, the sum of its output times its cotangent; and whether
    the cotangent is sparse (non-zero at fewer than 1/8 of the values).

    Summed in float32 at least: a float16/bfloat16 score would round (and
    overflow) otherwise. A sparse cotangent (a detection's: a few values at one
    anchor of thousands) is summed over its non-zero values only, not over
    the whole output in float64.
    """
    import torch

    wide = torch.float32 if score_t.device.type == "mps" else torch.float64
    with torch.no_grad():
        idx = torch.nonzero(cot, as_tuple=True)
        sparse = len(idx[0]) * 8 < cot.numel()
        if sparse:
            part = score_t.detach()[idx].to(wide) * cot[idx].to(wide)
            total = torch.zeros(len(cot), dtype=wide, device=cot.device).index_add_(0, idx[0], part)
        else:
            total = (score_t.detach().to(wide) * cot.to(wide)).flatten(1).sum(1)
    return total.cpu().numpy().astype(np.float64), sparse


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
