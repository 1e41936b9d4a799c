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

The package, one concern a module: ``load`` (the file, its checks, external data, the input: class
``OnnxModel``); ``table`` (the layer table and the final activation, class ``OnnxTable``);
``forward`` (``run``, class ``OnnxForward``); ``grads`` (gradients, class :class:`OnnxAdapter`, the
adapter). Each imports only from the ones before it.
"""

from __future__ import annotations

from .grads import OnnxAdapter
from .load import import_onnx
from .table import onnx_final_activation

__all__ = ["OnnxAdapter", "import_onnx", "onnx_final_activation"]
