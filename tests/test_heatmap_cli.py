"""``convlens heatmap``: the files it writes, and every bad input as one line, exit 2, nothing written.

Most cases run in-process (``main([...])``); one success and one failure run
as real subprocesses. Models: the trained demo CNN, a TFLite file converted
here from a tiny Keras network (forward only), and a map-output network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convlens

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_helpers import call, one_line_error  # noqa: E402


@pytest.mark.keras
def test_heatmap_writes_an_overlay_an_array_and_the_index(tmp_path, keras):
    out = tmp_path / "heat"
    code, stdout, err = call("heatmap", "demo", str(convlens.DEMO_IMAGE), "--method", "gradcam,occlusion",
                             "--class", "7", "--class", "1", "--window", "7", "--out", str(out))
    assert code == 0, err
    index = json.loads((out / "index.json").read_text())
    assert [(r["method"], r["class"]) for r in index["heatmaps"]] == [
        ("gradcam", 7), ("gradcam", 1), ("occlusion", 7), ("occlusion", 1)]
    for r in index["heatmaps"]:
        assert np.load(out / r["array"]).shape == (28, 28)
        assert Image.open(out / r["file"]).size[0] == 280  # 28 px enlarged 10x to be readable
    assert index["heatmaps"][2]["extra"]["window"] == 7
    assert "digit: Grad-CAM · 7 · p 1.000 · layer conv3" in stdout
    assert stdout.strip().endswith(f"(index: {out / 'index.json'})")


@pytest.mark.keras
@pytest.mark.parametrize("args, needles", [
    (["--class", "12"], ["class 12 is out of range", "10 classes (0-9)"]),
    (["--class", "7,eleven", "--labels", "LABELS"], ["unknown class 'eleven'", "closest: 'seven'"]),
    (["--layer", "flatten"], ["'flatten' outputs (576,), not 2-D maps", "conv3 7x7"]),
    (["--method", "gradcam", "--steps", "5"], ["'steps' is an option of ig, not of gradcam"]),
    (["--method", "gradcm"], ["unknown heatmap method 'gradcm'", "did you mean gradcam"]),
])
def test_bad_options_fail_in_one_line_and_write_nothing(tmp_path, args, needles, keras):
    labels = tmp_path / "labels.txt"
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    labels.write_text("".join(f"{n}\n" for n in names))
    args = [str(labels) if a == "LABELS" else a for a in args]
    out = tmp_path / "heat"
    code, _, err = call("heatmap", "demo", str(convlens.DEMO_IMAGE), *args, "--out", str(out))
    one_line_error(code, err, *needles)
    assert not out.exists()


@pytest.mark.keras
def test_an_image_of_one_colour_fails_and_writes_nothing(tmp_path, keras):
    Image.new("L", (28, 28), 200).save(tmp_path / "blank.png")
    out = tmp_path / "heat"
    code, _, err = call("heatmap", "demo", str(tmp_path / "blank.png"), "--out", str(out))
    one_line_error(code, err, "blank has the same value at every pixel")
    assert not out.exists()


@pytest.mark.keras
def test_a_model_that_outputs_maps_needs_a_class(tmp_path, keras):
    L = keras.layers
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(4, 3, padding="same", activation="relu"),
                              L.Conv2D(3, 1)], name="seg")
    model.save(tmp_path / "seg.keras")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
        tmp_path / "x.png")
    out = tmp_path / "heat"
    code, _, err = call("heatmap", str(tmp_path / "seg.keras"), str(tmp_path / "x.png"), "--out", str(out))
    one_line_error(code, err, "not one score per class", "--class")
    assert not out.exists()
    code, stdout, err = call("heatmap", str(tmp_path / "seg.keras"), str(tmp_path / "x.png"), "--class", "1",
                             "--out", str(out))
    assert code == 0, err
    assert "Grad-CAM · 1 · score" in stdout


@pytest.fixture(scope="module")
def tflite_file(tmp_path_factory) -> Path:
    """A tiny float TFLite classifier, converted here (TensorFlow's converter)."""
    import keras
    import tensorflow as tf

    L = keras.layers
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((32, 32, 3)), L.Conv2D(6, 3, activation="relu", name="conv"),
                              L.MaxPooling2D(2), L.Conv2D(8, 3, activation="relu", name="conv2"),
                              L.GlobalAveragePooling2D(), L.Dense(5, activation="softmax")], name="tiny")
    d = tmp_path_factory.mktemp("tflite")
    model.export(str(d / "saved"), format="tf_saved_model", verbose=False)
    path = d / "tiny.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(d / "saved")).convert())
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "cat.png"
    Image.open(convlens.SAMPLE_PHOTO).resize((48, 32)).save(path)
    return path


def test_a_gradient_method_on_tflite_names_the_forward_only_methods(tflite_file, photo, tmp_path):
    out = tmp_path / "heat"
    code, _, err = call("heatmap", str(tflite_file), str(photo), "--method", "scorecam,gradcam,ig",
                        "--out", str(out))
    line = one_line_error(code, err, "Grad-CAM, Integrated Gradients need gradients",
                          "forward-only methods by name: scorecam, eigencam, occlusion")
    assert "tiny" in line
    assert not out.exists()


def test_forward_only_methods_run_on_tflite(tflite_file, photo, tmp_path):
    out = tmp_path / "heat"
    code, _, err = call("heatmap", str(tflite_file), str(photo), "--method", "scorecam,eigencam,occlusion",
                        "--out", str(out))
    assert code == 0, err
    index = json.loads((out / "index.json").read_text())
    assert [r["method"] for r in index["heatmaps"]] == ["scorecam", "eigencam", "occlusion"]
    for r in index["heatmaps"]:
        arr = np.load(out / r["array"])
        assert arr.shape == (32, 48)  # the photo as given, not the 32x32 input
        assert np.isfinite(arr).all() and arr.max() > 0
    assert index["framework"] == "tflite"
    # the file ends in a softmax that the adapter does not name: its outputs are taken as probabilities
    assert all(r["probability"] == pytest.approx(r["score"]) for r in index["heatmaps"])


def _subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(convlens.__file__).parent.parent),
                                         env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "convlens", *args], capture_output=True, text=True,
                          env=env, timeout=600, check=False)


@pytest.mark.keras
def test_a_real_subprocess_writes_the_files(tmp_path, keras):
    out = tmp_path / "heat"
    proc = _subprocess("heatmap", "demo", str(convlens.DEMO_IMAGE), "--method", "gradcam,scorecam",
                       "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "heatmaps" / "digit").iterdir()) == [
        "gradcam_7.npy", "gradcam_7.png", "scorecam_7.npy", "scorecam_7.png"]
    assert proc.stderr == ""


@pytest.fixture(scope="module")
def unconvertible_onnx(tmp_path_factory) -> Path:
    """Conv -> Relu -> GlobalLpPool -> Flatten: onnxruntime runs it, onnx2torch has no GlobalLpPool."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(5).normal(0, 1, (4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
         helper.make_node("GlobalLpPool", ["relu"], ["pooled"], name="lp", p=2),
         helper.make_node("Flatten", ["pooled"], ["scores"], name="flatten")],
        "lp", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4])], [w])
    path = tmp_path_factory.mktemp("onnx") / "lp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_an_onnx_graph_onnx2torch_cannot_convert_fails_for_gradients_only(unconvertible_onnx, photo, tmp_path):
    out = tmp_path / "heat"
    code, _, err = call("heatmap", str(unconvertible_onnx), str(photo), "--method", "gradcam", "--out", str(out))
    one_line_error(code, err, "Grad-CAM needs gradients", "onnx2torch cannot convert",
                   "GlobalLpPool", "scorecam, eigencam, occlusion")
    assert not out.exists()
    code, _, err = call("heatmap", str(unconvertible_onnx), str(photo), "--method", "scorecam", "--out", str(out))
    assert code == 0, err
    record = json.loads((out / "index.json").read_text())["heatmaps"][0]
    assert record["file"] == "heatmaps/cat/scorecam_" + str(record["class"]) + ".png"
    assert np.load(out / record["array"]).shape == (32, 48)  # the photo as given
