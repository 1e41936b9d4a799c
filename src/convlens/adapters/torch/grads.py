"""Gradients of a torch module: autograd through hooks (:mod:`convlens.adapters._autograd`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..._errors import UnsupportedModel
from .._autograd import HookedRow, hooked_gradients
from .._graph import LOGIT_ROLES
from ..base import Gradients, Target, check_rows, target_cotangent
from .forward import TorchForward
from .table import TORCH_ROLES, module_type


class TorchAdapter(TorchForward):
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

    # ----------------------------------------------------------------- gradients

    def gradients_unavailable(self) -> str | None:
        return None

    def gradients(self, batch: np.ndarray, target: Target, layers: Sequence[int] = (), *,
                  wrt_input: bool = False, need_output: bool = True) -> Gradients:
        """One forward and one backward pass with autograd (:func:`convlens.adapters._autograd.hooked_gradients`)."""
        table = self.layers()
        rows = check_rows(table, layers, target, self.name)
        needed = set(rows) | ({int(target.layer)} if target.layer is not None else set())
        hooked = {r: HookedRow(rec.module, rec.call, rec.key, rec.channels_last)
                  for r, rec in enumerate(self._records, start=1) if r in needed}
        last = self._records[-1] if self._records else None
        # a final Softmax/Softmax2d/LogSoftmax turns logits into (log-)probabilities: the score is read before it
        softmax = None
        if last is not None and TORCH_ROLES.get(module_type(last.module)) in LOGIT_ROLES:
            softmax = last.module
        where = None if target.layer is None else table[int(target.layer)].name
        batch = np.asarray(batch, dtype=np.float32)
        return hooked_gradients(
            self.module, self._forward, self._to_torch(batch), batch, hooked, rows, target.layer,
            lambda shape: target_cotangent(target, shape, where), wrt_input=wrt_input,
            need_output=need_output, softmax=softmax,
            no_output=lambda r: UnsupportedModel(
                f"layer {table[r].name} (row {r}) gave no output in this pass of {self.name} (its module was "
                "not called for this input); pick another layer"))

