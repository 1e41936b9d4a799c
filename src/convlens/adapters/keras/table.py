"""The layer table of a Keras model: building it, its rows from the graph or a probe pass, kernels,
the wrapping of leaf layers' ``call`` that passes capture with, and the final activation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from ..._errors import UnsupportedModel
from ..._stderr import native_stderr_silenced
from ...core.kinds import kind_of
from ...core.layers import LayerInfo
from ...core.receptive import resample_geometry, same_padding, with_receptive_fields
from .._graph import Producer, walk_final_activation
from .._inputs import HeldInputs, InputSlot, check_single_input, hold_inputs
from ..base import first_line as _first_line
from .load import import_keras

# --------------------------------------------------------------------------- kernels


def _pair(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    vals = tuple(int(v) for v in value)
    if len(vals) == 1:
        return (1, vals[0])
    return (vals[-2], vals[-1]) if len(vals) >= 2 else None


def _to_canonical_kernel(layer: Any, kernel: Any,
                         transpose: Callable[[Any, tuple[int, ...]], np.ndarray] | None = None) -> np.ndarray:
    """Keras kernel layouts to canonical ``(O, I, kh, kw)`` float32.

    Args:
        layer: the layer the kernel belongs to (its class names the layout).
        kernel: the kernel, a numpy array, or a backend variable with ``transpose``.
        transpose: ``(kernel, axes) -> contiguous float32 numpy array``; default numpy's.
            :meth:`KerasTable.kernels` transposes in the backend (multithreaded, ~4x
            faster than numpy's strided copy for VGG16's 3x3x512x512 kernels); a
            transposition moves values, so both give the same array.
    """
    move = transpose or _numpy_transpose
    name = type(layer).__name__
    ndim = len(kernel.shape)
    if "Transpose" in name:  # (kh, kw, out, in)
        return move(kernel, (2, 3, 0, 1))
    if ndim == 3:  # Conv1D: (k, in, out)
        return move(kernel, (2, 1, 0))[:, :, None, :]
    if "Depthwise" in name or "Separable" in name:  # (kh, kw, in, multiplier)
        kh, kw, cin, mult = (int(d) for d in kernel.shape)
        return move(kernel, (2, 3, 0, 1)).reshape(cin * mult, 1, kh, kw)
    if ndim == 4:  # (kh, kw, in, out)
        return move(kernel, (3, 2, 0, 1))
    raise UnsupportedModel(f"layer {layer.name} ({name}) has a {ndim}-D kernel; convlens draws "
                           "1-D and 2-D convolution kernels")


def _numpy_transpose(kernel: Any, axes: tuple[int, ...]) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(kernel, dtype=np.float32).transpose(axes))


def _raw_kernel(layer: Any) -> Any:
    for attr in ("depthwise_kernel", "kernel"):
        k = getattr(layer, attr, None)
        if k is not None and len(getattr(k, "shape", ())) >= 3:
            return k
    return None


def _differing_as_none(a: tuple | None, b: tuple | None) -> tuple | None:
    """``a`` with ``None`` where ``b`` differs (the dims that follow the input size)."""
    if a is None or b is None or len(a) != len(b):
        return a
    return tuple(None if x != y else x for x, y in zip(a, b))


def _with_geometry(layer: Any, info: LayerInfo, rows: Sequence[LayerInfo]) -> LayerInfo:
    """``info`` with the padding and upsampling :mod:`convlens.core.receptive` places boxes by.

    Keras's ``"same"`` is TensorFlow's: the extra pixel of an odd total goes at
    the end, and with a stride the split depends on the input's size (read from
    the row feeding the layer; unknown where that size is free). A transposed
    conv pads like the conv on its zero-stuffed input: ``(k - 1) * d`` minus
    what ``"same"`` crops. ``UpSampling2D`` repeats (nearest) or resizes with
    half-pixel centres (``"bilinear"``, ``"bicubic"``).
    """
    if layer is None:
        return info
    name = type(layer).__name__
    source = rows[info.parents[0]] if info.parents and info.parents[0] < len(rows) else None
    shape = source.output_shape if source is not None else None
    in_hw: tuple[int | None, ...] = ((1, shape[0]) if shape is not None and len(shape) == 2
                                     else tuple(shape[:2]) if shape is not None and len(shape) == 3 else ())
    out = info.output_shape
    out_hw = (1, out[0]) if out is not None and len(out) == 2 else tuple(out[:2]) if out is not None else ()
    mode = getattr(layer, "padding", None)
    if name in ("ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D"):
        raw = getattr(layer, "padding", None) if name.startswith("Zero") else getattr(layer, "cropping", None)
        if raw is None:
            return info
        pairs = [raw] if name.endswith("1D") else list(raw)
        lead = [0] + [int(p[0]) for p in pairs] if name.endswith("1D") else [int(p[0]) for p in pairs]
        sign = 1 if name.startswith("Zero") else -1
        return replace(info, padding=(sign * lead[0], sign * lead[1]))
    if name in ("UpSampling1D", "UpSampling2D"):
        size = _pair(getattr(layer, "size", None))
        interpolation = str(getattr(layer, "interpolation", "nearest"))
        found = resample_geometry(interpolation, in_hw, out_hw, scale=size,
                                  coordinates="asymmetric" if interpolation == "nearest" else "half_pixel")
        return replace(info, **_resampled(found, info)) if found is not None else info
    if name == "Resizing":  # tf.image.resize: half-pixel centres for every method
        interpolation = str(getattr(layer, "interpolation", "bilinear"))
        if getattr(layer, "crop_to_aspect_ratio", False) or getattr(layer, "pad_to_aspect_ratio", False):
            return replace(info, extra={**info.extra, "geometry": "unknown"})
        found = resample_geometry(interpolation, in_hw, out_hw, coordinates="half_pixel",
                                  rounding="round_prefer_ceil")
        if found is None:
            return replace(info, extra={**info.extra, "geometry": "unknown"})
        return replace(info, **_resampled(found, info))
    if info.kernel_size is None or not isinstance(mode, str) or len(in_hw) != 2:
        return info
    k, d = info.kernel_size, info.dilation or (1, 1)
    stride = _pair(getattr(layer, "strides", None)) or (1, 1)
    padding: list[int | None] = []
    for a in range(2):
        if mode == "valid":
            padding.append(0)
        elif mode == "causal":
            padding.append((k[a] - 1) * d[a])
        elif mode == "same":
            step = 1 if "Transpose" in name else stride[a]
            n = out_hw[a] if "Transpose" in name else in_hw[a]
            padding.append(same_padding(n, k[a], step, d[a]))
        else:
            return info
    if None in padding:
        return info
    pad = (int(padding[0] or 0), int(padding[1] or 0))
    if "Transpose" not in name:
        return replace(info, padding=pad)
    if mode == "same":  # the gradient of the strided "same" conv on the upsampled size
        n_big = [out_hw[a] for a in range(2)]
        cropped = [same_padding(n_big[a], k[a], stride[a], d[a]) for a in range(2)]
        if None in cropped:
            return info
        pad = (int(cropped[0] or 0), int(cropped[1] or 0))
    else:
        pad = (0, 0)
    return replace(info, padding=((k[0] - 1) * d[0] - pad[0], (k[1] - 1) * d[1] - pad[1]),
                   upsample=(float(stride[0]), float(stride[1])))


def _resampled(found: dict[str, Any], info: LayerInfo) -> dict[str, Any]:
    """:func:`resample_geometry`'s fields as ``replace`` arguments, its ``extra`` added to the row's."""
    return {**found, "extra": {**info.extra, **found.get("extra", {})}}


class _NeedsProbe(Exception):
    """The graph holds a layer with sublayers but no graph of its own."""


def first_tensor(out: Any) -> Any:
    if hasattr(out, "shape") and hasattr(out, "dtype"):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            t = first_tensor(o)
            if t is not None:
                return t
    return None


# --------------------------------------------------------------------------- final activation

#: Layers that hand their input's values on unchanged: a softmax behind them still makes the output.
_KERAS_PASS_THROUGH = {"Reshape", "Flatten", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
                       "GaussianDropout", "GaussianNoise", "AlphaDropout", "ActivityRegularization",
                       "Identity"}
#: Layers whose output, without an activation, is a linear function of their input: scores, not probabilities.
_KERAS_LINEAR = {"Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose", "Conv1DTranspose",
                 "DepthwiseConv2D", "SeparableConv2D"}
#: What a layer (by :func:`keras_word`) does to the values on the way back (:mod:`convlens.adapters._graph`).
KERAS_ROLES: dict[str, str] = {
    "Softmax": "softmax", "softmax": "softmax", "log_softmax": "log_softmax", "sigmoid": "sigmoid",
    "Activation": "pass", **{name: "linear" for name in _KERAS_LINEAR},
    **{name: "pass" for name in _KERAS_PASS_THROUGH},
}


def keras_final_activation(model: Any) -> str | None:
    """What a Keras model's output is made by, read from its graph (the adapter's ``final_activation``).

    Follows the output tensor back (:func:`convlens.adapters._graph.walk_final_activation`)
    through layers that pass values on unchanged (``Reshape``, ``Flatten``,
    ``Dropout``...) and into nested models, to the layer that computes it: a
    ``Softmax`` layer or any layer with ``activation=softmax`` gives
    ``"softmax"``; ``sigmoid`` gives ``"sigmoid"``; a ``Dense``/conv layer
    with a linear activation gives ``"linear"``. Anything else (a
    ``log_softmax`` activation, a ReLU, a ``Lambda``, a subclassed model
    without a graph) gives ``None``.
    """

    def producer(step: tuple[Any, int]) -> Producer[tuple[Any, int]] | None:
        op, node = step
        for _ in range(64):  # a nested model: its own output layer
            if not _is_nested_model(op):
                break
            inner = _keras_output_of(op)
            if inner is None:
                return None
            op, node = inner
        word = keras_word(op)
        if KERAS_ROLES.get(word) != "pass":
            return Producer(word)
        source = _keras_input_of(op, node)
        return Producer(word, [source] if source is not None else [])

    try:
        return walk_final_activation(_keras_output_of(model), producer, KERAS_ROLES, limit=64).answer
    except Exception:  # noqa: BLE001 - a graph convlens does not know how to walk: the graph does not say
        return None


def keras_word(layer: Any) -> str:
    """A layer's name in :data:`KERAS_ROLES`: its activation's when that decides, else its type's."""
    name = type(layer).__name__
    if name == "Softmax":
        return name
    activation = getattr(getattr(layer, "activation", None), "__name__", None)
    if activation in ("softmax", "sigmoid", "log_softmax"):
        return str(activation)
    if (activation == "linear" and name in _KERAS_LINEAR) or name in _KERAS_PASS_THROUGH \
            or (name == "Activation" and activation == "linear"):
        return name
    return f"{name}({activation})"  # no role: the walk ends with None


def _is_nested_model(obj: Any) -> bool:
    return any(c.__name__ in ("Model", "Functional", "Sequential") and c.__module__.startswith("keras")
               for c in type(obj).__mro__)


def _keras_output_of(model: Any) -> tuple[Any, int] | None:
    """The layer (and its call) that produces a model's first output, or ``None`` without a graph."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if outputs:
        history = outputs[0]._keras_history
        return history.operation, history.node_index
    layers = getattr(model, "layers", None)
    if type(model).__name__ == "Sequential" and layers:
        return layers[-1], 0
    return None


def _keras_input_of(layer: Any, node_index: int) -> tuple[Any, int] | None:
    """The layer (and its call) whose output feeds call ``node_index`` of ``layer``, or ``None``."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    if node_index >= len(nodes) or not nodes[node_index].input_tensors:
        return None
    history = nodes[node_index].input_tensors[0]._keras_history
    return history.operation, history.node_index


def _input_slot(tensor: Any) -> InputSlot:
    """A model input as an :class:`InputSlot`: its ``InputLayer``'s name (what ``model.summary()`` shows;
    a dict input's key may differ, and is not what convlens asks for), one item's shape, its dtype."""
    layer = getattr(getattr(tensor, "_keras_history", None), "operation", None)
    name = str(getattr(layer, "name", None) or tensor.name)
    shape = tuple(None if d is None else int(d) for d in tuple(tensor.shape)[1:])
    return InputSlot(name, shape, str(tensor.dtype))  # Keras's dtype names are numpy's ("float32", "int32")


class KerasTable:
    """A Keras model's set-up and layer table; see :class:`KerasAdapter`."""

    framework = "keras"
    class_names: list[str] | None = None
    class_names_source = ""
    #: A model with several inputs: which is the image, and what the others are held at (``None``: one input).
    held_inputs: HeldInputs | None = None
    #: The image input's name: its ``InputLayer``'s (what ``model.summary()`` shows); ``None`` without a graph.
    input_name: str | None = None

    def __init__(self, model: Any, *, input_shape: Sequence[int | None] | None = None,
                 preprocess: str | None = None, image_input: str | None = None,
                 inputs: Mapping[str, Any] | None = None) -> None:
        self.keras = import_keras()
        if not isinstance(model, self.keras.Model):
            raise UnsupportedModel(f"expected a keras.Model, got {type(model).__name__}")
        self.model = model
        self.name = model.name
        self.preprocess = preprocess
        self._probe_shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # see _free_dims
        self._ensure_built(input_shape, image_input, inputs)
        self.channels_first = self._channels_first()
        self.final_activation = keras_final_activation(model)
        self._layers: list[LayerInfo] | None = None
        self._objects: list[Any] = []  # keras layer of each table row (None for the inputs)
        self._row_calls: dict[int, int] = {}  # row -> which call of its layer it stands for (graph tables)
        self._passes: dict[tuple, int] = {}  # (wanted rows, input shape) -> eager passes so far
        self._graphs: dict[tuple, Any] = {}  # the traced forward functions (TensorFlow)
        self._grad_graphs: dict[tuple, Any] = {}  # compiled gradient passes (TensorFlow, JAX), oldest first
        self._ranked_graphs: dict[tuple, Any] = {}  # traced run_ranked functions (TensorFlow), oldest first

    # ----------------------------------------------------------------- set-up

    def _ensure_built(self, input_shape: Sequence[int | None] | None, image_input: str | None = None,
                      inputs: Mapping[str, Any] | None = None) -> None:
        model = self.model
        given = tuple(input_shape) if input_shape else None
        try:
            symbolic = model.inputs if model.built else None
        except (AttributeError, ValueError):
            symbolic = None
        if symbolic:
            slots = [_input_slot(t) for t in symbolic]
            self.held_inputs = hold_inputs(self.name, slots, image_input=image_input, inputs=inputs)
            image = self.held_inputs.image if self.held_inputs is not None else 0
            self.input_name = slots[image].name
            shape = tuple(symbolic[image].shape[1:])
            self.graph = True
        else:
            if image_input is not None or inputs:  # no graph: one image tensor is all convlens can feed
                check_single_input(self.name, InputSlot("input"), image_input=image_input, inputs=inputs)
            self.graph = False
            recorded = getattr(model, "_build_shapes_dict", None) or {}
            shapes = list(recorded.values())
            if given is not None:
                shape = given
            elif shapes and shapes[0] is not None and len(shapes[0]) >= 3:
                shape = self._free_dims(tuple(shapes[0][1:]))
            else:
                raise UnsupportedModel(
                    f"{model.name} does not know its input shape (an unbuilt Sequential or a "
                    "subclassed model never called); pass --input-shape H,W,C "
                    "(input_shape=(H, W, C) in Python)"
                )
            if isinstance(model, self.keras.Sequential):
                try:
                    model.build((None, *shape))
                except Exception as exc:
                    raise UnsupportedModel(f"cannot build {model.name} for input shape {shape}: "
                                           f"{_first_line(str(exc))}") from None
                try:
                    self.graph = bool(model.inputs)
                except (AttributeError, ValueError):
                    self.graph = False
        self._raw_input_shape = shape

    def _model_input(self, x_t: Any) -> Any:
        """What the model is called with for the image batch ``x_t`` (a backend tensor, the model's layout).

        One input: ``x_t`` itself. Several: every input in the structure the
        model was built with (a list, a dict...), ``x_t`` at the image's place
        and each held input repeated for the batch, as a constant tensor of its
        declared dtype. Only ``x_t`` is ever differentiated. Called inside
        traces too (TensorFlow, JAX): the held values are the adapter's for its
        lifetime, so a graph compiled once stays right.
        """
        held = self.held_inputs
        if held is None:
            return x_t
        ops = self.keras.ops
        n = x_t.shape[0] if x_t.shape[0] is not None else ops.shape(x_t)[0]
        flat: list[Any] = []
        for i, slot in enumerate(held.slots):
            if i == held.image:
                flat.append(x_t)
                continue
            value = ops.convert_to_tensor(held.values[slot.name], dtype=slot.dtype)
            flat.append(ops.broadcast_to(ops.expand_dims(value, 0), (n, *held.values[slot.name].shape)))
        struct = getattr(self.model, "_inputs_struct", None)
        return self.keras.tree.pack_sequence_as(struct, flat) if struct is not None else flat

    def _free_dims(self, built: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """The input shape of a model without a graph, from its behaviour rather than its build size.

        A subclassed model built by one call at 64x64 records (64, 64, 3), yet
        a fully convolutional one runs at any size. It is called once more, at
        a second size (each spatial dim ``d`` grows by the largest power of two
        dividing it, 64 -> 128, 224 -> 256, so a model that needs multiples of
        32 is not refused for that reason); if that works, the spatial dims are
        free (``None``) and both sizes are kept as probe shapes for the table.
        """
        if len(built) < 2 or any(d is None for d in built):
            return built
        channel = 0 if self._channels_first() else len(built) - 1
        first = tuple(int(d) for d in built)  # type: ignore[arg-type]
        other = tuple(d if i == channel else d + (d & -d) for i, d in enumerate(first))
        try:
            with self._no_grad(), native_stderr_silenced(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model(self.keras.ops.convert_to_tensor(np.zeros((1, *other), "float32")),
                           training=False)
        except Exception:  # noqa: BLE001 - the model is tied to its build size (a Flatten into a Dense)
            return built
        self._probe_shapes = (first, other)
        return tuple(d if i == channel else None for i, d in enumerate(first))

    def _channels_first(self) -> bool:
        for layer in self._leaf_layers(self.model):
            fmt = getattr(layer, "data_format", None)
            if fmt is not None:
                return fmt == "channels_first"
        return False

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        s = self._raw_input_shape
        if self.channels_first and len(s) == 3:
            return (s[1], s[2], s[0])
        return tuple(s)

    def _leaf_layers(self, layer: Any) -> Iterator[Any]:
        for sub in self._children(layer):
            if self._children(sub):
                yield from self._leaf_layers(sub)
            else:
                yield sub

    @staticmethod
    def _children(layer: Any) -> list[Any]:
        try:
            return list(layer._flatten_layers(include_self=False, recursive=False))
        except Exception:
            return []

    # ----------------------------------------------------------------- table

    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            rows = self._graph_rows() if self.graph else None
            if rows is None:
                rows = self._probe_rows()
            self._objects = [obj for obj, _ in rows]
            infos = [info for _, info in rows]
            infos = [_with_geometry(obj, info, infos) for obj, info in rows]
            # a row of held inputs alone sees no pixel of the image: its field is unknown, not the input's
            self._layers = [replace(info, rf_size=None, rf_jump=None, rf_offset=None, global_rf=False)
                            if info.extra.get("held") else info for info in with_receptive_fields(infos)]
        return self._layers

    def _info(self, index: int, name: str, layer: Any, output_shape: tuple | None,
              parents: Sequence[int]) -> LayerInfo:
        type_name = type(layer).__name__
        kind = kind_of(type_name)
        if kind == "model":
            kind = "other"
        kernel = _raw_kernel(layer) if kind == "conv" else None
        kernel_shape = None
        if kernel is not None:
            kernel_shape = tuple(_to_canonical_kernel(layer, np.zeros(tuple(kernel.shape), "float32")).shape)
        size = _pair(getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None))
        stride = _pair(getattr(layer, "strides", None)) if size else None
        dilation = _pair(getattr(layer, "dilation_rate", None)) if kind == "conv" else None
        if "Transpose" in type_name:  # upsampling: the field does not grow by stride
            stride = (1, 1)
        shape = self._canonical_shape(output_shape)
        try:
            params = int(layer.count_params()) if layer.built else 0
        except Exception:
            params = 0
        return LayerInfo(
            index=index, name=name, type=type_name, kind=kind, output_shape=shape, params=params,
            kernel_shape=kernel_shape, kernel_size=size, stride=stride, dilation=dilation,
            parents=tuple(parents), extra={"global": type_name.startswith("Global")},
        )

    def _canonical_shape(self, shape: tuple | None) -> tuple | None:
        if shape is None:
            return None
        shape = tuple(None if d is None else int(d) for d in shape)
        if self.channels_first and len(shape) in (2, 3):
            return (*shape[1:], shape[0])
        return shape

    def _graph_rows(self) -> list[tuple[Any, LayerInfo]] | None:
        """Rows from the symbolic graph, recursing into nested models; no forward pass.

        A model with several inputs: row 0 is the image input; each held input
        is a row of kind ``input`` where the graph lists it, flagged
        ``extra["held"]``, as is every row computed from held inputs alone (a
        conditioning vector's Dense, a Siamese network's other tower). A row
        fed by both lists only its image-side parents (the others in
        ``extra["held_parents"]``), so that receptive fields come from the
        image alone; held rows have none (see :meth:`layers`).
        """
        keras = self.keras
        from keras.src.ops.function import make_node_key  # stable since Keras 3.0

        rows: list[tuple[Any, LayerInfo]] = []
        model = self.model
        functional = getattr(model, "_functional", None) or model  # a built Sequential
        if not hasattr(functional, "_nodes"):
            return None
        held_rows: set[int] = set()
        held_tensors: set[int] = set()  # ids of the top-level tensors computed from held inputs alone
        image_op = None
        if self.held_inputs is not None:  # the image input first, wherever the graph lists it
            image_op = model.inputs[self.held_inputs.image]._keras_history.operation
            rows.append((None, self._info(0, image_op.name, image_op, tuple(image_op.output.shape[1:]), [])))
            # by tensor, every call of a shared layer apart: a row lists one call (the image's, see walk)
            by_depth = getattr(functional, "_nodes_by_depth", {})
            for depth in sorted(by_depth, reverse=True):  # the inputs are the deepest
                for n in by_depth[depth]:
                    ins = list(n.input_tensors)
                    held_call = (n.operation is not image_op if type(n.operation).__name__ == "InputLayer"
                                 else bool(ins) and all(id(t) in held_tensors for t in ins))
                    if held_call:
                        held_tensors.update(id(t) for t in n.output_tensors)

        def image_side(parents: list[int], held: bool) -> tuple[list[int], list[int]]:
            """``(parents kept, held parents dropped)`` of a row; only a row that also sees the image drops any."""
            kept = [p for p in parents if p not in held_rows]
            if held or not kept:  # a row of held inputs alone, or seeing no image row: keep what is known
                return parents, []
            return kept, [p for p in parents if p in held_rows]

        calls: dict[int, int] = {}  # row -> which call of its layer in one pass it stands for

        def walk(fn: Any, prefix: str, entry: list[int], held_call: bool = False, call: int = 0) -> dict[int, int]:
            produced: dict[int, int] = {}  # id(operation) -> row index
            order, per_op = _call_order(fn)
            for op in fn.operations:
                nodes = [n for i, n in enumerate(op._inbound_nodes) if make_node_key(op, i) in fn._nodes]
                if not nodes:
                    return produced
                node = nodes[0]
                if image_op is not None and not prefix and len(nodes) > 1:
                    # a layer shared by the image and a held input (a Siamese tower): its row is the image's call
                    node = next((n for n in nodes if not (n.output_tensors and all(
                        id(t) in held_tensors for t in n.output_tensors))), node)
                k = call * per_op.get(id(op), 1) + order.get(id(node), 0)
                parents = sorted({produced[id(t._keras_history.operation)]
                                  for t in node.input_tensors
                                  if id(t._keras_history.operation) in produced})
                if type(op).__name__ == "InputLayer":
                    if prefix:  # an inner model's input is its caller's tensor
                        produced[id(op)] = entry[0] if entry else 0
                        continue
                    if op is image_op:
                        produced[id(op)] = 0
                        continue
                    shape = tuple(op.output.shape[1:])
                    info = self._info(len(rows), op.name, op, shape, [])
                    if image_op is not None:
                        held_rows.add(len(rows))
                        info = replace(info, extra={**info.extra, "held": True})
                    rows.append((None, info))
                    produced[id(op)] = len(rows) - 1
                    continue
                outs = list(node.output_tensors)
                held = held_call if prefix else bool(outs) and all(id(t) in held_tensors for t in outs)
                parents, dropped = image_side(parents, held)
                inner = getattr(op, "_functional", None) or op
                if isinstance(op, keras.Model) and hasattr(inner, "_nodes"):
                    inner_map = walk(inner, f"{prefix}{op.name}/", parents, held, k)
                    out_op = inner.outputs[0]._keras_history.operation
                    produced[id(op)] = inner_map.get(id(out_op), len(rows) - 1)
                    continue
                if isinstance(op, keras.Model) or self._children(op) and not hasattr(op, "kernel"):
                    raise _NeedsProbe
                out = node.output_tensors[0] if node.output_tensors else None
                out_shape = tuple(out.shape[1:]) if out is not None else None
                info = self._info(len(rows), prefix + op.name, op, out_shape, parents)
                if held:
                    held_rows.add(len(rows))
                    info = replace(info, extra={**info.extra, "held": True})
                elif dropped:
                    info = replace(info, extra={**info.extra, "held_parents": tuple(dropped)})
                calls[len(rows)] = k
                rows.append((op, info))
                produced[id(op)] = len(rows) - 1
            return produced

        try:
            walk(functional, "", [])
        except _NeedsProbe:
            return None
        self._row_calls = calls
        return rows

    def _rows_by_call(self) -> dict[tuple[int, int], int]:
        """``(id(layer), k)`` -> the row standing for the layer's ``k``-th call (from 0) in one pass.

        A layer called several times is one row per call in the probe's table,
        the k-th row its k-th call; the graph's table lists one call of a shared
        layer (the image's, in a model with several inputs) and says which.
        """
        out: dict[tuple[int, int], int] = {}
        counts: dict[int, int] = {}
        for row, obj in enumerate(self._objects):
            if obj is None:
                continue
            k = self._row_calls.get(row)
            if k is None:
                k = counts.get(id(obj), 0)
                counts[id(obj)] = k + 1
            out[(id(obj), k)] = row
        return out

    def _probe_rows(self) -> list[tuple[Any, LayerInfo]]:
        """Rows from one forward pass on zeros, for models without a graph.

        A model found to take any size (see :meth:`_free_dims`) is probed at
        its build size and at the second size; output dims that differ are
        ``None`` in the table.
        """
        shape = self._probe_shapes[0] if self._probe_shapes else self._raw_input_shape
        if any(d is None for d in shape):
            raise UnsupportedModel(f"{self.name} has free input dimensions {shape} and no graph; pass "
                                   "--input-shape H,W,C to list its layers")
        records = self._probe_records(tuple(shape))
        if self._probe_shapes:
            second = self._probe_records(self._probe_shapes[1])
            if len(second) == len(records):
                records = [(layer, name, _differing_as_none(oshape, other[2]), parents)
                           for (layer, name, oshape, parents), other in zip(records, second)]
        counts: dict[str, int] = {}
        first = self.input_name if self.held_inputs is not None and self.input_name else "input"
        rows: list[tuple[Any, LayerInfo]] = [(None, LayerInfo(index=0, name=first, type="InputLayer",
                                                             kind="input", output_shape=self.input_shape))]
        for layer, name, oshape, parents in records:
            counts[name] = counts.get(name, 0) + 1
            label = name if counts[name] == 1 else f"{name}#{counts[name]}"
            rows.append((layer, self._info(len(rows), label, layer, oshape, parents)))
        return rows

    def _probe_records(self, shape: tuple[int, ...]) -> list[tuple[Any, str, tuple | None, list[int]]]:
        """``(layer, name, output shape, parent rows)`` of every leaf call in one pass on zeros."""
        ops = self.keras.ops
        records: list[tuple[Any, str, tuple | None, list[int]]] = []
        tensor_owner: dict[int, int] = {}
        keep: list[Any] = []  # keep outputs alive so their ids stay unique during the probe

        def record(layer: Any, name: str, args: tuple, out: Any) -> None:
            flat = [a for a in self.keras.tree.flatten(args) if hasattr(a, "shape")]
            parents = sorted({tensor_owner[id(a)] for a in flat if id(a) in tensor_owner})
            first = first_tensor(out)
            oshape = tuple(first.shape[1:]) if first is not None else None
            records.append((layer, name, oshape, parents or [0]))
            if first is not None:
                tensor_owner[id(first)] = len(records)  # row 0 is the input
                keep.append(first)

        x = self._model_input(ops.convert_to_tensor(np.zeros((1, *shape), dtype="float32")))
        with self._no_grad():
            if not self.model.built:  # the first call builds, which may call layers an extra time
                self.model(x, training=False)
            with self._wrapped(record):
                self.model(x, training=False)
        return records

    # ----------------------------------------------------------------- running

    @contextmanager
    def _no_grad(self) -> Iterator[None]:
        if self.keras.backend.backend() == "torch":
            import torch

            with torch.no_grad():
                yield
        else:
            yield

    @contextmanager
    def _wrapped(self, record: Any) -> Iterator[None]:
        """Wrap every leaf layer's ``call`` to report its output; always unwrapped.

        ``record(layer, name, args, output)`` may return a replacement for the
        output (a gradient pass's leaf on torch); ``None`` keeps it.
        """
        wrapped: list[tuple[Any, bool]] = []
        try:
            for layer, name in self._named_leaves(self.model, ""):
                had_own = "call" in vars(layer)
                original = layer.call

                def call(*args: Any, __orig: Any = original, __layer: Any = layer, __name: str = name,
                         **kwargs: Any) -> Any:
                    out = __orig(*args, **kwargs)
                    new = record(__layer, __name, args, out)
                    return out if new is None else new

                object.__setattr__(layer, "call", call)
                wrapped.append((layer, had_own))
            yield
        finally:
            for layer, had_own in wrapped:
                if not had_own:
                    object.__delattr__(layer, "call")

    def _named_leaves(self, layer: Any, prefix: str) -> Iterator[tuple[Any, str]]:
        for sub in self._children(layer):
            if self._children(sub) and not hasattr(sub, "kernel"):
                yield from self._named_leaves(sub, f"{prefix}{sub.name}/")
            else:
                yield sub, prefix + sub.name

    def kernels(self, index: int) -> np.ndarray:
        table = self.layers()
        layer = self._objects[index]
        raw = _raw_kernel(layer) if layer is not None else None
        if raw is None:
            raise UnsupportedModel(f"layer {table[index].name} ({table[index].type}) has no convolution "
                                   "kernel; select conv layers (--layers conv)")
        ops = self.keras.ops

        def transpose(kernel: Any, axes: tuple[int, ...]) -> np.ndarray:
            moved = ops.convert_to_numpy(ops.transpose(ops.cast(kernel, "float32"), axes))
            return np.ascontiguousarray(moved, dtype=np.float32)

        return _to_canonical_kernel(layer, raw, transpose)


def _call_order(fn: Any) -> tuple[dict[int, int], dict[int, int]]:
    """``({id(node): k}, {id(operation): calls})`` of a functional graph: each node's place among its
    operation's calls in one run (Keras runs nodes deepest first, in ``_nodes_by_depth`` order), and
    how many times each operation is called in one run."""
    order: dict[int, int] = {}
    counts: dict[int, int] = {}
    by_depth = getattr(fn, "_nodes_by_depth", {}) or {}
    for depth in sorted(by_depth, reverse=True):
        for n in by_depth[depth]:
            op = getattr(n, "operation", None)
            if op is None or getattr(n, "is_input", False):
                continue
            order[id(n)] = counts.get(id(op), 0)
            counts[id(op)] = order[id(n)] + 1
    return order, counts

