"""The Keras adapter on real Keras 3 models; runs once per Keras backend (marker ``keras``)."""

from __future__ import annotations

import numpy as np
import pytest

from convlens import BadModel, Lens, UnsafeModel, UnsupportedModel, WeightsUnavailable
from convlens.adapters.keras import KerasAdapter
from convlens.selection import select_indexes

pytestmark = pytest.mark.keras

SEED000 = [
    ("conv2d", (148, 148, 8)), ("max_pooling2d", (74, 74, 8)), ("conv2d_1", (72, 72, 16)),
    ("max_pooling2d_1", (36, 36, 16)), ("conv2d_2", (34, 34, 32)), ("max_pooling2d_2", (17, 17, 32)),
    ("flatten", (9248,)), ("dense", (1024,)), ("dense_1", (512,)), ("dense_2", (3,)),
]


def seed000_model(keras):
    """The tutorial seed 000's model, with its layer names."""
    L = keras.layers
    return keras.Sequential([
        keras.Input((150, 150, 3)),
        L.Conv2D(8, (3, 3), activation="relu", name="conv2d"), L.MaxPooling2D(2, 2, name="max_pooling2d"),
        L.Conv2D(16, (3, 3), activation="relu", name="conv2d_1"), L.MaxPooling2D(2, 2, name="max_pooling2d_1"),
        L.Conv2D(32, (3, 3), activation="relu", name="conv2d_2"), L.MaxPooling2D(2, 2, name="max_pooling2d_2"),
        L.Flatten(name="flatten"), L.Dense(1024, activation="relu", name="dense"),
        L.Dense(512, activation="relu", name="dense_1"), L.Dense(3, activation="softmax", name="dense_2"),
    ])


@pytest.fixture(scope="module")
def vgg16(keras):
    return keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))


def test_seed000_layer_names_and_shapes(keras):
    table = Lens(seed000_model(keras)).layers()
    assert [(t.name, t.output_shape) for t in table[1:]] == SEED000
    assert table[0].kind == "input" and table[0].output_shape == (150, 150, 3)
    conv = table[1]
    assert conv.params == 3 * 3 * 3 * 8 + 8
    assert conv.kernel_shape == (8, 3, 3, 3)
    assert (conv.rf_size, conv.rf_jump) == ((3, 3), (1, 1))
    # pool 2/2 after a 3x3 conv: 3 + (2-1)*1 = 4, jump 2; then 3x3 conv: 4 + 2*2 = 8
    assert (table[2].rf_size, table[2].rf_jump) == ((4, 4), (2, 2))
    assert (table[3].rf_size, table[3].rf_jump) == ((8, 8), (2, 2))
    assert table[7].global_rf and table[7].rf_size is None


def test_seed000_feature_maps_match_a_multi_output_model(keras):
    model = seed000_model(keras)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (150, 150, 3)).astype("uint8")
    maps = Lens(model).feature_maps(image, layers="all")
    assert [(k, v.shape[1:]) for k, v in maps.items()] == SEED000
    reference = keras.Model(model.inputs, [model.get_layer(n).output for n, _ in SEED000])
    expected = reference.predict(image[None].astype("float32") / 255.0, verbose=0)
    for (name, _), want in zip(SEED000, expected):
        np.testing.assert_allclose(maps[name], keras.ops.convert_to_numpy(want), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps.output, maps["dense_2"], rtol=1e-6)


def test_vgg16_filters_maps_and_blocks(keras, vgg16):
    lens = Lens(vgg16)
    native = keras.ops.convert_to_numpy(vgg16.get_layer("block1_conv1").kernel)
    assert native.shape == (3, 3, 3, 64)
    kernels = lens.filters("block1_conv1")["block1_conv1"]
    assert kernels.shape == (64, 3, 3, 3)  # canonical (O, I, kh, kw)
    np.testing.assert_array_equal(kernels, native.transpose(3, 2, 0, 1))
    assert select_indexes(lens.layers(), "blocks") == [2, 5, 9, 13, 17]
    maps = lens.feature_maps(np.zeros((224, 224, 3), "uint8") + 100, layers="block1_conv1")
    assert maps["block1_conv1"].shape == (1, 224, 224, 64)
    table = lens.layers()
    assert (table[17].name, table[17].rf_size, table[17].rf_jump) == ("block5_conv3", (196, 196), (16, 16))
    assert (table[18].rf_size, table[18].rf_jump) == ((212, 212), (32, 32))


def test_nested_model_reaches_inner_layers(keras):
    inner = keras.applications.VGG16(weights=None, include_top=False, input_shape=(64, 64, 3))
    outer = keras.Sequential([keras.Input((64, 64, 3)), inner, keras.layers.Flatten(),
                              keras.layers.Dense(2, name="head")])
    lens = Lens(outer)
    names = [t.name for t in lens.layers()]
    assert "vgg16/block3_conv2" in names and names[-1] == "head"
    assert [names[i] for i in select_indexes(lens.layers(), "blocks")] == [
        f"vgg16/block{b}_conv{c}" for b, c in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))]
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3)).astype("uint8")
    maps = lens.feature_maps(image, layers="block3_conv2,head")  # short name of a nested layer
    probe = keras.Model(inner.inputs, inner.get_layer("block3_conv2").output)
    want = keras.ops.convert_to_numpy(probe(image[None].astype("float32") / 255.0))
    np.testing.assert_allclose(maps["vgg16/block3_conv2"], want, rtol=1e-4, atol=1e-5)
    assert maps["head"].shape == (1, 2)
    # the inner model's first conv is fed by the outer input
    assert lens.layers()[names.index("vgg16/block1_conv1")].parents == (0,)


def _subclassed(keras):
    L = keras.layers

    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.c1 = L.Conv2D(4, 3, name="c1")
            self.block = keras.Sequential([L.Conv2D(6, 3, strides=2, name="c2"), L.ReLU(name="r2")],
                                          name="block")
            self.gap = L.GlobalAveragePooling2D(name="gap")
            self.out = L.Dense(2, name="out")

        def call(self, x):
            return self.out(self.gap(self.block(self.c1(x))))

    return Net()


def test_subclassed_model_needs_then_uses_input_shape(keras):
    with pytest.raises(UnsupportedModel, match="--input-shape"):
        Lens(_subclassed(keras))
    net = _subclassed(keras)
    lens = Lens(net, input_shape=(16, 16, 3))
    table = lens.layers()
    assert [(t.name, t.output_shape) for t in table] == [
        ("input", (16, 16, 3)), ("c1", (14, 14, 4)), ("block/c2", (6, 6, 6)), ("block/r2", (6, 6, 6)),
        ("gap", (6,)), ("out", (2,))]
    assert table[2].parents == (1,) and table[2].rf_jump == (2, 2) and table[2].rf_size == (5, 5)
    image = np.random.default_rng(2).random((16, 16, 3)).astype("float32")
    maps = lens.feature_maps(image, layers="c1,r2")  # floats in 0..1 are scaled to 0..255, unit undoes it
    want = keras.ops.convert_to_numpy(net.c1(image[None]))
    np.testing.assert_allclose(maps["c1"], want, rtol=1e-5, atol=1e-6)
    assert maps["block/r2"].min() >= 0


def test_unbuilt_sequential(keras):
    L = keras.layers
    model = keras.Sequential([L.Conv2D(4, 3, name="conv"), L.Flatten(name="flat")])
    with pytest.raises(UnsupportedModel, match="input-shape"):
        Lens(model)
    lens = Lens(model, input_shape=(10, 10, 1))
    assert [(t.name, t.output_shape) for t in lens.layers()[1:]] == [("conv", (8, 8, 4)), ("flat", (256,))]


def test_wrappers_removed_even_when_the_pass_fails(keras):
    model = seed000_model(keras)
    adapter = KerasAdapter(model)
    adapter.layers()

    def boom(index, array):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        adapter.run(np.zeros((1, 150, 150, 3), "float32"), [1, 3], boom)
    assert all("call" not in vars(layer) for layer in model.layers)
    got = []
    adapter.run(np.zeros((1, 150, 150, 3), "float32"), [3], lambda i, a: got.append(i))
    assert got == [3]


def test_legacy_h5_from_tf_keras2(keras, fixtures):
    path = fixtures / "legacy_tfkeras2.h5"
    lens = Lens(path)
    assert [(t.name, t.output_shape) for t in lens.layers()[1:]] == SEED000
    x = (((np.arange(150 * 150 * 3) * 7919) % 251).astype("float32") / 250).reshape(1, 150, 150, 3)
    expected = np.load(fixtures / "legacy_tfkeras2_expected.npy")  # computed by tf.keras 2 itself
    out = lens.adapter.run(x.astype("float32"), [], lambda i, a: None)
    np.testing.assert_allclose(out, expected.reshape(out.shape), rtol=1e-4, atol=1e-6)


def test_lambda_layers_need_trust(keras, fixtures, tmp_path):
    path = fixtures / "legacy_tfkeras2_lambda.h5"
    with pytest.raises(UnsafeModel, match="--trust"):
        Lens(path)
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, L.Lambda(lambda t: t * 2.0)(L.Conv2D(2, 3)(inp)))
    saved = tmp_path / "lambda.keras"
    model.save(saved)
    with pytest.raises(UnsafeModel, match="--trust"):
        Lens(saved)
    assert Lens(saved, trust=True).layers()[-1].type == "Lambda"


def test_keras_file_roundtrip_and_bad_files(keras, tmp_path):
    model = seed000_model(keras)
    good = tmp_path / "m.keras"
    model.save(good)
    assert [t.name for t in Lens(good).layers()[1:]] == [n for n, _ in SEED000]
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(BadModel, match="corrupt.keras"):
        Lens(corrupt)
    text = tmp_path / "notes.h5"
    text.write_text("not a model")
    with pytest.raises(BadModel, match="not an HDF5 file"):
        Lens(text)
    with pytest.raises(BadModel, match="not found"):
        Lens(tmp_path / "missing.keras")
    with pytest.raises(BadModel, match="vgg16"):
        Lens("vgg61")


def test_model_without_conv_layers(keras):
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    lens = Lens(model)
    with pytest.raises(UnsupportedModel, match="--layers"):
        lens.feature_maps(np.zeros((4, 4), "uint8"))
    with pytest.raises(UnsupportedModel, match="conv"):
        lens.filters()


def test_multi_input_model_explains_its_first_image_and_holds_the_other(keras):
    # several inputs are no longer refused (tests/adapters/test_keras_inputs.py checks the numbers)
    a, b = keras.Input((8, 8, 3), name="rgb"), keras.Input((8, 8, 1), name="depth")
    x = keras.layers.Concatenate()([a, b])
    model = keras.Model([a, b], keras.layers.Conv2D(2, 3)(x))
    lens = Lens(model)
    assert lens.layers()[0].name == "rgb" and lens.model.adapter.input_shape == (8, 8, 3)
    assert any("held at zeros: depth (8, 8, 1) float32" in n for n in lens.model.input_notes)


def test_zoo_weights(keras, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    from convlens.adapters import keras as kadapter

    def offline(*args, **kwargs):  # what get_file raises when the download cannot happen
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.vgg16.file_utils.get_file", offline)
    with pytest.raises(WeightsUnavailable, match="--weights none"):
        kadapter.load_zoo_model("vgg16", weights="imagenet", input_shape=(32, 32, 3))
    model, preset = kadapter.load_zoo_model("vgg16", weights="none", input_shape=(32, 32, 3))
    assert preset == "caffe" and model.name == "vgg16"
    weights = tmp_path / "vgg.weights.h5"
    model.save_weights(weights)
    again, _ = kadapter.load_zoo_model("vgg16", weights=str(weights), input_shape=(32, 32, 3))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again.layers[1].kernel),
                                  keras.ops.convert_to_numpy(model.layers[1].kernel))
    with pytest.raises(WeightsUnavailable, match="not found"):
        kadapter.load_zoo_model("vgg16", weights=str(tmp_path / "nope.h5"))


def test_depthwise_separable_transpose_and_conv1d_kernels(keras):
    L = keras.layers
    inp = keras.Input((12, 12, 3))
    x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(inp)
    x = L.SeparableConv2D(5, 3, name="sep")(x)
    x = L.Conv2DTranspose(4, 3, strides=2, name="tr")(x)
    model = keras.Model(inp, x)
    lens = Lens(model)
    k = lens.filters("dw,sep,tr")
    dw = keras.ops.convert_to_numpy(model.get_layer("dw").kernel)  # (3, 3, 3, 2)
    assert k["dw"].shape == (6, 1, 3, 3)
    np.testing.assert_array_equal(k["dw"][1, 0], dw[:, :, 0, 1])  # input 0, multiplier 1
    assert k["sep"].shape == (6, 1, 3, 3)
    assert k["tr"].shape == (4, 5, 3, 3)  # (kh, kw, out, in) -> (out, in, kh, kw)
    np.testing.assert_array_equal(k["tr"][3, 2], keras.ops.convert_to_numpy(model.get_layer("tr").kernel)[:, :, 3, 2])
    seq = keras.Sequential([keras.Input((20, 2)), L.Conv1D(3, 5, name="c1d")])
    k1 = Lens(seq, preprocess="raw").adapter.kernels(1)
    native = keras.ops.convert_to_numpy(seq.layers[0].kernel)  # (5, 2, 3)
    assert k1.shape == (3, 2, 1, 5)
    np.testing.assert_array_equal(k1[2, 1, 0], native[:, 1, 2])


def test_channels_first_model_is_turned_channels_last(keras):
    L = keras.layers
    model = keras.Sequential([keras.Input((3, 12, 10)),
                              L.Conv2D(4, 3, data_format="channels_first", name="c"),
                              L.MaxPooling2D(2, data_format="channels_first", name="p")])
    lens = Lens(model, preprocess="raw")
    assert lens.input_shape == (12, 10, 3)
    assert [(t.name, t.output_shape) for t in lens.layers()] == [
        (lens.layers()[0].name, (12, 10, 3)), ("c", (10, 8, 4)), ("p", (5, 4, 4))]
    if keras.backend.backend() == "torch":  # TensorFlow's CPU kernels have no NCHW convolution
        image = np.random.default_rng(4).integers(0, 256, (12, 10, 3)).astype("uint8")
        maps = lens.feature_maps(image, layers="c")
        want = keras.ops.convert_to_numpy(model.layers[0](image.transpose(2, 0, 1)[None].astype("float32")))
        np.testing.assert_allclose(maps["c"][0], want[0].transpose(1, 2, 0), rtol=1e-5, atol=1e-4)


def test_repeated_passes_agree_whichever_way_they_run(keras):
    """TensorFlow traces a graph from the second pass on; outputs must not change, wrappers must not stay."""
    model = seed000_model(keras)
    adapter = KerasAdapter(model)
    x = np.random.default_rng(5).random((1, 150, 150, 3)).astype("float32")
    wanted = [1, 4, 6, 10]
    runs = []
    for _ in range(3):
        got: dict[int, np.ndarray] = {}
        y = adapter.run(x, wanted, lambda i, a: got.__setitem__(i, a))
        runs.append((got, y))
        assert all("call" not in vars(layer) for layer in model.layers)
    assert len(adapter._graphs) == (1 if keras.backend.backend() == "tensorflow" else 0)
    for got, y in runs[1:]:
        assert list(got) == wanted
        for i in wanted:
            np.testing.assert_allclose(got[i], runs[0][0][i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(y, runs[0][1], rtol=1e-5, atol=1e-7)
    small = KerasAdapter(model)
    small.GRAPH_BUDGET = 0  # over budget: always the eager, streaming pass
    for _ in range(3):
        small.run(x, wanted, lambda i, a: None)
    assert small._graphs == {}


def test_a_model_tensorflow_cannot_trace_stays_eager(keras):
    """A layer name TensorFlow rejects as a name scope: repeated passes fall back to the eager pass."""
    L = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(2, 3, name="<img src=x onerror=alert(1)>"),
                              L.Flatten(name="flat")])
    adapter = KerasAdapter(model)
    x = np.random.default_rng(1).random((1, 8, 8, 1)).astype("float32")
    outs = []
    for _ in range(3):
        got: dict[int, np.ndarray] = {}
        adapter.run(x, [1, 2], lambda i, a: got.__setitem__(i, a))
        outs.append(got)
        assert all("call" not in vars(layer) for layer in model.layers)
    for got in outs[1:]:
        assert sorted(got) == [1, 2]
        np.testing.assert_allclose(got[1], outs[0][1], rtol=1e-6)
    # TensorFlow tried to trace once, failed, and remembers to stay eager; other backends never trace
    assert list(adapter._graphs.values()) == ([None] if keras.backend.backend() == "tensorflow" else [])


def test_a_trace_that_fails_leaves_keras_able_to_name_the_next_model_s_variables(keras):
    """Keras pushes a layer's name scope before TensorFlow rejects it while tracing: the failed trace
    left "<img src=x ...>" open, and training another model then failed ("... is not a valid scope name")."""
    L = keras.layers
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="<img src=x onerror=alert(1)>")(inp)
    evil = keras.Model(inp, L.Dense(3, name="logits")(L.GlobalAveragePooling2D()(h)))
    lens = Lens(evil)
    x = np.random.default_rng(0).random((8, 8, 3)).astype("float32") * 255
    for _ in range(2):  # the second pass traces the forward graph
        lens.adapter.run(x[None] / 255, [1, 2], lambda i, a: None)
    for method in ("gradcam", "saliency", "saliency"):  # the gradient passes trace too
        lens.heatmaps(x, method)
    model = keras.Sequential([keras.Input((4,)), L.Dense(2, name="d")], name="after")
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)  # raised ValueError on the leaked scope
    assert model.get_layer("d").kernel.path == "after/d/kernel"


def test_kernels_in_every_keras_layout_are_the_weights_moved_to_o_i_kh_kw(keras):
    """kernels() transposes in the backend; the values are the layer's weights, only moved."""
    L = keras.layers
    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 12, 3))
    h = L.Conv2D(4, 3, name="conv")(inp)
    h = L.DepthwiseConv2D(3, depth_multiplier=2, name="depthwise")(h)
    h = L.Conv2DTranspose(5, 3, name="transpose")(h)
    h = L.Reshape((10 * 10, 5))(h)
    h = L.Conv1D(6, 3, name="conv1d")(h)
    model = keras.Model(inp, h)
    lens = Lens(model)
    rows = {info.name: info for info in lens.layers()}
    w = {name: np.asarray(model.get_layer(name).get_weights()[0]) for name in rows if name in
         ("conv", "depthwise", "transpose", "conv1d")}
    expected = {
        "conv": w["conv"].transpose(3, 2, 0, 1),  # (kh, kw, in, out)
        "depthwise": w["depthwise"].transpose(2, 3, 0, 1).reshape(8, 1, 3, 3),  # (kh, kw, in, mult)
        "transpose": w["transpose"].transpose(2, 3, 0, 1),  # (kh, kw, out, in)
        "conv1d": w["conv1d"].transpose(2, 1, 0)[:, :, None, :],  # (k, in, out)
    }
    for name, want in expected.items():
        got = lens.adapter.kernels(rows[name].index)
        assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable, name
        assert got.shape == rows[name].kernel_shape == want.shape, name
        assert np.array_equal(got, want), name  # a transposition moves values: exactly equal
