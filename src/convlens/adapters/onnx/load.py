"""Loading ONNX models, and their safety: the file and its structure, external data kept inside the
model's folder, the inputs (the image input and its layout; the others held at given values or zeros,
:mod:`convlens.adapters._inputs`), the weights-free skeleton and the weights read on need.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._errors import BadArgument, BadModel, MissingDependency, UnsupportedModel
from ...core.layers import LayerInfo
from ...core.text import shape_text
from .._device import onnx_providers
from .._inputs import HeldInputs, InputSlot, hold_inputs, image_input_name
from ..base import first_line as _first_line

#: ONNX TensorProto element types that hold floating-point numbers, and their numpy types.
FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64, 16: None}  # 16: bfloat16 (no numpy type)
#: Input element types an image can be fed as: the float types, and uint8 pixels (a graph that casts).
IMAGE_TYPES = {**FLOAT_TYPES, 2: np.uint8}
_TYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
               8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
               16: "bfloat16"}
_NHWC_TO_NCHW = [0, 3, 1, 2]
#: Element types of inputs that numpy cannot hold (a held input needs a numpy value).
_NO_NUMPY = {"string", "bfloat16", "non-tensor"}
#: Initializers with more elements than this are left out of the shape-inference skeleton.
_SMALL = 4096
_STUB_LOCATION = "convlens-weights-from-memory"


def import_onnx() -> tuple[Any, Any]:
    """Import onnx and onnxruntime, or say which extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise MissingDependency(f"reading ONNX models needs onnx and onnxruntime ({exc}); run: "
                                "pip install 'convlens[onnx]'") from None
    return onnx, onnxruntime


def node_attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def tensor_dims(type_proto: Any) -> tuple[int | None, ...] | None:
    """Static dims of a tensor type, or ``None`` if unranked.

    A dim is ``None`` when it is symbolic, unknown, or a literal ``-1`` or ``0``
    (some exporters write free dims as ``-1``, as in ``[-1, 3, ?, ?]``).
    """
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    return tuple(static_dim(d) for d in type_proto.tensor_type.shape.dim)


def static_dim(dim: Any) -> int | None:
    """A positive fixed dim, else ``None`` (symbolic, unset, ``-1`` or ``0``: free)."""
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None


def _shape_text(dims: Sequence[int | None] | None) -> str:
    return shape_text(dims, unknown="(unknown shape)")


class OnnxModel:
    """An ONNX model read and checked, its input settled; see :class:`OnnxAdapter`."""

    framework = "onnx"
    class_names: list[str] | None = None
    class_names_source = ""
    final_activation: str | None = None
    #: The step of the model's output when a DequantizeLinear makes it (its scale), else ``None``.
    output_quant_step: float | None = None

    def __init__(self, source: Any, *, input_shape: Sequence[int | None] | None = None,
                 preprocess: str | None = None, image_input: str | None = None,
                 inputs: Mapping[str, Any] | None = None) -> None:
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
        self._init_input(model, input_shape, image_input, inputs)
        try:
            self._skeleton, self._shared = self._make_skeleton(model)
        except (OSError, ValueError) as exc:  # an external data file shorter than the model says
            raise BadModel(f"cannot read the weights of {self._label}: {type(exc).__name__}: "
                           f"{_first_line(str(exc))}; is its external data file complete?") from None
        self._graph_output = model.graph.output[0].name
        del model  # the skeleton and the large weights (until read) are all that is kept
        self._arrays: dict[str, np.ndarray] = {}  # large weights, read on first need
        self._layers: list[LayerInfo] | None = None
        self._row_tensor: list[str] = []  # tensor name of each row (row 0: the input)
        self._row_node: list[Any] = []  # NodeProto of each row (None for the input)
        self._layout: dict[str, str] = {}  # tensor name -> "NCHW" / "NHWC" for rank-3/4 tensors
        self._sessions: OrderedDict[tuple[str, ...], Any] = OrderedDict()  # by extra outputs (_session)
        self._ort_values: dict[str, Any] | None = None  # large weights as OrtValues, by name
        self.use_device(None)

    # ----------------------------------------------------------------- device

    def use_device(self, device: Any) -> None:
        """Run on ``device`` (``None``/``"auto"``: a CUDA GPU when onnxruntime-gpu is installed and one
        is there, else the CPU): the execution providers every new session asks for, and :attr:`device`.

        Raises:
            BadArgument: see :func:`convlens.adapters._device.onnx_providers`.
        """
        self._providers, self.device = onnx_providers(device, self.ort.get_available_providers())
        self._sessions.clear()

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

    def _init_input(self, model: Any, given: Sequence[int | None] | None, image_input: str | None = None,
                    values: Mapping[str, Any] | None = None) -> None:
        graph = model.graph
        weights = {t.name for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in weights]  # IR < 4 lists weights as inputs
        self.held_inputs: HeldInputs | None = self._hold(inputs, image_input, values)
        spec = inputs[self.held_inputs.image] if self.held_inputs is not None else inputs[0]
        self.input_name = spec.name
        dims = tensor_dims(spec.type)
        elem = spec.type.tensor_type.elem_type if spec.type.HasField("tensor_type") else 0
        self._input_dims = dims
        self._input_type = elem
        type_name = _TYPE_NAMES.get(elem, "non-tensor")
        self._not_image: str | None = None
        if elem == 2 and self.preprocess is None:
            self.preprocess = "raw"  # uint8 pixels: the network takes 0..255 itself
        if dims is None or len(dims) != 4 or IMAGE_TYPES.get(elem) is None:
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

    def _hold(self, inputs: Sequence[Any], image_input: str | None,
              values: Mapping[str, Any] | None) -> HeldInputs | None:
        """The graph's inputs as slots (one item's shape: the batch axis dropped, free dims ``None``), the
        image among them and what the others are held at (:func:`convlens.adapters._inputs.hold_inputs`).

        Raises:
            BadModel: the graph declares no input.
            UnsupportedModel: an input other than the image holds values numpy cannot (strings,
                bfloat16), or is not a tensor.
            BadArgument: see :func:`~convlens.adapters._inputs.hold_inputs`.
        """
        if not inputs:
            raise BadModel(f"{self._label} declares no graph input; convlens feeds images to an input")
        slots = []
        all_dims = [tensor_dims(spec.type) for spec in inputs]
        for spec, dims in zip(inputs, all_dims):
            elem = spec.type.tensor_type.elem_type if spec.type.HasField("tensor_type") else 0
            shape = None if dims is None else tuple(dims[1:])
            slots.append(InputSlot(spec.name, shape, _TYPE_NAMES.get(elem, "non-tensor")))
        if len(slots) > 1:
            # an input has a batch axis when its first dimension is free, or fixed as the image's is; a
            # scalar, or a [2] size tensor beside a free batch, is fed as it is, once per call
            # (a slot marked so keeps its whole shape, and can only stop looking like an image: the choice
            # hold_inputs makes again below stays this one)
            names = [s.name for s in slots]
            image = image_input_name(slots, image_input)
            image_dims = all_dims[names.index(image)] if image in names else None
            image_batch = image_dims[0] if image_dims else None
            for i, dims in enumerate(all_dims):
                if dims is None or names[i] == image:
                    continue
                if not dims or dims[0] is not None and dims[0] != image_batch:
                    slots[i] = InputSlot(slots[i].name, tuple(dims), slots[i].dtype, batch=False)
            odd = [s for s in slots if s.name != image and s.dtype in _NO_NUMPY] if image in names else []
            if odd:
                listing = ", ".join(s.describe() for s in slots)
                raise UnsupportedModel(
                    f"{self._label} takes {len(slots)} inputs ({listing}) and convlens cannot hold {odd[0].name} "
                    f"({odd[0].dtype}) fixed; re-export the model with that input fixed (e.g. torch.onnx.export "
                    "of a wrapper module whose forward(image) passes a constant for it)")
        return hold_inputs(self.name, slots, image_input=image_input, inputs=values)

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
                if node.op_type == "Transpose" and list(node_attrs(node).get("perm", [])) == _NHWC_TO_NCHW:
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

    # ----------------------------------------------------------------- weights, read on need

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

