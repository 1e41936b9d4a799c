"""The forward pass of a torch module: wanted rows captured by forward hooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._autograd import detection_slots, model_outputs, pick, to_numpy
from ..base import OnOutput
from .table import TorchTable


class TorchForward(TorchTable):
    """The layer table and the forward pass; see :class:`TorchAdapter`."""

    # ----------------------------------------------------------------- running

    def run(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput) -> np.ndarray:
        """One forward pass; ``on_output`` gets each wanted layer's output as its module returns it.

        Hooks sit only on the modules of wanted rows, for this pass only; each
        output is copied to numpy inside its hook (see :func:`to_numpy`).
        """
        self.layers()
        wanted_set = set(wanted)
        batch = np.asarray(batch, dtype=np.float32)
        if self.fixed_batch is not None and len(batch) != self.fixed_batch:
            return self._run_in_chunks(batch, wanted, on_output, self.fixed_batch)
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
                on_output(row, to_numpy(pick(output, key), last))

        x = self._to_torch(batch)
        with self._evaluating(), self._hooked(list(modules.values()), hook):
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
