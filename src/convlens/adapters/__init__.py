"""The one dispatch point from a model object or a name to an adapter.

Only this module knows which frameworks exist; everything after it talks to
the :class:`~convlens.adapters.base.Adapter` contract.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from .._errors import BadModel, UnsupportedModel
from .base import Adapter, LayerInfo

__all__ = ["Adapter", "LayerInfo", "open_model", "DATA_DIR", "DEMO_MODEL"]

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEMO_MODEL = DATA_DIR / "demo_cnn.keras"
_NOT_YET = {".onnx": "ONNX", ".tflite": "TFLite", ".pt": "PyTorch", ".pt2": "PyTorch",
            ".pth": "PyTorch"}


def _is_keras_model(obj: Any) -> bool:
    return any(c.__module__.startswith("keras") and c.__name__ == "Model" for c in type(obj).__mro__)


def open_model(source: Any, *, weights: str | None = None, input_shape: Sequence[int | None] | None = None,
               trust: bool = False, preprocess: str | None = None) -> Adapter:
    """An adapter for a model object, a model file, a zoo name or ``"demo"``.

    Args:
        source: a ``keras.Model``, an adapter, a path to a ``.keras``/``.h5``
            file, a ``keras.applications`` name such as ``vgg16`` (also
            ``keras:vgg16``), or ``demo`` for the built-in MNIST CNN.
        weights: for zoo names: ``imagenet`` (default), ``none`` or a file.
        input_shape: ``(H, W, C)`` for models that do not know theirs, or a
            size for zoo models.
        trust: allow loading files that run code (Lambda layers, pickles).
        preprocess: overrides the model's own preprocessing preset.

    Raises:
        BadModel: the file is missing or not a model.
        UnsupportedModel: convlens cannot read this kind of model.
    """
    if isinstance(source, Adapter) and not isinstance(source, (str, os.PathLike)):
        return source
    if _is_keras_model(source):
        from .keras import KerasAdapter

        return KerasAdapter(source, input_shape=input_shape, preprocess=preprocess)
    if not isinstance(source, (str, os.PathLike)):
        kind = f"{type(source).__module__}.{type(source).__name__}"
        raise UnsupportedModel(f"convlens cannot read a {kind} yet; it reads Keras 3 models, "
                               ".keras/.h5 files and keras.applications names such as vgg16")
    text = os.fspath(source)
    key = text.lower().removeprefix("keras:")
    if text == "demo":
        from .keras import KerasAdapter, load_keras_file

        return KerasAdapter(load_keras_file(DEMO_MODEL), preprocess=preprocess or "unit")
    path = Path(text)
    if not path.exists():
        from .keras import ZOO, KerasAdapter, load_zoo_model

        if key in ZOO:
            model, preset = load_zoo_model(key, weights=weights if weights is not None else "imagenet",
                                           input_shape=input_shape, trust=trust)
            return KerasAdapter(model, preprocess=preprocess or preset)
        raise BadModel(f"model not found: {text} is neither a file nor a known name; give a .keras or "
                       f".h5 file, 'demo', or one of: {', '.join(sorted(ZOO))}")
    if path.is_dir():
        raise BadModel(f"{path} is a folder; give a model file (.keras or .h5), e.g. model.keras")
    suffix = path.suffix.lower()
    if suffix in _NOT_YET:
        raise UnsupportedModel(f"{path}: {_NOT_YET[suffix]} models are not supported yet; convlens reads "
                               "Keras .keras and .h5 files")
    from .keras import KerasAdapter, load_keras_file

    model = load_keras_file(path, trust=trust)
    return KerasAdapter(model, input_shape=input_shape, preprocess=preprocess)
