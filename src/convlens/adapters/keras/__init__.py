"""Keras 3 models on any backend: Sequential, functional, nested and subclassed.

Intermediate outputs are captured by wrapping each leaf layer's ``call`` for the
duration of one forward pass, so one pass serves any set of layers and works
for models without a symbolic graph (subclassed models) and for models used as
layers inside others (transfer learning). The wrappers are always removed in
``finally``.

The package, one concern a module: ``load`` (``.keras``/``.h5`` files, the zoo, trust); ``table``
(the layer table and the final activation, class ``KerasTable``); ``forward`` (``run``, class
``KerasForward``); ``grads`` (gradients, class :class:`KerasAdapter`, the adapter). Each imports
only from the ones before it.
"""

from __future__ import annotations

from .grads import KerasAdapter
from .load import (
    ZOO,
    import_keras,
    load_keras_file,
    load_triton_before_tensorflow,
    load_zoo_model,
    use_keras_device,
)
from .table import keras_final_activation

__all__ = ["KerasAdapter", "ZOO", "import_keras", "keras_final_activation", "load_keras_file", "use_keras_device",
           "load_triton_before_tensorflow", "load_zoo_model", "use_keras_device"]
