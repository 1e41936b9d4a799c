"""A Keras 2-style mini-Xception ``.h5`` file (the emotion classifier that crashed TensorFlow's eager
tape on AVX-512 machines): visualisation, saliency, SmoothGrad and IG through the CLI give finite,
non-blank results on every Keras backend.

The file is built here with random weights, as the face_classification project's mini-Xception is laid
out (two plain convs, residual modules of separable convs with batch norm and a strided 1x1 shortcut,
a class conv, global average pooling, a softmax layer), and saved in the legacy HDF5 format that Keras 2
wrote and Keras 3 still reads.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens.cli import main

pytestmark = [pytest.mark.keras, pytest.mark.gradients]

SIZE = 48
CLASSES = 7


def _mini_xception(keras):  # type: ignore[no-untyped-def]
    L = keras.layers
    reg = keras.regularizers.l2(0.01)
    inp = keras.Input((SIZE, SIZE, 1))
    x = L.Conv2D(8, 3, use_bias=False, kernel_regularizer=reg)(inp)
    x = L.Activation("relu")(L.BatchNormalization()(x))
    x = L.Conv2D(8, 3, use_bias=False, kernel_regularizer=reg)(x)
    x = L.Activation("relu")(L.BatchNormalization()(x))
    for filters in (16, 32):
        shortcut = L.BatchNormalization()(L.Conv2D(filters, 1, strides=2, padding="same", use_bias=False)(x))
        x = L.SeparableConv2D(filters, 3, padding="same", use_bias=False, depthwise_regularizer=reg)(x)
        x = L.Activation("relu")(L.BatchNormalization()(x))
        x = L.SeparableConv2D(filters, 3, padding="same", use_bias=False, depthwise_regularizer=reg)(x)
        x = L.BatchNormalization()(x)
        x = L.MaxPooling2D(3, strides=2, padding="same")(x)
        x = L.Add()([x, shortcut])
    x = L.Conv2D(CLASSES, 3, padding="same")(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Activation("softmax", name="predictions")(x)
    model = keras.Model(inp, out, name="mini_xception")
    rng = np.random.default_rng(0)  # the same weights on every backend and every run
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):  # statistics of its own, as a trained file has
            gamma, beta, mean, var = weights
            weights = [rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                       rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2.0, var.shape)]
        else:  # Glorot-uniform kernels, small biases
            weights = [rng.uniform(-1, 1, w.shape) * np.sqrt(6 / (np.prod(w.shape[:-1]) + w.shape[-1]))
                       if w.ndim > 1 else rng.normal(0, 0.1, w.shape) for w in weights]
        layer.set_weights([np.asarray(w, "float32") for w in weights])
    return model


@pytest.fixture(scope="module")
def xception_h5(keras, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("xception")
    path = folder / "emotion_mini_xception.hdf5"
    _mini_xception(keras).save(folder / "x.h5")  # the legacy HDF5 writer (the name picks it)
    (folder / "x.h5").rename(path)  # the name such files go by
    face = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE), np.uint8)
    face[12:36, 12:36] = 255 - face[12:36, 12:36]  # something the gradients can see
    Image.fromarray(face).save(folder / "face.png")
    return path


def _cli(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, err.getvalue()


def test_the_file_is_legacy_hdf5_with_separable_convs_and_residual_adds(xception_h5) -> None:  # type: ignore[no-untyped-def]
    import h5py

    assert xception_h5.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    with h5py.File(xception_h5, "r") as f:
        config = json.loads(f.attrs["model_config"])
    kinds = [layer["class_name"] for layer in config["config"]["layers"]]
    assert kinds.count("SeparableConv2D") == 4 and kinds.count("Add") == 2 and "BatchNormalization" in kinds


def test_visualize_the_fifth_row_from_the_end(xception_h5, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "vis"
    code, err = _cli("visualize", str(xception_h5), "--layer", "-5", "--channels", "0-7", "--steps", "4",
                     "--size", "32", "--batch-size", "8", "--out", str(out))
    assert code == 0, err
    run = json.loads((out / "index.json").read_text())["visualize"][0]
    activations = [e["activation"] for e in run["images"]]
    assert len(activations) == 8 and np.isfinite(activations).all(), activations
    pictures = sorted(out.glob("visualize/*/channel_*.png"))
    assert len(pictures) == 8, pictures
    spread = [float(np.asarray(Image.open(p), np.float64).std()) for p in pictures]
    assert min(spread) > 1.0, spread  # no blank tile


@pytest.mark.parametrize("method, options", [("saliency", []), ("smoothgrad", ["--samples", "4"]),
                                             ("ig", ["--steps", "4"])])
def test_input_gradient_methods(xception_h5, tmp_path, method, options) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / method
    code, err = _cli("heatmap", str(xception_h5), str(xception_h5.parent / "face.png"), "--method", method,
                     *options, "--out", str(out))
    assert code == 0, err
    records = json.loads((out / "index.json").read_text())["heatmaps"]
    assert [r["method"] for r in records] == [method]
    arr = np.load(out / records[0]["array"], allow_pickle=False)
    assert arr.shape == (SIZE, SIZE) and np.isfinite(arr).all()
    assert np.abs(arr).max() > 0 and arr.std() > 0  # a map, not a blank
