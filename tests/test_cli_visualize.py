"""``convlens visualize``: files on success; one line, exit 2 and nothing written on bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens.cli import main

pytestmark = pytest.mark.keras


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_demo_class_atlas(tmp_path, keras):
    out = tmp_path / "vis"
    code, stdout, stderr = run("visualize", "demo", "--objective", "class", "--channels", "all",
                               "--steps", "8", "--seed", "3", "--out", str(out))
    assert code == 0, stderr
    assert "wrote 10 images and an atlas of output" in stdout
    folder = out / "visualize" / "output_class"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["atlas.png", *[f"channel_{k:04d}.png" for k in range(10)]]
    assert Image.open(folder / "channel_0007.png").size == (28, 28)
    atlas = Image.open(folder / "atlas.png")
    assert atlas.width > 4 * 64  # four tiles of at least 64 pixels across, and a title
    run_ = json.loads((out / "index.json").read_text())["visualize"][0]
    assert run_["settings"]["seed"] == 3 and run_["objective"] == "class"
    assert all(isinstance(e["activation"], float) for e in run_["images"])


def test_same_seed_same_files(tmp_path, keras):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert run("visualize", "demo", "--layer", "conv2", "--channels", "0-3", "--steps", "3",
                   "--out", str(out))[0] == 0
    for name in ("atlas.png", "channel_0002.png"):
        path = Path("visualize/003_conv2_channel") / name
        assert np.array_equal(np.asarray(Image.open(a / path)), np.asarray(Image.open(b / path)))


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory) -> Path:
    import tensorflow as tf  # a plain TF function: works whatever backend Keras runs on

    kernel = tf.constant(np.random.default_rng(0).standard_normal((3, 3, 3, 4)).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec((1, 16, 16, 3), tf.float32)])
    def conv(x):
        return tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "VALID"))

    path = tmp_path_factory.mktemp("tfl") / "m.tflite"
    converter = tf.lite.TFLiteConverter.from_concrete_functions([conv.get_concrete_function()], conv)
    path.write_bytes(converter.convert())
    return path


@pytest.mark.parametrize("args,needle", [
    (["demo", "--layer", "conv3", "--channels", "60-64"], "channel 64 is out of range for conv3: it has 64"),
    (["demo", "--layer", "digit"], "model's input"),
    (["demo", "--layer", "conv3", "--steps", "0"], "steps must be a whole number from 1"),
    (["demo", "--layer", "conv3", "--size", "9"], "size must be a whole number from 16"),
    (["demo", "--layer", "9", "--objective", "neuron"], "no spatial positions"),
    (["demo", "--objective", "class", "--channels", "10"], "class 10 is out of range"),
    (["demo", "--layer", "conv3", "--diversity", "50"], "--copies 4"),
    (["demo", "--layer", "conv9"], "no layer matches 'conv9'"),
])
def test_bad_input_one_line_nothing_written(tmp_path, keras, args, needle):
    out = tmp_path / "out"
    code, stdout, stderr = run("visualize", *args, "--out", str(out))
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convlens: error: ") and needle in lines[0], stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_tflite_says_why(tmp_path, tflite_model):
    out = tmp_path / "out"
    code, _, stderr = run("visualize", str(tflite_model), "--layer", "1", "--out", str(out))
    assert code == 2
    assert stderr.count("\n") == 1 and "a TFLite interpreter computes no gradients" in stderr
    assert not out.exists()


def test_out_is_a_file(tmp_path, keras):
    target = tmp_path / "taken"
    target.write_text("x")
    code, _, stderr = run("visualize", "demo", "--layer", "conv1", "--out", str(target))
    assert code == 2 and "it is a file" in stderr and target.read_text() == "x"
