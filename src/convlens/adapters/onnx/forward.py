"""The forward pass of an ONNX model: onnxruntime sessions with the wanted tensors as extra outputs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..._errors import BadArgument, BadModel, UnsupportedModel
from ...core.sizes import size_hint
from .._device import is_out_of_memory, out_of_memory
from ..base import OnOutput
from ..base import first_line as _first_line
from .load import IMAGE_TYPES
from .table import OnnxTable

#: Sessions kept at once, and the memory their copies of the weights may take together.
_MAX_SESSIONS = 3
_SESSION_BUDGET = 1536 * 2**20


def _ort_reason(text: str) -> str:
    """onnxruntime's error without its prefix and C++ source locations.

    ``[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while
    running Add node. Name:'merge' Status Message: /onnxruntime_src/...h:563
    void onnxruntime::BroadcastIterator::Init(...) axis == 1 || ... was false.
    Attempting to broadcast an axis by a dimension other than 1. 128 by 150``
    becomes ``Add node 'merge': Attempting to broadcast an axis by a dimension
    other than 1. 128 by 150``; at most 300 characters.
    """
    line = (text.strip().splitlines() or [""])[0]
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line)
    m = re.match(r"Non-zero status code returned while running (\w+) node\. Name:'([^']*)' "
                 r"Status Message: (.*)$", line)
    if m:
        op, name, message = m.groups()
        message = re.sub(r"^\S+\.(?:h|cc|cpp):\d+ .*? was false\. ", "", message)
        message = re.sub(r"^\S+\.(?:h|cc|cpp):\d+ ", "", message)
        line = f"{op} node '{name}': {message}"
    return line[:300]


class OnnxForward(OnnxTable):
    """An ONNX model, its layer table and its forward pass; see :class:`OnnxAdapter`."""

    def _session(self, extra: tuple[str, ...], only: bool = False) -> Any:
        """A session returning the model's outputs and the tensors ``extra`` (cached, LRU).

        With ``only``, the session returns ``extra`` alone, and onnxruntime
        leaves out the nodes that only the model's outputs need (a gradient
        pass's tail computes those in PyTorch).

        Each session holds its own copy of the weights (onnxruntime copies what
        ``add_external_initializers`` gives it), so the cache keeps as many
        sessions as fit :data:`_SESSION_BUDGET`, at least one.

        An extra output stops onnxruntime from fusing that Conv with the Relu
        after it, which is why only the asked-for outputs are added: on VGG16
        (224x224, 2 CPU cores) a pass capturing all 13 convs took 1.02-1.03x
        the plain session's time (median of paired runs).
        """
        key = (*extra, "") if only else extra  # "" names no tensor
        if key in self._sessions:
            self._sessions.move_to_end(key)
            return self._sessions[key]
        model = self.onnx.ModelProto()
        model.CopyFrom(self._skeleton)
        if only:
            del model.graph.output[:]
        declared = {o.name for o in model.graph.output}
        for name in extra:
            if name not in declared:
                # Name only: onnxruntime takes the type and shape from the graph.
                model.graph.output.append(self.onnx.helper.make_empty_tensor_value_info(name))
        options = self.ort.SessionOptions()
        # 4 (fatal only): onnxruntime's warnings are for model authors, and its error lines (in
        # colour, on the native stderr) repeat what the exception says, which convlens reports
        options.log_severity_level = 4
        names, values = self._weights_as_ort_values()
        if names:
            options.add_external_initializers(names, values)
        weight_bytes = sum(a.nbytes for a in self._arrays.values())
        keep = max(1, min(_MAX_SESSIONS, _SESSION_BUDGET // max(weight_bytes, 1)))
        while len(self._sessions) >= keep:  # free the old session before building the new one
            self._sessions.popitem(last=False)
        try:
            session = self.ort.InferenceSession(model.SerializeToString(), options,
                                                providers=self._providers)
        except Exception as exc:
            full = str(exc)
            text, hint = _first_line(full), ""
            if "IR version" in full:  # the useful part sits behind a long C++ prefix
                start = full.find("Unsupported model IR version")
                text = _first_line(full[start if start >= 0 else full.index("IR version"):])
                hint = ("; save the model with an IR version this onnxruntime reads "
                        "(onnx.helper.make_model(..., ir_version=N)) or upgrade onnxruntime")
            raise BadModel(f"onnxruntime {self.ort.__version__} cannot load {self._label}: "
                           f"{text}{hint}") from None
        self._sessions[key] = session
        return session

    # ----------------------------------------------------------------- running

    def run(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput) -> np.ndarray:
        """One forward pass; ``on_output`` gets each wanted layer's output in execution order.

        onnxruntime returns the wanted outputs together at the end of the pass;
        they are then handed over one by one, in the canonical layout. Models
        whose batch dimension is fixed (often at 1) get the batch in chunks of
        that size, the last one padded with zeros.

        Args:
            batch: ``(N, H, W, C)`` float32, preprocessed.
            wanted: row indexes of :meth:`layers` (0, the input, is the batch itself).
            on_output: called as ``on_output(row, array)``.

        Returns:
            The model's first output, channels last when it is a 3-D or 4-D map.
        """
        if self._not_image is not None:
            raise UnsupportedModel(self._not_image)
        table = self.layers()
        rows = sorted(set(int(w) for w in wanted))
        for r in rows:
            if not 0 <= r < len(table):
                raise BadArgument(f"layer index {r} is out of range 0..{len(table) - 1}")
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 4:
            raise BadArgument(f"expected a batch of images (N, H, W, C), got shape {x.shape}")
        if 0 in rows:
            on_output(0, x)
        feed = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.channels_first else x
        dtype = IMAGE_TYPES[self._input_type]
        if dtype == np.uint8:  # round and clip: the cast alone would truncate and wrap around
            feed = np.clip(np.round(feed), 0, 255)
        feed = feed.astype(dtype, copy=False)
        tensors = [self._row_tensor[r] for r in rows if r > 0]
        names = [self._graph_output] + [t for t in dict.fromkeys(tensors) if t != self._graph_output]
        session = self._session(tuple(sorted(set(names[1:]))))
        by_name = dict(zip(names, self._forward(session, feed, names)))
        output = self._canonical(by_name[self._graph_output], self._graph_output)
        # onnxruntime hands every output over at once; each is released once passed on
        for r in rows:
            if r > 0:
                name = self._row_tensor[r]
                on_output(r, self._canonical(by_name.pop(name) if name != self._graph_output
                                             else by_name[name], name))
        return output

    def outputs(self, batch: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Every graph output of one forward pass, canonical (channels last), by name, in graph order."""
        if self._not_image is not None:
            raise UnsupportedModel(self._not_image)
        self.layers()
        names = [o.name for o in self._skeleton.graph.output]
        session = self._session(tuple(sorted(set(names) - {self._graph_output})))
        got = self._forward(session, self._feed(np.asarray(batch, np.float32)), names)
        return [(name, self._canonical(a, name)) for name, a in zip(names, got)]

    def _forward(self, session: Any, feed: np.ndarray, names: list[str]) -> list[np.ndarray]:
        n = len(feed)
        size = self.batch_size
        if size is None or size < 1 or size == n:
            return self._run_session(session, feed, names)
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, size):
            chunk = feed[start:start + size]
            if len(chunk) < size:
                pad = np.zeros((size - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            got = self._run_session(session, chunk, names)
            keep = min(size, n - start)
            parts.append([a[:keep] if a.ndim and a.shape[0] == size else a for a in got])
        # batched outputs are joined along the batch; others (scalars) come once per chunk
        return [np.concatenate([p[k] for p in parts]) if parts[0][k].ndim else np.stack([p[k] for p in parts])
                for k in range(len(names))]

    def _run_session(self, session: Any, feed: np.ndarray, names: list[str]) -> list[np.ndarray]:
        quiet = self.ort.RunOptions()
        quiet.log_severity_level = 4  # see _session: the exception carries the message
        try:
            return session.run(names, self._graph_feed(feed), quiet)
        except Exception as exc:  # onnxruntime's own errors: wrong size for a fixed input, bad ops
            if is_out_of_memory(exc):
                raise out_of_memory(self.device, f"a batch of {len(feed)} through {self._label}") from None
            hint = ""
            if self._not_image is None and None in self._raw_shape[:2]:  # the size is the user's choice
                h, w = feed.shape[2:4] if self.channels_first else feed.shape[1:3]
                hint = "; " + size_hint(self.layers(), int(h), int(w))
            raise UnsupportedModel(f"onnxruntime could not run {self._label} on input {feed.shape}: "
                                   f"{_ort_reason(str(exc))}{hint}") from None

    def _graph_feed(self, feed: np.ndarray) -> dict[str, np.ndarray]:
        """onnxruntime's feed for a batch of the image input: the held inputs batched alongside."""
        if self.held_inputs is None:
            return {self.input_name: feed}
        return self.held_inputs.named(feed, len(feed))

    def _canonical(self, a: np.ndarray, tensor: str) -> np.ndarray:
        a = np.asarray(a)
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        if a.ndim in (3, 4) and self._layout.get(tensor, "NCHW") == "NCHW":
            a = np.moveaxis(a, 1, -1)
        return a

    def _output_node(self) -> Any:
        return next((n for n in self._skeleton.graph.node if self._graph_output in n.output), None)

    def _feed(self, x: np.ndarray) -> np.ndarray:
        """A canonical float32 batch as the graph's input: its layout and element type."""
        feed = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.channels_first else x
        dtype = IMAGE_TYPES[self._input_type]
        if dtype == np.uint8:  # round and clip: the cast alone would truncate and wrap around
            feed = np.clip(np.round(feed), 0, 255)
        return np.ascontiguousarray(feed.astype(dtype, copy=False))

