"""Gradients of a torch module: autograd through hooks (:mod:`convlens.adapters._autograd`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..._errors import UnsupportedModel
from .._autograd import (
    HookedRow,
    all_tensors,
    detection_slots,
    float_tensors,
    hooked_gradients,
    pick,
    replaced,
    summed_input_gradients,
    to_numpy,
)
from .._tokens import Layout
from ..base import (
    Gradients,
    InputGradientSums,
    InputItems,
    OnOutput,
    RankedGradients,
    Target,
    check_rows,
    target_cotangent,
)
from .forward import TorchForward
from .table import logit_module


class TorchAdapter(TorchForward):
    """A ``torch.nn.Module`` behind convlens's adapter contract.

    Args:
        module: any ``torch.nn.Module`` (also a module from ``torch.export.unflatten``); a
            ``forward`` with several inputs gets the image in one and the held values in the
            others (:mod:`convlens.adapters.torch.inputs`).
        input_shape: ``(H, W, C)`` (``None`` for a free dimension); ``(H, W)``
            takes ``C`` from the first convolution. Default: probed (see the
            module docstring).
        preprocess: the preprocessing preset the model expects, if known.
        name: the model's name; default its class name.
        image_input: a model with several inputs: the name of the image input.
        inputs: the values of its other inputs by name, one item each, channels first.

    Raises:
        UnsupportedModel: a TorchScript module.
        BadArgument: ``image_input`` or ``inputs`` that do not fit the model's inputs (a ``forward``
            parameter other than the image needs a value: its shape is not declared).
    """

    def randomized(self, rows: Sequence[int], seed: int) -> TorchAdapter:
        """A copy with ``rows``' weights re-drawn (see :mod:`convlens.adapters.torch.randomize`)."""
        from .randomize import randomized

        return randomized(self, rows, seed)  # type: ignore[no-any-return]

    # ----------------------------------------------------------------- gradients

    def gradients_unavailable(self) -> str | None:
        return None

    def gradients(self, batch: np.ndarray, target: Target, layers: Sequence[int] = (), *,
                  wrt_input: bool = False, need_output: bool = True) -> Gradients:
        """One forward and one backward pass with autograd (:func:`convlens.adapters._autograd.hooked_gradients`)."""
        table = self.layers()
        rows = check_rows(table, layers, target, self.name)
        needed = set(rows) | ({int(target.layer)} if target.layer is not None else set())
        hooked = {r: HookedRow(rec.module if rec.op is None else None, rec.call, rec.key, rec.channels_last)
                  for r, rec in enumerate(self._records, start=1) if r in needed}
        # a final Softmax/Softmax2d/LogSoftmax turns logits into (log-)probabilities: the score is read before it
        softmax = logit_module(self._records, self._output_row)
        where = None if target.layer is None else table[int(target.layer)].name
        batch = np.asarray(batch, dtype=np.float32)
        return hooked_gradients(
            self.module, self._forward, self._to_torch(batch), batch, hooked, rows, target.layer,
            lambda shape: target_cotangent(target, shape, where), wrt_input=wrt_input,
            need_output=need_output, softmax=softmax,
            around=lambda take: self.functional_capture(needed, take),
            output=target.output, slots=detection_slots(self.module),
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
        targets, modules = self._module_targets(wanted_set | {layer})
        softmax = logit_module(self._records, self._output_row)
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
                inputs = all_tensors(args, kwargs)
                pre_softmax[:] = [inputs[0] if inputs else None, output]
            replace: dict[tuple, Any] = {}
            for row, key, channels_last in targets.get(id(module), {}).get(k, ()):
                new = take(row, pick(output, key), channels_last)
                if new is not None:
                    replace[key] = new
            return replaced(output, replace) if replace else None

        def take(row: int, t: Any, channels_last: Layout) -> Any:
            if row in wanted_set:
                kept.append((row, to_numpy(t, channels_last)))
            if row == layer and not cam:
                leaf = t.detach().requires_grad_()
                cam[:] = [leaf, channels_last]
                return leaf.clone()  # an in-place op after this module changes the clone only
            return None

        params = [(p, p.requires_grad) for p in self.module.parameters()]
        flags = [(m, m.training) for m in self.module.modules()]
        try:
            for p, _ in params:
                p.requires_grad_(False)
            self.module.eval()
            with torch.enable_grad(), self._hooked(list(modules.values()), hook), self.functional_capture(
                    wanted_set | {layer}, lambda row, t: take(row, t, self._records[row - 1].channels_last)):
                y = self._forward(self._to_torch(batch))
            first = next(iter(float_tensors(y)), None)
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
            output = to_numpy(out_t)
            k = max(1, min(int(top), output.shape[1]))
            classes = np.argsort(-output, axis=1, kind="stable")[:, :k]
            leaf, channels_last = cam
            grads = []
            for r in range(k):
                cot = torch.zeros_like(score_t)
                cot[torch.arange(len(cot)), torch.from_numpy(classes[:, r]).to(cot.device)] = 1
                got = torch.autograd.grad([score_t], [leaf], [cot], retain_graph=r < k - 1, allow_unused=True) \
                    if score_t.requires_grad else (None,)
                grads.append(to_numpy(got[0], channels_last) if got[0] is not None
                             else np.zeros(to_numpy(leaf, channels_last).shape, np.float32))
        finally:
            for m, flag in flags:
                m.training = flag
            for p, flag in params:
                p.requires_grad_(flag)
        if 0 in wanted_set:
            on_output(0, batch)
        for row, a in kept:
            on_output(row, a)
        return RankedGradients(output=output, layer=int(layer), activations=to_numpy(leaf, channels_last),
                               classes=classes.astype(np.int64), grads=np.stack(grads), logits=logits)

    # ----------------------------------------------------------------- summed input gradients

    def input_gradient_sums(self, items: InputItems, target: Callable[[np.ndarray], Target], *, batch_size: int,
                            on_batch: Callable[[int], None] | None = None) -> InputGradientSums:
        """SmoothGrad's, IG's and saliency's sums made and kept in torch (see :class:`.InputGradientSums`)."""
        self.layers()  # the probe fills the records the softmax is read from
        softmax = logit_module(self._records, self._output_row)
        return summed_input_gradients(
            self.module, self._forward, self._to_torch, items, target, batch_size=batch_size, on_batch=on_batch,
            softmax=softmax, no_output=lambda r: UnsupportedModel(f"{self.name}: row {r} gave no output"))
