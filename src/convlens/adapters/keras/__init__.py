"""The keras adapter (one module for now, moved here whole; it is split by concern next)."""

from __future__ import annotations

from .table import (
           ZOO,
           KerasAdapter,
           import_keras,
           keras_final_activation,
           load_keras_file,
           load_triton_before_tensorflow,
           load_zoo_model,
)

__all__ = ["KerasAdapter", "ZOO", "import_keras", "keras_final_activation",
           "load_keras_file", "load_triton_before_tensorflow", "load_zoo_model"]
