"""Keras models with several inputs (issue 19): the image input explained, the others held fixed.

Runs once per Keras backend (marker ``keras``; the gradient tests also ``gradients``, so they run on
JAX too). The models are the ones of ``tests/two_input_models.py`` built in Keras (channels last,
weights transposed from the PyTorch layout), so every number is checked against that module's numpy
reference and against PyTorch's autograd on the same weights and the same held values.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens import Lens
from convlens._errors import BadArgument
from convlens.adapters import open_model
from convlens.adapters.base import Target
from convlens.adapters.keras import KerasAdapter
from convlens.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from two_input_models import (  # noqa: E402
    siamese_reference,
    siamese_weights,
    torch_two_input,
    two_input_reference,
    two_input_weights,
)

pytestmark = pytest.mark.keras

VECTOR = np.array([0.5, -1.5, 2.0, 0.25], np.float32)


def keras_two_input(seed: int = 0, *, as_dict: bool = False):
    """The image + vector model of ``two_input_models`` in Keras: inputs ``image`` (16, 16, 3) and
    ``vector`` (4,), a list (or, ``as_dict``, a dict keyed ``img``/``vec``: the InputLayer names stay
    ``image``/``vector``), with :func:`two_input_weights` ``(seed)`` transposed to Keras's layout."""
    import keras

    L = keras.layers
    w = two_input_weights(seed)
    image = keras.Input((16, 16, 3), name="image")
    vector = keras.Input((4,), name="vector")
    conv1, dense = L.Conv2D(4, 3, padding="same", name="conv1"), L.Dense(4, name="dense")
    conv2, fc = L.Conv2D(6, 3, padding="same", name="conv2"), L.Dense(3, name="fc")
    bias = L.Reshape((1, 1, 4), name="bias")(dense(vector))  # a per-channel bias, broadcast over H, W
    h = L.ReLU(name="relu1")(L.Add(name="add")([conv1(image), bias]))
    h = L.ReLU(name="relu2")(conv2(h))
    y = fc(L.GlobalAveragePooling2D(name="pool")(h))
    model = keras.Model({"img": image, "vec": vector} if as_dict else [image, vector], y, name="two_input")
    conv1.set_weights([w["conv1.weight"].transpose(2, 3, 1, 0), w["conv1.bias"]])
    conv2.set_weights([w["conv2.weight"].transpose(2, 3, 1, 0), w["conv2.bias"]])
    dense.set_weights([w["dense.weight"].T, w["dense.bias"]])
    fc.set_weights([w["fc.weight"].T, w["fc.bias"]])
    return model


def keras_siamese(seed: int = 0):
    """The Siamese model of ``two_input_models`` in Keras: inputs ``left`` and ``right`` (16, 16, 3)."""
    import keras

    L = keras.layers
    w = siamese_weights(seed)
    left, right = keras.Input((16, 16, 3), name="left"), keras.Input((16, 16, 3), name="right")
    lconv = L.Conv2D(4, 3, padding="same", name="left_conv")
    rconv = L.Conv2D(4, 3, padding="same", name="right_conv")
    conv, fc = L.Conv2D(6, 3, padding="same", name="conv"), L.Dense(3, name="fc")
    a = L.ReLU(name="left_relu")(lconv(left))
    b = L.ReLU(name="right_relu")(rconv(right))
    h = L.ReLU(name="relu")(conv(L.Concatenate(name="cat")([a, b])))
    model = keras.Model([left, right], fc(L.GlobalAveragePooling2D(name="pool")(h)), name="siamese")
    for layer, key in ((lconv, "left_conv"), (rconv, "right_conv"), (conv, "conv")):
        layer.set_weights([w[f"{key}.weight"].transpose(2, 3, 1, 0), w[f"{key}.bias"]])
    fc.set_weights([w["fc.weight"].T, w["fc.bias"]])
    return model


def _images(n: int = 1, seed: int = 0) -> np.ndarray:
    """``n`` random uint8 pictures (16, 16, 3); with the ``unit`` preset the network sees :func:`_seen`."""
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3)).astype(np.uint8)


def _seen(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255)


def _chw(x: np.ndarray) -> np.ndarray:
    """Pictures as the PyTorch reference takes them: what the network sees, channels first."""
    return _seen(x).transpose(0, 3, 1, 2) if x.dtype == np.uint8 else x.transpose(0, 3, 1, 2)


def _close(a: np.ndarray, b: np.ndarray, tol: float = 1e-4) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(float(np.abs(b).max()), 1e-12)
    assert float(np.abs(a - b).max()) <= tol * scale, float(np.abs(a - b).max()) / scale


# --------------------------------------------------------------------------- the table and the maps


@pytest.mark.filterwarnings("ignore:When providing `inputs` as a dict")  # the dict keys differ on purpose
@pytest.mark.parametrize("as_dict", [False, True])
def test_row_0_is_the_image_and_held_rows_draw_no_image_maps(keras, as_dict):
    adapter = KerasAdapter(keras_two_input(as_dict=as_dict), inputs={"vector": VECTOR})
    assert adapter.input_name == "image" and adapter.input_shape == (16, 16, 3)
    held = adapter.held_inputs
    assert held is not None and [s.describe() for s in held.slots] == ["image (16, 16, 3) float32",
                                                                        "vector (4,) float32"]
    table = {t.name: t for t in adapter.layers()}
    rows = adapter.layers()
    assert rows[0].name == "image" and rows[0].kind == "input" and rows[0].output_shape == (16, 16, 3)
    vector = table["vector"]
    assert vector.kind == "input" and vector.index > 0 and vector.extra["held"]
    assert table["dense"].extra["held"] and table["bias"].extra["held"]
    assert table["dense"].rf_size is None and not table["dense"].global_rf
    # the bias changes the values, not where they come from: receptive fields follow the image alone
    assert table["add"].parents == (table["conv1"].index,)
    assert table["add"].extra["held_parents"] == (table["bias"].index,)
    assert table["add"].rf_size == (3, 3) and table["conv2"].rf_size == (5, 5)
    lens = Lens(adapter, preprocess="unit")
    assert list(lens.feature_maps(_images()[0])) == ["conv1", "conv2", "pool"]  # the default selection
    assert "vector" not in lens.feature_maps(_images()[0], layers="all")


def test_maps_follow_the_held_vector_and_equal_the_reference_and_keras_itself(keras):
    model = keras_two_input()
    x = _images(2)
    other = np.array([-1.0, 0.0, 3.0, -0.5], np.float32)
    maps = [Lens(model, inputs={"vector": v}, preprocess="unit").feature_maps(list(x), layers="all")
            for v in (VECTOR, other)]
    _close(maps[0]["conv1"], maps[1]["conv1"])  # before the vector enters: the same
    assert np.abs(maps[0]["relu1"] - maps[1]["relu1"]).max() > 0.1
    for v, got in zip((VECTOR, other), maps):
        ref = two_input_reference(two_input_weights(0), _chw(x), np.repeat(v[None], 2, 0))
        for name in ("conv1", "relu1", "conv2", "relu2"):
            _close(got[name], ref[name].transpose(0, 2, 3, 1))
        _close(got["dense"], ref["dense"])
        _close(got["fc"], ref["fc"])
    names = ["conv1", "relu1", "conv2", "relu2", "fc"]
    own = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    expected = own.predict([_seen(x), np.repeat(other[None], 2, 0)], verbose=0)
    for name, want in zip(names, expected):
        _close(maps[1][name], want)


def test_an_input_left_out_is_held_at_zeros_with_a_note(keras):
    lens = Lens(keras_two_input(), preprocess="unit")
    assert lens.model.held_inputs.values["vector"].tolist() == [0, 0, 0, 0]
    maps = lens.feature_maps(_images()[0], layers="relu2")
    assert any("held at zeros: vector (4,) float32" in n for n in maps.notes)
    ref = two_input_reference(two_input_weights(0), _chw(_images()), np.zeros((1, 4)))
    _close(maps["relu2"], ref["relu2"].transpose(0, 2, 3, 1))


def test_bad_inputs_are_argument_errors(keras):
    model = keras_two_input()
    with pytest.raises(BadArgument, match="has no such input; its inputs are image"):
        KerasAdapter(model, inputs={"vec": VECTOR})  # a dict's key is not the input's name
    with pytest.raises(BadArgument, match=r"has shape \(3,\)"):
        KerasAdapter(model, inputs={"vector": VECTOR[:3]})
    with pytest.raises(BadArgument, match="is the image input"):
        open_model(model, inputs={"image": _images()[0]})


def test_the_image_input_can_be_the_second_of_two_images(keras):
    model = keras_siamese()
    first = Lens(model, preprocess="unit")
    assert first.model.adapter.input_name == "left"
    assert any("takes 2 image inputs (left, right); left is explained" in n for n in first.model.input_notes)
    left = _seen(_images(1, seed=5))  # a held input is fed as given: no preprocessing
    lens = Lens(model, image_input="right", inputs={"left": left[0]}, preprocess="unit")
    adapter = lens.model.adapter
    table = {t.name: t for t in adapter.layers()}
    assert adapter.layers()[0].name == "right" and table["left"].extra["held"]
    assert table["left_conv"].extra["held"] and table["left_conv"].rf_size is None
    assert table["right_conv"].rf_size == (3, 3) and table["conv"].rf_size == (5, 5)
    x = _images(1)
    maps = lens.feature_maps(x[0], layers="right_relu,relu,left_relu")
    ref = siamese_reference(siamese_weights(0), _chw(left), _chw(x))
    for name in ("right_relu", "relu", "left_relu"):
        _close(maps[name], ref[name].transpose(0, 2, 3, 1))


def test_repeated_passes_feed_the_held_values_at_every_batch_size(keras):
    adapter = KerasAdapter(keras_two_input(), inputs={"vector": VECTOR})
    rows = {t.name: t.index for t in adapter.layers()}
    wanted = [rows["vector"], rows["relu1"], rows["relu2"]]
    for n in (2, 2, 1, 2, 1):  # from the second pass of a shape, TensorFlow runs a traced graph
        x = _seen(_images(n, seed=n))
        seen: dict = {}
        y = adapter.run(x, wanted, seen.__setitem__)
        ref = two_input_reference(two_input_weights(0), _chw(x), np.repeat(VECTOR[None], n, 0))
        _close(seen[rows["relu1"]], ref["relu1"].transpose(0, 2, 3, 1))
        _close(seen[rows["relu2"]], ref["relu2"].transpose(0, 2, 3, 1))
        _close(y, ref["fc"])
        assert seen[rows["vector"]].tolist() == np.repeat(VECTOR[None], n, 0).tolist()  # the held row: its value


def test_a_layer_shared_by_both_images_is_the_image_side_call(keras):
    """A Siamese tower shared by both inputs (one Conv2D object, a nested model called twice): its row is
    the call on the image input, wherever that input is, so its maps and Grad-CAM are the image's."""
    L = keras.layers
    left, right = keras.Input((8, 8, 3), name="left"), keras.Input((8, 8, 3), name="right")
    conv = L.Conv2D(4, 3, padding="same", name="shared")
    inner = keras.Input((8, 8, 4))
    tower = keras.Model(inner, L.ReLU(name="relu")(L.Conv2D(4, 3, padding="same", name="deep")(inner)),
                        name="tower")
    h = L.Add(name="add")([tower(conv(left)), tower(conv(right))])  # symmetric in left and right
    model = keras.Model([left, right], L.Dense(2, name="fc")(L.GlobalAveragePooling2D(name="pool")(h)))
    x = _images(2, seed=3)[:, :8, :8]
    other = _seen(_images(1, seed=4)[:, :8, :8])[0]
    seen = {}
    for side, held in (("right", "left"), ("left", "right")):
        lens = Lens(model, image_input=side, inputs={held: other}, preprocess="unit")
        table = {t.name: t for t in lens.layers()}
        assert not table["shared"].extra.get("held") and table["shared"].rf_size == (3, 3)
        assert table["tower/deep"].rf_size == (5, 5) and not table["add"].extra.get("held")
        maps = lens.feature_maps(list(x), layers="shared,tower/relu")
        _close(maps["shared"], keras.ops.convert_to_numpy(conv(_seen(x))))  # the image's call, not the held one's
        seen[side] = lens.heatmaps(list(x), "gradcam", layer="tower/relu", target=1).results["gradcam"][0].raw
    assert np.abs(seen["left"]).max() > 0
    _close(seen["right"], seen["left"])  # the model is symmetric: either side explained alike


# --------------------------------------------------------------------------- gradients


def _torch_reference(x: np.ndarray, vector: np.ndarray, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's own autograd on the same weights and held vector: Grad-CAM of ``conv2`` before its ReLU
    ``(N, H, W)``, and the input gradient ``(N, H, W, C)`` of logit ``cls``."""
    import torch

    net = torch_two_input(0)
    xt = torch.tensor(_chw(x)).requires_grad_()
    acts: list = []
    handle = net.conv2.register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        y = net(xt, torch.tensor(np.repeat(vector[None], len(x), 0)))
    finally:
        handle.remove()
    g_a, g_x = torch.autograd.grad(y[:, cls].sum(), [acts[0], xt])
    cam = (g_a.mean(dim=(2, 3), keepdim=True) * acts[0]).sum(dim=1)
    return cam.detach().numpy(), g_x.numpy().transpose(0, 2, 3, 1)


@pytest.mark.gradients
def test_gradcam_and_saliency_equal_torch_autograd_on_the_same_held_vector(keras):
    x = _images(2)
    lens = Lens(keras_two_input(), inputs={"vector": VECTOR}, preprocess="unit")
    heat = lens.heatmaps(list(x), "gradcam,saliency", layer="conv2", target=1)
    cam, sal = heat.results["gradcam"][0], heat.results["saliency"][0]
    want_cam, want_grad = _torch_reference(np.stack(heat.inputs), VECTOR, 1)
    for i in range(2):
        _close(cam.raw[i], want_cam[i])
        _close(sal.raw[i], np.abs(want_grad[i]))  # saliency: the gradient's magnitude
    # the vector matters to the gradients too: zeros give another map
    zero = Lens(keras_two_input(), preprocess="unit").heatmaps(list(x), "gradcam", layer="conv2", target=1)
    zero_cam = zero.results["gradcam"][0].raw
    _close(zero_cam, _torch_reference(np.stack(heat.inputs), np.zeros(4, np.float32), 1)[0])
    assert np.abs(zero_cam - cam.raw).max() > 0.1 * np.abs(cam.raw).max()


@pytest.mark.gradients
def test_compiled_gradient_passes_feed_the_held_values_at_every_batch_size(keras):
    adapter = KerasAdapter(keras_two_input(), inputs={"vector": VECTOR})
    row = next(t.index for t in adapter.layers() if t.name == "conv2")
    for n in (1, 3, 1, 3):  # TensorFlow and JAX compile from the first call: a cached pass must stay right
        x = _seen(_images(n, seed=n))
        got = adapter.gradients(x, Target(channels=[2] * n), [row], wrt_input=True)
        want_cam, want_grad = _torch_reference(x, VECTOR, 2)
        _close((got.grads[row].mean(axis=(1, 2), keepdims=True) * got.activations[row]).sum(-1), want_cam)
        _close(got.input_grad, want_grad)


@pytest.mark.gradients
def test_randomized_copies_keep_the_held_inputs(keras):
    adapter = KerasAdapter(keras_two_input(), inputs={"vector": VECTOR})
    row = next(t.index for t in adapter.layers() if t.name == "fc")
    twin = adapter.randomized([row], seed=0)
    assert twin.held_inputs is not None and twin.held_inputs.values["vector"].tolist() == VECTOR.tolist()
    conv2 = next(t.index for t in adapter.layers() if t.name == "relu2")
    seen: dict = {}
    twin.run(_seen(_images()), [conv2], lambda r, a: seen.__setitem__(r, a))
    ref = two_input_reference(two_input_weights(0), _chw(_images()), VECTOR[None])
    _close(seen[conv2], ref["relu2"].transpose(0, 2, 3, 1))  # the rows before fc keep their weights


# --------------------------------------------------------------------------- the CLI


def call(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture()
def files(tmp_path, keras):
    model = tmp_path / "two.keras"
    keras_two_input().save(model)
    image = tmp_path / "a.png"
    Image.fromarray(_images()[0]).save(image)
    Image.fromarray(_images(1, 3)[0]).save(tmp_path / "b.png")
    np.save(tmp_path / "v.npy", VECTOR)
    return tmp_path, str(model), str(image)


def test_cli_maps_heatmap_stats_and_dataset_run_with_a_held_input(files):
    tmp, model, image = files
    held = ["--input", f"vector={tmp / 'v.npy'}"]
    code, _, err = call("maps", model, image, *held, "--out", str(tmp / "maps"))
    assert code == 0, err
    assert any((tmp / "maps").rglob("*.png"))
    code, _, err = call("heatmap", model, image, *held, "--method", "gradcam,saliency", "--out", str(tmp / "heat"))
    assert code == 0, err
    index = json.loads((tmp / "heat" / "index.json").read_text())
    assert {r["method"] for r in index["heatmaps"]} == {"gradcam", "saliency"}
    code, out, err = call("stats", model, image, *held)
    assert code == 0, err and "conv2" in out
    data = tmp / "data" / "cls"
    data.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        (data / name).write_bytes((tmp / name).read_bytes())
    code, _, err = call("dataset", model, str(tmp / "data"), *held, "--out", str(tmp / "ds"), "--k", "1")
    assert code == 0, err
    assert (tmp / "ds").is_dir()


@pytest.mark.gradients
def test_cli_evaluate_randomises_copies_that_hold_the_input(files):
    tmp, model, image = files
    out = tmp / "ev"
    code, stdout, err = call("evaluate", model, image, str(tmp / "b.png"), "--input", f"vector={tmp / 'v.npy'}",
                             "--method", "gradcam,saliency", "--metrics", "randomisation", "--out", str(out))
    assert code == 0, err
    assert (out / "index.json").is_file() and "Grad-CAM" in stdout


def test_cli_image_input_picks_the_second_image(tmp_path, keras):
    model = tmp_path / "siamese.keras"
    keras_siamese().save(model)
    image = tmp_path / "a.png"
    Image.fromarray(_images()[0]).save(image)
    np.save(tmp_path / "left.npy", _seen(_images(1, seed=5))[0])
    out = tmp_path / "maps"
    code, _, err = call("maps", str(model), str(image), "--image-input", "right", "--input",
                        f"left={tmp_path / 'left.npy'}", "--layers", "right_relu,relu", "--out", str(out))
    assert code == 0, err
    assert any("right_relu" in p.name for p in out.rglob("*.png")), sorted(p.name for p in out.rglob("*"))
    code, _, err = call("maps", str(model), str(image), "--image-input", "middle", "--out", str(tmp_path / "x"))
    assert code == 2 and "--image-input middle: siamese has no such input" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("case, needle", [
    ("unknown", "has no such input"),
    ("shape", "has shape (3,)"),
    ("image", "is the image input"),
    ("pickle", "does not unpickle"),
])
def test_cli_bad_inputs_are_one_line_exit_2_and_nothing_written(files, case, needle):
    tmp, model, image = files
    if case == "pickle":
        np.save(tmp / "bad.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        arg = f"vector={tmp / 'bad.npy'}"
    elif case == "shape":
        np.save(tmp / "bad.npy", VECTOR[:3])
        arg = f"vector={tmp / 'bad.npy'}"
    elif case == "image":
        np.save(tmp / "bad.npy", _images()[0])
        arg = f"image={tmp / 'bad.npy'}"
    else:
        arg = f"vec={tmp / 'v.npy'}"
    out = tmp / "out"
    code, _, err = call("heatmap", model, image, "--input", arg, "--method", "gradcam", "--out", str(out))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convlens: error: ") and needle in lines[0], err
    assert not out.exists()
