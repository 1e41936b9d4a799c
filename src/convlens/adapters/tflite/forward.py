"""The forward pass of a TFLite model: one invocation per image, tensors read and dequantised; kernels,
which a quantised model may compute in the graph, are read the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..._errors import BadModel, UnsupportedModel
from ...core.sizes import size_hint
from ..base import OnOutput
from ..base import first_line as _first_line
from .load import PROBE_SIZE, QUANTISED_DTYPES, captured_native_stderr
from .table import CONV_OPS, TFLiteTable


def dequantize(q: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, axis: int = 0) -> np.ndarray:
    """``(q - zero_point) * scale`` as float32, per tensor or per channel along ``axis``.

    Args:
        q: integer tensor of any shape.
        scales: ``(1,)`` or ``(q.shape[axis],)``.
        zero_points: same length as ``scales``.
        axis: the quantised dimension (per-channel quantisation only).
    """
    scales = np.asarray(scales, dtype=np.float64)
    zps = np.asarray(zero_points, dtype=np.float64)
    x = np.asarray(q, dtype=np.float64)
    if scales.size <= 1:
        s = float(scales[0]) if scales.size else 0.0
        z = float(zps[0]) if zps.size else 0.0
        return ((x - z) * s).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = scales.size
    if zps.size == 1:
        zps = np.full(scales.size, zps[0])
    return ((x - zps.reshape(shape)) * scales.reshape(shape)).astype(np.float32)


class TFLiteForward(TFLiteTable):
    """A TFLite model, its layer table and its forward pass; see :class:`TFLiteAdapter`."""

    # ----------------------------------------------------------------- running

    def _read(self, index: int) -> np.ndarray:
        """A tensor after ``invoke()``, dequantised to float32."""
        d = self._tensor(index)
        try:
            a = self._interp.get_tensor(index)
        except ValueError as exc:  # "Tensor data is null": a damaged file left it without memory
            raise BadModel(f"LiteRT gave no data for tensor {d['name']} of {self.name}: "
                           f"{_first_line(str(exc))}; is the file complete and undamaged?") from None
        q = d["quantization_parameters"]
        scales = np.asarray(q["scales"])
        if np.dtype(d["dtype"]).type in QUANTISED_DTYPES and scales.size and np.any(scales):
            return dequantize(a, scales, np.asarray(q["zero_points"]), int(q["quantized_dimension"]))
        return np.asarray(a, dtype=np.float32)

    def _feed(self, image: np.ndarray) -> None:
        """Set the input tensor from one ``(H, W, C)`` float image, quantising if needed."""
        d = self._input
        x = image.transpose(2, 0, 1) if self._nchw else image
        x = x[None]
        want = tuple(int(v) for v in self._tensor(int(d["index"]))["shape"])
        if x.shape != want:
            sig = [int(v) for v in d["shape_signature"]]
            fixed = [i for i, v in enumerate(sig) if v >= 0 and i > 0]
            if len(x.shape) != len(want) or any(x.shape[i] != want[i] for i in fixed):
                raise UnsupportedModel(f"{self.name} takes input of shape {tuple(want[1:])}, "
                                       f"got {x.shape[1:]}; resize the image (--size) to fit")
            try:
                with captured_native_stderr() as native:
                    self._interp.resize_tensor_input(int(d["index"]), list(x.shape), strict=True)
                    self._interp.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                why = _first_line(str(exc)) or (native[0] if native else "")
                hint = ""
                if None in self._input_shape[:2]:  # free: the size is the user's choice
                    hint = "; " + size_hint(self.layers(), int(image.shape[0]), int(image.shape[1]))
                    why = why.rstrip(".")
                raise UnsupportedModel(f"{self.name} cannot run on input of shape {x.shape[1:]}: "
                                       f"{why}{hint}") from None
        dtype = np.dtype(d["dtype"])
        q = d["quantization_parameters"]
        scales = np.asarray(q["scales"])
        if dtype.type in QUANTISED_DTYPES:
            if scales.size and scales[0] != 0:
                zp = int(np.asarray(q["zero_points"])[0]) if np.asarray(q["zero_points"]).size else 0
                x = x.astype(np.float64) / float(scales[0]) + zp
            info = np.iinfo(dtype)
            x = np.clip(np.round(x), info.min, info.max)  # round here: the cast would truncate
        self._interp.set_tensor(int(d["index"]), np.ascontiguousarray(x, dtype=dtype))

    def _invoke(self) -> None:
        try:
            self._interp.invoke()
        except (ValueError, RuntimeError) as exc:
            raise UnsupportedModel(f"LiteRT could not run {self.name}: {_first_line(str(exc))}") from None
        self._invoked = True

    def run(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput) -> np.ndarray:
        """Invoke the model on each image of ``batch`` (``(N, H, W, C)`` float32, preprocessed).

        With one image, ``on_output`` gets each wanted layer as soon as the
        invocation is done, in execution order; with several, each layer's
        outputs are stacked over the batch first. Row 0 is the input as the
        network holds it (after quantisation, dequantised again).
        """
        table = self.layers()
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 4 or len(self._input_shape) != 3:
            raise UnsupportedModel(f"{self.name} takes input of shape {self._input_shape}, not images "
                                   f"(H, W, C); got a batch of shape {x.shape}")
        rows = sorted({int(i) for i in wanted if 0 <= int(i) < len(table)})
        out_index = int(self._interp.get_output_details()[0]["index"])
        per_row: dict[int, list[np.ndarray]] = {r: [] for r in rows}
        outputs = []
        for image in x:
            self._feed(image)
            self._invoke()
            for r in rows:
                a = self._read(self._row_tensor[r])
                if r == 0 and self._nchw:
                    a = a.transpose(0, 2, 3, 1)
                if len(x) == 1:
                    on_output(r, self._batched(r, a))
                else:
                    per_row[r].append(self._batched(r, a))
            outputs.append(self._batched(-1, self._read(out_index)))
        if len(x) > 1:
            for r in rows:
                on_output(r, np.concatenate(per_row[r]))
        return np.concatenate(outputs)

    def _batched(self, row: int, a: np.ndarray) -> np.ndarray:
        """One image's tensor with a batch axis of 1 in front (some tensors lost theirs)."""
        if row >= 0 and self._layers is not None:
            shape = self._layers[row].output_shape
            if shape is not None and a.ndim == len(shape):
                return a[None]
        return a if a.ndim and a.shape[0] == 1 else a[None]

    def kernels(self, index: int) -> np.ndarray:
        """The weights of a CONV_2D, DEPTHWISE_CONV_2D or TRANSPOSE_CONV row as ``(O, I, kh, kw)``.

        Quantised weights are dequantised (per output channel when they carry
        one scale per channel); depthwise weights ``(1, kh, kw, C*m)`` become
        ``(C*m, 1, kh, kw)``, one single-input filter per output channel.
        """
        table = self.layers()
        op = self._row_op[index] if 0 <= index < len(self._row_op) else None
        info = table[index]
        if op is None or op["op_name"] not in CONV_OPS or info.kernel_shape is None:
            raise UnsupportedModel(f"layer {info.name} ({info.type}) has no convolution kernel convlens "
                                   "can draw; select conv layers (--layers conv)")
        raw = self._constant(int(op["inputs"][1]), info.name)
        if op["op_name"] == "DEPTHWISE_CONV_2D":  # (1, kh, kw, C*m) -> (C*m, 1, kh, kw)
            return np.ascontiguousarray(raw.transpose(3, 0, 1, 2))
        return np.ascontiguousarray(raw.transpose(0, 3, 1, 2))  # (O, kh, kw, I) -> (O, I, kh, kw)


    def _constant(self, index: int, layer: str) -> np.ndarray:
        """A weight tensor's value as float32, dequantised.

        Weights stored as float16 or int8 reach float32 through a DEQUANTIZE op
        of their own; its input is read and converted here, since XNNPACK may
        consume the stored weights directly and never fill the op's output.
        Other computed weights (DENSIFY of sparse storage) are read after one
        pass on zeros, which fills every preserved tensor.
        """
        producer = next((o for o in self._interp._get_ops_details()
                         if o["op_name"] != "DELEGATE" and index in {int(t) for t in o["outputs"]}), None)
        if producer is not None and producer["op_name"] == "DEQUANTIZE":
            return self._constant(int(producer["inputs"][0]), layer)
        q = self._tensor(index)["quantization_parameters"]
        if np.asarray(q.get("block_size", 0) or 0).any():
            raise UnsupportedModel(f"layer {layer} stores blockwise-quantised weights, which convlens "
                                   "cannot dequantise yet; use a float or per-channel int8 model")
        if producer is not None and not self._invoked:
            self._feed(np.zeros(tuple(d or PROBE_SIZE for d in self._input_shape), np.float32))
            self._invoke()
        return self._read(index)

