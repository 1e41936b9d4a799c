"""The one dispatch point from a model object or a name to an adapter.

Only this module knows which frameworks exist; everything after it talks to
the :class:`~convlens.adapters.base.Adapter` contract. It is also where a
model's class names are known from where it came from (keras.applications and
torchvision classifiers: ImageNet's; the demo: its digits), so that nothing
later re-decides it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._errors import BadArgument, BadModel, UnsupportedModel
from ..classes import DEMO_SOURCE, IMAGENET_SOURCE, demo_class_names, imagenet_class_names
from ._device import (
    AUTO,
    DEVICE_CHOICES,
    adapter_device,
    exact_kernels,
    is_out_of_memory,
    out_of_memory,
    parse_device,
)
from ._inputs import HeldInputs, InputSlot, check_single_input, read_input_files
from .base import Adapter, LayerInfo

__all__ = ["AUTO", "DEVICE_CHOICES", "Adapter", "HeldInputs", "InputSlot", "read_input_files",
           "LayerInfo", "adapter_device", "exact_kernels", "is_out_of_memory",
           "open_model", "out_of_memory", "parse_device", "DATA_DIR", "DEMO_MODEL", "TORCH_SUFFIXES",
           "ONNX_SUFFIXES", "TFLITE_SUFFIXES", "KERAS_SUFFIXES"]

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEMO_MODEL = DATA_DIR / "demo_cnn.keras"
#: File suffixes of each framework's model files (the dispatch below reads these).
TORCH_SUFFIXES = (".pt2", ".pt", ".pth", ".bin")
ONNX_SUFFIXES = (".onnx",)
TFLITE_SUFFIXES = (".tflite",)
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
_READS = ("Keras 3 models (.keras, .h5, keras.applications names such as vgg16), PyTorch modules "
          "(.pt2 torch.export programs, torchvision:NAME), ONNX (.onnx) and TFLite (.tflite) files")


def _in_module(obj: Any, package: str, class_name: str | None = None) -> bool:
    """Whether ``obj`` is an instance of a class from ``package`` (no import of the package)."""
    return any(c.__module__.split(".")[0] == package and (class_name is None or c.__name__ == class_name)
               for c in type(obj).__mro__)


def _is_keras_model(obj: Any) -> bool:
    return any(c.__module__.startswith("keras") and c.__name__ == "Model" for c in type(obj).__mro__)


def open_model(source: Any, *, weights: str | None = None, input_shape: Sequence[int | None] | None = None,
               trust: bool = False, preprocess: str | None = None, device: Any = None,
               image_input: str | None = None, inputs: Mapping[str, Any] | None = None) -> Adapter:
    """An adapter for a model object, a model file, a zoo name or ``"demo"``.

    The one dispatch point: the adapter is chosen from the Python object's
    type or the file's suffix; nothing after it branches on the framework.

    Args:
        source: a ``keras.Model``, a ``torch.nn.Module``, an ``onnx.ModelProto``,
            an adapter, a path to a ``.keras``/``.h5``/``.pt2``/``.pt``/``.onnx``/
            ``.tflite`` file, a ``keras.applications`` name such as ``vgg16``
            (also ``keras:vgg16``), a torchvision name such as
            ``torchvision:resnet18``, or ``demo`` for the built-in MNIST CNN.
        weights: for zoo names: ``imagenet``/``default`` (the pretrained
            weights), ``none`` (random) or a file.
        input_shape: ``(H, W, C)`` for models that do not know theirs, or a
            size for zoo models.
        trust: allow loading files that run code (Lambda layers, pickles).
        preprocess: overrides the model's own preprocessing preset.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (:mod:`convlens.adapters._device`).
            ``None``: ``auto`` (the accelerator if there is one) for files and
            names; an in-memory model stays where it is (a torch module on its
            own device; Keras, ONNX: their default). TFLite runs on the CPU and
            says so in ``adapter.device_note`` when another device was asked for.
        image_input: a model with several inputs (Keras, PyTorch, ONNX): the
            name of the image input; ``None``: the first that looks like an image.
        inputs: the values its other inputs are held at, by name, one item
            each in the framework's own layout; an input left out is held at
            zeros when its shape is declared (:mod:`convlens.adapters._inputs`).

    Raises:
        BadModel: the file is missing or not a model.
        UnsupportedModel: convlens cannot read this kind of model, or a torch
            module sits on several devices.
        BadArgument: a device this machine does not have (``cuda`` without CUDA...), or
            ``image_input``/``inputs`` that do not fit the model's inputs.
    """
    adapter = _open(source, weights=weights, input_shape=input_shape, trust=trust, preprocess=preprocess,
                    device=device, held=_held(image_input, inputs))
    if getattr(adapter, "held_inputs", None) is None:  # a model of one input: nothing else may be given
        check_single_input(adapter.name, InputSlot(getattr(adapter, "input_name", None) or str(image_input)),
                           image_input=image_input, inputs=inputs)
    return adapter


def _held(image_input: str | None, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments that pass a model's several inputs to the adapters that take them."""
    return {} if image_input is None and not inputs else {"image_input": image_input, "inputs": dict(inputs or {})}


def _open(source: Any, *, weights: str | None, input_shape: Sequence[int | None] | None, trust: bool,
          preprocess: str | None, device: Any, held: dict[str, Any]) -> Adapter:
    device = parse_device(device)
    if isinstance(source, Adapter) and not isinstance(source, (str, os.PathLike)):
        return source
    if _is_keras_model(source):
        from .keras import KerasAdapter, use_keras_device

        where = use_keras_device(None)  # its variables exist already: it runs where Keras built it
        if device not in (None, AUTO) and parse_device(device) != where and not (
                device == "cuda" and where.startswith("cuda")):
            raise BadArgument(f"this Keras model was built on {where} and stays there (Keras cannot move a "
                              f"built model); build it inside `with keras.device(...)`, or open it from its "
                              f"file with device={device!r}")
        return _placed(KerasAdapter(source, input_shape=input_shape, preprocess=preprocess, **held), where)
    if _in_module(source, "torch"):
        from .torch import TorchAdapter

        return TorchAdapter(source, input_shape=input_shape, preprocess=preprocess, device=device, **held)
    if _in_module(source, "onnx", "ModelProto"):
        from .onnx import OnnxAdapter

        onnx_adapter = OnnxAdapter(source, input_shape=input_shape, preprocess=preprocess, **held)
        onnx_adapter.use_device(device)
        return onnx_adapter
    if not isinstance(source, (str, os.PathLike)):
        kind = f"{type(source).__module__}.{type(source).__name__}"
        raise UnsupportedModel(f"convlens cannot read a {kind}; it reads {_READS}")
    text = os.fspath(source)
    key = text.lower().removeprefix("keras:")
    device = device or AUTO  # files and names: the accelerator if there is one
    if text == "demo":
        from .keras import KerasAdapter, load_keras_file, use_keras_device

        where = use_keras_device(device)
        demo = _placed(KerasAdapter(load_keras_file(DEMO_MODEL), preprocess=preprocess or "unit"), where)
        return _named(demo, demo_class_names(), DEMO_SOURCE)
    if key.startswith("torchvision:"):
        from .torch import open_torchvision

        name = text.split(":", 1)[1]
        adapter = open_torchvision(name, weights=weights, input_shape=input_shape, trust=trust,
                                   preprocess=preprocess, device=device)
        import torchvision  # open_torchvision imported it already

        if name.strip().lower() in torchvision.models.list_models(module=torchvision.models):
            # torchvision's classifiers all score ImageNet-1k's 1,000 classes
            return _named(adapter, imagenet_class_names(), IMAGENET_SOURCE)
        return adapter
    path = Path(text)
    if not path.exists():
        from .keras import ZOO, KerasAdapter, load_zoo_model, use_keras_device

        if key in ZOO:
            where = use_keras_device(device)
            model, preset = load_zoo_model(key, weights=_keras_weights(weights), input_shape=input_shape,
                                           trust=trust)
            # keras.applications models are built with their ImageNet-1k top
            return _named(_placed(KerasAdapter(model, preprocess=preprocess or preset), where),
                          imagenet_class_names(), IMAGENET_SOURCE)
        raise BadModel(f"model not found: {text} is neither a file nor a known name; give a model file "
                       f"(.keras .h5 .pt2 .pt .onnx .tflite), 'demo', torchvision:NAME such as "
                       f"torchvision:resnet18, or one of: {', '.join(sorted(ZOO))}")
    if path.is_dir():
        raise BadModel(f"{path} is a folder; give a model file (.keras .h5 .pt2 .pt .onnx .tflite)")
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        from .torch import open_torch_file

        return open_torch_file(path, input_shape=input_shape, trust=trust, preprocess=preprocess, device=device,
                               **held)
    if suffix in ONNX_SUFFIXES:
        from .onnx import OnnxAdapter

        onnx_file = OnnxAdapter(path, input_shape=input_shape, preprocess=preprocess, **held)
        onnx_file.use_device(device)
        return onnx_file
    if suffix in TFLITE_SUFFIXES:
        from .tflite import TFLiteAdapter

        tflite = TFLiteAdapter(path, input_shape=input_shape, preprocess=preprocess)
        return _placed(tflite, "cpu", tflite_device_note(device))
    if suffix not in KERAS_SUFFIXES:
        raise BadModel(f"{path}: unknown model file type {suffix or '(no suffix)'}; convlens reads {_READS}")
    from .keras import KerasAdapter, load_keras_file, use_keras_device

    where = use_keras_device(device)
    model = load_keras_file(path, trust=trust)
    return _placed(KerasAdapter(model, input_shape=input_shape, preprocess=preprocess, **held), where)


def _placed(adapter: Any, device: str, note: str | None = None) -> Any:
    """The adapter, told where it runs (``adapter.device``) and, if any, what to say about it once."""
    adapter.device = device
    if note:
        adapter.device_note = note
    return adapter


def tflite_device_note(device: str | None) -> str | None:
    """What to say when a TFLite model was asked to run on an accelerator: it runs on the CPU."""
    spec = parse_device(device)
    if spec in (None, AUTO, "cpu"):
        return None
    return (f"TFLite models run on the CPU (LiteRT's XNNPACK); --device {spec} does not apply to them, "
            "convert the model to ONNX or PyTorch to run it on a GPU")


def _named(adapter: Adapter, names: list[str], source: str) -> Adapter:
    """The adapter, told its model's class names (they are checked against the output where used)."""
    adapter.class_names = names
    adapter.class_names_source = source
    return adapter


def _keras_weights(weights: str | None) -> str:
    """``default`` (torchvision's word) means ImageNet for keras.applications too."""
    w = "imagenet" if weights is None else weights
    return "imagenet" if w.strip().lower() == "default" else w
