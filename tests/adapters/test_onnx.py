"""The ONNX adapter on real ONNX files: torch.onnx.export of small CNNs and graphs built with onnx.helper.

Every file is made here. Feature maps are checked against PyTorch or numpy
references, kernels element by element, the layer table exactly.
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convlens import BadModel, Lens, MissingDependency, UnsupportedModel
from convlens.adapters import open_model
from convlens.adapters.onnx import OnnxAdapter, import_onnx
from convlens.cli import main
from convlens.selection import select_indexes

OPSET = [helper.make_opsetid("", 17)]
IR = 8  # what onnxruntime reads; onnx.helper's default can be newer


def _model(nodes, inputs, outputs, initializers=(), name="g"):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=OPSET, ir_version=IR)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def conv2d_nchw(x, w, b=None, stride=1, pad=0, dilation=1, group=1):
    """A direct numpy convolution (cross-correlation, as ONNX Conv): x (N, C, H, W), w (O, C/g, kh, kw)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h - dilation * (kh - 1) - 1) // stride + 1
    ow = (wd - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, o, oh, ow))
    per = o // group
    for g in range(group):
        xs = x[:, g * cg:(g + 1) * cg]
        ws = w[g * per:(g + 1) * per].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dilation:i * dilation + stride * oh:stride,
                           j * dilation:j * dilation + stride * ow:stride]
                out[:, g * per:(g + 1) * per] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    if b is not None:
        out += b[None, :, None, None]
    return out


def capture(adapter, batch, wanted):
    got: dict[int, np.ndarray] = {}
    y = adapter.run(batch, wanted, lambda i, a: got.__setitem__(i, a))
    return got, y


# --------------------------------------------------------------------------- torch exports


def _torch_net():
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.pool = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(4, 6, 3, stride=2, dilation=2)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            x = self.pool(self.relu(self.conv1(x)))
            return self.fc(torch.flatten(self.gap(self.conv2(x)), 1))

    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory):
    """The same small CNN exported three ways: fixed batch 1, dynamic batch and size, and dynamo."""
    import torch

    tmp = tmp_path_factory.mktemp("onnx_torch")
    net = _torch_net()
    x = torch.zeros(1, 3, 16, 16)
    fixed, dynamic, dynamo = tmp / "fixed.onnx", tmp / "dynamic.onnx", tmp / "dynamo.onnx"
    torch.onnx.export(net, (x,), str(fixed), input_names=["image"], output_names=["logits"], dynamo=False)
    torch.onnx.export(net, (x,), str(dynamic), input_names=["image"], output_names=["logits"], dynamo=False,
                      dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}})
    torch.onnx.export(net, (x,), str(dynamo), input_names=["image"], output_names=["logits"], dynamo=True)
    return net, fixed, dynamic, dynamo


def _torch_reference(net, batch_nhwc):
    """Outputs of conv1, relu, pool, conv2, gap and fc for an NHWC batch, channels last."""
    import torch

    outs = {}
    hooks = [getattr(net, n).register_forward_hook(
                 lambda m, i, o, n=n: outs.__setitem__(n, o.detach().numpy()))
             for n in ("conv1", "relu", "pool", "conv2", "gap", "fc")]
    try:
        with torch.no_grad():
            net(torch.from_numpy(np.ascontiguousarray(batch_nhwc.transpose(0, 3, 1, 2))))
    finally:
        for h in hooks:
            h.remove()
    return {k: (np.moveaxis(v, 1, -1) if v.ndim == 4 else v) for k, v in outs.items()}


def test_torch_export_layer_table(torch_files):
    _, fixed, _, _ = torch_files
    table = Lens(fixed).layers()
    assert [(t.name, t.type, t.kind, t.output_shape) for t in table] == [
        ("image", "Input", "input", (16, 16, 3)),
        ("/conv1/Conv", "Conv", "conv", (16, 16, 4)),
        ("/relu/Relu", "Relu", "act", (16, 16, 4)),
        ("/pool/MaxPool", "MaxPool", "pool", (8, 8, 4)),
        ("/conv2/Conv", "Conv", "conv", (2, 2, 6)),
        ("/gap/GlobalAveragePool", "GlobalAveragePool", "pool", (1, 1, 6)),
        ("/Flatten", "Flatten", "reshape", (6,)),
        ("/fc/Gemm", "Gemm", "dense", (5,)),
    ]
    assert [t.parents for t in table] == [(), (0,), (1,), (2,), (3,), (4,), (5,), (6,)]
    assert [t.params for t in table] == [0, 4 * 3 * 9 + 4, 0, 0, 6 * 4 * 9 + 6, 0, 0, 6 * 5 + 5]
    assert table[1].kernel_shape == (4, 3, 3, 3) and table[4].kernel_shape == (6, 4, 3, 3)
    assert (table[4].kernel_size, table[4].stride, table[4].dilation) == ((3, 3), (2, 2), (2, 2))
    # conv 3x3: 3; pool 2/2: 4, jump 2; conv 3x3 dilation 2 stride 2: 4 + 2*2*2 = 12, jump 4
    assert [(t.rf_size, t.rf_jump) for t in table[1:5]] == [
        ((3, 3), (1, 1)), ((3, 3), (1, 1)), ((4, 4), (2, 2)), ((12, 12), (4, 4))]
    assert table[5].extra["global"] and table[5].global_rf and table[7].global_rf
    assert select_indexes(table, "blocks") == [1, 4]


def test_torch_export_maps_kernels_and_output(torch_files):
    net, fixed, dynamic, _ = torch_files
    rng = np.random.default_rng(1)
    batch = rng.standard_normal((1, 16, 16, 3)).astype(np.float32)
    ref = _torch_reference(net, batch)
    for path in (fixed, dynamic):
        adapter = OnnxAdapter(path)
        got, y = capture(adapter, batch, range(8))
        np.testing.assert_array_equal(got[0], batch)
        for row, key in zip((1, 2, 3, 4, 5, 7), ("conv1", "relu", "pool", "conv2", "gap", "fc")):
            assert got[row].shape == ref[key].shape and got[row].dtype == np.float32
            np.testing.assert_allclose(got[row], ref[key], rtol=1e-5, atol=1e-5, err_msg=key)
        np.testing.assert_allclose(y, ref["fc"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(adapter.kernels(1), net.conv1.weight.detach().numpy())
        np.testing.assert_array_equal(adapter.kernels(4), net.conv2.weight.detach().numpy())
    with pytest.raises(UnsupportedModel, match="no convolution kernel"):
        OnnxAdapter(fixed).kernels(2)


def test_dynamic_axes_and_fixed_batch(torch_files):
    net, fixed, dynamic, _ = torch_files
    rng = np.random.default_rng(2)
    # dynamic batch and size: symbolic dims are None, any size runs in one pass
    adapter = OnnxAdapter(dynamic)
    assert adapter.input_shape == (None, None, 3) and adapter.batch_size is None
    assert adapter.layers()[1].output_shape == (None, None, 4)
    batch = rng.standard_normal((2, 20, 24, 3)).astype(np.float32)
    got, y = capture(adapter, batch, [1, 4])
    ref = _torch_reference(net, batch)
    np.testing.assert_allclose(got[1], ref["conv1"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[4], ref["conv2"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, ref["fc"], rtol=1e-5, atol=1e-5)
    # input_shape fills free dims, and shape inference then knows every layer's size
    sized = OnnxAdapter(dynamic, input_shape=(20, 24, 3))
    assert sized.input_shape == (20, 24, 3) and sized.layers()[3].output_shape == (10, 12, 4)
    # batch fixed at 1: three images go through one at a time
    adapter = OnnxAdapter(fixed)
    assert adapter.batch_size == 1 and adapter.input_shape == (16, 16, 3)
    batch = rng.standard_normal((3, 16, 16, 3)).astype(np.float32)
    got, y = capture(adapter, batch, [3])
    ref = _torch_reference(net, batch)
    assert got[3].shape == (3, 8, 8, 4) and y.shape == (3, 5)
    np.testing.assert_allclose(got[3], ref["pool"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, ref["fc"], rtol=1e-5, atol=1e-5)


def test_a_batch_fixed_at_two_runs_in_padded_chunks():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("ReduceSum", ["r"], ["y"], name="sum", keepdims=0)]  # sums the whole batch
    adapter = OnnxAdapter(_model(nodes, [_vi("x", [2, 3, 4, 4])], [_vi("y", None)]))
    assert adapter.batch_size == 2
    x = np.random.default_rng(11).standard_normal((3, 4, 4, 3)).astype(np.float32)
    got, y = capture(adapter, x, [1])
    np.testing.assert_array_equal(got[1], np.maximum(x, 0))  # three images back, the pad dropped
    # the model's scalar output comes once per chunk: images 0-1, then image 2 with a zero pad
    np.testing.assert_allclose(y, [np.maximum(x[:2], 0).sum(), np.maximum(x[2], 0).sum()], rtol=1e-5)


def test_dynamo_export_with_its_external_data(torch_files):
    """torch.onnx.export(dynamo=True) names nodes its own way, writes .data, reduces with ReduceMean."""
    net, _, _, dynamo = torch_files
    data = dynamo.with_name(dynamo.name + ".data")
    assert data.is_file()
    lens = Lens(dynamo)
    table = lens.layers()
    kinds = [(t.type, t.kind) for t in table]
    assert kinds[:5] == [("Input", "input"), ("Conv", "conv"), ("Relu", "act"), ("MaxPool", "pool"),
                         ("Conv", "conv")]
    mean = next(t for t in table if t.type == "ReduceMean")
    assert mean.global_rf  # x.mean over H and W sees the whole input
    batch = np.random.default_rng(3).standard_normal((1, 16, 16, 3)).astype(np.float32)
    got, y = capture(lens.adapter, batch, [1, 4])
    ref = _torch_reference(net, batch)
    np.testing.assert_allclose(got[4], ref["conv2"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, ref["fc"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(lens.filters("conv")[table[4].name], net.conv2.weight.detach().numpy())


def test_sessions_expose_only_what_was_asked_and_are_cached(torch_files):
    _, fixed, _, _ = torch_files
    adapter = OnnxAdapter(fixed)
    x = np.zeros((1, 16, 16, 3), np.float32)
    capture(adapter, x, [1])
    capture(adapter, x, [3, 1])
    assert len(adapter._sessions) == 2
    first, second = adapter._sessions.values()
    assert [o.name for o in first.get_outputs()] == ["logits", "/conv1/Conv_output_0"]
    assert [o.name for o in second.get_outputs()] == [
        "logits", "/conv1/Conv_output_0", "/pool/MaxPool_output_0"]
    capture(adapter, x, [1])
    assert list(adapter._sessions.values())[-1] is first  # reused, not rebuilt
    capture(adapter, x, [0])  # the input only: the plain model
    assert [o.name for o in list(adapter._sessions.values())[-1].get_outputs()] == ["logits"]


# --------------------------------------------------------------------------- hand-built graphs


def test_every_kind_lands_right(tmp_path):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             *(numpy_helper.from_array(v.astype(np.float32), n) for n, v in
               (("s", np.ones(4)), ("bb", np.zeros(4)), ("m", np.zeros(4)), ("v", np.ones(4)))),
             numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "gw"),
             numpy_helper.from_array(rng.standard_normal((5, 2)).astype(np.float32), "mw")]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["mp"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["r"], ["ap"], name="avgpool", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 0, 0]),
        helper.make_node("Add", ["mp", "ap"], ["add"], name="add"),
        helper.make_node("Concat", ["add", "mp"], ["cat"], name="concat", axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "gw"], ["fc"], name="gemm"),
        helper.make_node("MatMul", ["fc", "mw"], ["y"], name="matmul"),
    ]
    model = _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 2])], inits)
    table = Lens(model).layers()
    assert [(t.name, t.kind) for t in table] == [
        ("x", "input"), ("conv", "conv"), ("bn", "norm"), ("relu", "act"), ("maxpool", "pool"),
        ("avgpool", "pool"), ("add", "merge"), ("concat", "merge"), ("gap", "pool"), ("flatten", "reshape"),
        ("gemm", "dense"), ("matmul", "dense")]
    assert [t.output_shape for t in table[4:9]] == [(4, 4, 4), (4, 4, 4), (4, 4, 4), (4, 4, 8), (1, 1, 8)]
    assert table[6].parents == (4, 5) and table[7].parents == (4, 6)
    assert [t.params for t in table[1:3]] == [4 * 27 + 4, 16]
    # avg pool 3/2 after RF 3: 3 + 2 = 5, jump 2; the merge takes the widest field
    assert (table[5].rf_size, table[5].rf_jump) == ((5, 5), (2, 2))
    assert (table[6].rf_size, table[7].rf_size) == ((5, 5), (5, 5))
    assert table[8].extra["global"] and table[8].global_rf and table[8].rf_size is None
    x = rng.standard_normal((1, 8, 8, 3)).astype(np.float32)
    got, _ = capture(Lens(model).adapter, x, [1, 4])
    conv = conv2d_nchw(x.transpose(0, 3, 1, 2), w, pad=1)
    np.testing.assert_allclose(got[1], conv.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    bn = conv / np.sqrt(1 + 1e-5)
    pooled = np.maximum(bn, 0).reshape(1, 4, 4, 2, 4, 2).max(axis=(3, 5))
    np.testing.assert_allclose(got[4], pooled.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def _nhwc_model():
    """An NHWC model as tf2onnx writes them: Transpose in, convs in NCHW, Transpose out.

    The first kernel is a Constant node behind an Identity, the second a bare Constant node.
    """
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((2, 5, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w1_const"], value=numpy_helper.from_array(w1, "w1v")),
        helper.make_node("Identity", ["w1_const"], ["w1"]),
        helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(w2, "w2v")),
        helper.make_node("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Transpose", ["c2"], ["y"], name="to_nhwc", perm=[0, 2, 3, 1]),
    ]
    model = _model(nodes, [_vi("x", ["n", 9, 7, 3])], [_vi("y", None)])
    return model, w1, w2


def test_nhwc_input_and_constant_node_kernels():
    model, w1, w2 = _nhwc_model()
    adapter = open_model(model)
    assert isinstance(adapter, OnnxAdapter) and not adapter.channels_first
    assert adapter.input_shape == (9, 7, 3)
    table = adapter.layers()
    assert [(t.name, t.type, t.output_shape) for t in table] == [
        ("x", "Input", (9, 7, 3)), ("to_nchw", "Transpose", (9, 7, 3)), ("conv1", "Conv", (7, 5, 5)),
        ("relu1", "Relu", (7, 5, 5)), ("conv2", "Conv", (7, 5, 2)), ("to_nhwc", "Transpose", (7, 5, 2))]
    assert table[2].params == w1.size and table[4].params == w2.size  # Constant nodes count as weights
    x = np.random.default_rng(6).standard_normal((2, 9, 7, 3)).astype(np.float32)
    got, y = capture(adapter, x, range(6))
    c1 = conv2d_nchw(x.transpose(0, 3, 1, 2), w1)
    c2 = conv2d_nchw(np.maximum(c1, 0), w2)
    np.testing.assert_array_equal(got[0], x)
    np.testing.assert_array_equal(got[1], x)  # the transpose to NCHW, handed back channels last
    np.testing.assert_allclose(got[2], c1.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[4], c2.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[5], c2.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)  # NHWC already
    np.testing.assert_allclose(y, c2.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(adapter.kernels(2), w1)  # Constant behind Identity
    np.testing.assert_array_equal(adapter.kernels(4), w2)  # bare Constant


def test_qdq_quantised_kernels_are_dequantised():
    """QDQ models (onnxruntime.quantization) store int8 weights behind DequantizeLinear.

    The first kernel is per output channel (axis 0) and large enough to be read
    lazily; the second is per tensor, uint8 with a zero point of 128.
    """
    rng = np.random.default_rng(9)
    q1 = rng.integers(-127, 128, size=(200, 3, 3, 3)).astype(np.int8)
    s1 = rng.uniform(0.001, 0.01, size=200).astype(np.float32)
    z1 = np.zeros(200, np.int8)
    q2 = rng.integers(0, 256, size=(2, 200, 1, 1)).astype(np.uint8)
    s2, z2 = np.float32(0.02), np.uint8(128)
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((q1, "q1"), (s1, "s1"), (z1, "z1"), (q2, "q2"), (np.array(s2), "s2"), (np.array(z2), "z2"))]
    nodes = [
        helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["w1"], name="dq1", axis=0),
        helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["w2"], name="dq2"),
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Conv", ["c1", "w2"], ["y"], name="conv2"),
    ]
    adapter = open_model(_model(nodes, [_vi("x", [1, 3, 6, 6])], [_vi("y", None)], inits))
    assert [(t.name, t.kernel_shape) for t in adapter.layers()] == [
        ("x", None), ("conv1", (200, 3, 3, 3)), ("conv2", (2, 200, 1, 1))]
    w1 = q1.astype(np.float32) * s1[:, None, None, None]
    w2 = (q2.astype(np.float32) - 128) * s2
    np.testing.assert_allclose(adapter.kernels(1), w1, rtol=1e-6)
    np.testing.assert_allclose(adapter.kernels(2), w2, rtol=1e-6)
    x = rng.standard_normal((1, 6, 6, 3)).astype(np.float32)
    got, _ = capture(adapter, x, [2])
    want = conv2d_nchw(conv2d_nchw(x.transpose(0, 3, 1, 2), w1), w2)
    np.testing.assert_allclose(got[2], want.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


def test_tokens_made_by_a_transpose_stay_channels_last():
    """ViT-style tokens: (N, C, H, W) -> Reshape (N, C, L) -> Transpose [0, 2, 1] -> (N, L, C) -> MatMul."""
    rng = np.random.default_rng(12)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"], name="flat"),
             helper.make_node("Transpose", ["flat"], ["tokens"], name="tokens", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["tokens", "w"], ["y"], name="proj")]
    inits = [numpy_helper.from_array(np.array([1, 4, 15], np.int64), "shape"), numpy_helper.from_array(w, "w")]
    adapter = open_model(_model(nodes, [_vi("x", [1, 4, 3, 5])], [_vi("y", None)], inits))
    assert [(t.name, t.output_shape) for t in adapter.layers()] == [
        ("x", (3, 5, 4)), ("flat", (15, 4)), ("tokens", (15, 4)), ("proj", (15, 6))]
    x = rng.standard_normal((1, 3, 5, 4)).astype(np.float32)
    got, y = capture(adapter, x, [1, 2, 3])
    tokens = x.transpose(0, 3, 1, 2).reshape(1, 4, 15).transpose(0, 2, 1)
    np.testing.assert_allclose(got[1], tokens, rtol=1e-6)
    np.testing.assert_allclose(got[2], tokens, rtol=1e-6)
    np.testing.assert_allclose(got[3], tokens @ w, rtol=1e-5, atol=1e-5)


def test_layout_rule_for_ambiguous_inputs():
    """Dim 1 and the last dim both 3: NCHW unless input_shape or a Transpose says otherwise."""
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    model = _model(relu, [_vi("x", [1, 3, 5, 3])], [_vi("y", None)])
    assert OnnxAdapter(model).channels_first and OnnxAdapter(model).input_shape == (5, 3, 3)
    four = _model(relu, [_vi("x", [1, 4, 6, 6])], [_vi("y", None)])
    assert OnnxAdapter(four).channels_first and OnnxAdapter(four).input_shape == (6, 6, 4)
    assert not OnnxAdapter(four, input_shape=(4, 6, 6)).channels_first  # the C given is the last dim
    model, _, _ = _nhwc_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3  # (n, 3, 7, 3)
    assert not OnnxAdapter(model).channels_first  # the input goes straight into Transpose(0, 3, 1, 2)


def test_conv_transpose_and_1d_kernels():
    """ConvTranspose (I, O/g, kh, kw) and 1-D (O, I, k) kernels in canonical (O, I, kh, kw)."""
    rng = np.random.default_rng(7)
    wt = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)  # I=4, O/g=3, group 2 -> O=6, I/g=2
    w1d = rng.standard_normal((5, 6, 3)).astype(np.float32)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt"], ["up"], name="up", group=2, strides=[2, 2],
                         output_padding=[1, 1]),
        helper.make_node("Reshape", ["up", "shape"], ["line"], name="to_1d"),
        helper.make_node("Conv", ["line", "w1d"], ["c1d"], name="conv1d", strides=[2]),
    ]
    inits = [numpy_helper.from_array(wt, "wt"), numpy_helper.from_array(w1d, "w1d"),
             numpy_helper.from_array(np.array([0, 6, -1], np.int64), "shape")]
    adapter = OnnxAdapter(_model(nodes, [_vi("x", [1, 4, 5, 5])], [_vi("c1d", None)], inits))
    table = adapter.layers()
    assert [(t.name, t.output_shape, t.kernel_shape) for t in table[1:]] == [
        ("up", (10, 10, 6), (6, 2, 1, 1)), ("to_1d", (100, 6), None), ("conv1d", (49, 5), (5, 6, 1, 3))]
    assert (table[3].kernel_size, table[3].stride) == ((1, 3), (1, 2))
    k = adapter.kernels(1)
    for o in range(6):
        g, local = divmod(o, 3)
        for i in range(2):
            assert k[o, i, 0, 0] == wt[g * 2 + i, local, 0, 0]
    np.testing.assert_array_equal(adapter.kernels(3), w1d[:, :, None, :])
    # the canonical kernel means what it says: output channel o of a 1x1 transpose is sum_i K[o, i] x[i]
    x = rng.standard_normal((1, 5, 5, 4)).astype(np.float32)
    got, y = capture(adapter, x, [1, 2, 3])
    want = np.stack([sum(k[o, i, 0, 0] * x[0, :, :, (o // 3) * 2 + i] for i in range(2))
                     for o in range(6)], -1)
    np.testing.assert_allclose(got[1][0, ::2, ::2], want, rtol=1e-5, atol=1e-6)
    assert got[2].shape == (1, 100, 6) and got[3].shape == (1, 49, 5)  # (N, C, L) -> (N, L, C)
    line = np.moveaxis(got[2], -1, 1)  # back to (N, C, L) for the reference
    ref = conv2d_nchw(line[:, :, None, :], w1d[:, :, None, :], stride=2)[:, :, 0, :]
    np.testing.assert_allclose(got[3], np.moveaxis(ref, 1, -1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, got[3], rtol=0, atol=0)


def _big_conv_model():
    """A conv whose kernel (32*16*3*3 = 4608 values) is large, with a small first conv."""
    rng = np.random.default_rng(8)
    w1 = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="small", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="big")]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    return _model(nodes, [_vi("x", [1, 3, 6, 6])], [_vi("y", None)], inits), w1, w2


def test_external_data_loads_runs_and_a_missing_file_is_named(tmp_path, monkeypatch):
    model, w1, w2 = _big_conv_model()
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.weights", size_threshold=0)
    assert (folder / "ext.weights").stat().st_size == (w1.size + w2.size) * 4
    monkeypatch.chdir(tmp_path)  # not the model's folder: external data is found next to the file
    adapter = OnnxAdapter(path)
    x = np.random.default_rng(9).standard_normal((1, 6, 6, 3)).astype(np.float32)
    got, y = capture(adapter, x, [1, 2])
    a = conv2d_nchw(x.transpose(0, 3, 1, 2), w1, pad=1)
    np.testing.assert_allclose(got[1], a.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, conv2d_nchw(a, w2).transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(adapter.kernels(1), w1)
    np.testing.assert_array_equal(adapter.kernels(2), w2)
    (folder / "ext.weights").rename(folder / "elsewhere")
    with pytest.raises(BadModel, match=r"external data file ext\.weights, which is missing"):
        OnnxAdapter(path)


def test_truncated_external_data_and_too_new_ir_version(tmp_path):
    model, _, _ = _big_conv_model()
    onnx.save_model(model, str(tmp_path / "cut.onnx"), save_as_external_data=True, location="cut.data",
                    size_threshold=0)
    with open(tmp_path / "cut.data", "r+b") as fh:
        fh.truncate(100)  # inside the first (small) kernel
    with pytest.raises(BadModel, match=r"cut\.onnx.*external data file complete"):
        OnnxAdapter(tmp_path / "cut.onnx")
    with pytest.raises(BadModel, match="external data files that were not loaded"):
        Lens(model)  # onnx.save_model(save_as_external_data=True) left the proto pointing at the file
    model, _, _ = _big_conv_model()
    model.ir_version = 99
    lens = Lens(model)
    assert len(lens.layers()) == 3  # the table needs no session
    with pytest.raises(BadModel, match=r"IR version: 99.*ir_version=N"):
        lens.feature_maps(np.zeros((6, 6, 3), np.uint8))


def test_duplicate_and_missing_node_names_are_made_unique():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="act"),
             helper.make_node("Sigmoid", ["a"], ["b"], name="act"),
             helper.make_node("Tanh", ["b"], ["tanh_out"])]
    table = OnnxAdapter(_model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("tanh_out", None)])).layers()
    assert [(t.name, t.kind) for t in table[1:]] == [("act", "act"), ("act#2", "act"), ("tanh_out", "act")]


def test_a_model_proto_is_read_not_changed():
    model, w1, w2 = _big_conv_model()
    before = model.SerializeToString()
    lens = Lens(model)
    maps = lens.feature_maps(np.full((6, 6, 3), 128, np.uint8), layers="all")
    assert maps["big"].shape == (1, 4, 4, 32)
    np.testing.assert_array_equal(lens.filters("big")["big"], w2)
    assert model.SerializeToString() == before


def test_several_inputs_are_named():
    # the other inputs are held (tests/adapters/test_onnx_inputs.py); one numpy cannot hold is refused
    nodes = [helper.make_node("Relu", ["image"], ["y"])]
    model = _model(nodes, [_vi("image", [1, 3, 8, 8]), _vi("mask", ["n", 1], TensorProto.INT64)],
                   [_vi("y", None)])
    notes = Lens(model).model.input_notes
    assert len(notes) == 1 and "held at zeros: mask (1,) int64" in notes[0]
    model = _model(nodes, [_vi("image", [1, 3, 8, 8]), _vi("mask", ["n", 1], TensorProto.BFLOAT16)],
                   [_vi("y", None)])
    with pytest.raises(UnsupportedModel) as err:
        Lens(model)
    text = str(err.value)
    assert "takes 2 inputs" in text and "image (3, 8, 8) float32" in text and "mask (1,) bfloat16" in text
    assert "wrapper" in text


def test_non_image_inputs_keep_their_layer_table():
    w = np.arange(20, dtype=np.float32).reshape(10, 2)
    vec = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_vi("x", [1, 10])],
                 [_vi("y", None)], [numpy_helper.from_array(w, "w")])
    lens = Lens(vec)
    assert [(t.name, t.kind, t.output_shape, t.params) for t in lens.layers()] == [
        ("x", "input", (10,), 0), ("mm", "dense", (2,), 20)]
    with pytest.raises(UnsupportedModel, match=r"not images"):
        lens.feature_maps(np.zeros((8, 8, 3), np.uint8), layers="all")
    ints = _model([helper.make_node("Cast", ["x"], ["y"], name="cast", to=TensorProto.FLOAT)],
                  [_vi("x", [1, 3, 8, 8], TensorProto.INT64)], [_vi("y", None)])
    lens = Lens(ints)
    assert [t.name for t in lens.layers()] == ["x", "cast"]
    with pytest.raises(UnsupportedModel, match=r"x of shape \(1, 3, 8, 8\) int64, not an image batch"):
        lens.feature_maps(np.zeros((8, 8, 3), np.uint8), layers="all")


def test_uint8_pixel_input_is_fed_the_pixel_values():
    """A graph that takes uint8 pixels and casts them itself: preset raw, values rounded."""
    nodes = [helper.make_node("Cast", ["x"], ["xf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Conv", ["xf", "w"], ["y"], name="conv")]
    w = numpy_helper.from_array(np.ones((1, 3, 1, 1), np.float32), "w")
    lens = Lens(_model(nodes, [_vi("x", [1, 3, 4, 5], TensorProto.UINT8)], [_vi("y", None)], [w]))
    assert lens.adapter.preprocess == "raw" and lens.input_shape == (4, 5, 3)
    image = np.random.default_rng(4).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    maps = lens.feature_maps(image, layers="all")
    np.testing.assert_array_equal(maps["cast"][0], image.astype(np.float32))
    np.testing.assert_array_equal(maps["conv"][0, :, :, 0], image.astype(np.float32).sum(axis=2))
    got, _ = capture(lens.adapter, np.full((1, 4, 5, 3), 9.7, np.float32), [1])
    assert (got[1] == 10).all()  # rounded, not truncated


def test_plumbing_gets_no_row_and_parents_skip_it():
    """Shape/Gather/Concat on shapes feed a Reshape: only the float tensors are layers."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Shape", ["r"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "zero_axes"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], name="target", axis=0),
        helper.make_node("Reshape", ["r", "target"], ["y"], name="flatten"),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "zero_axes"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    table = OnnxAdapter(_model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", None)], inits)).layers()
    assert [(t.name, t.parents, t.output_shape) for t in table] == [
        ("x", (), (4, 4, 3)), ("relu", (0,), (4, 4, 3)), ("flatten", (1,), (48,))]


# --------------------------------------------------------------------------- bad input


def test_corrupt_truncated_and_foreign_files(tmp_path, torch_files):
    _, fixed, _, _ = torch_files
    data = fixed.read_bytes()
    cases = {"truncated.onnx": data[: len(data) // 2], "noise.onnx": bytes(range(256)) * 8,
             "empty.onnx": b"", "text.onnx": b"hello, I am not a model\n"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(BadModel, match=name.replace(".", r"\.")):
            Lens(tmp_path / name)
    with pytest.raises(BadModel, match="not found"):
        Lens(tmp_path / "absent.onnx")


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an absent package looks like to import
    with pytest.raises(MissingDependency, match=r"pip install 'convlens\[onnx\]'"):
        import_onnx()


# --------------------------------------------------------------------------- the command line


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_layers_maps_filters(torch_files, tmp_path):
    from PIL import Image

    _, _, dynamic, _ = torch_files
    code, out, err = _cli("layers", str(dynamic), "--json")
    assert code == 0 and err == ""
    rows = json.loads(out)
    assert rows[1]["name"] == "/conv1/Conv" and rows[1]["kernel_shape"] == [4, 3, 3, 3]
    image = tmp_path / "img.png"
    pixels = np.random.default_rng(10).integers(0, 256, (24, 20, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(image)
    out_dir = tmp_path / "out"
    code, out, err = _cli("maps", str(dynamic), str(image), "--out", str(out_dir), "--layers", "conv,pool")
    assert code == 0, err
    index = json.loads((out_dir / "index.json").read_text())
    assert index["framework"] == "onnx" and index["model"] == "dynamic"
    assert [(e["layer"], e["shape"]) for e in index["maps"]] == [
        ("/conv1/Conv", [None, None, 4]), ("/pool/MaxPool", [None, None, 4]),
        ("/conv2/Conv", [None, None, 6]), ("/gap/GlobalAveragePool", [1, 1, 6])]
    grid = Image.open(out_dir / index["maps"][0]["file"])
    assert grid.size[0] > 20 and grid.size[1] > 24
    code, out, err = _cli("filters", str(dynamic), "--out", str(out_dir))
    assert code == 0, err
    index = json.loads((out_dir / "index.json").read_text())
    files = {e["file"] for e in index["filters"]}
    assert files == {"filters/001_conv1__Conv.png", "filters/001_conv1__Conv_rgb.png",
                     "filters/004_conv2__Conv.png"}
    assert all((out_dir / f).is_file() for f in files)


def test_cli_errors_are_one_line_and_write_nothing(torch_files, tmp_path):
    from PIL import Image

    _, fixed, _, _ = torch_files
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(fixed.read_bytes()[:300])
    model, _, _ = _big_conv_model()
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data",
                    size_threshold=0)
    (tmp_path / "ext.data").unlink()
    for argv, message in (
        (("maps", str(broken), str(image)), "cannot read ONNX model"),
        (("filters", str(broken)), "cannot read ONNX model"),
        (("maps", str(tmp_path / "ext.onnx"), str(image)), "ext.data, which is missing"),
        (("maps", str(fixed), str(image), "--layers", "nope"), "no layer matches 'nope'"),
    ):
        out_dir = tmp_path / "out"
        code, out, err = _cli(*argv, "--out", str(out_dir))
        assert code == 2 and out == ""
        assert err.startswith("convlens: error: ") and err.count("\n") == 1 and message in err, err
        assert not out_dir.exists()
