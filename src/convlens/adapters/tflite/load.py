"""Loading TFLite models: the file checked, the LiteRT interpreter built (all tensors kept, XNNPACK
without node fusion), the schema's options, the one image input and its preprocessing.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..._errors import BadModel, MissingDependency, UnsupportedModel
from ...core.layers import LayerInfo
from ..base import first_line as _first_line

#: Tensor types that carry activations (anything else is bookkeeping: shapes, indices, masks).
ACTIVATION_DTYPES = (np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16)
QUANTISED_DTYPES = (np.int8, np.uint8, np.int16)
#: Size given to free input dimensions until an image sets them (LiteRT's own choice, 1, is too small).
PROBE_SIZE = 224


def _import_interpreter() -> Any:
    """LiteRT's interpreter module, or an error naming the extra to install."""
    try:
        from ai_edge_litert import interpreter
    except ImportError as exc:
        raise MissingDependency(f"reading .tflite files needs LiteRT, which is not installed ({exc}); "
                                "run: pip install 'convlens[tflite]'") from None
    return interpreter


def _import_schema() -> Any | None:
    """LiteRT's flatbuffer schema (strides, padding, pool sizes), or ``None`` if unavailable."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:  # older LiteRT, or flatbuffers missing: shapes give the same, less surely
        return None
    return schema_py_generated


@contextmanager
def captured_native_stderr() -> Iterator[list[str]]:
    """Send C++ messages on file descriptor 2 to a list instead of the user's terminal.

    LiteRT's error reporter writes there while a model is read and allocated;
    the text goes into our own error message instead. Only used around those
    calls, never around ``invoke`` (the CLI's progress bar writes to stderr
    from other threads meanwhile).
    """
    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (some notebook kernels)
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(20000).decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def threads() -> int:
    """CPU cores this process may use (not the host's count), at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _size_free_inputs(interp: Any) -> None:
    """Give free (``-1``) input dimensions :data:`PROBE_SIZE` before the first allocation.

    LiteRT allocates a free dimension at 1, and a model with an unpadded
    convolution or a pool (VGG16 at any size) cannot be prepared at 1x1. The
    batch stays 1; each image later resizes the input to its own size.
    """
    for d in interp.get_input_details():
        sig = [int(v) for v in d["shape_signature"]]
        if any(v < 0 for v in sig[1:]):
            shape = [1 if i == 0 and v < 0 else (PROBE_SIZE if v < 0 else v) for i, v in enumerate(sig)]
            interp.resize_tensor_input(int(d["index"]), shape, strict=True)


class TFLiteModel:
    """A ``.tflite`` file read and its interpreter built, its input settled; see :class:`TFLiteAdapter`."""

    framework = "tflite"
    class_names: list[str] | None = None
    class_names_source = ""
    final_activation: str | None = None
    #: The step of a quantised output after dequantisation (its scale, 1/256 for a uint8 softmax).
    output_quant_step: float | None = None

    def __init__(self, path: str | os.PathLike[str], *, input_shape: Sequence[int | None] | None = None,
                 preprocess: str | None = None) -> None:
        p = Path(path)
        if not p.is_file():
            raise BadModel(f"model file not found: {p}; check the path")
        self.path = p
        self.name = p.stem
        data = p.read_bytes()
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise BadModel(f"{p} is not a TFLite model (no TFL3 identifier at byte 4); "
                           "convert one with tf.lite.TFLiteConverter or ai-edge-torch")
        self._interp = self._open(data)
        self._schema_ops = self._read_options(data)
        inputs = self._interp.get_input_details()
        if len(inputs) != 1:
            listed = ", ".join(f"{d['name']} {tuple(int(v) for v in d['shape_signature'])} "
                               f"{np.dtype(d['dtype']).name}" for d in inputs)
            raise UnsupportedModel(
                f"{p.name} takes {len(inputs)} inputs ({listed}); convlens feeds one image tensor "
                "(1, H, W, C): convert a model whose signature takes only the image (for example a "
                "tf.function that closes over the other inputs as constants)")
        self._input = inputs[0]
        dtype = np.dtype(self._input["dtype"])
        if dtype.type not in ACTIVATION_DTYPES:
            raise UnsupportedModel(
                f"{p.name} takes {dtype.name} input {self._input['name']} of shape "
                f"{tuple(int(v) for v in self._input['shape_signature'])}, not an image; convlens feeds "
                "images as float or 8-bit tensors (1, H, W, C)")
        self._set_input_shape(input_shape)
        self.preprocess = preprocess or self._preset_from_quantisation()
        self._layers: list[LayerInfo] | None = None
        self._row_tensor: list[int] = []  # the output tensor read for each row
        self._row_op: list[dict[str, Any] | None] = []
        self._invoked = False

    # ----------------------------------------------------------------- set-up

    def _open(self, data: bytes) -> Any:
        litert = _import_interpreter()
        try:
            # stderr: LiteRT's C++ reporter and "Created TensorFlow Lite XNNPACK delegate" logs;
            # the warning says preserving tensors costs memory, which is the point here
            with captured_native_stderr() as native, warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*experimental_preserve_all_tensors.*")
                # First without delegates: the builtin kernels' Prepare checks each operator's inputs,
                # while XNNPACK reads them unchecked and crashes on a damaged file (a STRIDED_SLICE
                # with one input instead of four, say), before the builtin checks run.
                checked = litert.Interpreter(
                    model_content=data, num_threads=1,
                    experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
                _size_free_inputs(checked)
                checked.allocate_tensors()
                del checked
                interp = litert.Interpreter(
                    model_content=data, num_threads=threads(),
                    experimental_preserve_all_tensors=True,
                    experimental_op_resolver_type=litert.OpResolverType.BUILTIN,
                    experimental_disable_delegate_node_fusion=True)
                _size_free_inputs(interp)
                interp.allocate_tensors()
                # every name is decoded now, not in the middle of building the table: a damaged
                # file can hold names that are not UTF-8, which LiteRT's verifier lets through
                interp.get_tensor_details()
                interp._get_ops_details()
        except UnicodeDecodeError as exc:
            raise BadModel(f"cannot read TFLite model {self.path}: a tensor name is not text ({exc.reason} "
                           f"at byte {exc.start}); the file is damaged") from None
        except (ValueError, RuntimeError) as exc:
            why = _first_line(str(exc)) or (native[0] if native else "unknown error")
            if re.search(r"Select TensorFlow op|Flex|custom op|unresolved", why + " ".join(native)):
                raise UnsupportedModel(
                    f"{self.path.name} uses operators that LiteRT cannot run on its own "
                    f"({why.split('. ')[0]}); convert the model with TFLite builtin ops only "
                    "(no SELECT_TF_OPS, no custom ops)") from None
            raise BadModel(f"cannot read TFLite model {self.path}: {why}; is it a complete .tflite "
                           "file (not truncated, not another format renamed)?") from None
        return interp

    def _read_options(self, data: bytes) -> list[tuple[int, Any, tuple[int, ...]]] | None:
        """Each operator's builtin options (type, table) from the flatbuffer, or ``None``."""
        schema = _import_schema()
        if schema is None:
            return None
        try:  # LiteRT has verified the buffer; any surprise here only loses the options
            graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
            ops = []
            for i in range(graph.OperatorsLength()):
                op = graph.Operators(i)
                ops.append((op.BuiltinOptionsType(), op.BuiltinOptions(),
                            tuple(int(t) for t in op.OutputsAsNumpy())))
        except Exception:
            return None
        self._schema = schema
        return ops

    def _set_input_shape(self, given: Sequence[int | None] | None) -> None:
        sig = [int(v) for v in self._input["shape_signature"]] or [int(v) for v in self._input["shape"]]
        dims: list[int | None] = [None if v < 0 else v for v in sig[1:]]
        # TFLite is NHWC; a (1, C, H, W) input with C in 1..4 and a wide last axis comes from a
        # channels-first exporter (ai-edge-torch keeps PyTorch's layout): feed it transposed.
        self._nchw = (len(dims) == 3 and dims[0] in (1, 3, 4)
                      and (dims[2] is None or dims[2] > 4) and (dims[1] is None or dims[1] > 4))
        if self._nchw:
            dims = [dims[1], dims[2], dims[0]]
        if given:
            want = [None if v is None else int(v) for v in given]
            if len(want) != len(dims) or any(d is not None and w is not None and d != w
                                              for d, w in zip(dims, want)):
                raise UnsupportedModel(f"{self.name} takes input of shape {tuple(dims)}; --input-shape "
                                       f"{tuple(want)} does not fit it")
            dims = [d if d is not None else w for d, w in zip(dims, want)]
        self._input_shape = tuple(dims)

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self._input_shape

    def _preset_from_quantisation(self) -> str | None:
        """The preprocessing a quantised input implies: the float range its integers stand for.

        ``[0, 1]`` is ``unit``, ``[-1, 1]`` is ``tf``, ``[0, 255]`` is ``raw``
        (within 2 % of the range, since the converter takes the range from its
        calibration images); an integer input without a scale is ``raw``; a
        float input says nothing (``None``).
        """
        d = self._input
        dtype = np.dtype(d["dtype"])
        scales = np.asarray(d["quantization_parameters"]["scales"], dtype=np.float64)
        zps = np.asarray(d["quantization_parameters"]["zero_points"], dtype=np.float64)
        if dtype.type in QUANTISED_DTYPES and not np.any(scales):
            return "raw"  # integers without a scale are the pixel values themselves (a model that casts)
        if dtype.type not in QUANTISED_DTYPES or scales.size != 1 or scales[0] <= 0:
            return None
        info = np.iinfo(dtype)
        zp = float(zps[0]) if zps.size else 0.0
        lo, hi = (info.min - zp) * scales[0], (info.max - zp) * scales[0]
        for name, (want_lo, want_hi) in (("unit", (0.0, 1.0)), ("tf", (-1.0, 1.0)), ("raw", (0.0, 255.0))):
            span = want_hi - want_lo
            if abs(lo - want_lo) <= 0.02 * span and abs(hi - want_hi) <= 0.02 * span:
                return name
        return None

