"""The layer table of a TFLite model: one row per operator making an activation, readable names,
kernel facts, and the final activation.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ...core.kinds import kind_of
from ...core.layers import LayerInfo
from ...core.receptive import resample_geometry, same_padding, with_receptive_fields
from .._graph import Producer, walk_final_activation
from .load import ACTIVATION_DTYPES, QUANTISED_DTYPES, TFLiteModel

#: Convolutions whose weights (input 1) convlens can draw, and their weight layouts.
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV")
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


#: Operators that hand their input's values on (reshaped, quantised or not): the output's maker is behind.
_TFLITE_PASS_THROUGH = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "IDENTITY"}
#: Operators whose output is a linear function of their input: scores, not probabilities.
_TFLITE_LINEAR = {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "BATCH_MATMUL"}
#: What an operator does to the values on the way back from the output (:mod:`convlens.adapters._graph`).
TFLITE_ROLES: dict[str, str] = {
    "SOFTMAX": "softmax", "LOG_SOFTMAX": "log_softmax", "LOGISTIC": "sigmoid",
    **{op: "linear" for op in _TFLITE_LINEAR}, **{op: "pass" for op in _TFLITE_PASS_THROUGH},
}


def tflite_final_activation(interp: Any) -> tuple[str | None, float | None]:
    """What makes a TFLite model's first output, and the output's quantisation step.

    Follows the output tensor back (:func:`convlens.adapters._graph.walk_final_activation`)
    through ``QUANTIZE``, ``DEQUANTIZE``, ``RESHAPE`` and ``SQUEEZE`` to
    ``SOFTMAX`` (``"softmax"``), ``LOGISTIC`` (``"sigmoid"``) or
    ``FULLY_CONNECTED``/``CONV_2D`` (``"linear"``, assumed to carry no fused
    activation); ``LOG_SOFTMAX`` and anything else is ``None``.

    Returns:
        ``(final_activation, step)``: ``step`` is the scale of the nearest
        quantised tensor on the way, counting the output itself (1/256 for a
        uint8 softmax), or ``None`` when the output is float all the way.
    """
    try:
        ops = [op for op in interp._get_ops_details() if op["op_name"] != "DELEGATE"]
        producer = {int(t): op for op in ops for t in op["outputs"] if int(t) >= 0}

        def made(tensor: int) -> Producer[int] | None:
            op = producer.get(tensor)
            if op is None:
                return None
            return Producer(op["op_name"], [int(t) for t in op["inputs"] if int(t) >= 0])

        walk = walk_final_activation(int(interp.get_output_details()[0]["index"]), made, TFLITE_ROLES,
                                     limit=len(ops) + 1)
        for tensor in walk.path:
            d = interp._get_tensor_details(tensor, 0)
            scales = np.asarray(d["quantization_parameters"]["scales"], dtype=np.float64)
            if np.dtype(d["dtype"]).type in QUANTISED_DTYPES and scales.size == 1 and scales[0] > 0:
                return walk.answer, float(scales[0])
        return walk.answer, None
    except (ValueError, KeyError, IndexError, TypeError):  # a tensor without details: the graph does not say
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


class TFLiteTable(TFLiteModel):
    """A TFLite model and its layer table; see :class:`TFLiteAdapter`."""

    def __init__(self, path: str | os.PathLike[str], *, input_shape: Sequence[int | None] | None = None,
                 preprocess: str | None = None) -> None:
        super().__init__(path, input_shape=input_shape, preprocess=preprocess)
        self.final_activation, self.output_quant_step = tflite_final_activation(self._interp)

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
            act = next((d for d in details if np.dtype(d["dtype"]).type in ACTIVATION_DTYPES), None)
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
        if op_name in CONV_OPS:
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
        info = LayerInfo(
            index=index, name=name, type=op_name, kind=kind, output_shape=shape, params=params,
            kernel_shape=kernel_shape, kernel_size=kernel_size, stride=stride, dilation=dilation,
            parents=tuple(parents), extra={"global": is_global, "tensor": out["name"]},
        )
        return self._with_geometry(info, op, opts, in_shape)

    def _with_geometry(self, info: LayerInfo, op: dict[str, Any], opts: Any,
                       in_shape: tuple[int | None, ...] | None) -> LayerInfo:
        """``info`` with the padding and upsampling :mod:`convlens.core.receptive` places boxes by.

        ``SAME`` is TensorFlow's (the extra pixel at the end); ``TRANSPOSE_CONV``
        pads like the conv on its zero-stuffed input; ``PAD``s read their
        stored paddings; ``RESIZE_*`` their ``align_corners`` and
        ``half_pixel_centers``. Without options to read, the geometry is unknown.
        """
        op_name = op["op_name"]
        out = info.output_shape
        in_hw = tuple(in_shape[:2]) if in_shape is not None and len(in_shape) == 3 else ()
        out_hw = tuple(out[:2]) if out is not None and len(out) == 3 else ()
        unknown = replace(info, extra={**info.extra, "geometry": "unknown"})
        if op_name in ("PAD", "PADV2", "MIRROR_PAD"):
            try:
                pads = np.asarray(self._interp.get_tensor(int(op["inputs"][1]))).reshape(-1, 2)
            except (ValueError, IndexError):
                return unknown
            return replace(info, padding=(int(pads[1][0]), int(pads[2][0]))) if len(pads) == 4 else unknown
        if op_name in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
            if opts is None:
                return unknown
            corners, half = bool(opts.AlignCorners()), bool(opts.HalfPixelCenters())
            coords = "align_corners" if corners else "half_pixel" if half else "asymmetric"
            nearest = op_name == "RESIZE_NEAREST_NEIGHBOR"
            found = resample_geometry("nearest" if nearest else "linear", in_hw, out_hw, coordinates=coords,
                                      rounding="round_prefer_ceil" if nearest and (corners or half) else "floor")
            if found is None:
                return unknown
            return replace(info, **{**found, "extra": {**info.extra, **found["extra"]}})
        if info.kernel_size is None or info.extra.get("global") or len(in_hw) != 2:
            return info
        if opts is None or not hasattr(opts, "Padding"):
            # size and jump stand without the padding, a transposed conv's do not
            return unknown if op_name == "TRANSPOSE_CONV" else info
        k, d = info.kernel_size, info.dilation or (1, 1)
        same = opts.Padding() == self._schema.Padding.SAME
        if op_name == "TRANSPOSE_CONV":
            step = (opts.StrideH(), opts.StrideW())
            lead = [same_padding(out_hw[a], k[a], step[a]) if same else 0 for a in range(2)]
            if None in lead:
                return unknown
            return replace(info, padding=(k[0] - 1 - int(lead[0] or 0), k[1] - 1 - int(lead[1] or 0)),
                           upsample=(float(step[0]), float(step[1])))
        stride = info.stride or (1, 1)
        lead = [same_padding(in_hw[a], k[a], stride[a], d[a]) if same else 0 for a in range(2)]
        if None in lead:
            return unknown
        return replace(info, padding=(int(lead[0] or 0), int(lead[1] or 0)))

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
               s.BuiltinOptions.TransposeConvOptions: s.TransposeConvOptions,
               s.BuiltinOptions.ResizeBilinearOptions: s.ResizeBilinearOptions,
               s.BuiltinOptions.ResizeNearestNeighborOptions: s.ResizeNearestNeighborOptions}.get(kind)
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

