"""The forward pass of a torch module: wanted rows captured by forward hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import numpy as np

from ...core.reduce import reduce_channels
from .._autograd import detection_slots, model_outputs, pick, to_numpy
from .._device import torch_reduce_channels
from .._tokens import Layout, TokenGrid
from ..base import OnOutput, OnReduced
from .ops import op_of, op_watch
from .table import TorchTable


class TorchForward(TorchTable):
    """The layer table and the forward pass; see :class:`TorchAdapter`."""

    # ----------------------------------------------------------------- running

    def run(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput) -> np.ndarray:
        """One forward pass; ``on_output`` gets each wanted layer's output as its module returns it.

        Hooks sit only on the modules of wanted rows (containers included),
        for this pass only; each output is copied to numpy inside its hook
        (see :func:`to_numpy`). Wanted functional rows are captured by
        :meth:`functional_capture`.
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
        targets, modules = self._module_targets(wanted_set)
        calls: dict[int, int] = {}

        def hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            k = calls.get(id(module), 0)
            calls[id(module)] = k + 1
            for row, key, last in targets[id(module)].get(k, ()):
                deliver(row, pick(output, key), last)

        def take(row: int, t: Any) -> None:
            deliver(row, t, self._records[row - 1].channels_last)

        x = self._to_torch(batch)
        with self._evaluating(), self._hooked(list(modules.values()), hook), \
                self.functional_capture(wanted_set, take):
            y = self._forward(x)
        outs = model_outputs(y, detection_slots(self.module))
        return to_numpy(outs[0][1], outs[0][2]) if outs else np.zeros((len(batch), 0), np.float32)

    def outputs(self, batch: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Every output of one forward pass, canonical, by name (a torchvision detector's list of dicts
        as one ``(N, slots, 6)`` ``detections`` array: see :func:`convlens.adapters._autograd.model_outputs`)."""
        self.layers()
        batch = np.asarray(batch, dtype=np.float32)
        with self._evaluating():
            y = self._forward(self._to_torch(batch))
        return [(name, to_numpy(t, last)) for name, t, last in model_outputs(y, detection_slots(self.module))]

    # ----------------------------------------------------------------- hook selection

    def _module_targets(self, rows: set[int]) -> tuple[dict[int, dict[int, list[tuple[int, tuple, Layout]]]],
                                                       dict[int, Any]]:
        """Where the module rows among ``rows`` appear: ``{id(module): {call: [(row, key, channels_last)]}}``,
        and the modules to hook (containers included; functional rows are left to :meth:`functional_capture`)."""
        targets: dict[int, dict[int, list[tuple[int, tuple, Layout]]]] = {}
        modules: dict[int, Any] = {}
        for row, rec in enumerate(self._records, start=1):
            if row in rows and rec.op is None:
                targets.setdefault(id(rec.module), {}).setdefault(rec.call, []).append(
                    (row, rec.key, rec.channels_last))
                modules[id(rec.module)] = rec.module
        return targets, modules

    def functional_rows(self, rows: Iterable[int]) -> list[int]:
        """The functional rows (``add``, ``cat``, ``interpolate``, ``pad``, ``flatten``) among ``rows``."""
        n = len(self._records)
        return [r for r in rows if 0 < r <= n and self._records[r - 1].op is not None]

    def functional_capture(self, rows: Iterable[int], take: Callable[[int, Any], Any]) -> AbstractContextManager:
        """A context in which ``take(row, tensor)`` gets the output of each functional row among ``rows``.

        ``take`` may return a replacement that the model then uses (a gradient
        leaf's clone), or ``None``. Without functional rows this is a no-op;
        with them, an :func:`~convlens.adapters.torch.ops.op_watch` mode counts
        the ops each owning container runs itself (its descendants are hooked
        to tell their calls apart), as the probe pass did.
        """
        wanted = {}
        for row in self.functional_rows(rows):
            rec = self._records[row - 1]
            wanted[(id(rec.module), rec.call, rec.op, rec.occurrence)] = row
        if not wanted:
            return nullcontext()
        return self._watching(wanted, take)

    @contextmanager
    def _watching(self, wanted: dict[tuple[int, int, str | None, int], int],
                  take: Callable[[int, Any], Any]) -> Iterator[None]:
        owners = {key[0] for key in wanted}
        hooked: dict[int, Any] = {}
        for m in self.module.modules():
            if id(m) in owners:
                for d in m.modules():  # the owner and every module below it: their calls are not the owner's
                    hooked[id(d)] = d
        calls: dict[int, int] = {}
        stack: list[tuple[int, int, dict[str, int]]] = []

        def pre_hook(module: Any, args: Any) -> None:
            k = calls.get(id(module), 0)
            calls[id(module)] = k + 1
            stack.append((id(module), k, {}))

        def hook(module: Any, args: Any, output: Any) -> None:
            if stack and stack[-1][0] == id(module):
                stack.pop()

        def on_call(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
            op = op_of(func)
            if op is None or not stack or stack[-1][0] not in owners:
                return out
            owner, k, counts = stack[-1]
            j = counts.get(op, 0)
            counts[op] = j + 1
            row = wanted.get((owner, k, op, j))
            if row is None:
                return out
            new = take(row, out)
            return out if new is None else new

        handles: list[Any] = []
        try:
            for m in hooked.values():
                handles.append(m.register_forward_pre_hook(pre_hook))
                handles.append(m.register_forward_hook(hook, always_call=True))
            with op_watch(on_call):
                yield
        finally:
            for h in handles:
                h.remove()

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
