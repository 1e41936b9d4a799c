"""The layer table of an ONNX graph: shape inference on the skeleton, rows and their layouts, kernels,
the final activation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..._errors import UnsupportedModel
from ...core.kinds import kind_of
from ...core.layers import LayerInfo
from ...core.receptive import resample_geometry, same_padding, with_receptive_fields
from .._graph import Producer, walk_final_activation
from .load import FLOAT_TYPES, OnnxModel, node_attrs, static_dim, tensor_dims

#: Operators that always produce non-float plumbing (shapes, indexes), whatever inference says.
_PLUMBING = {"Constant", "ConstantOfShape", "Shape", "Size", "NonZero", "ArgMax", "ArgMin", "Range",
             "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"}
#: Operators whose output is channels-first whatever their input's layout.
_CHANNELS_FIRST_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool",
                       "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool",
                       "BatchNormalization", "InstanceNormalization", "LRN", "DepthToSpace",
                       "SpaceToDepth", "MaxUnpool", "DeformConv"}


def _pair(values: Sequence[int] | None, default: int = 1) -> tuple[int, int] | None:
    """The last two spatial values of an attribute; a 1-D value ``k`` becomes ``(1, k)``."""
    if values is None:
        return None
    vals = [int(v) for v in values]
    if len(vals) == 1:
        return (default, vals[0])
    if len(vals) == 2:
        return (vals[0], vals[1])
    return None  # 3-D operators: no 2-D receptive field
#: Operators that hand their input's values on (reshaped, quantised or not): the output's maker is behind.
_ONNX_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "DequantizeLinear",
                      "QuantizeLinear", "Dropout", "Cast"}
#: Operators whose output is a linear function of their input: scores, not probabilities.
_ONNX_LINEAR = {"Gemm", "MatMul", "Conv", "ConvTranspose", "QLinearMatMul", "QLinearConv", "MatMulInteger",
                "ConvInteger"}
#: What an operator does to the values on the way back from the output (:mod:`convlens.adapters._graph`).
ONNX_ROLES: dict[str, str] = {
    "Softmax": "softmax", "QLinearSoftmax": "softmax", "LogSoftmax": "log_softmax", "Sigmoid": "sigmoid",
    "QLinearSigmoid": "sigmoid", "Add": "bias", **{op: "linear" for op in _ONNX_LINEAR},
    **{op: "pass" for op in _ONNX_PASS_THROUGH},
}


def onnx_final_activation(graph: Any) -> tuple[str | None, float | None]:
    """What makes an ONNX graph's first output, and the output's quantisation step.

    Follows the output back (:func:`convlens.adapters._graph.walk_final_activation`)
    through operators that pass values on (``Reshape``, ``Flatten``,
    ``Identity``, ``DequantizeLinear``...) to ``Softmax`` (``"softmax"``),
    ``Sigmoid`` (``"sigmoid"``, also their ``QLinear`` forms), or
    ``Gemm``/``MatMul``/``Conv`` (``"linear"``, also behind the ``Add`` of a
    stored bias); ``LogSoftmax`` and anything else is ``None``.

    Returns:
        ``(final_activation, step)``: ``step`` is the scale of the
        ``DequantizeLinear`` nearest the output (one scale for the tensor), else ``None``.
    """
    producer = {o: node for node in graph.node for o in node.output if o}
    stored = {t.name for t in graph.initializer}
    stored.update(o for node in graph.node if node.op_type == "Constant" for o in node.output)

    def made(tensor: str) -> Producer[str] | None:
        node = producer.get(tensor)
        if node is None or not node.input:
            return None
        if node.op_type == "Add":  # a bias: its one computed input, if it has one
            return Producer("Add" if len(node.input) == 2 else "", [i for i in node.input if i not in stored])
        return Producer(node.op_type, list(node.input))

    walk = walk_final_activation(graph.output[0].name, made, ONNX_ROLES, limit=len(graph.node) + 1)
    step = None
    for tensor in walk.path:
        node = producer.get(tensor)
        if node is not None and node.op_type == "DequantizeLinear" and len(node.input) > 1:
            step = _dequantize_step(graph, producer, node.input[1])
            if step is not None:
                break
    return walk.answer, step


def _dequantize_step(graph: Any, producer: dict[str, Any], scale_name: str) -> float | None:
    """The one scale of a ``DequantizeLinear`` (an initializer or a ``Constant``), else ``None``."""
    from onnx import numpy_helper

    scale = next((t for t in graph.initializer if t.name == scale_name), None)
    if scale is None:  # a Constant node
        const = producer.get(scale_name)
        if const is not None and const.op_type == "Constant" and const.attribute:
            scale = const.attribute[0].t if const.attribute[0].HasField("t") else None
    try:
        values = numpy_helper.to_array(scale).reshape(-1) if scale is not None else np.zeros(0)
    except Exception:  # noqa: BLE001 - a scale kept in external data: the step stays unknown
        values = np.zeros(0)
    if values.size == 1 and float(values[0]) > 0:
        return float(values[0])
    return None


def _text(value: Any) -> str:
    """A string attribute (ONNX gives bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _canonical_dims(dims: tuple[int | None, ...] | None, layout: str) -> tuple[int | None, ...] | None:
    """A tensor's shape without the batch, channels last."""
    if dims is None or not dims:
        return None if dims is None else ()
    rest = tuple(dims[1:])
    if len(dims) in (3, 4) and layout == "NCHW":
        return (*rest[1:], rest[0])
    return rest


def _canonical_kernel_shape(op: str, w: tuple[int, ...], group: int) -> tuple[int, ...]:
    return _canonical_kernel(op, np.zeros(w, dtype=np.float32), group).shape


def _canonical_kernel(op: str, w: np.ndarray, group: int) -> np.ndarray:
    """ONNX weights as canonical ``(O, I, kh, kw)``.

    Conv is ``(O, I/group, kh, kw)`` already; ConvTranspose is
    ``(I, O/group, kh, kw)``: within each group its two first axes swap, so
    output channel ``o`` sees the ``I/group`` inputs of its group. 1-D
    kernels ``(O, I, k)`` become ``(O, I, 1, k)``.
    """
    if w.ndim == 3:
        w = w[:, :, None, :]
    if op == "ConvTranspose":
        cin, out_per_group, kh, kw = w.shape
        g = max(group, 1)
        w = w.reshape(g, cin // g, out_per_group, kh, kw).transpose(0, 2, 1, 3, 4)
        w = w.reshape(g * out_per_group, cin // g, kh, kw)
    return np.ascontiguousarray(w, dtype=np.float32)


class OnnxTable(OnnxModel):
    """An ONNX model and its layer table; see :class:`OnnxAdapter`."""

    def __init__(self, source: Any, *, input_shape: Sequence[int | None] | None = None,
                 preprocess: str | None = None, image_input: str | None = None,
                 inputs: Mapping[str, Any] | None = None) -> None:
        super().__init__(source, input_shape=input_shape, preprocess=preprocess, image_input=image_input,
                         inputs=inputs)
        # the skeleton holds every node and every small initializer (a quantisation scale among them)
        self.final_activation, self.output_quant_step = onnx_final_activation(self._skeleton.graph)

    def _inferred(self) -> Any:
        """The skeleton after shape inference, with the input's free dims filled from ``input_shape``, and
        the held inputs' from their values."""
        skel = self.onnx.ModelProto()
        skel.CopyFrom(self._skeleton)
        if self._not_image is None:
            h, w, c = self._raw_shape
            want = (None, c, h, w) if self.channels_first else (None, h, w, c)
            inp = next(i for i in skel.graph.input if i.name == self.input_name)
            for dim, value in zip(inp.type.tensor_type.shape.dim, want):
                if value is not None and static_dim(dim) is None:
                    dim.dim_value = int(value)
        held = self.held_inputs
        for inp in skel.graph.input:
            if held is not None and inp.name in held.values and inp.type.HasField("tensor_type"):
                item = held.values[inp.name].shape
                dims = inp.type.tensor_type.shape.dim
                for dim, value in zip(list(dims)[1:] if len(dims) == len(item) + 1 else [], item):
                    if static_dim(dim) is None:
                        dim.dim_value = int(value)
        try:
            return self.onnx.shape_inference.infer_shapes(skel, strict_mode=False, data_prop=True)
        except Exception:  # inference is a help, not a requirement: shapes stay unknown
            return skel

    # ----------------------------------------------------------------- table

    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            self._layers = with_receptive_fields(self._rows())
        return self._layers

    def _rows(self) -> list[LayerInfo]:
        inferred = self._inferred()
        graph = inferred.graph
        types: dict[str, Any] = {}
        for vi in (*graph.input, *graph.value_info, *graph.output):
            types[vi.name] = vi.type
        consts = {t.name for t in graph.initializer}
        init_dims = {t.name: tuple(t.dims) for t in graph.initializer}
        init_types = {t.name: t.data_type for t in graph.initializer}
        producer: dict[str, int] = {self.input_name: 0}  # tensor -> row
        # the held inputs, and what is computed from them without the image: values fed in, no weights
        side = {s.name for s in self.held_inputs.slots} - {self.input_name} if self.held_inputs else set()
        passes: dict[str, tuple[int, ...]] = {}  # tensor made by plumbing on activations -> its rows
        layout = {self.input_name: "NCHW" if self.channels_first else "NHWC"}
        self._layout = layout  # filled as the walk goes; _is_global reads it
        names: dict[str, int] = {}
        rows = [LayerInfo(index=0, name=self.input_name, type="Input", kind="input",
                          output_shape=self.input_shape)]
        self._row_tensor, self._row_node = [self.input_name], [None]
        for node in graph.node:
            act_inputs = [i for i in node.input if i and (i in producer or i in passes)]
            if not act_inputs:
                made = (side if any(i in side for i in node.input) else consts)
                made.update(o for o in node.output if o)  # weights computed from weights, or held values
                continue
            parents = sorted({p for i in act_inputs
                              for p in ((producer[i],) if i in producer else passes[i])})
            out = node.output[0] if node.output else ""
            out_type = types.get(out)
            known = out_type is not None and out_type.HasField("tensor_type")
            elem = out_type.tensor_type.elem_type if out_type is not None and known else 0
            floaty = elem in FLOAT_TYPES if elem else node.op_type not in _PLUMBING
            node_layout = self._node_layout(node, act_inputs, layout)
            for o in node.output:
                if o:
                    layout[o] = node_layout
            if not out or not floaty or node.op_type in _PLUMBING:
                for o in node.output:
                    if o:
                        passes[o] = tuple(parents)
                continue
            row = len(rows)
            for o in node.output:
                if o:
                    producer[o] = row
            dims = tensor_dims(out_type) if out_type is not None else None
            base = node.name or out
            names[base] = names.get(base, 0) + 1
            name = base if names[base] == 1 else f"{base}#{names[base]}"
            rows.append(self._info(row, name, node, dims, node_layout, parents, consts, init_dims,
                                   init_types, types))
            self._row_tensor.append(out)
            self._row_node.append(node)
        return rows

    @staticmethod
    def _node_layout(node: Any, act_inputs: list[str], layout: dict[str, str]) -> str:
        if node.op_type in _CHANNELS_FIRST_OPS:
            return "NCHW"
        source = layout.get(act_inputs[0], "NCHW")
        if node.op_type == "Transpose":
            # where the channel axis (1, or the last) lands: last is NHWC, (N, L, C) tokens too
            perm = [int(p) for p in node_attrs(node).get("perm", [])]
            channel = 1 if source == "NCHW" else len(perm) - 1
            if len(perm) >= 3 and channel in perm:
                return "NHWC" if perm.index(channel) == len(perm) - 1 else "NCHW"
            return "NCHW"
        return source

    def _info(self, row: int, name: str, node: Any, dims: tuple[int | None, ...] | None, node_layout: str,
              parents: list[int], consts: set[str], init_dims: dict[str, tuple], init_types: dict[str, int],
              types: dict[str, Any]) -> LayerInfo:
        op = node.op_type
        kind = kind_of(op)
        if kind == "model":
            kind = "other"
        attrs = node_attrs(node)

        def const_dims(tensor: str) -> tuple[int | None, ...] | None:
            if tensor in init_dims:
                return init_dims[tensor]
            return tensor_dims(types[tensor]) if tensor in types else None

        params = 0
        for i in node.input:
            if i and i in consts:
                elem = init_types.get(i) or (types[i].tensor_type.elem_type if i in types else 0)
                shape = const_dims(i)
                if elem in FLOAT_TYPES and shape is not None and None not in shape:
                    params += int(np.prod([int(d) for d in shape if d is not None])) if shape else 1
        kernel_shape = kernel_size = stride = dilation = None
        if op in ("Conv", "ConvTranspose") and len(node.input) > 1:
            w = const_dims(node.input[1])
            if w is not None and None not in w and len(w) in (3, 4):
                kernel_shape = _canonical_kernel_shape(op, tuple(int(d) for d in w if d is not None),
                                                       int(attrs.get("group", 1)))
            spatial = attrs.get("kernel_shape") or (w[2:] if w is not None else None)
            kernel_size = (_pair([int(d) for d in spatial if d is not None])
                           if spatial is not None and None not in spatial else None)
        elif kind == "pool" and "kernel_shape" in attrs:
            kernel_size = _pair(attrs["kernel_shape"])
        if kernel_size is not None:  # ONNX's defaults are 1 along every axis
            stride = _pair(attrs.get("strides")) or (1, 1)
            dilation = _pair(attrs.get("dilations")) or (1, 1)
            if op == "ConvTranspose":  # upsampling: the field does not grow by the stride
                stride = (1, 1)
        info = LayerInfo(
            index=row, name=name, type=op, kind=kind, output_shape=_canonical_dims(dims, node_layout),
            params=params, kernel_shape=kernel_shape, kernel_size=kernel_size, stride=stride,
            dilation=dilation, parents=tuple(parents), extra={"global": self._is_global(node, attrs, types)},
        )
        source = node.input[0] if node.input else ""
        in_dims = tensor_dims(types[source]) if source in types else None
        return self._with_geometry(info, node, attrs, in_dims, dims, self._layout.get(source, "NCHW"))

    def _with_geometry(self, info: LayerInfo, node: Any, attrs: dict[str, Any], in_dims: tuple | None,
                       out_dims: tuple | None, layout: str) -> LayerInfo:
        """``info`` with the padding and upsampling :mod:`convlens.core.receptive` places boxes by.

        ``pads``/``auto_pad`` of ``Conv``, ``ConvTranspose`` (as the conv on
        its zero-stuffed input: ``(k - 1) * d`` minus its leading pads) and
        pools; ``Pad`` with stored pads; ``Resize`` and ``Upsample`` by mode,
        coordinate transformation and nearest rounding. Anything else, or an
        attribute computed at run time, leaves the geometry unknown.
        """
        op = node.op_type

        def spatial(dims: tuple | None) -> tuple[int | None, ...]:
            if dims is None or len(dims) not in (3, 4):
                return ()
            hw = tuple(dims[2:]) if layout == "NCHW" else tuple(dims[1:-1])
            return (1, hw[0]) if len(hw) == 1 else hw

        in_hw, out_hw = spatial(in_dims), spatial(out_dims)
        if op in ("Resize", "Upsample"):
            mode = _text(attrs.get("mode", "nearest"))
            coords = _text(attrs.get("coordinate_transformation_mode",
                                     "half_pixel" if op == "Resize" else "asymmetric"))
            rounding = _text(attrs.get("nearest_mode", "round_prefer_floor"))
            if op == "Upsample":
                rounding = "floor"
            if coords == "pytorch_half_pixel" and all(m is not None and m > 1 for m in out_hw):
                coords = "half_pixel"
            scale = None
            scales_input = node.input[2] if op == "Resize" and len(node.input) > 2 else (
                node.input[1] if op == "Upsample" and len(node.input) > 1 else "")
            if scales_input:
                value = self._constant(scales_input)
                if value is not None and value.size >= 2:
                    values = [float(v) for v in value.reshape(-1)]
                    scale = values[2:] if layout == "NCHW" else values[1:-1]
                    scale = scale if len(scale) == 2 else [1.0, scale[0]] if len(scale) == 1 else None
            found = resample_geometry(mode, in_hw, out_hw, scale=scale, coordinates=coords, rounding=rounding)
            if found is None or attrs.get("antialias", 0):
                return info
            return replace(info, **{**found, "extra": {**info.extra, **found["extra"]}})
        if op == "Pad":
            pads = attrs.get("pads")
            if pads is None and len(node.input) > 1 and node.input[1]:
                value = self._constant(node.input[1])
                if value is None:
                    value = self._folded(node.input[1])
                pads = None if value is None else [int(v) for v in value.reshape(-1)]
            mode = _text(attrs.get("mode", "constant"))
            if pads is None or mode == "wrap" or len(node.input) > 3 and node.input[3] or len(pads) not in (6, 8):
                return replace(info, extra={**info.extra, "geometry": "unknown"})
            rank = len(pads) // 2
            begin = pads[:rank]
            hw = begin[2:] if layout == "NCHW" else begin[1:-1]
            first = (0, hw[0]) if len(hw) == 1 else (hw[0], hw[1])
            return replace(info, padding=(int(first[0]), int(first[1])))
        if info.kernel_size is None or len(in_hw) != 2:
            return info
        k, d = info.kernel_size, info.dilation or (1, 1)
        stride = _pair(attrs.get("strides")) or (1, 1)
        auto = _text(attrs.get("auto_pad", "NOTSET"))
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            lead: list[int | None] = []
            for a in range(2):
                if op == "ConvTranspose":  # total = s*(in-1) + output_padding + (k-1)*d + 1 - out, out = in*s
                    n = in_hw[a]
                    extra_out = (_pair(attrs.get("output_padding"), 0) or (0, 0))[a]
                    total = None if n is None else max(stride[a] * (n - 1) + extra_out + (k[a] - 1) * d[a] + 1
                                                       - n * stride[a], 0)
                    lead.append(None if total is None else total - total // 2 if auto == "SAME_LOWER"
                                else total // 2)
                else:
                    lead.append(same_padding(in_hw[a], k[a], stride[a], d[a], lower=auto == "SAME_LOWER"))
            if None in lead:
                return info
            pad = (int(lead[0] or 0), int(lead[1] or 0))
        elif auto in ("NOTSET", "VALID"):
            pads = [int(v) for v in attrs.get("pads", [])] if auto == "NOTSET" else []
            pad = (0, 0) if not pads else (0, pads[0]) if len(pads) == 2 else (pads[0], pads[1]) \
                if len(pads) == 4 else (-1, -1)
            if pad == (-1, -1):
                return info
        else:
            return info
        if op != "ConvTranspose":
            return replace(info, padding=pad)
        return replace(info, padding=((k[0] - 1) * d[0] - pad[0], (k[1] - 1) * d[1] - pad[1]),
                       upsample=(float(stride[0]), float(stride[1])))

    def _is_global(self, node: Any, attrs: dict[str, Any], types: dict[str, Any]) -> bool:
        """Global pools, and reductions over both spatial axes (how torch exports ``x.mean((2, 3))``)."""
        if node.op_type.startswith("Global"):
            return True
        if not node.op_type.startswith("Reduce"):
            return False
        source = node.input[0]
        dims = tensor_dims(types[source]) if source in types else None
        if dims is None or len(dims) != 4:
            return False
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            value = self._constant(node.input[1])
            axes = None if value is None else value.reshape(-1).tolist()
        if axes is None:  # no axes: every axis is reduced
            return not attrs.get("noop_with_empty_axes", 0)
        spatial = {2, 3} if self._layout.get(source, "NCHW") == "NCHW" else {1, 2}
        return spatial <= {int(a) % 4 for a in axes}

    def _folded(self, tensor: str) -> np.ndarray | None:
        """A tensor computed from stored ones only (PyTorch exports ``F.pad``'s pads as a chain of
        ``Concat``, ``Slice``, ``Transpose``...), evaluated by ONNX's reference runtime; else ``None``."""
        graph = self._skeleton.graph
        producer = {o: n for n in graph.node for o in n.output if o}
        stored = {t.name for t in graph.initializer}
        needed: list[Any] = []
        todo, seen = [tensor], set()
        while todo:
            t = todo.pop()
            if t in seen or t in stored or not t:
                continue
            seen.add(t)
            node = producer.get(t)
            if node is None or len(needed) > 64:
                return None  # a graph input, or too long a chain to be constants
            needed.append(node)
            todo.extend(node.input)
        try:
            from onnx import helper
            from onnx.reference import ReferenceEvaluator

            order = [node for node in graph.node if any(node is m for m in needed)]
            used = {name for node in order for name in node.input}
            inits = [t for t in graph.initializer if t.name in used]
            sub = helper.make_graph(order, "folded", [], [helper.make_tensor_value_info(tensor, 0, None)], inits)
            model = helper.make_model(sub, opset_imports=self._skeleton.opset_import)
            outputs: Any = ReferenceEvaluator(model).run(None, {})
            return np.asarray(outputs[0])
        except Exception:  # noqa: BLE001 - not evaluable here: the geometry stays unknown
            return None

    # ----------------------------------------------------------------- kernels

    def kernels(self, index: int) -> np.ndarray:
        table = self.layers()
        info = table[index]
        node = self._row_node[index]
        if node is None or node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
            raise UnsupportedModel(f"layer {info.name} ({info.type}) has no convolution kernel; select conv "
                                   "layers (--layers conv)")
        w = self._constant(node.input[1])
        if w is None:
            raise UnsupportedModel(f"the kernel of {info.name} ({node.input[1]}) is computed at run time, "
                                   "not stored in the file; convlens draws stored kernels")
        if w.ndim not in (3, 4):
            raise UnsupportedModel(f"layer {info.name} has a {w.ndim}-D kernel; convlens draws 1-D and 2-D "
                                   "convolution kernels")
        group = int(node_attrs(node).get("group", 1))
        return _canonical_kernel(node.op_type, w.astype(np.float32), group)

    def _constant(self, tensor: str, depth: int = 0) -> np.ndarray | None:
        """A stored tensor: an initializer or Constant, also behind Identity or DequantizeLinear."""
        from onnx import numpy_helper

        if tensor in self._shared:
            return self._weight(tensor)
        graph = self._skeleton.graph  # small initializers and Constant nodes are inline there
        for t in graph.initializer:
            if t.name == tensor:
                return numpy_helper.to_array(t)
        if depth > 8:
            return None
        for node in graph.node:
            if tensor in node.output:
                if node.op_type == "Identity":
                    return self._constant(node.input[0], depth + 1)
                if node.op_type == "DequantizeLinear":  # int8 weights of a QDQ-quantised model
                    return self._dequantized(node, depth)
                if node.op_type == "Constant" and node.attribute:
                    a = node.attribute[0]
                    if a.name == "value":
                        return numpy_helper.to_array(a.t)
                    if a.name in ("value_float", "value_floats"):
                        return np.asarray(self.onnx.helper.get_attribute_value(a), dtype=np.float32)
                return None
        return None

    def _dequantized(self, node: Any, depth: int) -> np.ndarray | None:
        """``(x - zero_point) * scale`` of a DequantizeLinear whose inputs are all stored.

        Per tensor, or per channel along the ``axis`` attribute (default 1);
        blocked quantisation (``block_size``) is left out (``None``).
        """
        attrs = node_attrs(node)
        if attrs.get("block_size", 0):
            return None
        values = [self._constant(t, depth + 1) if t else None for t in node.input[:3]]
        q, scale, zero = (values + [None] * 3)[:3]
        if q is None or scale is None or (len(node.input) > 2 and node.input[2] and zero is None):
            return None
        x = q.astype(np.float64)
        scale = scale.astype(np.float64)
        zero = np.zeros_like(scale) if zero is None else zero.astype(np.float64)
        if scale.ndim == 1 and scale.size > 1:  # one scale per channel along ``axis``
            shape = [1] * x.ndim
            shape[int(attrs.get("axis", 1)) % x.ndim] = scale.size
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return ((x - zero) * scale).astype(np.float32)

