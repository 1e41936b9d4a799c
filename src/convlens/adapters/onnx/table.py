"""ONNX models through onnxruntime (CPU), with every intermediate output exposed.

An ONNX graph only returns its declared outputs, so the outputs of the layers
that :meth:`OnnxAdapter.run` is asked for are added as extra graph outputs and
a session is built for exactly that set (cached, a few at a time). Shapes come
from ONNX shape inference, run on a *skeleton* of the model: the graph with its
large weights reduced to their shape and type, so a VGG-sized model (or one
over protobuf's 2 GB limit, stored with external data) is never copied whole.

Layouts are settled here, once. ONNX convolutions are channels-first, so every
4-D intermediate tensor is taken as ``(N, C, H, W)`` and handed over as
``(N, H, W, C)``, 3-D ``(N, C, L)`` as ``(N, L, C)``, unless the tensor is known
to be channels-last: the layout is followed from the input through the graph
(a ``Transpose`` with ``perm=[0, 3, 1, 2]`` turns an NHWC tensor into NCHW and
``[0, 2, 3, 1]`` the other way; convolutions, pools and normalisations produce
NCHW; element-wise operators keep their input's layout).
"""

from __future__ import annotations

import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..._errors import BadArgument, BadModel, ConvlensError, MissingDependency, UnsupportedModel
from ...core.kinds import kind_of
from ...core.layers import LayerInfo
from ...core.receptive import with_receptive_fields
from ...core.sizes import size_hint
from ...core.text import shape_text
from ..base import Gradients, OnOutput, Target, check_rows, target_cotangent
from ..base import first_line as _first_line  # one-line error messages

__all__ = ["OnnxAdapter", "import_onnx"]

#: ONNX TensorProto element types that hold floating-point numbers, and their numpy types.
_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64, 16: None}  # 16: bfloat16 (no numpy type)
#: Input element types an image can be fed as: the float types, and uint8 pixels (a graph that casts).
_IMAGE_TYPES = {**_FLOAT_TYPES, 2: np.uint8}
_TYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
               8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
               16: "bfloat16"}
#: Operators that always produce non-float plumbing (shapes, indexes), whatever inference says.
_PLUMBING = {"Constant", "ConstantOfShape", "Shape", "Size", "NonZero", "ArgMax", "ArgMin", "Range",
             "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"}
#: Operators whose output is channels-first whatever their input's layout.
_CHANNELS_FIRST_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool",
                       "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool",
                       "BatchNormalization", "InstanceNormalization", "LRN", "DepthToSpace",
                       "SpaceToDepth", "MaxUnpool", "DeformConv"}
_NHWC_TO_NCHW = [0, 3, 1, 2]
#: Initializers with more elements than this are left out of the shape-inference skeleton.
_SMALL = 4096
#: Sessions kept at once, and the memory their copies of the weights may take together.
_MAX_SESSIONS = 3
_SESSION_BUDGET = 1536 * 2**20
_STUB_LOCATION = "convlens-weights-from-memory"
#: The opset that graphs of newer opsets are brought down to when onnx2torch (1.5) lacks a converter.
_TWIN_OPSET = 17
#: What still works when gradients do not.
_FORWARD_ONLY = "the forward-only methods (Score-CAM, Eigen-CAM, occlusion) still work"


def import_onnx() -> tuple[Any, Any]:
    """Import onnx and onnxruntime, or say which extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise MissingDependency(f"reading ONNX models needs onnx and onnxruntime ({exc}); run: "
                                "pip install 'convlens[onnx]'") from None
    return onnx, onnxruntime


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


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


def _dims(type_proto: Any) -> tuple[int | None, ...] | None:
    """Static dims of a tensor type, or ``None`` if unranked.

    A dim is ``None`` when it is symbolic, unknown, or a literal ``-1`` or ``0``
    (some exporters write free dims as ``-1``, as in ``[-1, 3, ?, ?]``).
    """
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    return tuple(_static_dim(d) for d in type_proto.tensor_type.shape.dim)


def _static_dim(dim: Any) -> int | None:
    """A positive fixed dim, else ``None`` (symbolic, unset, ``-1`` or ``0``: free)."""
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None


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


def _shape_text(dims: Sequence[int | None] | None) -> str:
    return shape_text(dims, unknown="(unknown shape)")


class OnnxAdapter:
    """An ONNX model behind convlens's adapter contract, run by onnxruntime on the CPU.

    Input layout rule: a rank-4 input is NCHW when its dim 1 is 1 or 3 and its
    last dim is not, NHWC when its last dim is 1 or 3 and dim 1 is not; when
    that does not decide (both or neither are 1 or 3, or they are symbolic),
    ``input_shape``'s channel count decides if given, then an input that goes
    straight into a ``Transpose`` with ``perm=[0, 3, 1, 2]`` is NHWC, and
    otherwise it is NCHW, ONNX's own convention. The batch that :meth:`run`
    receives is always ``(N, H, W, C)`` float32 and is transposed for NCHW models.

    Layer rows: the input, then one row per node whose first output is a
    floating-point tensor computed from the input image. Nodes that only
    compute constants (``Constant``, weights behind ``Identity``,
    ``DequantizeLinear`` of weights) or shapes and indexes (``Shape``,
    ``Gather`` on shapes, ``Cast`` to int64) are plumbing and get no row; a row
    whose input went through plumbing names the plumbing's own parents.

    Args:
        source: a path to a ``.onnx`` file (external data files next to it are
            read), or an ``onnx.ModelProto`` with its weights loaded.
        input_shape: ``(H, W, C)`` filling in the input's free dimensions.
        preprocess: the preprocessing preset the model expects, if known.

    Raises:
        BadModel: the file is missing, corrupt, truncated, or its external
            data file is missing.
        UnsupportedModel: the model takes several inputs.
        MissingDependency: onnx or onnxruntime is not installed.
    """

    framework = "onnx"
    class_names: list[str] | None = None
    class_names_source = ""
    final_activation: str | None = None
    #: The step of the model's output when a DequantizeLinear makes it (its scale), else ``None``.
    output_quant_step: float | None = None

    def __init__(self, source: Any, *, input_shape: Sequence[int | None] | None = None,
                 preprocess: str | None = None) -> None:
        self.onnx, self.ort = import_onnx()
        self.preprocess = preprocess
        self.base_dir: Path | None = None
        if isinstance(source, self.onnx.ModelProto):
            model = source
            label = model.graph.name or "model"
        else:
            path = Path(os.fspath(source))
            model = self._load(path)
            self.base_dir = path.resolve().parent
            label = path.name
        self._check_structure(model, label)
        # A file is known by its name (exporters call every graph "main_graph" or "torch_jit").
        self.name = model.graph.name or label if self.base_dir is None else Path(label).stem
        self._label = label
        self._check_external(model)
        self._init_input(model, input_shape)
        try:
            self._skeleton, self._shared = self._make_skeleton(model)
        except (OSError, ValueError) as exc:  # an external data file shorter than the model says
            raise BadModel(f"cannot read the weights of {self._label}: {type(exc).__name__}: "
                           f"{_first_line(str(exc))}; is its external data file complete?") from None
        self._graph_output = model.graph.output[0].name
        self.final_activation, self.output_quant_step = onnx_final_activation(model.graph)
        del model  # the skeleton and the large weights (until read) are all that is kept
        self._arrays: dict[str, np.ndarray] = {}  # large weights, read on first need
        self._layers: list[LayerInfo] | None = None
        self._row_tensor: list[str] = []  # tensor name of each row (row 0: the input)
        self._row_node: list[Any] = []  # NodeProto of each row (None for the input)
        self._layout: dict[str, str] = {}  # tensor name -> "NCHW" / "NHWC" for rank-3/4 tensors
        self._sessions: OrderedDict[tuple[str, ...], Any] = OrderedDict()  # by extra outputs (_session)
        self._ort_values: dict[str, Any] | None = None  # large weights as OrtValues, by name
        self._twin_cache: tuple[Any, dict[str, tuple[Any, int, int]]] | None = None  # onnx2torch's module
        self._twin_error: str | None = None  # why the conversion failed, once it has
        self._twin_checked: set[tuple[int, ...]] = set()  # input shapes on which it agreed with onnxruntime
        self._tails: dict[tuple[int, ...], _Tail] = {}  # the converted module after each frontier (_tail)

    # ----------------------------------------------------------------- loading

    def _load(self, path: Path) -> Any:
        if not path.is_file():
            raise BadModel(f"model file not found: {path}; check the path")
        try:
            # External data stays on disk for now: the graph is read first, the weights when needed.
            return self.onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf DecodeError on truncated or foreign files
            raise BadModel(f"cannot read ONNX model {path}: {type(exc).__name__}: {_first_line(str(exc))}; "
                           "is it a complete .onnx file (torch.onnx.export, tf2onnx)?") from None

    def _check_structure(self, model: Any, label: str) -> None:
        # Protobuf parses many non-ONNX byte strings without complaint; a real model has these.
        graph = model.graph
        if model.ir_version <= 0 or not model.opset_import or not graph.node or not graph.output:
            raise BadModel(f"{label} is not an ONNX model (no graph, opset or outputs); give a .onnx file "
                           "saved by torch.onnx.export, tf2onnx or onnx.save")
        # protobuf hands over a damaged (non-UTF-8) string field as bytes, which nothing downstream expects
        names = [graph.name, *(v.name for v in (*graph.input, *graph.output, *graph.initializer))]
        for node in graph.node:
            names.extend((node.op_type, node.name, node.domain, *node.input, *node.output))
        if not all(isinstance(n, str) for n in names):
            raise BadModel(f"cannot read ONNX model {label}: a name in its graph is not text; the file is "
                           "damaged (is it a complete .onnx file?)")

    def _external_tensors(self, model: Any) -> list[Any]:
        external = self.onnx.TensorProto.EXTERNAL
        tensors = [t for t in model.graph.initializer if t.data_location == external]
        for node in model.graph.node:
            if node.op_type == "Constant":
                tensors.extend(a.t for a in node.attribute
                               if a.type == self.onnx.AttributeProto.TENSOR and a.t.data_location == external)
        return tensors

    def _check_external(self, model: Any) -> None:
        """Every external data file exists, inside the model's folder (else: BadModel naming it)."""
        tensors = self._external_tensors(model)
        if not tensors:
            return
        if self.base_dir is None:
            raise BadModel(f"{self._label} keeps weights in external data files that were not loaded; "
                           "load it with onnx.load(path) (which reads them) or give convlens the path")
        for location in sorted({self._location(t) for t in tensors}):
            file = (self.base_dir / location).resolve()
            if self.base_dir not in (file, *file.parents):
                raise BadModel(f"{self._label} points its weights at {location}, outside its folder; "
                               "convlens only reads external data stored next to the .onnx file")
            if not file.is_file():
                raise BadModel(f"{self._label} keeps its weights in the external data file {location}, "
                               f"which is missing: put {location} next to the .onnx file in {self.base_dir}")

    @staticmethod
    def _location(tensor: Any) -> str:
        return next((e.value for e in tensor.external_data if e.key == "location"), "")

    # ----------------------------------------------------------------- input

    def _init_input(self, model: Any, given: Sequence[int | None] | None) -> None:
        graph = model.graph
        weights = {t.name for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in weights]  # IR < 4 lists weights as inputs
        if len(inputs) != 1:
            described = "; ".join(f"{i.name} {_shape_text(_dims(i.type))} "
                                  f"{_TYPE_NAMES.get(i.type.tensor_type.elem_type, 'non-tensor')}"
                                  for i in inputs) or "none"
            raise UnsupportedModel(
                f"{self._label} takes {len(inputs)} inputs ({described}); convlens feeds one image tensor: "
                "re-export the model with the other inputs fixed (e.g. torch.onnx.export of a wrapper "
                "module whose forward(image) passes constants for them)")
        spec = inputs[0]
        self.input_name = spec.name
        dims = _dims(spec.type)
        elem = spec.type.tensor_type.elem_type if spec.type.HasField("tensor_type") else 0
        self._input_dims = dims
        self._input_type = elem
        type_name = _TYPE_NAMES.get(elem, "non-tensor")
        self._not_image: str | None = None
        if elem == 2 and self.preprocess is None:
            self.preprocess = "raw"  # uint8 pixels: the network takes 0..255 itself
        if dims is None or len(dims) != 4 or _IMAGE_TYPES.get(elem) is None:
            self._not_image = (f"{self._label} takes {self.input_name} of shape {_shape_text(dims)} "
                               f"{type_name}, not an image batch (N, C, H, W) or (N, H, W, C) of floats or uint8; "
                               "its layer table works, feature maps need an image model")
            if dims is None or len(dims) != 4:
                # Not (H, W, C): Lens then says feature maps need an image model.
                self.channels_first = True
                self.batch_size = dims[0] if dims else None
                self._raw_shape = tuple(dims[1:]) if dims else ()
                return
        self.channels_first = self._decide_layout(model, dims, given)
        self.batch_size = dims[0]
        hwc = (dims[2], dims[3], dims[1]) if self.channels_first else tuple(dims[1:])
        if given:
            given = tuple(given)
            if len(given) != 3:
                raise BadArgument(f"--input-shape takes H,W,C; got {given}")
            for have, want, axis in zip(hwc, given, "HWC"):
                if have is not None and want is not None and have != want:
                    raise BadArgument(f"{self._label} takes a fixed input of {_shape_text(hwc)} (H, W, C); "
                                      f"--input-shape {given} disagrees at {axis}: leave it out")
            hwc = tuple(w if h is None else h for h, w in zip(hwc, given))
        self._raw_shape = hwc

    def _decide_layout(self, model: Any, dims: tuple[int | None, ...],
                       given: Sequence[int | None] | None) -> bool:
        """Whether a rank-4 input is NCHW (see the class docstring for the rule)."""
        second, last = dims[1] in (1, 3), dims[3] in (1, 3)
        if second != last:
            return second
        if given and len(given) == 3 and given[2] is not None and dims[1] != dims[3]:
            if dims[1] == given[2]:
                return True
            if dims[3] == given[2]:
                return False
        for node in model.graph.node:
            if self.input_name in node.input:
                if node.op_type == "Transpose" and list(_attrs(node).get("perm", [])) == _NHWC_TO_NCHW:
                    return False
                break
        return True

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """``(H, W, C)`` for image models; the raw shape without batch for others."""
        return self._raw_shape

    # ----------------------------------------------------------------- skeleton and shapes

    def _make_skeleton(self, model: Any) -> tuple[Any, dict[str, Any]]:
        """The model with its large initializers reduced to name, type and shape.

        Returns the skeleton and the full initializers it left out, by name. Shape
        inference reads only small tensors' values (shapes for ``Reshape``);
        sessions get the large ones through ``add_external_initializers`` from
        arrays read once, so the file is never re-serialised with its weights
        (which protobuf could not do past 2 GB).
        """
        onnx = self.onnx
        skel = onnx.ModelProto()
        skel.ir_version = model.ir_version
        skel.producer_name = model.producer_name
        skel.opset_import.extend(model.opset_import)
        skel.functions.extend(model.functions)
        graph, g = model.graph, skel.graph
        g.name = graph.name
        g.node.extend(graph.node)
        for node in g.node:  # Constant nodes with external data: inline them too
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_location == onnx.TensorProto.EXTERNAL:
                    a.t.CopyFrom(onnx.numpy_helper.from_array(
                        onnx.numpy_helper.to_array(a.t, str(self.base_dir or "")), a.t.name))
        g.input.extend(graph.input)
        g.output.extend(graph.output)
        g.value_info.extend(graph.value_info)
        g.sparse_initializer.extend(graph.sparse_initializer)
        shared = {}
        base = str(self.base_dir or "")
        external = onnx.TensorProto.EXTERNAL
        for t in graph.initializer:
            count = int(np.prod(t.dims)) if len(t.dims) else 1
            if count <= _SMALL:
                if t.data_location == external:  # inline: a session built from bytes has no folder
                    value = onnx.numpy_helper.to_array(t, base)
                    g.initializer.append(onnx.numpy_helper.from_array(value, t.name))
                else:
                    g.initializer.add().CopyFrom(t)
                continue
            stub = g.initializer.add()
            stub.name, stub.data_type = t.name, t.data_type
            stub.dims.extend(t.dims)
            # A stub marked external: sessions get the data through add_external_initializers.
            stub.data_location = onnx.TensorProto.EXTERNAL
            entry = stub.external_data.add()
            entry.key, entry.value = "location", _STUB_LOCATION
            shared[t.name] = t
        return skel, shared

    def _inferred(self) -> Any:
        """The skeleton after shape inference, with the input's free dims filled from ``input_shape``."""
        skel = self.onnx.ModelProto()
        skel.CopyFrom(self._skeleton)
        if self._not_image is None:
            h, w, c = self._raw_shape
            want = (None, c, h, w) if self.channels_first else (None, h, w, c)
            inp = next(i for i in skel.graph.input if i.name == self.input_name)
            for dim, value in zip(inp.type.tensor_type.shape.dim, want):
                if value is not None and _static_dim(dim) is None:
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
                consts.update(o for o in node.output if o)  # weights computed from weights
                continue
            parents = sorted({p for i in act_inputs
                              for p in ((producer[i],) if i in producer else passes[i])})
            out = node.output[0] if node.output else ""
            out_type = types.get(out)
            known = out_type is not None and out_type.HasField("tensor_type")
            elem = out_type.tensor_type.elem_type if out_type is not None and known else 0
            floaty = elem in _FLOAT_TYPES if elem else node.op_type not in _PLUMBING
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
            dims = _dims(out_type) if out_type is not None else None
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
            perm = [int(p) for p in _attrs(node).get("perm", [])]
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
        attrs = _attrs(node)

        def const_dims(tensor: str) -> tuple[int | None, ...] | None:
            if tensor in init_dims:
                return init_dims[tensor]
            return _dims(types[tensor]) if tensor in types else None

        params = 0
        for i in node.input:
            if i and i in consts:
                elem = init_types.get(i) or (types[i].tensor_type.elem_type if i in types else 0)
                shape = const_dims(i)
                if elem in _FLOAT_TYPES and shape is not None and None not in shape:
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
        return LayerInfo(
            index=row, name=name, type=op, kind=kind, output_shape=_canonical_dims(dims, node_layout),
            params=params, kernel_shape=kernel_shape, kernel_size=kernel_size, stride=stride,
            dilation=dilation, parents=tuple(parents), extra={"global": self._is_global(node, attrs, types)},
        )

    def _is_global(self, node: Any, attrs: dict[str, Any], types: dict[str, Any]) -> bool:
        """Global pools, and reductions over both spatial axes (how torch exports ``x.mean((2, 3))``)."""
        if node.op_type.startswith("Global"):
            return True
        if not node.op_type.startswith("Reduce"):
            return False
        source = node.input[0]
        dims = _dims(types[source]) if source in types else None
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

    # ----------------------------------------------------------------- sessions

    def _weight(self, name: str) -> np.ndarray:
        """One large initializer as a numpy array (read from the file on first need)."""
        if name not in self._arrays:
            from onnx import numpy_helper

            t = self._shared[name]
            try:
                self._arrays[name] = np.ascontiguousarray(numpy_helper.to_array(t, str(self.base_dir or "")))
            except Exception as exc:
                raise BadModel(f"cannot read weight {name} of {self._label}: {type(exc).__name__}: "
                               f"{_first_line(str(exc))}; is its external data file complete?") from None
        return self._arrays[name]

    def _weights_as_ort_values(self) -> tuple[list[str], list[Any]]:
        """The large initializers as OrtValues over :meth:`_weight`'s arrays (read once)."""
        if self._ort_values is None:
            ortvalue = self.ort.OrtValue.ortvalue_from_numpy
            self._ort_values = {name: ortvalue(self._weight(name)) for name in self._shared}
            # Drop the protos: they pin the whole parsed file in memory.
            self._shared = dict.fromkeys(self._shared)
        return list(self._ort_values), list(self._ort_values.values())

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
                                                providers=["CPUExecutionProvider"])
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
        dtype = _IMAGE_TYPES[self._input_type]
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
            return session.run(names, {self.input_name: feed}, quiet)
        except Exception as exc:  # onnxruntime's own errors: wrong size for a fixed input, bad ops
            hint = ""
            if self._not_image is None and None in self._raw_shape[:2]:  # the size is the user's choice
                h, w = feed.shape[2:4] if self.channels_first else feed.shape[1:3]
                hint = "; " + size_hint(self.layers(), int(h), int(w))
            raise UnsupportedModel(f"onnxruntime could not run {self._label} on input {feed.shape}: "
                                   f"{_ort_reason(str(exc))}{hint}") from None

    def _canonical(self, a: np.ndarray, tensor: str) -> np.ndarray:
        a = np.asarray(a)
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        if a.ndim in (3, 4) and self._layout.get(tensor, "NCHW") == "NCHW":
            a = np.moveaxis(a, 1, -1)
        return a

    # ----------------------------------------------------------------- gradients

    #: The converted module's output may differ from onnxruntime's by this much of the output's
    #: largest magnitude (float32 kernels accumulate in different orders; a wrong conversion is
    #: off by far more).
    TWIN_TOLERANCE = 1e-3

    def _output_node(self) -> Any:
        return next((n for n in self._skeleton.graph.node if self._graph_output in n.output), None)

    def gradients_unavailable(self) -> str | None:
        """Why gradients cannot be had, or ``None``; converts the graph once (cached) to know."""
        if self._not_image is not None:
            return self._not_image
        try:
            self._twin()
        except (UnsupportedModel, MissingDependency) as exc:
            return str(exc)
        return None

    def gradients(self, batch: np.ndarray, target: Target, layers: Sequence[int] = (), *,
                  wrt_input: bool = False, need_output: bool = True) -> Gradients:
        """Gradients through the graph converted to PyTorch by onnx2torch (see :meth:`Adapter.gradients`).

        The conversion is made once and checked against onnxruntime's own
        output on the first batch of each input shape (within
        :attr:`TWIN_TOLERANCE` of the output's largest magnitude) before any
        gradient is returned. Rows map to the converted module by their ONNX
        tensor names; the pass itself is :func:`convlens.adapters.torch.hooked_gradients`.
        Without the input gradient, onnxruntime computes the graph up to the
        needed rows and PyTorch only what follows them (see :meth:`_tail`): a
        Grad-CAM pass at the last conv costs about one onnxruntime forward pass.
        Models with a fixed batch size get the batch in chunks of that size.

        Raises:
            MissingDependency: torch or onnx2torch is not installed.
            UnsupportedModel: onnx2torch cannot convert the graph, or its
                conversion disagrees with onnxruntime on this input.
        """
        if self._not_image is not None:
            raise UnsupportedModel(self._not_image)
        from ..torch import HookedRow, hooked_gradients

        module, by_tensor = self._twin()
        table = self.layers()
        rows = check_rows(table, layers, target, self.name)
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 4:
            raise BadArgument(f"expected a batch of images (N, H, W, C), got shape {x.shape}")
        dtype = _IMAGE_TYPES[self._input_type]
        if wrt_input and dtype == np.uint8:
            raise UnsupportedModel(f"{self._label} takes uint8 pixels, which have no gradient; pick a layer "
                                   "instead of the input")
        needed = set(rows) | ({int(target.layer)} if target.layer is not None else set())
        hooked: dict[int, Any] = {}
        for r in sorted(needed - {0}):
            tensor = self._row_tensor[r]
            if tensor not in by_tensor:
                raise UnsupportedModel(f"layer {table[r].name} has no counterpart in the PyTorch conversion of "
                                       f"{self._label}; pick another layer")
            mod, index, count = by_tensor[tensor]
            hooked[r] = HookedRow(mod, 0, (index,) if count > 1 else (), self._layout.get(tensor) == "NHWC")
        out_node = self._output_node()
        softmax = None
        if out_node is not None and out_node.op_type in ("Softmax", "LogSoftmax") \
                and self._graph_output in by_tensor:
            softmax = by_tensor[self._graph_output][0]
        where = None if target.layer is None else table[int(target.layer)].name
        tail = None if wrt_input or 0 in needed or not needed else self._tail(needed)
        if tail is not None and softmax is not None and target.layer is None and not any(
                n.op == "call_module" and tail.module.get_submodule(n.target) is softmax
                for n in tail.module.graph.nodes):
            tail = None  # the logits before the final softmax are read in PyTorch: keep it in
        n = len(x)
        size = self.batch_size if self.batch_size is not None and self.batch_size != n else n
        full: dict[tuple[int, ...], np.ndarray] = {}
        parts: list[tuple[int, Gradients]] = []
        for offset in range(0, n, size):
            chunk = x[offset:offset + size]
            keep = len(chunk)
            if keep < size:  # a fixed-size model: pad the last chunk with zeros
                chunk = np.concatenate([chunk, np.zeros((size - keep, *chunk.shape[1:]), np.float32)])

            def cotangent(shape: tuple[int, ...], offset: int = offset, keep: int = keep) -> np.ndarray:
                whole = (n, *shape[1:])
                if whole not in full:
                    full[whole] = target_cotangent(target, whole, where)
                part = full[whole][offset:offset + keep]
                return np.concatenate([part, np.zeros((shape[0] - keep, *shape[1:]), np.float32)])

            feed = self._feed(chunk)
            self._check_twin(module, feed)
            forward, given = self._twin_forward(module), None
            if tail is not None:  # onnxruntime runs the graph up to the needed rows, torch the rest
                forward, given = self._tail_inputs(tail, feed)
            got = hooked_gradients(
                module, forward, self._torch_input(feed), chunk, hooked, rows, target.layer,
                cotangent, wrt_input=wrt_input, need_output=need_output, softmax=softmax, given=given,
                input_channels_last=not self.channels_first,
                output_channels_last=self._layout.get(self._graph_output) == "NHWC",
                no_output=lambda r: UnsupportedModel(
                    f"layer {table[r].name} (row {r}) gave no output in the PyTorch conversion of "
                    f"{self._label}; pick another layer"))
            parts.append((keep, got))
        return _joined(parts)

    def _tail(self, needed: set[int]) -> _Tail | None:
        """The part of the converted module that follows the needed rows, as its own module.

        The *frontier* is the needed rows that no other needed row leads to;
        the tail computes everything downstream of them from their values, and
        takes as inputs too whatever else it reads (a shortcut branch's tensor,
        the image): onnxruntime computes all of those in one pass. Cached per
        frontier. ``None`` (use the whole module) when a frontier row is one
        output of a multi-output node or an input cannot be named.
        """
        from torch import fx

        module = self._twin()[0]
        nodes: dict[str, Any] = {}  # ONNX tensor name -> fx node giving it
        owner: dict[int, Any] = {}  # id(submodule) -> its call_module node
        for node in module.graph.nodes:
            if node.op == "call_module":
                owner[id(module.get_submodule(node.target))] = node
        for node in module.graph.nodes:
            if node.op == "placeholder":
                nodes[self.input_name] = node
            elif node.op == "call_module":
                outputs = tuple(module.get_submodule(node.target).onnx_mapping.outputs)
                if len(outputs) == 1:
                    nodes[outputs[0]] = node
            elif node.op == "call_function" and node.args and getattr(node.args[0], "op", "") == "call_module":
                source = module.get_submodule(node.args[0].target)
                outputs = tuple(source.onnx_mapping.outputs)
                if len(outputs) > 1 and isinstance(node.args[1], int):  # getitem(node, i)
                    nodes[outputs[node.args[1]]] = node
        name_of = {id(node): name for name, node in nodes.items()}
        starts = {}
        for row in sorted(needed):
            node = nodes.get(self._row_tensor[row])
            if node is None:
                return None
            starts[row] = node

        def below(node: Any) -> set[int]:
            seen: set[int] = set()
            todo = list(node.users)
            while todo:
                n = todo.pop()
                if id(n) not in seen:
                    seen.add(id(n))
                    todo.extend(n.users)
            return seen

        downstream = {row: below(node) for row, node in starts.items()}
        frontier_rows = [r for r, node in starts.items()
                         if not any(id(node) in downstream[o] for o in starts if o != r)]
        key = tuple(frontier_rows)
        if key in self._tails:
            return self._tails[key]
        frontier = {id(starts[r]): r for r in frontier_rows}
        inside = set().union(*(downstream[r] for r in frontier_rows)) - set(frontier)
        graph = fx.Graph()
        env: dict[int, Any] = {}
        inputs: list[str] = []
        for r in frontier_rows:
            env[id(starts[r])] = graph.placeholder(f"row_{r}")
            inputs.append(self._row_tensor[r])

        def value(n: Any) -> Any:
            if id(n) in env:
                return env[id(n)]
            if n.op == "get_attr":
                env[id(n)] = graph.node_copy(n)
                return env[id(n)]
            if id(n) not in name_of:
                raise LookupError(n.name)
            env[id(n)] = graph.placeholder(f"side_{len(inputs)}")
            inputs.append(name_of[id(n)])
            return env[id(n)]

        try:
            for node in module.graph.nodes:
                if node.op == "output":
                    graph.node_copy(node, value)
                elif id(node) in inside:
                    env[id(node)] = graph.node_copy(node, value)
        except LookupError:
            return None
        tail = _Tail(fx.GraphModule(module, graph), frontier_rows, inputs)
        self._tails[key] = tail
        while len(self._tails) > 4:
            self._tails.pop(next(iter(self._tails)))
        return tail

    def _tail_inputs(self, tail: _Tail, feed: np.ndarray) -> tuple[Callable[[Any], Any], dict[int, Any]]:
        """Run onnxruntime for a tail's inputs; its forward function and the frontier rows' tensors."""
        import torch

        extra = [name for name in tail.inputs if name != self.input_name]
        session = self._session(tuple(sorted(set(extra))), only=True)
        values = dict(zip(extra, self._run_session(session, feed, extra)))
        args = [torch.from_numpy(np.ascontiguousarray(values[name] if name != self.input_name else feed))
                for name in tail.inputs]
        given = dict(zip(tail.frontier_rows, args))
        run = self._twin_forward(tail.module)

        def forward(_: Any) -> Any:
            return run(*args)

        return forward, given

    def _feed(self, x: np.ndarray) -> np.ndarray:
        """A canonical float32 batch as the graph's input: its layout and element type."""
        feed = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.channels_first else x
        dtype = _IMAGE_TYPES[self._input_type]
        if dtype == np.uint8:  # round and clip: the cast alone would truncate and wrap around
            feed = np.clip(np.round(feed), 0, 255)
        return np.ascontiguousarray(feed.astype(dtype, copy=False))

    @staticmethod
    def _torch_input(feed: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(feed.copy())

    def _twin_forward(self, module: Any) -> Any:
        def forward(*x: Any) -> Any:
            try:
                return module(*x)
            except ConvlensError:
                raise
            except Exception as exc:
                raise UnsupportedModel(
                    f"the PyTorch conversion of {self._label} (onnx2torch) failed on input {tuple(x[0].shape)}: "
                    f"{type(exc).__name__}: {_first_line(str(exc))}; {_FORWARD_ONLY}") from None
        return forward

    def _twin(self) -> tuple[Any, dict[str, tuple[Any, int, int]]]:
        """The graph as a PyTorch module (onnx2torch, made once), and where each ONNX tensor comes
        out of it: tensor name -> (submodule, output index, output count).

        Before converting: weights behind ``Identity`` nodes become stored weights
        (:func:`_fold_weight_identities`), and a graph with an operator version
        onnx2torch has no converter for (torch's exporter writes opset 20, whose
        ``AveragePool`` is version 19) is brought down to :data:`_TWIN_OPSET`
        first, when the ONNX version converter can. Both are done on the
        skeleton (no weight copied); the weights are filled in last.
        """
        if self._twin_cache is not None:
            return self._twin_cache
        if self._twin_error is not None:
            raise UnsupportedModel(self._twin_error)
        try:
            import onnx2torch
            import torch  # noqa: F401
            from onnx2torch.node_converters import get_converter
        except ImportError as exc:
            raise MissingDependency(f"gradients of ONNX models convert the graph to PyTorch with onnx2torch "
                                    f"({exc}); run: pip install 'convlens[onnx-gradients]'") from None
        from onnx import version_converter

        def unconverted(model: Any) -> str | None:
            versions = {o.domain or "": o.version for o in model.opset_import}
            for node in model.graph.node:
                try:
                    get_converter(domain=node.domain or "", operation_type=node.op_type,
                                  version=versions.get(node.domain or "", 1))
                except NotImplementedError:
                    return str(node.op_type)
            return None

        def refuse(reason: str) -> UnsupportedModel:
            self._twin_error = (f"gradients of {self._label} need its graph converted to PyTorch, and "
                                f"onnx2torch cannot convert it ({reason}); {_FORWARD_ONLY}")
            return UnsupportedModel(self._twin_error)

        graph = self.onnx.ModelProto()
        graph.CopyFrom(self._skeleton)
        aliases = _fold_weight_identities(graph)
        missing = unconverted(graph)
        opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), 0)
        if missing is not None and opset > _TWIN_OPSET:
            try:
                lower = version_converter.convert_version(graph, _TWIN_OPSET)
            except Exception:
                lower = None
            if lower is not None and unconverted(lower) is None:
                graph, missing = lower, None
        if missing is not None:
            raise refuse(f"it has no converter for the ONNX operator {missing}")
        try:
            module = self._convert(onnx2torch, graph, aliases)
        except ConvlensError:
            raise
        except Exception as exc:
            raise refuse(f"{type(exc).__name__}: {_first_line(str(exc))}") from None
        module.eval()
        by_tensor: dict[str, tuple[Any, int, int]] = {}
        for sub in module.modules():
            mapping = getattr(sub, "onnx_mapping", None)
            outputs = tuple(getattr(mapping, "outputs", ()) or ())
            for i, name in enumerate(outputs):
                by_tensor.setdefault(name, (sub, i, len(outputs)))
        self._twin_cache = (module, by_tensor)
        return self._twin_cache

    def _convert(self, onnx2torch: Any, graph: Any, aliases: dict[str, str]) -> Any:
        """onnx2torch's module for a skeleton graph, its stubs filled from :meth:`_weight` (``aliases``:
        weights that copy another, see :func:`_fold_weight_identities`)."""
        from onnx import numpy_helper

        for t in graph.graph.initializer:
            source = aliases.get(t.name, t.name)
            if source in self._shared:
                t.CopyFrom(numpy_helper.from_array(self._weight(source), t.name))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # onnx2torch warns about ops it converts approximately
            return onnx2torch.convert(graph, attach_onnx_mapping=True)

    def _check_twin(self, module: Any, feed: np.ndarray) -> None:
        """The converted module must give onnxruntime's output on this input (once per input shape)."""
        import torch

        if feed.shape in self._twin_checked:
            return
        session = self._session(())
        want = np.asarray(self._run_session(session, feed, [self._graph_output])[0], np.float64)
        with torch.no_grad():
            y = self._twin_forward(module)(self._torch_input(feed))
        got = next((t for t in _tensors(y) if t.is_floating_point()), None)
        scale = float(np.abs(want).max()) if want.size else 0.0
        if got is None or tuple(got.shape) != want.shape:
            shape = None if got is None else tuple(got.shape)
            raise UnsupportedModel(f"the PyTorch conversion of {self._label} (onnx2torch) gives an output of "
                                   f"shape {shape}, onnxruntime {want.shape}; {_FORWARD_ONLY}")
        err = float(np.abs(got.double().numpy() - want).max()) if want.size else 0.0
        if not err <= self.TWIN_TOLERANCE * scale + 1e-6:
            raise UnsupportedModel(
                f"the PyTorch conversion of {self._label} (onnx2torch) disagrees with onnxruntime on this "
                f"input (outputs differ by up to {err:.3g}, {err / max(scale, 1e-30):.2g} of their largest "
                f"magnitude {scale:.3g}; allowed {self.TWIN_TOLERANCE:g}), so its gradients would not be "
                f"this model's; {_FORWARD_ONLY}")
        self._twin_checked.add(feed.shape)

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
        group = int(_attrs(node).get("group", 1))
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
        attrs = _attrs(node)
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


@dataclass
class _Tail:
    """The converted module's part after a set of rows (see :meth:`OnnxAdapter._tail`)."""

    module: Any  # an fx.GraphModule sharing the converted module's submodules
    frontier_rows: list[int]  # its first inputs, in order: these rows' tensors
    inputs: list[str]  # the ONNX tensor name of each input (the graph input's name for the image)


def _fold_weight_identities(model: Any) -> dict[str, str]:
    """Turn ``Identity`` nodes of stored weights into weights of their own; their aliases.

    ``torch.onnx.export`` stores equal weights once and gives the copies through
    ``Identity`` nodes (the zero biases of a freshly initialised VGG16), and
    onnx2torch reads a convolution's weight and bias only from stored weights.

    Returns:
        new weight name -> the name of the stored weight it copies.
    """
    graph = model.graph
    stored = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    aliases: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in stored \
                and node.output[0] not in stored and node.output[0] not in outputs:
            copy = graph.initializer.add()
            copy.CopyFrom(stored[node.input[0]])
            copy.name = node.output[0]
            stored[copy.name] = copy
            aliases[copy.name] = aliases.get(node.input[0], node.input[0])
        else:
            keep.append(node)
    if aliases:
        del graph.node[:]
        graph.node.extend(keep)
    return aliases


def _tensors(out: Any) -> list[Any]:
    """The tensors in a (nested) module output, in order."""
    if hasattr(out, "is_floating_point"):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _joined(parts: list[tuple[int, Gradients]]) -> Gradients:
    """Gradients of consecutive chunks of a batch as one, each chunk cut to its first ``keep`` items."""
    if len(parts) == 1 and len(parts[0][1].score) == parts[0][0]:
        return parts[0][1]

    def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        if any(a is None for a in arrays):
            return None
        return np.concatenate([a[:keep] for (keep, _), a in zip(parts, arrays)])  # type: ignore[index]

    first = parts[0][1]
    return Gradients(
        output=cat([g.output for _, g in parts]),
        score=cat([g.score for _, g in parts]),  # type: ignore[arg-type]
        activations={r: cat([g.activations[r] for _, g in parts]) for r in first.activations},  # type: ignore[misc]
        grads={r: cat([g.grads[r] for _, g in parts]) for r in first.grads},  # type: ignore[misc]
        input_grad=cat([g.input_grad for _, g in parts]),
        logits=first.logits)
#: Operators that hand their input's values on (reshaped, quantised or not): the output's maker is behind.
_ONNX_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "DequantizeLinear",
                      "QuantizeLinear", "Dropout", "Cast"}
#: Operators whose output is a linear function of their input: scores, not probabilities.
_ONNX_LINEAR = {"Gemm", "MatMul", "Conv", "ConvTranspose", "QLinearMatMul", "QLinearConv", "MatMulInteger",
                "ConvInteger"}


def onnx_final_activation(graph: Any) -> tuple[str | None, float | None]:
    """What makes an ONNX graph's first output, and the output's quantisation step.

    Follows the output back through operators that pass values on
    (``Reshape``, ``Flatten``, ``Identity``, ``DequantizeLinear``...) to
    ``Softmax`` (``"softmax"``), ``Sigmoid`` (``"sigmoid"``, also their
    ``QLinear`` forms), or ``Gemm``/``MatMul``/``Conv`` (``"linear"``, also
    behind the ``Add`` of a stored bias); anything else is ``None``.

    Returns:
        ``(final_activation, step)``: ``step`` is the scale of the
        ``DequantizeLinear`` nearest the output (one scale for the tensor), else ``None``.
    """
    from onnx import numpy_helper

    producer = {o: node for node in graph.node for o in node.output if o}
    stored = {t.name for t in graph.initializer}
    stored.update(o for node in graph.node if node.op_type == "Constant" for o in node.output)
    tensor, step = graph.output[0].name, None
    for _ in range(len(graph.node) + 1):
        node = producer.get(tensor)
        if node is None or not node.input:
            return None, step
        op = node.op_type
        if op in ("Softmax", "QLinearSoftmax"):
            return "softmax", step
        if op in ("Sigmoid", "QLinearSigmoid"):
            return "sigmoid", step
        if op in _ONNX_LINEAR:
            return "linear", step
        if op == "Add" and len(node.input) == 2:
            computed = [i for i in node.input if i not in stored]
            maker = producer.get(computed[0]) if len(computed) == 1 else None
            return ("linear" if maker is not None and maker.op_type in _ONNX_LINEAR else None), step
        if op not in _ONNX_PASS_THROUGH:
            return None, step
        if op == "DequantizeLinear" and step is None and len(node.input) > 1:
            scale = next((t for t in graph.initializer if t.name == node.input[1]), None)
            if scale is None:  # a Constant node
                const = producer.get(node.input[1])
                if const is not None and const.op_type == "Constant" and const.attribute:
                    scale = const.attribute[0].t if const.attribute[0].HasField("t") else None
            try:
                values = numpy_helper.to_array(scale).reshape(-1) if scale is not None else np.zeros(0)
            except Exception:  # noqa: BLE001 - a scale kept in external data: the step stays unknown
                values = np.zeros(0)
            if values.size == 1 and float(values[0]) > 0:
                step = float(values[0])
        tensor = node.input[0]
    return None, step


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
