"""The forward pass of a torch module: wanted rows captured by forward hooks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ...core.reduce import reduce_channels
from .._autograd import float_tensors, pick, to_numpy
from .._device import torch_reduce_channels
from .._tokens import Layout, TokenGrid
from ..base import OnOutput, OnReduced
from .table import TorchTable


class TorchForward(TorchTable):
    """The layer table and the forward pass; see :class:`TorchAdapter`."""

    # ----------------------------------------------------------------- running

    def run(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput) -> np.ndarray:
        """One forward pass; ``on_output`` gets each wanted layer's output as its module returns it.

        Hooks sit only on the modules of wanted rows, for this pass only; each
        output is copied to numpy inside its hook (see :func:`to_numpy`).
        """
        batch = np.asarray(batch, dtype=np.float32)
        if self.fixed_batch is not None and len(batch) != self.fixed_batch:
            return self._run_in_chunks(batch, wanted, on_output, self.fixed_batch)
        return self._run(batch, wanted, lambda row, t, last: on_output(row, to_numpy(t, last)),
                         lambda a: on_output(0, a))

    def run_reducing(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput,
                     reductions: Mapping[int, Sequence[str]], on_reduced: OnReduced) -> np.ndarray:
        """:meth:`run`, but the rows in ``reductions`` are reduced where the module runs (a GPU) and only
        ``{op: (n, C)}`` crosses to the host (:func:`convlens.adapters._device.torch_reduce_channels`,
        the ops of :mod:`convlens.core.reduce`), handed to ``on_reduced(row, reduced)``.

        The pass engine calls it for layers whose every consumer asks for reductions only.
        """
        ops = {int(r): tuple(o) for r, o in reductions.items() if o}
        if self.fixed_batch is not None and len(batch) != self.fixed_batch:  # chunked: reduced on the host

            def reduce_here(row: int, a: np.ndarray) -> None:
                if row in ops:
                    on_reduced(row, reduce_channels(a, ops[row]))
                else:
                    on_output(row, a)

            return self.run(batch, wanted, reduce_here)

        def deliver(row: int, t: Any, last: Layout) -> None:
            if row in ops:
                if isinstance(last, TokenGrid):  # tokens: reduced over their grid, as the map is
                    t, last = last.to_grid(t.detach()), True
                on_reduced(row, torch_reduce_channels(t, ops[row], bool(last)))
            else:
                on_output(row, to_numpy(t, last))

        def on_input(a: np.ndarray) -> None:
            if 0 in ops:
                on_reduced(0, reduce_channels(a, ops[0]))
            else:
                on_output(0, a)

        return self._run(batch, wanted, deliver, on_input)

    def _run(self, batch: np.ndarray, wanted: Sequence[int], deliver: Callable[[int, Any, Layout], None],
             on_input: Callable[[np.ndarray], None]) -> np.ndarray:
        """One hooked forward pass: ``deliver(row, tensor, channels_last)`` in each wanted row's hook,
        ``on_input(batch)`` for row 0."""
        self.layers()
        wanted_set = set(wanted)
        batch = np.asarray(batch, dtype=np.float32)
        if 0 in wanted_set:
            on_input(batch)
        targets: dict[int, dict[int, list[tuple[int, tuple, Layout]]]] = {}
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
                deliver(row, pick(output, key), last)

        x = self._to_torch(batch)
        with self._evaluating(), self._hooked(list(modules.values()), hook):
            y = self._forward(x)
        first = next(iter(float_tensors(y)), None)
        return to_numpy(first[1]) if first is not None else np.zeros((len(batch), 0), np.float32)

    def _run_in_chunks(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput,
                       size: int) -> np.ndarray:
        """:meth:`run` for a program exported with a fixed batch: chunks of ``size`` (the last padded
        with zeros), each wanted output joined over the chunks before ``on_output`` sees it."""
        n = len(batch)
        got: dict[int, list[np.ndarray]] = {}
        outputs = []
        for start in range(0, n, size):
            chunk = batch[start:start + size]
            keep = len(chunk)
            if keep < size:
                chunk = np.concatenate([chunk, np.zeros((size - keep, *chunk.shape[1:]), chunk.dtype)])

            def keep_part(row: int, a: np.ndarray, keep: int = keep) -> None:
                got.setdefault(row, []).append(a[:keep])

            out = self.run(chunk, wanted, keep_part)
            outputs.append(out[:keep])
        for row, parts in got.items():
            on_output(row, np.concatenate(parts))
        return np.concatenate(outputs)
