"""A model that cannot take an input size: one line on stderr, convlens's own, saying how to pick a size.

Each framework gets a small "detector" that takes any size but only works for
sides that are multiples of 32: a stride-32 path upsampled by 32 is added to a
full-resolution path, so the two only line up at multiples of 32 (as in text
and object detectors). Run through the ``convlens`` command in a subprocess
whose environment does not quiet TensorFlow, the native stderr must hold
exactly the one ``convlens: error:`` line (onnxruntime used to print its own
coloured log line first), and that line suggests ``--size 96x160``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from convlens.cli import main

RNG = np.random.default_rng(32)
HINT = "multiples of 32: try --size 96x160"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(RNG.integers(0, 256, size=(60, 90, 3), dtype=np.uint8)).save(path)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # convlens must quiet it
    return subprocess.run([sys.executable, "-m", "convlens", *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def _only_our_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), proc.stderr
    assert proc.stderr.startswith("convlens: error: "), proc.stderr
    assert "\x1b" not in proc.stderr  # no terminal colours from a framework's logger
    return proc.stderr


def _check(model: Path, photo: Path, tmp_path: Path) -> None:
    proc = _cli("maps", str(model), str(photo), "--size", "100x150", "--out", str(tmp_path / "bad"))
    line = _only_our_line(proc)
    assert HINT in line and "(100, 150, 3)" in line.replace("1, 3, 100, 150", "100, 150, 3"), line
    assert not (tmp_path / "bad").exists()
    # the size it suggests works (in this process: a second interpreter start costs seconds)
    err = io.StringIO()
    assert main(["maps", str(model), str(photo), "--size", "96x160", "--out", str(tmp_path / "good")],
                stdout=io.StringIO(), stderr=err) == 0, err.getvalue()
    assert (tmp_path / "good" / "index.json").is_file()


def test_onnx_detector(photo, tmp_path):
    inits = [numpy_helper.from_array(RNG.normal(size=(2, 3, 32, 32)).astype(np.float32) * 0.01, "Wd"),
             numpy_helper.from_array(RNG.normal(size=(2, 3, 1, 1)).astype(np.float32), "Wp"),
             numpy_helper.from_array(np.array([1, 1, 32, 32], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["x", "Wd"], ["d"], strides=[32, 32], name="down"),
             helper.make_node("Resize", ["d", "", "scales"], ["u"], mode="nearest", name="up"),
             helper.make_node("Conv", ["x", "Wp"], ["p"], name="proj"),
             helper.make_node("Add", ["u", "p"], ["y"], name="merge")]
    graph = helper.make_graph(
        nodes, "detector", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, "h", "w"])], inits)
    path = tmp_path / "detector.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    _check(path, photo, tmp_path)
    line = _cli("maps", str(path), str(photo), "--size", "100x150", "--out", str(tmp_path / "x")).stderr
    assert "Add node 'merge': Attempting to broadcast" in line  # onnxruntime's reason, without its C++ prefix


def test_tflite_detector(photo, tmp_path):
    import tensorflow as tf

    down = RNG.normal(size=(32, 32, 3, 2)).astype("float32") * 0.01
    proj = RNG.normal(size=(1, 1, 3, 2)).astype("float32")

    @tf.function(input_signature=[tf.TensorSpec((1, None, None, 3), tf.float32, name="image")])
    def detector(x):
        d = tf.nn.conv2d(x, down, 32, "VALID")
        up = tf.repeat(tf.repeat(d, 32, axis=1), 32, axis=2)
        return up + tf.nn.conv2d(x, proj, 1, "VALID")

    converter = tf.lite.TFLiteConverter.from_concrete_functions([detector.get_concrete_function()])
    path = tmp_path / "detector.tflite"
    path.write_bytes(converter.convert())
    _check(path, photo, tmp_path)


def test_torch_exported_detector(photo, tmp_path):
    import torch
    from torch import nn

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Conv2d(3, 2, 32, stride=32)
            self.up = nn.Upsample(scale_factor=32.0)
            self.proj = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.up(self.down(x)) + self.proj(x)

    h, w = torch.export.Dim("h", min=1, max=64), torch.export.Dim("w", min=1, max=64)
    program = torch.export.export(Detector().eval(), (torch.zeros(1, 3, 64, 64),),
                                  dynamic_shapes=({2: 32 * h, 3: 32 * w},))
    path = tmp_path / "detector.pt2"
    torch.export.save(program, str(path))
    _check(path, photo, tmp_path)


@pytest.mark.keras
def test_keras_detector(photo, tmp_path, keras):
    L = keras.layers
    x = keras.Input((None, None, 3))
    up = L.UpSampling2D(32, name="up")(L.Conv2D(2, 32, strides=32, name="down")(x))
    model = keras.Model(x, L.Add(name="merge")([up, L.Conv2D(2, 1, name="proj")(x)]), name="detector")
    path = tmp_path / "detector.keras"
    model.save(path)
    _check(path, photo, tmp_path)
