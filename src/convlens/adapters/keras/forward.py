"""The forward pass of a Keras model: wanted layers' outputs recorded by the wrapped calls, traced
graphs on TensorFlow.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..._errors import ConvlensError, UnsupportedModel
from ...core.sizes import size_hint
from ..base import OnOutput
from .scopes import name_scopes_kept
from .table import KerasTable, first_tensor


def _keras_reason(text: str) -> str:
    """The informative line of a Keras error, without terminal colours or TensorFlow's op prefix.

    Keras wraps a layer's error as "Exception encountered when calling
    Add.call()." followed by the error itself; the two become
    ``Add: Incompatible shapes: [1,96,128,2] vs. [1,100,150,2] [Op:AddV2]``.
    """
    clean = re.sub(r"\x1b\[[0-9;]*m", "", text)
    clean = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", clean)
    lines = [line.strip() for line in clean.splitlines() if line.strip()]
    if not lines:
        return type(text).__name__
    m = re.match(r"Exception encountered when calling (?:layer '([^']+)' \()?(\w+)", lines[0])
    if m and len(lines) > 1:
        return f"{m.group(1) or m.group(2)}: {lines[1]}"[:300]
    return lines[0][:300]


class KerasForward(KerasTable):
    """A Keras model, its layer table and its forward pass; see :class:`KerasAdapter`."""

    #: Graph-mode capture keeps every wanted output until the pass ends; above this many bytes
    #: the eager pass, which hands each output over as soon as it exists, is used instead.
    GRAPH_BUDGET = 512 * 2**20

    def _recorder(self, wanted: set[int], sink: Callable[[int, Any], None]) -> Callable[..., None]:
        """A ``record`` callback for :meth:`_wrapped` that passes wanted outputs to ``sink(row, tensor)``."""
        by_call = self._rows_by_call()
        seen: dict[int, int] = {}

        def record(layer: Any, name: str, args: tuple, out: Any) -> None:
            k = seen.get(id(layer), 0)
            seen[id(layer)] = k + 1
            row = by_call.get((id(layer), k))  # the row standing for this call of the layer, if any
            first = first_tensor(out)
            if row is not None and row in wanted and first is not None:
                sink(row, first)

        return record

    def _graph_forward(self, wanted: tuple[int, ...], shape: tuple[int, ...]) -> Any:
        """A traced TensorFlow function returning ``(output, {row: wanted output})``, or ``None``.

        Only on the TensorFlow backend, only from the second pass with the same
        layers and shape (tracing costs more than one eager pass), and only when
        the wanted outputs fit :attr:`GRAPH_BUDGET`. The ``call`` wrappers run
        once, while tracing; the traced graph has none.
        """
        if self.keras.backend.backend() != "tensorflow":
            return None
        key = (wanted, shape)
        if key in self._graphs:
            return self._graphs[key]
        self._passes[key] = self._passes.get(key, 0) + 1
        table = self.layers()
        sizes = [table[i].output_shape for i in wanted if i]
        if self._passes[key] < 2 or any(s is None or None in s for s in sizes):
            return None
        if 4 * shape[0] * sum(int(np.prod(s)) for s in sizes) > self.GRAPH_BUDGET:  # type: ignore[arg-type,misc]
            return None
        import tensorflow as tf

        wanted_set = set(wanted)

        def forward(x: Any) -> Any:
            captured: dict[str, Any] = {}
            record = self._recorder(wanted_set, lambda row, t: captured.__setitem__(str(row), t))
            with self._wrapped(record), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*structure of `inputs`.*")
                y = self.model(self._model_input(x), training=False)
            return first_tensor(y), captured

        self._graphs[key] = tf.function(forward)
        return self._graphs[key]

    def run(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput) -> np.ndarray:
        """One forward pass; ``on_output`` gets each wanted layer's output in execution order.

        The first pass runs eagerly and hands each output over as soon as the
        network computes it (so only one is held at a time); repeated passes on
        TensorFlow run a traced graph (see :meth:`_graph_forward`).
        """
        self.layers()
        wanted_key = tuple(sorted(set(wanted)))
        # TensorFlow tensors never change: a read-only view costs nothing where convert_to_numpy
        # copies (3 GB for VGG16's block1_conv2 on a 12-megapixel photo); torch's may, in place
        tf_backend = self.keras.backend.backend() == "tensorflow"
        convert = np.asarray if tf_backend else self.keras.ops.convert_to_numpy
        x = self._model_layout(batch)
        if 0 in wanted_key:
            on_output(0, np.asarray(batch, dtype="float32"))
        self._held_rows_out(wanted_key, len(x), on_output)
        graph = self._graph_forward(wanted_key, x.shape)
        if graph is not None:
            try:
                with name_scopes_kept():  # a trace that fails leaves Keras's scopes as they were
                    y, captured = graph(self.keras.ops.convert_to_tensor(x))
            except Exception:
                # Some models cannot be traced (TensorFlow rejects a layer named
                # "<img src=x>" as a name scope, say): they stay on the eager pass,
                # which reports the model's own errors if there are any.
                self._graphs[(wanted_key, x.shape)] = graph = None
        if graph is not None:
            for row in wanted_key:
                if str(row) in captured:
                    on_output(row, self._canonical_array(convert(captured[str(row)])))
        else:
            raised: list[BaseException] = []  # by on_output itself: not the model's error

            def sink(row: int, t: Any) -> None:
                try:
                    on_output(row, self._canonical_array(convert(t)))
                except BaseException as exc:
                    raised.append(exc)
                    raise

            record = self._recorder(set(wanted_key), sink)
            with self._wrapped(record), self._no_grad(), warnings.catch_warnings():
                # legacy models name their input; a bare tensor is what they get and is fine
                warnings.filterwarnings("ignore", message=r".*structure of `inputs`.*")
                try:
                    y = first_tensor(self.model(self._model_input(self.keras.ops.convert_to_tensor(x)),
                                                training=False))
                except ConvlensError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the model's own error, e.g. an input size it cannot take
                    if raised:  # Keras may have rewrapped it: hand over the caller's own exception
                        raise raised[0] from None
                    raise self._run_failed(exc, np.shape(batch)) from None
        return self._canonical_array(convert(y)) if y is not None else np.zeros((len(x), 0))

    def _model_layout(self, batch: np.ndarray) -> np.ndarray:
        """A canonical ``(N, H, W, C)`` batch as float32 in the model's own layout (channels first or last)."""
        x = np.asarray(batch, dtype="float32")
        if self.channels_first and x.ndim == 4:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x

    def _held_rows_out(self, wanted: Sequence[int], n: int, on_output: OnOutput) -> None:
        """Hands over the wanted rows of held inputs (a model with several inputs): their values, batched."""
        held = self.held_inputs
        if held is None:
            return
        table = self.layers()
        for row in wanted:
            info = table[row]
            if row and info.kind == "input" and info.extra.get("held") and info.name in held.values:
                on_output(row, self._canonical_array(held.batched(info.name, n)))

    def _run_failed(self, exc: Exception, shape: tuple[int, ...]) -> UnsupportedModel:
        """The one-line error for a model that raised on a batch of canonical ``shape``."""
        hint = ""
        if len(shape) == 4 and None in self.input_shape[:2]:  # the size is the user's choice
            hint = "; " + size_hint(self.layers(), int(shape[1]), int(shape[2]))
        return UnsupportedModel(f"{self.name} failed on an input of shape {tuple(shape[1:])} (H, W, C): "
                                f"{type(exc).__name__}: {_keras_reason(str(exc))}{hint}")

    def _canonical_array(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float32)
        if self.channels_first and a.ndim in (3, 4):
            a = np.moveaxis(a, 1, -1)
        return a

