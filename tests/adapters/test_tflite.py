"""The TFLite adapter on real .tflite files that TensorFlow's converter makes here.

One tiny Keras CNN with set weights (conv, depthwise conv with a separate ReLU,
max pool, 1x1 conv, global average pool, dense) is converted three times:
float, full-integer int8 (representative dataset) and int8 inside with uint8
input and output. Each conversion runs once per module.

Tolerances:

* float: every layer equals the Keras layer within 1e-5 relative to the
  layer's largest magnitude; kernels are equal element by element.
* quantised kernels: within half a quantisation step of the float kernel,
  ``|k - k_float| <= 0.5 * scale[o]`` per output channel (symmetric int8 weights).
* quantised activations, one layer at a time: the float op applied to the
  TFLite (dequantised) input of that layer, with the dequantised kernels, may
  differ from the TFLite output by ``0.5 * s_out + 1.5 * s_in * max(s_w)``
  (+1e-6 for float32 arithmetic): half an output step for the final rounding,
  ``0.5 * s_in * s_w`` for the int32 bias (stored in steps of ``s_in * s_w``),
  and ``s_in * s_w`` for the first rounding inside TFLite's fixed-point
  requantisation (the accumulator is multiplied by ``M0 * 2**-shift`` with
  ``M = s_in * s_w / s_out``, ``M0`` in [0.5, 1), and rounded once at the
  ``2**-shift <= 2 * M`` output-step resolution before the final rounding).
  The dense layer is checked with the float weights, adding their rounding,
  ``0.5 * s_w * sum|x|``. The int8 MEAN kernel rounds the zero-point offset
  and the scaled sum separately: one whole output step, ``s_out``. Max pooling
  keeps the scale, so it is exact.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens import BadModel, Lens, MissingDependency, UnsupportedModel
from convlens.adapters import open_model
from convlens.adapters.tflite import TFLiteAdapter, dequantize, op_kind, readable_name
from convlens.cli import main
from convlens.selection import select_indexes

H = W = 16
#: (name, type, kind, output shape, Keras layers whose output the row is)
TABLE = [
    ("serving_default_image", "INPUT", "input", (H, W, 3), None),
    ("tiny_1/conv1_1", "CONV_2D", "conv", (14, 14, 4), "conv1"),
    ("tiny_1/dw_1", "DEPTHWISE_CONV_2D", "conv", (6, 6, 8), "relu"),  # the ReLU is fused in
    ("tiny_1/pool_1", "MAX_POOL_2D", "pool", (3, 3, 8), "pool"),
    ("tiny_1/pw_1", "CONV_2D", "conv", (3, 3, 5), "pw"),
    ("tiny_1/gap_1", "MEAN", "pool", (5,), "gap"),
    ("tiny_1/fc_1", "FULLY_CONNECTED", "dense", (3,), "fc"),
]


def _tiny(keras):
    L = keras.layers
    model = keras.Sequential([
        keras.Input((H, W, 3), name="image"),
        L.Conv2D(4, 3, activation="relu", name="conv1"),
        L.DepthwiseConv2D(3, depth_multiplier=2, strides=2, name="dw"),
        L.ReLU(name="relu"),
        L.MaxPooling2D(2, name="pool"),
        L.Conv2D(5, 1, name="pw"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dense(3, name="fc"),
    ], name="tiny")
    rng = np.random.default_rng(7)
    for layer in model.layers:  # set weights: seeded, of the size that keeps activations O(1)
        layer.set_weights([(rng.normal(size=w.shape) * 0.4).astype("float32") for w in layer.get_weights()])
    return model


def _images(n: int, seed: int) -> np.ndarray:
    """Smooth-ish test pictures, ``(n, H, W, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W] / (H - 1)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([a * xx, b * yy, c * (1 - xx * yy)], -1)
        img = np.clip(255 * (0.8 * base + 0.2 * rng.uniform(size=(H, W, 3))), 0, 255)
        img[0, 0], img[-1, -1] = 0, 255  # the full range, so a uint8 input gets scale 1/255
        out.append(img)
    return np.asarray(out).astype("uint8")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every model file the tests read, made once."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    d = tmp_path_factory.mktemp("tflite")
    model = _tiny(keras)
    probe_images = _images(4, seed=1)  # the images the tests feed, also in the calibration set

    def representative():
        for img in np.concatenate([probe_images, _images(28, seed=2)]):
            yield [img[None].astype("float32") / 255.0]

    def write(name, converter):
        path = d / f"{name}.tflite"
        path.write_bytes(converter.convert())
        return path

    files = {"float": write("float", tf.lite.TFLiteConverter.from_keras_model(model))}
    for name, io_type in (("int8", tf.int8), ("uint8", tf.uint8)):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = io_type
        conv.inference_output_type = io_type
        files[name] = write(name, conv)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    files["fp16"] = write("fp16", conv)

    # a branching model with a transposed convolution
    L = keras.layers
    x = keras.Input((8, 8, 2), name="pic")
    a = L.Conv2D(3, 3, padding="same", name="left")(x)
    b = L.Conv2D(3, 1, name="right")(x)
    s = L.Add(name="sum")([a, b])
    up = L.Conv2DTranspose(2, 3, strides=2, padding="same", name="up")(s)
    branchy = keras.Model(x, up, name="branchy")
    rng = np.random.default_rng(3)
    for layer in branchy.layers:
        layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])
    files["branchy"] = write("branchy", tf.lite.TFLiteConverter.from_keras_model(branchy))

    def concrete(fn, *specs):
        f = tf.function(fn, input_signature=list(specs))
        return tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()])

    files["two_inputs"] = write("two_inputs", concrete(
        lambda image, meta: tf.reduce_mean(image, axis=[1, 2]) + meta[:, :3],
        tf.TensorSpec((1, 8, 8, 3), tf.float32, name="image"),
        tf.TensorSpec((1, 4), tf.float32, name="meta")))
    files["ids"] = write("ids", concrete(
        lambda ids: tf.cast(ids, tf.float32) * 2.0, tf.TensorSpec((1, 6), tf.int32, name="ids")))
    files["vector"] = write("vector", concrete(
        lambda v: tf.nn.relu(v * 3.0 - 1.0), tf.TensorSpec((1, 5), tf.float32, name="features")))
    files["any_size"] = write("any_size", concrete(
        lambda x: tf.nn.relu(tf.nn.conv2d(x, np.full((3, 3, 1, 1), 1 / 9, "float32"), 1, "SAME")),
        tf.TensorSpec((1, None, None, 1), tf.float32, name="gray")))
    files["uint8_cast"] = write("uint8_cast", concrete(  # uint8 pixels without a scale, cast in the graph
        lambda x: tf.nn.conv2d(tf.cast(x, tf.float32), np.ones((1, 1, 3, 1), "float32"), 1, "VALID"),
        tf.TensorSpec((1, 4, 5, 3), tf.uint8, name="pixels")))
    files["any_size_valid"] = write("any_size_valid", concrete(  # cannot be prepared at LiteRT's 1x1
        lambda x: tf.nn.max_pool2d(tf.nn.conv2d(x, np.ones((3, 3, 1, 1), "float32"), 1, "VALID"),
                                   2, 2, "VALID"),
        tf.TensorSpec((1, None, None, 1), tf.float32, name="gray")))
    flex = concrete(lambda x: tf.reshape(tf.linalg.det(x[:, :4, :4, 0]), (1, 1)),
                    tf.TensorSpec((1, 8, 8, 3), tf.float32, name="img"))
    flex.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    files["flex"] = write("flex", flex)
    chw_kernel = np.random.default_rng(4).normal(size=(3, 3, 3, 2)).astype("float32")
    files["nchw"] = write("nchw", concrete(
        lambda x: tf.nn.conv2d(tf.transpose(x, [0, 2, 3, 1]), chw_kernel, 1, "VALID"),
        tf.TensorSpec((1, 3, 10, 10), tf.float32, name="chw")))
    return {"files": files, "model": model, "branchy": branchy, "images": probe_images,
            "chw_kernel": chw_kernel, "dir": d}


@pytest.fixture(scope="module")
def keras_outputs(built):
    """Every Keras layer's output for the probe images, ``x / 255`` as convlens's ``unit`` preset."""
    import keras

    model = built["model"]
    names = [row[4] for row in TABLE[1:]]
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    outs = probe.predict(built["images"].astype("float32") / 255.0, verbose=0)
    return dict(zip(names, (np.asarray(o) for o in outs)))


def _litert(path):
    """An independent interpreter, for reading quantisation parameters in the tests themselves."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    return interp


def _scales(interp, name):
    """Quantisation scales of the tensor called ``name``."""
    for d in interp.get_tensor_details():
        if d["name"] == name:
            return np.asarray(d["quantization_parameters"]["scales"], dtype=np.float64)
    raise AssertionError(f"no tensor named {name}")


def _collect(adapter, images, wanted):
    got = {}
    order = []

    def on_output(i, a):
        order.append(i)
        got[i] = a

    out = adapter.run(images.astype("float32") / 255.0, wanted, on_output)
    return got, order, out


# --------------------------------------------------------------------------- table


def test_readable_names_from_fused_tensor_names():
    assert readable_name("m/conv2d/Relu;m/conv2d/BiasAdd;m/conv2d/Conv2D") == "m/conv2d"
    assert readable_name("m/relu_1/Relu;m/dw_1/BiasAdd;m/dw_1/depthwise;m/dw_1/Squeeze1") == "m/dw_1"
    assert readable_name("StatefulPartitionedCall_1:01", ["m/fc_1/MatMul", "m/fc_1/BiasAdd"]) == "m/fc_1"
    assert readable_name("tfl.quantize") == "tfl.quantize"
    # MobileNetV2: the ZeroPadding before a strided depthwise conv is folded into it
    fused = ("m/b1_depthwise_relu_1/Relu6;m/b1_depthwise_BN_1/batchnorm/mul_1;m/b1_depthwise_1/depthwise;;"
             "m/b1_pad_1/Pad1")
    assert readable_name(fused, op_name="DEPTHWISE_CONV_2D") == "m/b1_depthwise_1"
    assert readable_name(fused) == "m/b1_pad_1"  # without the op, a tie goes to the op fused in first
    assert readable_name("serving_default_image:0") == "serving_default_image"


def test_operator_kinds():
    kinds = {op: op_kind(op) for op in (
        "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D",
        "FULLY_CONNECTED", "RELU", "RELU6", "LOGISTIC", "HARD_SWISH", "SOFTMAX", "ADD", "CONCATENATION",
        "RESHAPE", "PAD", "QUANTIZE", "DEQUANTIZE", "MEAN")}
    assert kinds == {
        "CONV_2D": "conv", "DEPTHWISE_CONV_2D": "conv", "TRANSPOSE_CONV": "conv", "MAX_POOL_2D": "pool",
        "AVERAGE_POOL_2D": "pool", "L2_POOL_2D": "pool", "FULLY_CONNECTED": "dense", "RELU": "act",
        "RELU6": "act", "LOGISTIC": "act", "HARD_SWISH": "act", "SOFTMAX": "act", "ADD": "merge",
        "CONCATENATION": "merge", "RESHAPE": "reshape", "PAD": "reshape", "QUANTIZE": "other",
        "DEQUANTIZE": "other", "MEAN": "other"}  # MEAN: a pool only over H and W (see the table test)


def test_dequantize_per_tensor_and_per_channel():
    q = np.array([[-128, 0, 127], [10, -10, 0]], dtype=np.int8)
    np.testing.assert_array_equal(dequantize(q, np.array([0.5]), np.array([-128])),
                                  (q.astype(np.float64) + 128) * 0.5)
    per_row = dequantize(q, np.array([0.5, 2.0]), np.array([0, 1]), axis=0)
    np.testing.assert_array_equal(per_row, [[-64, 0, 63.5], [18, -22, -2]])
    assert per_row.dtype == np.float32


def test_float_layer_table(built):
    adapter = TFLiteAdapter(built["files"]["float"])
    assert (adapter.framework, adapter.name, adapter.input_shape) == ("tflite", "float", (H, W, 3))
    assert adapter.gradients_unavailable() and adapter.preprocess is None
    table = adapter.layers()
    assert [(t.name, t.type, t.kind, t.output_shape) for t in table] == [r[:4] for r in TABLE]
    # XNNPACK runs each op as a delegate node of its own; those nodes make no rows
    assert [o["op_name"] for o in adapter._interp._get_ops_details()].count("DELEGATE") == 6
    assert [t.parents for t in table] == [(), (0,), (1,), (2,), (3,), (4,), (5,)]
    model = built["model"]
    for row in table[1:]:
        own = "dw" if row.name.endswith("dw_1") else TABLE[row.index][4]
        assert row.params == model.get_layer(own).count_params(), row.name
    assert [t.kernel_shape for t in table] == [None, (4, 3, 3, 3), (8, 1, 3, 3), None, (5, 8, 1, 1),
                                               None, None]
    # receptive fields from the ops' own strides and pool sizes:
    # conv 3x3 -> 3; depthwise 3x3 stride 2 -> 3 + 2 = 5, jump 2; pool 2/2 -> 5 + 1*2 = 7, jump 4
    assert [(t.rf_size, t.rf_jump) for t in table[:5]] == [
        ((1, 1), (1, 1)), ((3, 3), (1, 1)), ((5, 5), (2, 2)), ((7, 7), (4, 4)), ((7, 7), (4, 4))]
    assert (table[3].kernel_size, table[3].stride) == ((2, 2), (2, 2))
    assert table[5].global_rf and table[5].extra["global"] and table[6].global_rf
    assert select_indexes(table, "blocks") == [1, 2, 4]  # jumps 1, 2 and 4: three stages
    assert select_indexes(table, "conv1_1,pool") == [1, 3, 5]  # short names, and MEAN as a global pool


def test_quantised_inputs_imply_their_preprocessing(built):
    # calibrated on x / 255: the int8 and uint8 inputs stand for [0, 1], the unit preset
    for kind in ("int8", "uint8"):
        assert TFLiteAdapter(built["files"][kind]).preprocess == "unit"
        assert TFLiteAdapter(built["files"][kind], preprocess="raw").preprocess == "raw"
    assert TFLiteAdapter(built["files"]["float"]).preprocess is None


def test_quantised_tables_keep_the_names(built):
    int8 = TFLiteAdapter(built["files"]["int8"]).layers()
    assert [(t.name, t.type, t.kind, t.output_shape, t.kernel_shape) for t in int8] == \
           [(t.name, t.type, t.kind, t.output_shape, t.kernel_shape)
            for t in TFLiteAdapter(built["files"]["float"]).layers()]
    uint8 = TFLiteAdapter(built["files"]["uint8"]).layers()
    assert [(t.type, t.kind) for t in uint8] == [("INPUT", "input"), ("QUANTIZE", "other")] + \
           [(t.type, t.kind) for t in int8[1:]] + [("QUANTIZE", "other")]
    assert [t.name for t in uint8[2:-1]] == [t.name for t in int8[1:]]
    assert uint8[1].name == "tfl.quantize" and uint8[2].parents == (1,)
    # the output QUANTIZE's tensor is StatefulPartitionedCall_1:0: named after what it quantises
    assert (uint8[-1].name, uint8[-1].extra["tensor"]) == ("tiny_1/fc_1/quantize",
                                                           "StatefulPartitionedCall_1:0")


def test_float16_weights_give_no_rows_and_exact_kernels(built):
    """A float16 model computes its float32 weights with DEQUANTIZE ops: no rows for those."""
    adapter = TFLiteAdapter(built["files"]["fp16"])
    assert [(t.name, t.type) for t in adapter.layers()] == [(r[0], r[1]) for r in TABLE]
    native = np.asarray(built["model"].get_layer("conv1").kernel)
    np.testing.assert_array_equal(adapter.kernels(1), native.astype(np.float16).astype(np.float32)
                                  .transpose(3, 2, 0, 1))


# --------------------------------------------------------------------------- float model


def test_float_every_layer_equals_keras(built, keras_outputs):
    adapter = TFLiteAdapter(built["files"]["float"])
    images = built["images"]
    got, order, out = _collect(adapter, images, range(len(TABLE)))
    assert order == list(range(len(TABLE)))  # execution order, each layer once
    np.testing.assert_array_equal(got[0], images.astype("float32") / 255.0)
    for index, row in enumerate(TABLE[1:], start=1):
        want = keras_outputs[row[4]]
        assert got[index].shape == (len(images), *row[3]) == want.shape
        np.testing.assert_allclose(got[index], want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                   err_msg=row[0])
    np.testing.assert_array_equal(out, got[6])


def test_float_kernels_are_the_keras_kernels(built):
    adapter = TFLiteAdapter(built["files"]["float"])
    model = built["model"]
    conv1 = np.asarray(model.get_layer("conv1").kernel)  # (kh, kw, in, out)
    np.testing.assert_array_equal(adapter.kernels(1), conv1.transpose(3, 2, 0, 1))
    dw = np.asarray(model.get_layer("dw").kernel)  # (kh, kw, in, multiplier)
    want = dw.transpose(2, 3, 0, 1).reshape(8, 1, 3, 3)  # filter c*2 + j: input c, multiplier j
    np.testing.assert_array_equal(adapter.kernels(2), want)
    pw = np.asarray(model.get_layer("pw").kernel)
    np.testing.assert_array_equal(adapter.kernels(4), pw.transpose(3, 2, 0, 1))
    with pytest.raises(UnsupportedModel, match="--layers conv"):
        adapter.kernels(3)


def test_subset_of_layers_and_single_image(built, keras_outputs):
    adapter = TFLiteAdapter(built["files"]["float"])
    got, order, out = _collect(adapter, built["images"][:1], [5, 2])
    assert order == [2, 5] and set(got) == {2, 5}
    np.testing.assert_allclose(got[2], keras_outputs["relu"][:1], rtol=1e-5,
                               atol=1e-5 * np.abs(keras_outputs["relu"]).max())
    assert out.shape == (1, 3)


def test_branches_and_transposed_convolution(built):
    import keras

    adapter = TFLiteAdapter(built["files"]["branchy"])
    table = adapter.layers()
    by_type = {t.type: t for t in table}
    add = by_type["ADD"]
    assert add.kind == "merge" and len(add.parents) == 2
    assert {table[p].type for p in add.parents} == {"CONV_2D"}
    up = by_type["TRANSPOSE_CONV"]
    assert (up.kind, up.output_shape, up.kernel_shape, up.parents) == ("conv", (16, 16, 2), (2, 3, 3, 3),
                                                                       (add.index,))
    native = np.asarray(built["branchy"].get_layer("up").kernel)  # (kh, kw, out, in)
    np.testing.assert_array_equal(adapter.kernels(up.index), native.transpose(2, 3, 0, 1))
    x = np.random.default_rng(5).uniform(size=(1, 8, 8, 2)).astype("float32")
    got, _, out = _collect(adapter, x * 255.0, [add.index, up.index])
    model = built["branchy"]
    ref = keras.Model(model.inputs, [model.get_layer("sum").output, model.output]).predict(x, verbose=0)
    for a, b in zip((got[add.index], got[up.index]), ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


# --------------------------------------------------------------------------- quantised models


@pytest.mark.parametrize("kind", ["int8", "uint8"])
def test_quantised_kernels_within_half_a_step(built, kind):
    adapter = TFLiteAdapter(built["files"][kind])
    interp = _litert(built["files"][kind])
    model = built["model"]
    offset = 1 if kind == "uint8" else 0  # the uint8 model starts with a QUANTIZE row
    checks = [("conv1", 1, np.asarray(model.get_layer("conv1").kernel).transpose(3, 2, 0, 1),
               "tiny_1/conv1_1/convolution"),
              ("dw", 2, np.asarray(model.get_layer("dw").kernel).transpose(2, 3, 0, 1).reshape(8, 1, 3, 3),
               "tiny_1/dw_1/depthwise"),
              ("pw", 4, np.asarray(model.get_layer("pw").kernel).transpose(3, 2, 0, 1),
               "tiny_1/pw_1/convolution")]
    for name, index, want, tensor in checks:
        got = adapter.kernels(index + offset)
        scales = _scales(interp, tensor)
        assert scales.shape == (want.shape[0],), name  # one scale per output channel
        step = scales.reshape(-1, 1, 1, 1)
        assert np.all(np.abs(got - want) <= 0.5 * step + 1e-7), name
        assert np.abs(got - want).max() > 0  # really quantised, not the float weights


@pytest.mark.parametrize("kind", ["int8", "uint8"])
def test_quantised_layers_within_one_rounding(built, kind):
    """Each layer against the float op on the TFLite input of that layer (bound in the module doc)."""

    adapter = TFLiteAdapter(built["files"][kind])
    interp = _litert(built["files"][kind])
    table = adapter.layers()
    model = built["model"]
    got, _, out = _collect(adapter, built["images"], range(len(table)))

    def scale_of(row):
        return float(_scales(interp, row.extra["tensor"])[0])

    def float_op(layer_name, x, kernel=None):
        layer = model.get_layer(layer_name)
        if kernel is None:
            return np.asarray(layer(x))
        clone = layer.__class__.from_config(layer.get_config())
        clone.build(x.shape)
        if layer_name == "dw":  # canonical (C*m, 1, kh, kw) -> Keras (kh, kw, C, m)
            native = kernel.reshape(4, 2, 3, 3).transpose(2, 3, 0, 1)
        else:  # (O, I, kh, kw) -> (kh, kw, I, O)
            native = kernel.transpose(2, 3, 1, 0)
        clone.set_weights([native, np.asarray(layer.bias)])
        return np.asarray(clone(x))

    offset = 1 if kind == "uint8" else 0
    first = 1 + offset
    # the input as the network holds it: the float batch within half an input step
    s_in = scale_of(table[0])
    np.testing.assert_array_less(np.abs(got[0] - built["images"] / 255.0), 0.5 * s_in + 1e-7)
    checked = 0
    for index in range(first, first + 6):
        row = table[index]
        parent = table[row.parents[0]]
        x, y = got[parent.index], got[index]
        s_in, s_out = scale_of(parent), scale_of(row)
        short = TABLE[index - offset][4]
        if row.type == "MAX_POOL_2D":
            np.testing.assert_allclose(y, float_op("pool", x), rtol=0, atol=1e-6)
            checked += 1
            continue
        if row.kind == "conv":
            own = "dw" if short == "relu" else short
            ref = float_op(own, x, adapter.kernels(index))
            s_w = _scales(interp, {"conv1": "tiny_1/conv1_1/convolution", "dw": "tiny_1/dw_1/depthwise",
                                   "pw": "tiny_1/pw_1/convolution"}[own]).max()
            if short == "relu":
                ref = np.maximum(ref, 0)
            bound = 0.5 * s_out + 1.5 * s_in * s_w + 1e-6
        elif row.type == "MEAN":
            ref, bound = float_op("gap", x), s_out + 1e-6  # two roundings (see the module doc)
        else:  # FULLY_CONNECTED with the float weights: add the weights' own rounding
            fc = model.get_layer("fc")
            s_w = _scales(interp, "tiny_1/fc_1/MatMul")  # (3,) per output
            ref = np.asarray(fc(x))
            bound = (0.5 * s_out + 1.5 * s_in * s_w.max()
                     + 0.5 * s_w[None, :] * np.abs(x).sum(-1, keepdims=True) + 1e-6)
        err = np.abs(y - ref)
        assert np.all(err <= bound), (row.name, float(err.max()), float(np.max(bound)))
        checked += 1
    assert checked == 6
    assert out.shape == (len(built["images"]), 3)
    np.testing.assert_array_equal(out, got[len(table) - 1])


def test_uint8_input_is_fed_as_the_pixels(built):
    """unit preprocessing (x/255) quantised with the input's scale ~1/255, zero point 0 is the image."""
    adapter = TFLiteAdapter(built["files"]["uint8"])
    detail = adapter._interp.get_input_details()[0]
    assert detail["dtype"] == np.uint8 and detail["quantization"][1] == 0
    image = built["images"][2]
    adapter.run(image[None].astype("float32") / 255.0, [], lambda i, a: None)
    np.testing.assert_array_equal(adapter._interp.get_tensor(detail["index"])[0], image)


def test_uint8_input_without_a_scale_takes_the_pixel_values(built):
    """No quantisation parameters: the integers are the pixels, so the preset is raw (0..255)."""
    lens = Lens(built["files"]["uint8_cast"])
    assert lens.adapter.preprocess == "raw" and lens.preprocess == "raw"
    image = np.random.default_rng(5).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    maps = lens.feature_maps(image, layers="all")
    conv = [t.name for t in lens.layers() if t.type == "CONV_2D"][0]
    np.testing.assert_array_equal(maps[conv][0, :, :, 0], image.astype(np.float32).sum(axis=2))
    # a float batch between two integers is rounded, not truncated
    adapter = lens.adapter
    adapter.run(np.full((1, 4, 5, 3), 9.7, np.float32), [], lambda i, a: None)
    assert (adapter._interp.get_tensor(adapter._input["index"]) == 10).all()


def test_channels_first_input_is_fed_transposed(built):
    adapter = TFLiteAdapter(built["files"]["nchw"])
    assert adapter.input_shape == (10, 10, 3)
    image = np.random.default_rng(6).uniform(size=(1, 10, 10, 3)).astype("float32")
    conv = adapter.layers()[-1]
    got, _, out = _collect(adapter, image * 255.0, [0, conv.index])
    np.testing.assert_allclose(got[0], image, rtol=1e-6)
    k = built["chw_kernel"]  # (kh, kw, in, out)
    want = np.zeros((1, 8, 8, 2), np.float64)
    for i in range(3):
        for j in range(3):
            want += np.einsum("nhwc,co->nhwo", image[:, i:i + 8, j:j + 8, :], k[i, j])
    np.testing.assert_allclose(got[conv.index], want, rtol=1e-5, atol=1e-5)


def test_free_input_size_runs_at_each_image_size(built):
    """A (1, None, None, 1) input is resized for each image: a 3x3 mean filter, then ReLU."""
    adapter = TFLiteAdapter(built["files"]["any_size"])
    assert adapter.input_shape == (None, None, 1)
    assert adapter.layers()[-1].output_shape == (None, None, 1)
    for h, w in ((5, 7), (9, 4)):
        image = np.random.default_rng(h).uniform(-1, 1, size=(1, h, w, 1)).astype("float32")
        got, _, out = _collect(adapter, image * 255.0, [len(adapter.layers()) - 1])
        padded = np.pad(image[0, :, :, 0], 1)
        want = sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
        np.testing.assert_allclose(out[0, :, :, 0], np.maximum(want, 0), rtol=1e-5, atol=1e-6)
    with pytest.raises(UnsupportedModel, match="does not fit"):
        TFLiteAdapter(built["files"]["float"], input_shape=(8, 8, 3))


def test_free_input_size_with_unpadded_layers_opens_and_runs(built):
    """A 3x3 VALID conv and a 2x2 pool cannot run at the 1x1 LiteRT first allocates for free sizes."""
    adapter = TFLiteAdapter(built["files"]["any_size_valid"])
    assert adapter.input_shape == (None, None, 1)
    assert [t.type for t in adapter.layers()] == ["INPUT", "CONV_2D", "MAX_POOL_2D"]
    np.testing.assert_array_equal(adapter.kernels(1), np.ones((1, 1, 3, 3), np.float32))
    image = np.arange(7 * 9, dtype=np.float32).reshape(1, 7, 9, 1)
    got, _, out = _collect(adapter, image * 255.0, [1])
    sums = sum(image[0, i:i + 5, j:j + 7, 0] for i in range(3) for j in range(3))  # (5, 7)
    np.testing.assert_allclose(got[1][0, :, :, 0], sums, rtol=1e-5)
    # values grow along both axes: each 2x2 window's maximum is its bottom-right corner
    np.testing.assert_allclose(out[0, :, :, 0], sums[1:4:2, 1:6:2], rtol=1e-5)


# --------------------------------------------------------------------------- CLI and Lens


@pytest.fixture(scope="module")
def picture(built) -> Path:
    path = built["dir"] / "probe.png"
    Image.fromarray(built["images"][0]).save(path)
    return path


def _cli(*args):
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in args], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_layers_maps_filters_on_int8(built, picture, tmp_path):
    model = built["files"]["int8"]
    code, out, err = _cli("layers", model)
    assert code == 0 and err == ""
    assert "tiny_1/dw_1" in out and "DEPTHWISE_CONV_2D" in out and "(8, 1, 3, 3)" in out
    code, out, err = _cli("layers", model, "--json")
    assert [r["name"] for r in json.loads(out)] == [r[0] for r in TABLE]

    code, out, err = _cli("maps", model, picture, "--out", tmp_path / "maps", "--numbers")
    assert code == 0, err
    index = json.loads((tmp_path / "maps" / "index.json").read_text())
    assert index["framework"] == "tflite" and index["model"] == "int8"
    assert [e["layer"] for e in index["maps"]] == [r[0] for r in TABLE if r[2] in ("conv", "pool")]
    for e in index["maps"]:
        assert (tmp_path / "maps" / e["file"]).stat().st_size > 100

    code, out, err = _cli("filters", model, "--out", tmp_path / "filters")
    assert code == 0, err
    index = json.loads((tmp_path / "filters" / "index.json").read_text())
    shapes = {(e["layer"], tuple(e["kernel_shape"])) for e in index["filters"]}
    assert shapes == {("tiny_1/conv1_1", (4, 3, 3, 3)), ("tiny_1/dw_1", (8, 1, 3, 3)),
                      ("tiny_1/pw_1", (5, 8, 1, 1))}
    files = {e["file"] for e in index["filters"]}
    assert "filters/002_tiny_1__dw_1_gray.png" in files  # depthwise: one single-input filter per channel
    for f in files:
        assert Image.open(tmp_path / "filters" / f).size[0] > 20


def test_lens_on_uint8_file_gives_float_maps(built):
    lens = Lens(str(built["files"]["uint8"]))
    maps = lens.feature_maps(built["images"][0], layers="conv")
    assert list(maps) == ["tiny_1/conv1_1", "tiny_1/dw_1", "tiny_1/pw_1"]
    assert all(a.dtype == np.float32 for a in maps.values())
    assert maps["dw_1"].shape == (1, 6, 6, 8) and maps["dw_1"].min() >= 0  # the fused ReLU
    assert isinstance(open_model(str(built["files"]["uint8"])), TFLiteAdapter)


# --------------------------------------------------------------------------- bad input


def _one_line(code, out, err, *needles):
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convlens: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped", "empty"])
def test_corrupt_files_are_bad_models(built, tmp_path, picture, damage):
    data = built["files"]["int8"].read_bytes()
    bad = {"truncated": data[: len(data) // 2], "garbage": bytes(range(256)) * 8,
           "flipped": data[:8] + bytes(b ^ 0x5A for b in data[8:200]) + data[200:], "empty": b""}[damage]
    path = tmp_path / f"{damage}.tflite"
    path.write_bytes(bad)
    with pytest.raises(BadModel, match="tflite|TFLite"):
        TFLiteAdapter(path)
    _one_line(*_cli("maps", path, picture, "--out", tmp_path / "out"), path.name)
    assert not (tmp_path / "out").exists()


def _bad_tensor_index(data: bytes) -> bytes:
    """A valid flatbuffer whose second operator writes to tensor 987654 (LiteRT fails in C++)."""
    import struct

    from ai_edge_litert import schema_py_generated as schema

    op = schema.Model.GetRootAs(data, 0).Subgraphs(0).Operators(1)
    pos = op._tab.Vector(op._tab.Offset(8))  # field 2 of Operator: its outputs vector
    out = bytearray(data)
    struct.pack_into("<i", out, pos, 987654)
    return bytes(out)


@pytest.mark.parametrize("damage", ["cut", "bad_index"])
def test_corrupt_file_in_a_real_process_prints_one_line(built, tmp_path, damage):
    """LiteRT's C++ error reporter must not reach the terminal: only our line on stderr."""
    path = tmp_path / f"{damage}.tflite"
    data = built["files"]["float"].read_bytes()
    path.write_bytes(data[:1500] if damage == "cut" else _bad_tensor_index(data))
    proc = subprocess.run([sys.executable, "-m", "convlens", "filters", str(path),
                           "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("convlens: error: cannot read TFLite model")
    assert proc.stderr.count("\n") == 1
    if damage == "bad_index":
        assert "Invalid tensor index 987654" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_several_inputs_are_named(built, tmp_path, picture):
    with pytest.raises(UnsupportedModel) as err:
        TFLiteAdapter(built["files"]["two_inputs"])
    text = str(err.value)
    assert "2 inputs" in text and "image" in text and "meta" in text and "(1, 8, 8, 3)" in text
    assert "only the image" in text
    _one_line(*_cli("maps", built["files"]["two_inputs"], picture, "--out", tmp_path / "o"), "2 inputs")
    assert not (tmp_path / "o").exists()


def test_non_image_inputs(built, tmp_path, picture):
    with pytest.raises(UnsupportedModel, match="int32 input .*not an image"):
        TFLiteAdapter(built["files"]["ids"])
    # a float vector model has a table, but no feature maps of images
    lens = Lens(str(built["files"]["vector"]))
    assert lens.input_shape == (5,)
    assert [t.kind for t in lens.layers()][0] == "input"
    _one_line(*_cli("maps", built["files"]["vector"], picture, "--layers", "all", "--out", tmp_path / "o"),
              "not images")
    assert not (tmp_path / "o").exists()


def test_tensorflow_ops_are_unsupported_not_corrupt(built):
    with pytest.raises(UnsupportedModel, match="builtin ops only") as err:
        TFLiteAdapter(built["files"]["flex"])
    assert "Select TensorFlow op" in str(err.value)


def test_missing_file_and_missing_litert(built, monkeypatch, tmp_path):
    with pytest.raises(BadModel, match="not found"):
        TFLiteAdapter(tmp_path / "nope.tflite")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(MissingDependency, match=r"pip install 'convlens\[tflite\]'"):
        TFLiteAdapter(built["files"]["float"])
