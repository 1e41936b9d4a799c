"""Keras 3 models on any backend: Sequential, functional, nested and subclassed.

Intermediate outputs are captured by wrapping each leaf layer's ``call`` for the
duration of one forward pass, so one pass serves any set of layers and works
for models without a symbolic graph (subclassed models) and for models used as
layers inside others (transfer learning). The wrappers are always removed in
``finally``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import (
    BadModel,
    ConvlensError,
    MissingDependency,
    UnsafeModel,
    UnsupportedModel,
    WeightsUnavailable,
)
from .._stderr import native_stderr_silenced
from ..core.kinds import kind_of
from ..core.layers import LayerInfo
from ..core.receptive import with_receptive_fields
from ..core.sizes import size_hint
from .base import Gradients, OnOutput, RankedGradients, Target, check_rows, target_cotangent
from .base import first_line as _first_line  # one-line error messages

__all__ = ["KerasAdapter", "ZOO", "import_keras", "keras_final_activation", "load_keras_file",
           "load_zoo_model"]

#: keras.applications names: (constructor, preprocessing preset, default input size).
ZOO: dict[str, tuple[str, str, int]] = {
    "vgg16": ("VGG16", "caffe", 224),
    "vgg19": ("VGG19", "caffe", 224),
    "resnet50": ("ResNet50", "caffe", 224),
    "resnet101": ("ResNet101", "caffe", 224),
    "resnet50_v2": ("ResNet50V2", "tf", 224),
    "mobilenet": ("MobileNet", "tf", 224),
    "mobilenet_v2": ("MobileNetV2", "tf", 224),
    "mobilenet_v3_small": ("MobileNetV3Small", "raw", 224),
    "mobilenet_v3_large": ("MobileNetV3Large", "raw", 224),
    "efficientnet_b0": ("EfficientNetB0", "raw", 224),
    "efficientnet_b1": ("EfficientNetB1", "raw", 240),
    "efficientnet_v2_b0": ("EfficientNetV2B0", "raw", 224),
    "densenet121": ("DenseNet121", "torch", 224),
    "inception_v3": ("InceptionV3", "tf", 299),
    "xception": ("Xception", "tf", 299),
    "convnext_tiny": ("ConvNeXtTiny", "raw", 224),
}


_KERAS: Any = None


def load_triton_before_tensorflow() -> None:
    """Import triton, if installed, before TensorFlow is.

    triton (which torch imports as soon as ``torch.export`` or ``torch.compile``
    runs) crashes the process with SIGSEGV when it is loaded after TensorFlow:
    both carry their own LLVM. Loaded first, both work, so a session that reads
    a Keras model and then a ``.pt2`` program survives. Costs ~0.3 s, and only
    where torch's CUDA build (which brings triton) is installed.
    """
    import importlib.util

    if "tensorflow" in sys.modules or "triton" in sys.modules:
        return
    try:
        if importlib.util.find_spec("triton") is not None:
            import triton  # noqa: F401
    except Exception:  # a broken triton is torch's problem, not a reason to fail here
        pass


def import_keras() -> Any:
    """Import Keras 3, quietly, or say which extra to install."""
    global _KERAS
    if _KERAS is not None:
        return _KERAS
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
    load_triton_before_tensorflow()
    try:
        with native_stderr_silenced():
            import keras

            if keras.backend.backend() == "tensorflow":  # device discovery logs once, here
                keras.ops.convert_to_numpy(keras.ops.zeros((1,)))
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(
            f"Keras is not installed ({exc}); run: pip install 'convlens[keras]'"
        ) from None
    if not hasattr(keras, "ops"):  # pragma: no cover
        raise MissingDependency("convlens needs Keras 3; run: pip install -U 'convlens[keras]'")
    _KERAS = keras
    return keras


def _h5_magic(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


def _h5_has_lambda(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        config = f.attrs.get("model_config")
    if config is None:
        return False
    if isinstance(config, bytes):
        config = config.decode("utf-8", "replace")
    return '"class_name": "Lambda"' in str(config)


#: Reads every attribute and dataset of an HDF5 file, then says whether its model config has a Lambda.
_H5_PROBE = """
import sys
import h5py
lam = False
def visit(name, obj):
    global lam
    for key in obj.attrs:
        value = obj.attrs[key]
        if key == "model_config":
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            lam = lam or '"class_name": "Lambda"' in text
    if isinstance(obj, h5py.Dataset):
        obj[()]
try:
    with h5py.File(sys.argv[1], "r") as f:
        visit("/", f)
        f.visititems(visit)
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(3)
print("lambda" if lam else "ok")
"""


#: Files the child process read completely, by (path, size, mtime): whether they hold a Lambda layer.
_H5_READABLE: dict[tuple[str, int, int], bool] = {}


def _h5_has_lambda_or_damaged(path: Path) -> bool:
    """Whether a legacy .h5 file holds a Lambda layer, read in a separate process first.

    A damaged HDF5 file can make the HDF5 library loop for ever (a bit flip
    in a global heap) or crash, inside h5py while it holds the GIL, where no
    timeout in this process can reach. So a child process reads every
    attribute and dataset first, under a time limit that grows with the
    file's size; Keras then reads a file known to be readable.

    Raises:
        BadModel: the child failed, crashed or did not finish in time.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _H5_READABLE:  # read before, unchanged since: the child's answer stands
        return _H5_READABLE[key]
    limit = 10 + stat.st_size / 50e6  # seconds: 1 s per 50 MB read on top of start-up
    try:
        proc = subprocess.run([sys.executable, "-c", _H5_PROBE, str(path)], capture_output=True, text=True,
                              timeout=limit, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise BadModel(f"cannot read Keras model {path}: reading it does not finish within {limit:.0f} s; "
                       "the file is damaged (is it a complete file saved by model.save()?)") from None
    except OSError:  # no interpreter to start (an embedded Python): read it here, unguarded
        try:
            return _h5_has_lambda(path)
        except Exception as exc:  # noqa: BLE001 - any failure to read it is a damaged file
            raise BadModel(f"cannot read Keras model {path}: {type(exc).__name__}: {_first_line(str(exc))}; "
                           "is it a complete file saved by model.save()?") from None
    answer = proc.stdout.strip()
    if proc.returncode == 0 and answer in ("ok", "lambda"):
        _H5_READABLE[key] = answer == "lambda"
        return answer == "lambda"
    why = (_first_line(answer) if proc.returncode == 3 else
           f"the HDF5 library crashed reading it (signal {-proc.returncode})" if proc.returncode < 0 else
           _first_line(proc.stderr) or f"exit status {proc.returncode}")
    raise BadModel(f"cannot read Keras model {path}: {why}; is it a complete file saved by model.save()?")


def _is_zip(path: Path) -> bool:
    """``zipfile.is_zipfile``, which raises BadZipFile itself on some damaged end records."""
    try:
        return zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def load_keras_file(path: str | os.PathLike[str], *, trust: bool = False) -> Any:
    """Load a ``.keras`` or legacy ``.h5`` file.

    Args:
        path: the model file.
        trust: allow code stored in the file (Lambda layers) to run. Off by
            default: Keras ``safe_mode=True``.

    Raises:
        BadModel: the file is missing, corrupt or not a Keras model.
        UnsafeModel: the file holds code (a Lambda layer) and ``trust`` is off.
    """
    p = Path(path)
    if not p.is_file():
        raise BadModel(f"model file not found: {p}; check the path, or name a zoo model "
                       f"such as vgg16 ({', '.join(sorted(ZOO))})")
    keras = import_keras()
    suffix = p.suffix.lower()
    if suffix == ".keras" and not _is_zip(p):
        raise BadModel(f"{p} is not a .keras file (a .keras file is a zip archive); "
                       "re-save the model with model.save('model.keras')")
    if suffix in (".h5", ".hdf5") and not _h5_magic(p):
        raise BadModel(f"{p} is not an HDF5 file; legacy Keras models are saved with "
                       "model.save('model.h5')")
    if suffix not in (".keras", ".h5", ".hdf5"):
        raise BadModel(f"{p}: unknown model file type {suffix or '(none)'}; convlens reads "
                       ".keras and .h5 files and zoo names such as vgg16")
    if suffix in (".h5", ".hdf5") and _h5_has_lambda_or_damaged(p) and not trust:
        # Keras 3 does not apply safe_mode to legacy h5 files: check ourselves.
        raise UnsafeModel(f"{p} holds a Lambda layer, whose code would run on loading; "
                          "pass --trust (trust=True) only if you trust the file's author")
    try:
        # Quiet: on the torch backend, reading a legacy .h5 imports TensorFlow, whose C++
        # start-up logs would land here; Keras's UserWarnings advise the model's author
        # (e.g. "Do not pass an input_shape"), not our user.
        with native_stderr_silenced(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"keras\.")
            model = keras.saving.load_model(p, compile=False, safe_mode=not trust)
    except ValueError as exc:
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text or "lambda" in text:
            raise UnsafeModel(f"{p} holds code (a Lambda layer) that would run on loading; "
                              "pass --trust (trust=True) only if you trust the file's author") from None
        raise BadModel(f"cannot read Keras model {p}: {_first_line(text)}") from None
    except Exception as exc:  # corrupt archives, h5 without a model config, unknown layers
        raise BadModel(f"cannot read Keras model {p}: {type(exc).__name__}: "
                       f"{_first_line(str(exc))}; is it a complete file saved by model.save()?") from None
    if not isinstance(model, keras.Model):
        raise BadModel(f"{p} does not hold a Keras model")
    return model


def load_zoo_model(name: str, *, weights: str | None = "imagenet", input_shape: Sequence[int | None] | None = None,
                   trust: bool = False) -> tuple[Any, str]:
    """Build a ``keras.applications`` model by its convlens name.

    Args:
        name: a key of :data:`ZOO`, e.g. ``vgg16``.
        weights: ``imagenet`` (downloaded once into ``~/.keras``), ``none`` for
            random weights, or the path of a weights file.
        input_shape: ``(H, W, C)``; defaults to the model's usual size.

    Returns:
        The model and its preprocessing preset.
    """
    keras = import_keras()
    ctor_name, preset, size = ZOO[name]
    ctor = getattr(keras.applications, ctor_name)
    shape = tuple(input_shape) if input_shape else (size, size, 3)
    w = (weights or "none").strip()
    local: Path | None = None
    if w.lower() == "none":
        kw_weights: str | None = None
    elif w.lower() == "imagenet":
        kw_weights = "imagenet"
    else:
        local = Path(w)
        if not local.is_file():
            raise WeightsUnavailable(f"weights file not found: {local}; use --weights imagenet, "
                                     "--weights none, or the path of a weights file")
        kw_weights = None
    try:
        model = ctor(weights=kw_weights, input_shape=shape)
    except Exception as exc:
        if kw_weights == "imagenet":
            raise WeightsUnavailable(
                f"could not download the ImageNet weights of {name} ({type(exc).__name__}: "
                f"{_first_line(str(exc))}); use --weights none for random weights or "
                "--weights PATH for a local weights file"
            ) from None
        raise UnsupportedModel(f"cannot build {name} for input {shape}: {_first_line(str(exc))}") from None
    if local is not None:
        try:
            if local.suffix == ".keras":
                model = load_keras_file(local, trust=trust)
            else:
                model.load_weights(str(local))
        except (BadModel, UnsafeModel):
            raise
        except Exception as exc:
            raise WeightsUnavailable(f"cannot load weights {local} into {name}: "
                                     f"{_first_line(str(exc))}") from None
    return model, preset


# --------------------------------------------------------------------------- adapter


def _pair(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    vals = tuple(int(v) for v in value)
    if len(vals) == 1:
        return (1, vals[0])
    return (vals[-2], vals[-1]) if len(vals) >= 2 else None


def _to_canonical_kernel(layer: Any, kernel: np.ndarray) -> np.ndarray:
    """Keras kernel layouts to canonical ``(O, I, kh, kw)``."""
    name = type(layer).__name__
    if "Transpose" in name:  # (kh, kw, out, in)
        return np.ascontiguousarray(kernel.transpose(2, 3, 0, 1))
    if kernel.ndim == 3:  # Conv1D: (k, in, out)
        return np.ascontiguousarray(kernel.transpose(2, 1, 0)[:, :, None, :])
    if "Depthwise" in name or "Separable" in name:  # (kh, kw, in, multiplier)
        kh, kw, cin, mult = kernel.shape
        return np.ascontiguousarray(kernel.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw))
    if kernel.ndim == 4:  # (kh, kw, in, out)
        return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
    raise UnsupportedModel(f"layer {layer.name} ({name}) has a {kernel.ndim}-D kernel; convlens draws "
                           "1-D and 2-D convolution kernels")


def _raw_kernel(layer: Any) -> Any:
    for attr in ("depthwise_kernel", "kernel"):
        k = getattr(layer, attr, None)
        if k is not None and len(getattr(k, "shape", ())) >= 3:
            return k
    return None


class KerasAdapter:
    """A Keras 3 model behind convlens's adapter contract.

    Args:
        model: a ``keras.Model`` (Sequential, functional, nested or subclassed).
        input_shape: ``(H, W, C)`` for models that do not know theirs (unbuilt
            Sequential or subclassed models never called).
        preprocess: the preprocessing preset the model expects, if known.
    """

    framework = "keras"
    class_names: list[str] | None = None
    class_names_source = ""
    def __init__(self, model: Any, *, input_shape: Sequence[int | None] | None = None,
                 preprocess: str | None = None) -> None:
        self.keras = import_keras()
        if not isinstance(model, self.keras.Model):
            raise UnsupportedModel(f"expected a keras.Model, got {type(model).__name__}")
        self.model = model
        self.name = model.name
        self.preprocess = preprocess
        self._probe_shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # see _free_dims
        self._ensure_built(input_shape)
        self.channels_first = self._channels_first()
        self.final_activation = keras_final_activation(model)
        self._layers: list[LayerInfo] | None = None
        self._objects: list[Any] = []  # keras layer of each table row (None for the input)
        self._passes: dict[tuple, int] = {}  # (wanted rows, input shape) -> eager passes so far
        self._graphs: dict[tuple, Any] = {}  # the traced forward functions (TensorFlow)
        self._grad_graphs: dict[tuple, Any] = {}  # traced gradient functions (TensorFlow), oldest first

    # ----------------------------------------------------------------- set-up

    def _ensure_built(self, input_shape: Sequence[int | None] | None) -> None:
        model = self.model
        given = tuple(input_shape) if input_shape else None
        try:
            inputs = model.inputs if model.built else None
        except (AttributeError, ValueError):
            inputs = None
        if inputs:
            if len(inputs) != 1:
                names = ", ".join(f"{t.name} {tuple(t.shape[1:])}" for t in inputs)
                raise UnsupportedModel(f"{model.name} takes {len(inputs)} inputs ({names}); "
                                       "convlens feeds one image tensor: wrap the model so that it "
                                       "takes a single image input")
            shape = tuple(inputs[0].shape[1:])
            self.graph = True
        else:
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
            self._layers = with_receptive_fields([info for _, info in rows])
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
        """Rows from the symbolic graph, recursing into nested models; no forward pass."""
        keras = self.keras
        from keras.src.ops.function import make_node_key  # stable since Keras 3.0

        rows: list[tuple[Any, LayerInfo]] = []
        model = self.model
        functional = getattr(model, "_functional", None) or model  # a built Sequential
        if not hasattr(functional, "_nodes"):
            return None

        def walk(fn: Any, prefix: str, entry: list[int]) -> dict[int, int]:
            produced: dict[int, int] = {}  # id(operation) -> row index
            for op in fn.operations:
                node = next((n for i, n in enumerate(op._inbound_nodes)
                             if make_node_key(op, i) in fn._nodes), None)
                if node is None:
                    return produced
                parents = sorted({produced[id(t._keras_history.operation)]
                                  for t in node.input_tensors
                                  if id(t._keras_history.operation) in produced})
                if type(op).__name__ == "InputLayer":
                    if prefix:  # an inner model's input is its caller's tensor
                        produced[id(op)] = entry[0] if entry else 0
                        continue
                    shape = tuple(op.output.shape[1:])
                    rows.append((None, self._info(len(rows), op.name, op, shape, [])))
                    produced[id(op)] = len(rows) - 1
                    continue
                inner = getattr(op, "_functional", None) or op
                if isinstance(op, keras.Model) and hasattr(inner, "_nodes"):
                    inner_map = walk(inner, f"{prefix}{op.name}/", parents)
                    out_op = inner.outputs[0]._keras_history.operation
                    produced[id(op)] = inner_map.get(id(out_op), len(rows) - 1)
                    continue
                if isinstance(op, keras.Model) or self._children(op) and not hasattr(op, "kernel"):
                    raise _NeedsProbe
                out = node.output_tensors[0] if node.output_tensors else None
                out_shape = tuple(out.shape[1:]) if out is not None else None
                rows.append((op, self._info(len(rows), prefix + op.name, op, out_shape, parents)))
                produced[id(op)] = len(rows) - 1
            return produced

        try:
            walk(functional, "", [])
        except _NeedsProbe:
            return None
        return rows

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
        rows: list[tuple[Any, LayerInfo]] = [(None, LayerInfo(index=0, name="input", type="InputLayer",
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
            first = _first_tensor(out)
            oshape = tuple(first.shape[1:]) if first is not None else None
            records.append((layer, name, oshape, parents or [0]))
            if first is not None:
                tensor_owner[id(first)] = len(records)  # row 0 is the input
                keep.append(first)

        x = ops.convert_to_tensor(np.zeros((1, *shape), dtype="float32"))
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

    #: Graph-mode capture keeps every wanted output until the pass ends; above this many bytes
    #: the eager pass, which hands each output over as soon as it exists, is used instead.
    GRAPH_BUDGET = 512 * 2**20

    def _recorder(self, wanted: set[int], sink: Callable[[int, Any], None]) -> Callable[..., None]:
        """A ``record`` callback for :meth:`_wrapped` that passes wanted outputs to ``sink(row, tensor)``."""
        by_object: dict[int, list[int]] = {}
        for row, obj in enumerate(self._objects):
            if obj is not None:
                by_object.setdefault(id(obj), []).append(row)
        seen: dict[int, int] = {}

        def record(layer: Any, name: str, args: tuple, out: Any) -> None:
            rows = by_object.get(id(layer))
            if not rows:
                return
            k = seen.get(id(layer), 0)
            seen[id(layer)] = k + 1  # the k-th call of a shared layer is its k-th row
            first = _first_tensor(out)
            if k < len(rows) and rows[k] in wanted and first is not None:
                sink(rows[k], first)

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
                y = self.model(x, training=False)
            return _first_tensor(y), captured

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
        x = np.asarray(batch, dtype="float32")
        if self.channels_first and x.ndim == 4:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if 0 in wanted_key:
            on_output(0, np.asarray(batch, dtype="float32"))
        graph = self._graph_forward(wanted_key, x.shape)
        if graph is not None:
            try:
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
                    y = _first_tensor(self.model(self.keras.ops.convert_to_tensor(x), training=False))
                except ConvlensError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the model's own error, e.g. an input size it cannot take
                    if raised:  # Keras may have rewrapped it: hand over the caller's own exception
                        raise raised[0] from None
                    raise self._run_failed(exc, np.shape(batch)) from None
        return self._canonical_array(convert(y)) if y is not None else np.zeros((len(x), 0))

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

    # ----------------------------------------------------------------- gradients

    def gradients_unavailable(self) -> str | None:
        backend = self.keras.backend.backend()
        if backend in ("tensorflow", "torch"):
            return None
        return (f"gradients of Keras models on the {backend} backend are not supported yet: run with "
                "KERAS_BACKEND=tensorflow or KERAS_BACKEND=torch, or use a forward-only method (Score-CAM, "
                "Eigen-CAM, occlusion)")

    #: Traced gradient functions kept (TensorFlow), least recently used dropped first.
    GRADIENT_GRAPHS = 8

    def gradients(self, batch: np.ndarray, target: Target, layers: Sequence[int] = (), *,
                  wrt_input: bool = False, need_output: bool = True) -> Gradients:
        """One forward and one backward pass (see :meth:`Adapter.gradients`).

        TensorFlow: a ``GradientTape`` that watches no variable, only the
        output of the earliest needed layer (the input with ``wrt_input``), so
        it records only the network after that layer. From the second pass with
        the same layers, target layer and input shape, the pass runs as a traced
        ``tf.function`` taking the cotangent as an argument: in a graph,
        TensorFlow prunes the kernels' gradients that eager backprop computes
        and throws away (3x the cost of the pass on VGG16's classifier).
        torch backend: autograd, with that output detached as the one leaf and
        every variable's ``requires_grad`` off for the pass (restored after).
        Layers run in inference mode (``training=False``). A final softmax (a
        layer's ``activation``, a ``Softmax`` or ``Activation`` layer) is read
        at its input: the class score is the logit.
        """
        why = self.gradients_unavailable()
        if why:
            raise UnsupportedModel(f"{self.name}: {why}")
        table = self.layers()
        rows = check_rows(table, layers, target, self.name)
        needed = set(rows) | ({int(target.layer)} if target.layer is not None else set())
        plan = _GradPlan(
            rows=rows, needed=needed, target_layer=None if target.layer is None else int(target.layer),
            start=0 if wrt_input or 0 in needed else min(needed, default=None),
            stop_after=max(needed) if not need_output and target.layer is not None else None,
            sources=rows + ((0,) if wrt_input and 0 not in rows else ()))
        x = np.asarray(batch, dtype="float32")
        if self.channels_first and x.ndim == 4:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        where = None if plan.target_layer is None else table[plan.target_layer].name

        def build_cot(score_t: Any) -> Any:
            shape = tuple(int(d) for d in score_t.shape)
            if self.channels_first and len(shape) in (3, 4):
                shape = (shape[0], *shape[2:], shape[1])
            return self._native(target_cotangent(target, shape, where), score_t)

        if self.keras.backend.backend() == "torch":
            y, score_t, acts, found, is_logit = self._torch_pass(plan, x, build_cot)
        else:
            y, score_t, acts, found, is_logit = self._tf_pass(plan, x, target, build_cot)
        score_np = self._numpy(score_t)
        cot = target_cotangent(target, score_np.shape, where)
        score = (score_np.astype(np.float64) * cot).reshape(len(cot), -1).sum(axis=1)
        by_row = dict(zip(plan.sources, found))
        activations: dict[int, np.ndarray] = {}
        grads: dict[int, np.ndarray] = {}
        for r, a in zip(rows, acts):
            activations[r] = np.asarray(batch, np.float32).copy() if r == 0 else self._numpy(a)
            g = by_row.get(r)
            grads[r] = self._numpy(g) if g is not None else np.zeros_like(activations[r])
        input_grad = None
        if wrt_input:
            g = by_row.get(0)
            input_grad = self._numpy(g) if g is not None else np.zeros(np.shape(batch), np.float32)
        return Gradients(output=self._numpy(y) if y is not None else None, score=score,
                         activations=activations, grads=grads, input_grad=input_grad, logits=is_logit)

    def run_ranked(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput, *, layer: int,
                   top: int) -> RankedGradients:
        """:meth:`run` that also records the top classes' gradients at ``layer`` (see :class:`RankedGradients`).

        TensorFlow backend only: one traced ``tf.function`` runs the forward
        pass under a persistent ``GradientTape`` that watches no variable, takes
        each item's ``top`` best classes of the output (``tf.math.top_k``: ties
        to the lower index) and differentiates each rank's score (the logit
        before a final softmax) back to ``layer``; in a graph TensorFlow keeps
        only the backward ops that lead there. The wanted outputs are handed to
        ``on_output`` after the pass, as :meth:`run` does from its traced graph.

        Raises:
            UnsupportedModel: another backend, an output that is not ``(N, K)``,
                outputs above :attr:`GRAPH_BUDGET`, a model that cannot be
                traced, or ``layer`` gave no output (nothing was handed over then).
        """
        if self.keras.backend.backend() != "tensorflow":
            raise UnsupportedModel(f"{self.name}: one-pass gradients need the TensorFlow backend")
        import tensorflow as tf

        table = self.layers()
        wanted_key = tuple(sorted(set(wanted)))
        check_rows(table, [*wanted_key, layer], Target(), self.name)
        last = table[-1].output_shape
        if not last or len(last) != 1 or last[0] is None:
            raise UnsupportedModel(f"{self.name}: the output is not one score per class")
        k = max(1, min(int(top), int(last[0])))
        x = np.asarray(batch, dtype="float32")
        if self.channels_first and x.ndim == 4:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        sizes = [table[i].output_shape for i in (*wanted_key, layer) if i]
        if any(s is None or None in s for s in sizes) or \
                4 * len(x) * sum(int(np.prod(s)) for s in sizes) > self.GRAPH_BUDGET:  # type: ignore[arg-type,misc]
            raise UnsupportedModel(f"{self.name}: the layer outputs do not fit one traced pass")
        graphs: dict[tuple, Any] = self.__dict__.setdefault("_ranked_graphs", {})
        key = (wanted_key, int(layer), k, x.shape)
        entry = graphs.pop(key, None)
        if entry is None:
            rows = frozenset(r for r in (*wanted_key, layer) if r)
            plan = _GradPlan(rows=(int(layer),), needed=rows, target_layer=None, start=min(rows),
                             stop_after=None, sources=(int(layer),))
            logit: list[bool] = [False]

            def ranked(x_t: Any) -> tuple:
                with tf.GradientTape(watch_accessed_variables=False, persistent=True) as tape:
                    def leaf(t: Any) -> Any:
                        tape.watch(t)
                        return t

                    y, score_t, captured, logit[0] = self._forward_for_gradients(plan, x_t, leaf)
                idx = tf.math.top_k(tf.cast(y, tf.float32), k=k, sorted=True).indices
                grads = [tape.gradient(score_t, captured[int(layer)], output_gradients=tf.one_hot(
                    idx[:, r], int(y.shape[-1]), dtype=score_t.dtype)) for r in range(k)]
                kept = {str(r): captured[r] for r in wanted_key if r in captured}
                return y, captured[int(layer)], tf.stack(grads), idx, kept

            entry = (tf.function(ranked), logit)
        graphs[key] = entry  # most recently used last
        while len(graphs) > self.GRADIENT_GRAPHS:
            graphs.pop(next(iter(graphs)))
        fn, logit = entry
        try:
            y, acts, grads, idx, kept = fn(tf.convert_to_tensor(x))
        except ConvlensError:
            raise
        except Exception as exc:  # noqa: BLE001 - a model that cannot be traced: the caller falls back
            graphs.pop(key, None)
            raise UnsupportedModel(f"{self.name}: one-pass gradients failed: {_first_line(str(exc))}") from None
        if 0 in wanted_key:
            on_output(0, np.asarray(batch, dtype="float32"))
        for row in wanted_key:
            if str(row) in kept:
                on_output(row, self._canonical_array(np.asarray(kept[str(row)])))
        g = np.asarray(grads, np.float32)
        if self.channels_first and g.ndim == 5:
            g = np.moveaxis(g, 2, -1)
        return RankedGradients(output=self._canonical_array(np.asarray(y)), layer=int(layer),
                               activations=self._canonical_array(np.asarray(acts)),
                               classes=np.asarray(idx, np.int64), grads=g, logits=bool(logit[0]))

    def _forward_for_gradients(self, plan: _GradPlan, x_t: Any, leaf: Callable[[Any], Any]) -> tuple[
            Any, Any, dict[int, Any], bool]:
        """The forward half of a gradient pass: ``(output, score tensor, captured rows, logits?)``.

        Runs inside the caller's tape (TensorFlow) or ``enable_grad`` (torch).
        ``leaf(t)`` makes sure gradient recording covers what follows ``t`` and
        returns the tensor to pass on. Wrappers and a swapped final activation are removed in ``finally``.
        """
        by_object: dict[int, list[int]] = {}
        for row, obj in enumerate(self._objects):
            if obj is not None:
                by_object.setdefault(id(obj), []).append(row)
        final = self._objects[-1] if plan.target_layer is None and self._objects else None
        logit_from = _logit_source(final) if final is not None else None
        captured: dict[int, Any] = {}
        logits: list[Any] = []
        seen: dict[int, int] = {}

        def record(layer: Any, name: str, args: tuple, out: Any) -> Any:
            if logit_from == "input" and layer is final:
                logits[:] = [a for a in self.keras.tree.flatten(args) if hasattr(a, "shape")][:1]
            layer_rows = by_object.get(id(layer))
            if not layer_rows:
                return None
            k = seen.get(id(layer), 0)
            seen[id(layer)] = k + 1  # the k-th call of a shared layer is its k-th row
            row = layer_rows[k] if k < len(layer_rows) else -1
            first = _first_tensor(out)
            if row not in plan.needed or first is None:
                return None
            # every needed output is a leaf unless recorded already (downstream of an earlier one): a
            # row on a parallel branch (a ResNet shortcut) gets its own gradient, not zeros
            first = leaf(first)
            captured[row] = first
            new = _replace_first(out, first)
            if row == plan.stop_after:
                raise _StopForward
            return new

        def capture_logits(fn: Any) -> Callable[[Any], Any]:
            def activation(t: Any) -> Any:
                logits[:] = [t]
                return fn(t)
            return activation

        if plan.start == 0:
            x_t = leaf(x_t)
            captured[0] = x_t
        swapped = final.activation if final is not None and logit_from == "activation" else None
        y = None
        try:
            if swapped is not None:
                object.__setattr__(final, "activation", capture_logits(swapped))
            with self._wrapped(record), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*structure of `inputs`.*")
                try:
                    y = _first_tensor(self.model(x_t, training=False))
                except _StopForward:
                    y = None
        finally:
            if swapped is not None:
                object.__setattr__(final, "activation", swapped)
        missing = [r for r in plan.rows if r not in captured]
        if plan.target_layer is not None and plan.target_layer not in captured:
            missing.insert(0, plan.target_layer)
        if missing:
            name = self.layers()[missing[0]].name
            raise UnsupportedModel(f"layer {name} (row {missing[0]}) gave no output in this gradient pass of "
                                   f"{self.name}; pick another layer (--layer)")
        if plan.target_layer is None:
            if y is None:
                raise UnsupportedModel(f"{self.name} returned no tensor to take a class score from; pick a "
                                       "layer as the target")
            if logits and tuple(logits[0].shape) == tuple(y.shape):
                return y, logits[0], captured, True
            return y, y, captured, False
        return y, captured[plan.target_layer], captured, False

    def _torch_pass(self, plan: _GradPlan, x: np.ndarray, build_cot: Callable[[Any], Any]) -> tuple:
        import torch

        variables = self._torch_parameters()
        flags = [p.requires_grad for p in variables]
        try:
            for p in variables:
                p.requires_grad_(False)
            with torch.enable_grad():
                y, score_t, captured, is_logit = self._forward_for_gradients(
                    plan, self.keras.ops.convert_to_tensor(x),
                    lambda t: t if t.requires_grad else t.detach().requires_grad_())
                inputs: list[Any] = [captured.get(r) for r in plan.sources]
                usable = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
                found: list[Any] = [None] * len(inputs)
                if usable and score_t.requires_grad:
                    got = torch.autograd.grad([score_t], [inputs[i] for i in usable], [build_cot(score_t)],
                                              allow_unused=True)
                    for i, grad in zip(usable, got):
                        found[i] = grad
                else:
                    build_cot(score_t)  # the target is checked even when nothing depends on it
        finally:
            for p, flag in zip(variables, flags):
                p.requires_grad_(flag)
        return y, score_t, [captured[r] for r in plan.rows], found, is_logit

    def _tf_pass(self, plan: _GradPlan, x: np.ndarray, target: Target,
                 build_cot: Callable[[Any], Any]) -> tuple:
        import tensorflow as tf

        key = (plan, x.shape)
        traced = self._grad_graphs.pop(key, None)
        if traced is not None:
            self._grad_graphs[key] = traced  # most recently used last
            fn, cot_shape, is_logit = traced
            cot = target_cotangent(target, cot_shape, None if plan.target_layer is None
                                   else self.layers()[plan.target_layer].name)
            if self.channels_first and cot.ndim in (3, 4):
                cot = np.moveaxis(cot, -1, 1)
            y, score_t, acts, found = fn(tf.convert_to_tensor(x), tf.convert_to_tensor(cot))
            y = None if plan.stop_after is not None else y
            return y, score_t, list(acts), [g if g is not None else None for g in found], is_logit

        def run(x_t: Any, cot_for: Callable[[Any], Any]) -> tuple:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                def leaf(t: Any) -> Any:
                    tape.watch(t)
                    return t

                y, score_t, captured, is_logit = self._forward_for_gradients(plan, x_t, leaf)
            cot = cot_for(score_t)
            found = tape.gradient(score_t, [captured[r] for r in plan.sources], output_gradients=cot,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO) if plan.sources else []
            return y, score_t, [captured[r] for r in plan.rows], list(found), is_logit

        y, score_t, acts, found, is_logit = run(tf.convert_to_tensor(x), build_cot)
        cot_shape = tuple(int(d) for d in score_t.shape)
        if self.channels_first and len(cot_shape) in (3, 4):
            cot_shape = (cot_shape[0], *cot_shape[2:], cot_shape[1])

        def traced_fn(x_t: Any, cot: Any) -> tuple:
            y, score_t, acts, found, _ = run(x_t, lambda s: tf.cast(cot, s.dtype))
            return (y if y is not None else tf.zeros((0,))), score_t, acts, found

        self._grad_graphs[key] = (tf.function(traced_fn), cot_shape, is_logit)
        while len(self._grad_graphs) > self.GRADIENT_GRAPHS:
            self._grad_graphs.pop(next(iter(self._grad_graphs)))
        return y, score_t, acts, found, is_logit

    def _torch_parameters(self) -> list[Any]:
        """The torch tensors behind the model's variables (Keras on torch)."""
        import torch

        found: dict[int, Any] = {}
        for v in self.model.variables:
            t = getattr(v, "value", None)
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                found.setdefault(id(t), t)
        return list(found.values())

    def _numpy(self, t: Any) -> np.ndarray:
        """A backend tensor as a canonical float32 numpy array."""
        if hasattr(t, "detach"):
            t = t.detach()
        return self._canonical_array(self.keras.ops.convert_to_numpy(t))

    def _native(self, cot: np.ndarray, like: Any) -> Any:
        """A canonical numpy cotangent as a tensor in the layout and dtype of ``like``."""
        if self.channels_first and cot.ndim in (3, 4):
            cot = np.ascontiguousarray(np.moveaxis(cot, -1, 1))
        return self.keras.ops.cast(self.keras.ops.convert_to_tensor(cot), like.dtype)

    def kernels(self, index: int) -> np.ndarray:
        table = self.layers()
        layer = self._objects[index]
        raw = _raw_kernel(layer) if layer is not None else None
        if raw is None:
            raise UnsupportedModel(f"layer {table[index].name} ({table[index].type}) has no convolution "
                                   "kernel; select conv layers (--layers conv)")
        return _to_canonical_kernel(layer, np.asarray(self.keras.ops.convert_to_numpy(raw), dtype=np.float32))


@dataclass(frozen=True)
class _GradPlan:
    """What one gradient pass captures and differentiates (hashable: it keys the traced graphs)."""

    rows: tuple[int, ...]  # rows whose outputs and gradients are returned
    needed: frozenset[int] | set[int]  # rows captured: ``rows`` and the target's
    target_layer: int | None  # None: the model's output
    start: int | None  # the earliest needed row (0: the input is a leaf), None: no gradient needed
    stop_after: int | None  # the pass stops after this row (need_output=False)
    sources: tuple[int, ...]  # rows differentiated, ``rows`` plus 0 for the input gradient

    def __post_init__(self) -> None:
        object.__setattr__(self, "needed", frozenset(self.needed))


class _StopForward(BaseException):
    """Raised from a wrapped call once the last layer a gradient pass needs has run.

    A ``BaseException``, so that no ``except Exception`` on the way (Keras's
    traceback filtering, a model's own) stops it.
    """


def _activation_name(fn: Any) -> str:
    return str(getattr(fn, "__name__", "")).lower()


def _final_activation(layer: Any) -> str | None:
    """What a model's last layer ends with: ``"softmax"``, ``"sigmoid"``, ``"linear"``, else ``None``.

    Read from its ``activation`` (a Dense or Conv layer's, an ``Activation``
    layer's) or its type (``Softmax``). Operations applied with ``keras.ops``
    in a subclassed model's ``call`` after its last layer are not seen.
    """
    if type(layer).__name__ == "Softmax":
        return "softmax"
    name = _activation_name(getattr(layer, "activation", None))
    return name if name in ("softmax", "sigmoid", "linear") else None


def _logit_source(layer: Any) -> str | None:
    """Where the logits before a final softmax are: ``"activation"`` (the input of the layer's own
    activation), ``"input"`` (a Softmax/Activation layer's input), or ``None`` (no final softmax)."""
    if _final_activation(layer) != "softmax":
        return None
    if type(layer).__name__ in ("Softmax", "Activation"):
        return "input"
    return "activation"


def _replace_first(out: Any, new: Any) -> Any:
    """``out`` with its first tensor replaced by ``new`` (containers copied)."""
    if hasattr(out, "shape") and hasattr(out, "dtype"):
        return new
    if isinstance(out, (list, tuple)):
        items = list(out)
        for i, o in enumerate(items):
            if _first_tensor(o) is not None:
                items[i] = _replace_first(o, new)
                break
        return type(out)(items) if not hasattr(out, "_fields") else type(out)(*items)
    if isinstance(out, dict):
        items_d = dict(out)
        for k, o in items_d.items():
            if _first_tensor(o) is not None:
                items_d[k] = _replace_first(o, new)
                break
        return items_d
    return out
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


def _differing_as_none(a: tuple | None, b: tuple | None) -> tuple | None:
    """``a`` with ``None`` where ``b`` differs (the dims that follow the input size)."""
    if a is None or b is None or len(a) != len(b):
        return a
    return tuple(None if x != y else x for x, y in zip(a, b))


class _NeedsProbe(Exception):
    """The graph holds a layer with sublayers but no graph of its own."""


def _first_tensor(out: Any) -> Any:
    if hasattr(out, "shape") and hasattr(out, "dtype"):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            t = _first_tensor(o)
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


def keras_final_activation(model: Any) -> str | None:
    """What a Keras model's output is made by, read from its graph (the adapter's ``final_activation``).

    Follows the output tensor back through layers that pass values on
    unchanged (``Reshape``, ``Flatten``, ``Dropout``...) and into nested
    models, to the layer that computes it: a ``Softmax`` layer or any layer
    with ``activation=softmax`` gives ``"softmax"``; ``sigmoid`` gives
    ``"sigmoid"``; a ``Dense``/conv layer with a linear activation gives
    ``"linear"``. Anything else (a ReLU, a ``Lambda``, a subclassed model
    without a graph) gives ``None``.
    """
    try:
        step = _keras_output_of(model)
        for _ in range(64):  # a bound, in case a graph loops through something unexpected
            if step is None:
                return None
            op, node = step
            name = type(op).__name__
            if _is_nested_model(op):
                step = _keras_output_of(op)  # a nested model: its own output layer
                continue
            if name == "Softmax":
                return "softmax"
            activation = getattr(getattr(op, "activation", None), "__name__", None)
            if activation in ("softmax", "sigmoid"):
                return activation
            if activation == "linear" and name in _KERAS_LINEAR:
                return "linear"
            if name in _KERAS_PASS_THROUGH or (name == "Activation" and activation == "linear"):
                step = _keras_input_of(op, node)
                continue
            return None
    except Exception:  # noqa: BLE001 - a graph convlens does not know how to walk: the graph does not say
        return None
    return None


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
