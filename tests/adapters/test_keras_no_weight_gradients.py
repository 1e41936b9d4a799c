"""No gradient pass on TensorFlow computes a kernel's gradient: no ``*BackpropFilter`` op runs in a CAM,
saliency, visualisation or ranked (report) pass.

Which ops ran is read from an op callback (every eager op) and from TensorFlow's run metadata (the graphs
a ``tf.function`` actually executed, after pruning). The traced graph itself holds ``Conv2DBackpropFilter``
nodes, since TensorFlow's ``Conv2D`` gradient builds both halves; they must never run. An eager
``GradientTape`` runs them on every call, which this test catches (it fails on the eager first pass that
convlens used before).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import keras
import numpy as np
import pytest
from tensorflow.python.eager import context
from tensorflow.python.framework import op_callbacks

from convlens.adapters.base import Target
from convlens.lens import Lens

SIZE = 24


@pytest.fixture(autouse=True)
def _tensorflow_backend() -> None:
    if keras.backend.backend() != "tensorflow":  # make test runs these in its TensorFlow pass (no keras marker)
        pytest.fail(f"these tests read TensorFlow's run metadata: KERAS_BACKEND is {os.environ.get('KERAS_BACKEND')}")


@contextmanager
def _ops_run() -> Iterator[set[str]]:
    """The op types that ran inside the block: eager ops (an op callback sees each one executed) and the
    ops of the function graphs instantiated in the block, as TensorFlow ran them (pruned, optimised).

    Run metadata records a function's graphs when it is instantiated, so the block must be the first
    to run it: each test builds its own model.
    """
    ran: set[str] = set()

    def eager(op_type, inputs, attrs, outputs, op_name=None, graph=None):  # type: ignore[no-untyped-def]
        if graph is None:  # an op executed eagerly; graph ops are only being built (traced)
            ran.add(op_type.decode() if isinstance(op_type, bytes) else str(op_type))

    ctx = context.context()
    ctx.enable_run_metadata()
    op_callbacks.add_op_callback(eager)
    try:
        yield ran
        meta = ctx.export_run_metadata()
    finally:
        op_callbacks.remove_op_callback(eager)
        ctx.disable_run_metadata()
    for fn in meta.function_graphs:
        for graph in (*fn.partition_graphs, fn.post_optimization_graph):
            ran.update(node.op for node in graph.node)


def _model() -> keras.Model:
    """Plain, separable and depthwise convs, batch norm and a residual add: every kind of kernel gradient."""
    L = keras.layers
    inp = keras.Input((SIZE, SIZE, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    y = L.SeparableConv2D(8, 3, padding="same", name="sep")(x)
    y = L.BatchNormalization(name="bn")(y)
    x = L.Add(name="add")([x, y])
    x = L.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(5, activation="softmax", name="fc")(x), name="net")


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), np.uint8)


def _filter_ops(ran: set[str]) -> list[str]:
    return sorted(op for op in ran if "BackpropFilter" in op)


def _check(run: Callable[[], object]) -> None:
    with _ops_run() as ran:
        run()
    assert any("Conv2DBackpropInput" in op for op in ran), sorted(ran)  # a backward pass through convs ran
    assert _filter_ops(ran) == [], "a kernel's gradient was computed"


@pytest.mark.parametrize("method", ["gradcam", "saliency", "smoothgrad"])
def test_cam_and_input_gradient_methods_run_no_filter_backprop(method) -> None:
    lens = Lens(_model())  # a fresh model: its very first pass is checked
    layer = "conv1" if method == "gradcam" else None  # a CAM layer with convs after it to go back through
    _check(lambda: lens.heatmaps(_image(), method, layer=layer, preprocess="unit"))


def test_visualisation_runs_no_filter_backprop() -> None:
    lens = Lens(_model())
    _check(lambda: lens.visualize("conv2", "0-3", steps=3, size=SIZE, batch_size=4))


def test_adapter_passes_of_every_kind_run_no_filter_backprop() -> None:
    lens = Lens(_model())
    adapter = lens.model.adapter
    rows = {t.name: t.index for t in adapter.layers()}
    x = np.random.default_rng(1).random((3, SIZE, SIZE, 3), np.float32)
    _check(lambda: adapter.gradients(x, Target(channels=(2,)), [rows["conv1"], rows["add"]], wrt_input=True))
    _check(lambda: adapter.gradients(x, Target(layer=rows["conv2"], channels=(1,), reduce="mean"), [rows["sep"]],
                                     need_output=False))
    _check(lambda: adapter.run_ranked(x, [rows["conv1"]], lambda row, a: None, layer=rows["sep"], top=2))


def test_repeated_passes_reuse_one_compiled_function() -> None:
    lens = Lens(_model())
    adapter = lens.model.adapter
    x = np.random.default_rng(2).random((2, SIZE, SIZE, 3), np.float32)
    for c in range(4):  # another class is another cotangent, not another trace
        adapter.gradients(x, Target(channels=(c,)), wrt_input=True)
    assert len(adapter._grad_graphs) == 1
    (fn, shape, logits), = adapter._grad_graphs.values()
    assert shape == (2, 5) and logits
    assert any("BackpropFilter" in op.type for op in fn.graph.get_operations())  # built, never run (above)
