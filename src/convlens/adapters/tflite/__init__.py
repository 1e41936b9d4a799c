"""TFLite models through LiteRT (``ai-edge-litert``): float and quantised, int8 and uint8.

One LiteRT ``Interpreter`` per file, built with
``experimental_preserve_all_tensors=True`` so that after one ``invoke()`` every
operator's output tensor can be read. LiteRT's default XNNPACK delegate stays
on (on VGG16 it runs the float model 2.6x faster than the builtin kernels) but
with ``experimental_disable_delegate_node_fusion=True``: each operator becomes
a delegate node of its own, so its output is still a tensor of the graph, not
a value inside a fused XNNPACK subgraph. The op table lists the original
operators and then the ``DELEGATE`` nodes that run them; only the former make
rows.

The layer table has one row per operator that produces an activation (a
float, int8, uint8 or int16 tensor that depends on the model input), in
execution order, the input first. Operators that only compute constants (a
``DEQUANTIZE`` of float16 weights) or integer bookkeeping (``SHAPE``) get no
row; rows fed through them keep the right parents.

Layer names. The converter names an operator's output tensor after every
TensorFlow op fused into it, output side first, joined by ``;``, e.g.
``sequential_1/conv2d_1/Relu;sequential_1/conv2d_1/BiasAdd;sequential_1/conv2d_1/convolution``.
A row's name is the *scope* (the path without its last component) that occurs
most often among those parts, ties going to the one fused in first (listed
last): ``sequential_1/conv2d_1``. Parts whose last component is the TensorFlow
op the TFLite operator stands for (``convolution``/``Conv2D`` for CONV_2D,
``depthwise`` for DEPTHWISE_CONV_2D, ``MatMul``, ``MaxPool``, ``Mean``...) are
preferred when there are any, so a ReLU layer fused into a depthwise conv
(``m/relu_1/Relu;m/dw_1/BiasAdd;m/dw_1/depthwise``) is named after the conv,
``m/dw_1``, and so is MobileNet's ``ZeroPadding2D`` folded into the next conv.
Output tensors without a scope (``StatefulPartitionedCall:0``) take
the scope of the operator's weights (``m/fc_1/MatMul`` -> ``m/fc_1``); failing
that, the signature's generic output names (``StatefulPartitionedCall``,
``Identity``) become the feeding row's name and the op (``m/fc_1/softmax``), and
any other name is kept without its ``:0`` suffix (``tfl.quantize``). A name used twice
gets ``#2``, ``#3``... as in the Keras adapter. The short name (after the last
``/``) selects a layer when it is unique, so ``--layers conv2d_1`` works. The
raw tensor name is kept in ``LayerInfo.extra["tensor"]``.

Quantised tensors are dequantised at this boundary, ``(q - zero_point) * scale``,
per channel along ``quantized_dimension`` when there is one scale per channel.
A quantised input is fed by quantising the preprocessed float batch with the
input's own scale and zero point. TFLite models take a batch of 1: a batch of N
images runs as N invocations (no ``resize_tensor_input`` on the batch axis,
which models with fixed-shape reshapes refuse).

The package, one concern a module: ``load`` (the file, the interpreter, the input: class
``TFLiteModel``); ``table`` (the layer table and the final activation, class ``TFLiteTable``);
``forward`` (``run``, class ``TFLiteForward``); ``grads`` (gradients, class :class:`TFLiteAdapter`,
the adapter). Each imports only from the ones before it.
"""

from __future__ import annotations

from .forward import dequantize
from .grads import TFLiteAdapter
from .load import threads
from .table import op_kind, readable_name, tflite_final_activation

__all__ = ["TFLiteAdapter", "dequantize", "op_kind", "readable_name", "tflite_final_activation", "threads"]
