"""TFLite models through LiteRT (``ai-edge-litert``): float and quantised, int8 and uint8.

One LiteRT ``Interpreter`` per file, built with
``experimental_preserve_all_tensors=True`` so that after one ``invoke()`` every
operator's output tensor can be read. LiteRT's default XNNPACK delegate stays
on (on VGG16 it runs the float model 2.6x faster than the builtin kernels) but
with ``experimental_disable_delegate_node_fusion=True``: each operator becomes
a delegate node of its own, so its output is still a tensor of the graph, not
a value inside a fused XNNPACK subgraph. The op table lists the original
operators and then the ``DELEGATE`` nodes that run them; only the former make
rows.

The layer table has one row per operator that produces an activation (a
float, int8, uint8 or int16 tensor that depends on the model input), in
execution order, the input first. Operators that only compute constants (a
``DEQUANTIZE`` of float16 weights) or integer bookkeeping (``SHAPE``) get no
row; rows fed through them keep the right parents.

Layer names. The converter names an operator's output tensor after every
TensorFlow op fused into it, output side first, joined by ``;``, e.g.
``sequential_1/conv2d_1/Relu;sequential_1/conv2d_1/BiasAdd;sequential_1/conv2d_1/convolution``.
A row's name is the *scope* (the path without its last component) that occurs
most often among those parts, ties going to the one fused in first (listed
last): ``sequential_1/conv2d_1``. Parts whose last component is the TensorFlow
op the TFLite operator stands for (``convolution``/``Conv2D`` for CONV_2D,
``depthwise`` for DEPTHWISE_CONV_2D, ``MatMul``, ``MaxPool``, ``Mean``...) are
preferred when there are any, so a ReLU layer fused into a depthwise conv
(``m/relu_1/Relu;m/dw_1/BiasAdd;m/dw_1/depthwise``) is named after the conv,
``m/dw_1``, and so is MobileNet's ``ZeroPadding2D`` folded into the next conv.
Output tensors without a scope (``StatefulPartitionedCall:0``) take
the scope of the operator's weights (``m/fc_1/MatMul`` -> ``m/fc_1``); failing
that, the signature's generic output names (``StatefulPartitionedCall``,
``Identity``) become the feeding row's name and the op (``m/fc_1/softmax``), and
any other name is kept without its ``:0`` suffix (``tfl.quantize``). A name used twice
gets ``#2``, ``#3``... as in the Keras adapter. The short name (after the last
``/``) selects a layer when it is unique, so ``--layers conv2d_1`` works. The
raw tensor name is kept in ``LayerInfo.extra["tensor"]``.

Quantised tensors are dequantised at this boundary, ``(q - zero_point) * scale``,
per channel along ``quantized_dimension`` when there is one scale per channel.
A quantised input is fed by quantising the preprocessed float batch with the
input's own scale and zero point. TFLite models take a batch of 1: a batch of N
images runs as N invocations (no ``resize_tensor_input`` on the batch axis,
which models with fixed-shape reshapes refuse).
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..._errors import BadModel, MissingDependency, UnsupportedModel
from ...core.kinds import kind_of
from ...core.layers import LayerInfo
from ...core.receptive import with_receptive_fields
from ...core.sizes import size_hint
from ..base import Gradients, OnOutput, Target
from ..base import first_line as _first_line  # one-line error messages

__all__ = ["TFLiteAdapter", "dequantize", "op_kind", "readable_name", "tflite_final_activation"]

#: Tensor types that carry activations (anything else is bookkeeping: shapes, indices, masks).
_ACTIVATION_DTYPES = (np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16)
_QUANTISED_DTYPES = (np.int8, np.uint8, np.int16)
#: Convolutions whose weights (input 1) convlens can draw, and their weight layouts.
_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV")
#: TFLite operator names whose CamelCase form would not say what they are.
_TYPE_ALIASES = {
    "FULLY_CONNECTED": "FullyConnected",
    "CONCATENATION": "Concatenate",
    "LOGISTIC": "Sigmoid",
    "RELU_N1_TO_1": "ReLU",
    "RELU_0_TO_1": "ReLU",
    "SQUEEZE": "Reshape",
    "EXPAND_DIMS": "Reshape",
    "TRANSPOSE": "Permute",
    "PADV2": "Pad",
    "MIRROR_PAD": "Pad",
    "L2_NORMALIZATION": "L2Norm",
    "LOCAL_RESPONSE_NORMALIZATION": "LRNorm",
}
#: TensorFlow op names (the last part of a fused tensor name) that each TFLite operator comes from.
_OWN_LEAF = {
    "CONV_2D": re.compile(r"^(convolution|Conv2D)\d*$", re.I),
    "DEPTHWISE_CONV_2D": re.compile(r"^(depthwise|DepthwiseConv2dNative)\d*$", re.I),
    "TRANSPOSE_CONV": re.compile(r"^(conv2d_transpose|Conv2DBackpropInput|conv_transpose)\d*$", re.I),
    "FULLY_CONNECTED": re.compile(r"^(MatMul|Tensordot|BiasAdd)\d*$", re.I),
    "MAX_POOL_2D": re.compile(r"^MaxPool(2d)?\d*$", re.I),
    "AVERAGE_POOL_2D": re.compile(r"^(AvgPool|AveragePool)(2d)?\d*$", re.I),
    "MEAN": re.compile(r"^Mean\d*$", re.I),
}
#: Signature output names that say nothing about the op (the model's outputs).
_GENERIC_NAME = re.compile(r"^(StatefulPartitionedCall|PartitionedCall|Identity)(_\d+)?$")
#: Reductions over the spatial axes that are global pools.
_GLOBAL_REDUCTIONS = ("MEAN", "REDUCE_MAX", "SUM")
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
def _captured_native_stderr() -> Iterator[list[str]]:
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


def _threads() -> int:
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


def readable_name(tensor_name: str, weight_names: Sequence[str] = (), op_name: str = "") -> str:
    """A layer name from a TFLite output tensor name (see the module docstring).

    Args:
        tensor_name: e.g. ``"m/conv2d/Relu;m/conv2d/BiasAdd;m/conv2d/Conv2D"``.
        weight_names: names of the operator's constant inputs, used when the
            output tensor has no scope (``StatefulPartitionedCall:0``).
        op_name: the TFLite operator (``DEPTHWISE_CONV_2D``); when some parts
            end in that op's TensorFlow name (``.../depthwise``), only their
            scopes compete, so a ``Pad`` or ``Relu6`` fused into it cannot win.

    Returns:
        ``"m/conv2d"``; ``""`` when every name is empty.
    """
    own = _OWN_LEAF.get(op_name)

    def scopes(name: str) -> list[str]:
        parts = [re.sub(r":\d+$", "", p.strip()) for p in name.split(";")]
        pairs = [p.rsplit("/", 1) for p in parts if "/" in p and p.rsplit("/", 1)[0]]
        mine = [scope for scope, leaf in pairs if own is not None and own.search(leaf)]
        return mine or [scope for scope, _ in pairs]

    for name in (tensor_name, *weight_names):
        found = scopes(name)
        if found:
            counts = Counter(found)
            best = max(counts.values())
            # ties: the scope listed last, i.e. the op fused in first (the conv, not its ReLU)
            return next(s for s in reversed(found) if counts[s] == best)
    first = tensor_name.split(";", 1)[0].strip()
    return re.sub(r":\d+$", "", first)


def op_kind(op_name: str) -> str:
    """The layer kind of a TFLite operator, through :func:`kind_of` on its CamelCase name.

    ``CONV_2D`` -> ``Conv2d`` (conv), ``MAX_POOL_2D`` -> ``MaxPool2d`` (pool),
    ``FULLY_CONNECTED`` -> dense, ``QUANTIZE``/``DEQUANTIZE`` -> other. A ``MEAN``
    over the spatial axes is made a global pool by the adapter, which sees the axes.
    """
    camel = _TYPE_ALIASES.get(op_name) or "".join(p.capitalize() for p in op_name.split("_"))
    return kind_of(camel)


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


class TFLiteAdapter:
    """A ``.tflite`` file behind convlens's adapter contract.

    Args:
        path: the ``.tflite`` file.
        input_shape: ``(H, W, C)`` for models whose input has free dimensions
            (``-1`` in the shape signature); fixed models ignore it unless it
            contradicts them.
        preprocess: the preprocessing preset the model expects; by default the
            one a quantised input's range implies (see
            :meth:`_preset_from_quantisation`), else ``None``.

    Raises:
        BadModel: the file is missing, truncated or not a TFLite model.
        UnsupportedModel: the model takes several inputs, or an input that
            cannot be an image (integer ids, strings).
        MissingDependency: ``ai-edge-litert`` is not installed.
    """

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
        if dtype.type not in _ACTIVATION_DTYPES:
            raise UnsupportedModel(
                f"{p.name} takes {dtype.name} input {self._input['name']} of shape "
                f"{tuple(int(v) for v in self._input['shape_signature'])}, not an image; convlens feeds "
                "images as float or 8-bit tensors (1, H, W, C)")
        self._set_input_shape(input_shape)
        self.preprocess = preprocess or self._preset_from_quantisation()
        self.final_activation, self.output_quant_step = tflite_final_activation(self._interp)
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
            with _captured_native_stderr() as native, warnings.catch_warnings():
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
                    model_content=data, num_threads=_threads(),
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
        if dtype.type in _QUANTISED_DTYPES and not np.any(scales):
            return "raw"  # integers without a scale are the pixel values themselves (a model that casts)
        if dtype.type not in _QUANTISED_DTYPES or scales.size != 1 or scales[0] <= 0:
            return None
        info = np.iinfo(dtype)
        zp = float(zps[0]) if zps.size else 0.0
        lo, hi = (info.min - zp) * scales[0], (info.max - zp) * scales[0]
        for name, (want_lo, want_hi) in (("unit", (0.0, 1.0)), ("tf", (-1.0, 1.0)), ("raw", (0.0, 255.0))):
            span = want_hi - want_lo
            if abs(lo - want_lo) <= 0.02 * span and abs(hi - want_hi) <= 0.02 * span:
                return name
        return None

    # ----------------------------------------------------------------- table

    def _tensor(self, index: int) -> dict[str, Any]:
        return self._interp._get_tensor_details(int(index), 0)

    def _name(self, index: int) -> str:
        try:
            return str(self._tensor(index)["name"])
        except ValueError:  # a tensor without a type (optional, unused): no name to offer
            return ""

    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            self._layers = with_receptive_fields(self._build_rows())
        return self._layers

    def _build_rows(self) -> list[LayerInfo]:
        interp = self._interp
        ops = [op for op in interp._get_ops_details() if op["op_name"] != "DELEGATE"]
        input_index = int(self._input["index"])
        row_of: dict[int, tuple[int, ...]] = {input_index: (0,)}  # activation tensor -> rows it stands for
        rows = [LayerInfo(index=0, name=readable_name(self._input["name"]) or "input", type="INPUT",
                          kind="input", output_shape=self._input_shape,
                          extra={"tensor": self._input["name"]})]
        self._row_tensor = [input_index]
        self._row_op = [None]
        counts: Counter[str] = Counter({rows[0].name: 1})
        for op_pos, op in enumerate(ops):
            ins = [int(t) for t in op["inputs"] if t >= 0]
            feeding = sorted({r for t in ins if t in row_of for r in row_of[t]})
            if not feeding:
                continue  # computes constants only (e.g. DEQUANTIZE of float16 weights)
            outs = [int(t) for t in op["outputs"] if t >= 0]
            details = [self._tensor(t) for t in outs]
            act = next((d for d in details if np.dtype(d["dtype"]).type in _ACTIVATION_DTYPES), None)
            if act is None:  # integer bookkeeping (SHAPE, ARG_MAX...): pass the parents through
                for t in outs:
                    row_of[t] = tuple(feeding)
                continue
            weights = [t for t in ins if t not in row_of and t != input_index]
            index = len(rows)
            base = readable_name(act["name"], [self._name(t) for t in weights], op["op_name"])
            if _GENERIC_NAME.match(base):
                base = f"{rows[feeding[-1]].name.split('#')[0]}/{op['op_name'].lower()}"
            base = base or f"{op['op_name'].lower()}_{index}"
            counts[base] += 1
            name = base if counts[base] == 1 else f"{base}#{counts[base]}"
            rows.append(self._info(index, name, op, op_pos, act, weights, feeding))
            self._row_tensor.append(int(act["index"]))
            self._row_op.append(op)
            for t in outs:
                row_of[t] = (index,)
        return rows

    def _shape_of(self, details: dict[str, Any]) -> tuple[int | None, ...]:
        sig = [int(v) for v in details["shape_signature"]] or [int(v) for v in details["shape"]]
        dims = tuple(None if v < 0 else v for v in sig)
        return dims[1:] if dims and dims[0] in (1, None) else dims

    def _info(self, index: int, name: str, op: dict[str, Any], op_pos: int, out: dict[str, Any],
              weights: list[int], parents: list[int]) -> LayerInfo:
        op_name = op["op_name"]
        shape = self._shape_of(out)
        in_shape = self._activation_in_shape(op)
        kind = op_kind(op_name)
        is_global = False
        if kind == "merge" and len(parents) < 2:
            kind = "other"  # an ADD or MUL of a constant: a bias or a scale, not a merge of branches
        if op_name in _GLOBAL_REDUCTIONS and self._reduces_space(op, in_shape):
            kind, is_global = "pool", True
        params = 0
        for t in weights:  # weights and biases; not axes, shapes or paddings (plain int32)
            d = self._tensor(t)
            if np.dtype(d["dtype"]).kind == "f" or np.asarray(d["quantization_parameters"]["scales"]).size:
                params += int(np.prod(d["shape"]))
        kernel_shape = kernel_size = stride = dilation = None
        opts = self._options(op_pos, op)
        if op_name in _CONV_OPS:
            raw = self._tensor(int(op["inputs"][1]))["shape"]
            if len(raw) == 4:
                kernel_shape = self._canonical_kernel_shape(op_name, tuple(int(v) for v in raw))
                kernel_size = (kernel_shape[2], kernel_shape[3])
            if opts is not None:
                stride = (opts.StrideH(), opts.StrideW())
                if op_name != "TRANSPOSE_CONV":
                    dilation = (opts.DilationHFactor(), opts.DilationWFactor())
            if kernel_size is not None and stride is None:
                stride = _infer_stride(in_shape, shape, kernel_size)
            if op_name == "TRANSPOSE_CONV":
                stride = (1, 1)  # upsampling: the field does not grow by the stride (as in Keras)
            dilation = (dilation or (1, 1)) if kernel_size else None
        elif kind == "pool" and not is_global:
            if opts is not None:
                kernel_size = (opts.FilterHeight(), opts.FilterWidth())
                stride = (opts.StrideH(), opts.StrideW())
            else:  # no options to read: assume the usual non-overlapping pool
                stride = _infer_stride(in_shape, shape, (1, 1))
                kernel_size = stride
            if (kernel_size and in_shape and len(in_shape) == 3 and shape and len(shape) == 3
                    and shape[:2] == (1, 1) and tuple(kernel_size) == tuple(in_shape[:2])):
                is_global = True  # AVERAGE_POOL_2D over the whole map (PyTorch's adaptive pool)
        return LayerInfo(
            index=index, name=name, type=op_name, kind=kind, output_shape=shape, params=params,
            kernel_shape=kernel_shape, kernel_size=kernel_size, stride=stride, dilation=dilation,
            parents=tuple(parents), extra={"global": is_global, "tensor": out["name"]},
        )

    def _activation_in_shape(self, op: dict[str, Any]) -> tuple[int | None, ...] | None:
        """Shape (batch dropped) of the op's activation input: input 2 for TRANSPOSE_CONV, else 0."""
        pos = 2 if op["op_name"] == "TRANSPOSE_CONV" else 0
        ins = [int(t) for t in op["inputs"]]
        if len(ins) <= pos or ins[pos] < 0:
            return None
        return self._shape_of(self._tensor(ins[pos]))

    def _reduces_space(self, op: dict[str, Any], in_shape: tuple[int | None, ...] | None) -> bool:
        """Whether a reduction runs over the two spatial axes of an (N, H, W, C) tensor."""
        ins = [int(t) for t in op["inputs"]]
        if in_shape is None or len(in_shape) != 3 or len(ins) < 2:
            return False
        try:
            axes = {int(a) % 4 for a in np.atleast_1d(self._interp.get_tensor(ins[1]))}
        except (ValueError, TypeError):
            return False
        return axes == {1, 2}

    def _options(self, op_pos: int, op: dict[str, Any]) -> Any | None:
        """The op's Conv2D/DepthwiseConv2D/Pool2D/TransposeConv options, or ``None``."""
        if self._schema_ops is None or op_pos >= len(self._schema_ops):
            return None
        kind, table, outs = self._schema_ops[op_pos]
        if table is None or outs != tuple(int(t) for t in op["outputs"]):
            return None  # node order does not match the file: do not trust the options
        s = self._schema
        cls = {s.BuiltinOptions.Conv2DOptions: s.Conv2DOptions,
               s.BuiltinOptions.DepthwiseConv2DOptions: s.DepthwiseConv2DOptions,
               s.BuiltinOptions.Pool2DOptions: s.Pool2DOptions,
               s.BuiltinOptions.TransposeConvOptions: s.TransposeConvOptions}.get(kind)
        if cls is None:
            return None
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts

    @staticmethod
    def _canonical_kernel_shape(op_name: str, raw: tuple[int, ...]) -> tuple[int, int, int, int]:
        if op_name == "DEPTHWISE_CONV_2D":  # (1, kh, kw, C * multiplier)
            return (raw[3], 1, raw[1], raw[2])
        return (raw[0], raw[3], raw[1], raw[2])  # CONV_2D and TRANSPOSE_CONV: (O, kh, kw, I)

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
        if np.dtype(d["dtype"]).type in _QUANTISED_DTYPES and scales.size and np.any(scales):
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
                with _captured_native_stderr() as native:
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
        if dtype.type in _QUANTISED_DTYPES:
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

    # ----------------------------------------------------------------- gradients

    def gradients_unavailable(self) -> str | None:
        """Always a reason: TFLite is forward-only."""
        return ("a TFLite interpreter computes no gradients, so gradient methods (Grad-CAM and its "
                "family, saliency, SmoothGrad, Integrated Gradients) cannot run on a .tflite file; the "
                "forward-only methods (Score-CAM, Eigen-CAM, occlusion) work, or open the model it was "
                "converted from (Keras, PyTorch, ONNX)")

    def gradients(self, batch: np.ndarray, target: Target, layers: Sequence[int] = (), *,
                  wrt_input: bool = False, need_output: bool = True) -> Gradients:
        raise UnsupportedModel(f"{self.name}: {self.gradients_unavailable()}")

    def kernels(self, index: int) -> np.ndarray:
        """The weights of a CONV_2D, DEPTHWISE_CONV_2D or TRANSPOSE_CONV row as ``(O, I, kh, kw)``.

        Quantised weights are dequantised (per output channel when they carry
        one scale per channel); depthwise weights ``(1, kh, kw, C*m)`` become
        ``(C*m, 1, kh, kw)``, one single-input filter per output channel.
        """
        table = self.layers()
        op = self._row_op[index] if 0 <= index < len(self._row_op) else None
        info = table[index]
        if op is None or op["op_name"] not in _CONV_OPS or info.kernel_shape is None:
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


#: Operators that hand their input's values on (reshaped, quantised or not): the output's maker is behind.
_TFLITE_PASS_THROUGH = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "IDENTITY"}
#: Operators whose output is a linear function of their input: scores, not probabilities.
_TFLITE_LINEAR = {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "BATCH_MATMUL"}


def tflite_final_activation(interp: Any) -> tuple[str | None, float | None]:
    """What makes a TFLite model's first output, and the output's quantisation step.

    Follows the output tensor back through ``QUANTIZE``, ``DEQUANTIZE``,
    ``RESHAPE`` and ``SQUEEZE`` to ``SOFTMAX`` (``"softmax"``), ``LOGISTIC``
    (``"sigmoid"``) or ``FULLY_CONNECTED``/``CONV_2D`` (``"linear"``, assumed
    to carry no fused activation); anything else is ``None``.

    Returns:
        ``(final_activation, step)``: ``step`` is the scale of the nearest
        quantised tensor on the way, counting the output itself (1/256 for a
        uint8 softmax), or ``None`` when the output is float all the way.
    """
    try:
        ops = [op for op in interp._get_ops_details() if op["op_name"] != "DELEGATE"]
        producer = {int(t): op for op in ops for t in op["outputs"] if int(t) >= 0}
        tensor, step = int(interp.get_output_details()[0]["index"]), None
        for _ in range(len(ops) + 1):
            if step is None:
                d = interp._get_tensor_details(tensor, 0)
                scales = np.asarray(d["quantization_parameters"]["scales"], dtype=np.float64)
                if np.dtype(d["dtype"]).type in _QUANTISED_DTYPES and scales.size == 1 and scales[0] > 0:
                    step = float(scales[0])
            op = producer.get(tensor)
            if op is None:
                return None, step
            name = op["op_name"]
            if name == "SOFTMAX":
                return "softmax", step
            if name == "LOGISTIC":
                return "sigmoid", step
            if name in _TFLITE_LINEAR:
                return "linear", step
            inputs = [int(t) for t in op["inputs"] if int(t) >= 0]
            if name not in _TFLITE_PASS_THROUGH or not inputs:
                return None, step
            tensor = inputs[0]
    except (ValueError, KeyError, IndexError, TypeError):  # a tensor without details: the graph does not say
        return None, None
    return None, None


def _infer_stride(in_shape: tuple[int | None, ...] | None, out_shape: tuple[int | None, ...] | None,
                  kernel: tuple[int, int]) -> tuple[int, int] | None:
    """The stride that maps an input size to an output size, for SAME or VALID padding."""
    if not in_shape or not out_shape or len(in_shape) != 3 or len(out_shape) != 3:
        return None
    stride = []
    for axis in range(2):
        n, m, k = in_shape[axis], out_shape[axis], kernel[axis]
        if n is None or m is None or m < 1:
            return None
        s = next((s for s in range(1, n + 1)
                  if -(-n // s) == m or (n >= k and (n - k) // s + 1 == m)), None)
        if s is None:
            return None
        stride.append(s)
    return (stride[0], stride[1])
