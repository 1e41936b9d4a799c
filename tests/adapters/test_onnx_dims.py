"""ONNX inputs whose free dims are written as literal ``-1`` or ``0`` (``[-1, 3, -1, -1]``), not names.

Some exporters write a free dim as ``dim_value: -1``; it must count as free
everywhere: the input shape, the layer table, the batch chunking in ``run``,
and the ``maps``, ``stats`` and ``report`` commands.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from convlens import Lens
from convlens.adapters.onnx import OnnxAdapter

RNG = np.random.default_rng(12)
KERNEL = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)


def _model(dims: list) -> onnx.ModelProto:
    """Conv 3x3 (pad 1) -> Relu -> global average pool -> flatten, input of ``dims`` (NCHW)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 4])
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["y"], name="flat")]
    graph = helper.make_graph(nodes, "literal_dims", [x], [y], [numpy_helper.from_array(KERNEL, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _expected(batch: np.ndarray) -> np.ndarray:
    """The model's output for an ``(N, H, W, 3)`` batch, in numpy."""
    x = np.pad(batch.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    n, h, w = batch.shape[:3]
    out = np.zeros((n, h, w, 4))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("nhwc,oc->nhwo", x[:, dy:dy + h, dx:dx + w], KERNEL[:, :, dy, dx])
    return np.maximum(out, 0).mean(axis=(1, 2))


@pytest.fixture(scope="module")
def minus_one(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx_dims") / "minus_one.onnx"
    onnx.save(_model([-1, 3, -1, -1]), str(path))
    return path


@pytest.mark.parametrize("dims", [[-1, 3, -1, -1], [0, 3, 0, 0], [-1, 3, "h", -1]])
def test_literal_minus_one_and_zero_dims_are_free(dims):
    adapter = OnnxAdapter(_model(dims))
    assert adapter.input_shape == (None, None, 3)
    assert adapter.batch_size is None
    table = adapter.layers()
    assert [r.output_shape for r in table] == [(None, None, 3), (None, None, 4), (None, None, 4),
                                               (1, 1, 4), (4,)]


def test_a_batch_of_several_images_runs_in_one_pass(minus_one):
    adapter = OnnxAdapter(minus_one)
    batch = RNG.uniform(-1, 1, size=(3, 9, 13, 3)).astype(np.float32)
    seen = {}
    out = adapter.run(batch, [1, 4], lambda row, a: seen.__setitem__(row, a))
    np.testing.assert_allclose(out, _expected(batch), rtol=1e-5, atol=1e-5)
    assert seen[1].shape == (3, 9, 13, 4) and seen[4].shape == (3, 4)


def test_input_shape_fills_the_free_dims(minus_one):
    adapter = OnnxAdapter(minus_one, input_shape=(20, 30, 3))
    assert adapter.input_shape == (20, 30, 3)
    assert adapter.layers()[1].output_shape == (20, 30, 4)


def test_lens_runs_at_the_size_asked_for(minus_one):
    lens = Lens(minus_one, preprocess="unit")
    image = RNG.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    maps = lens.feature_maps(image, "conv", size=(24, 32))
    assert maps["conv"].shape == (1, 24, 32, 4)


@pytest.mark.parametrize("command", ["maps", "stats", "report"])
def test_commands_work_on_a_graph_with_minus_one_dims(minus_one, tmp_path, command):
    image = tmp_path / "photo.png"
    Image.fromarray(RNG.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)).save(image)
    out = ["--out", str(tmp_path / ("report.html" if command == "report" else "out"))]
    args = [sys.executable, "-m", "convlens", command, str(minus_one), str(image),
            *(out if command != "stats" else [])]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    if command == "stats":
        assert "conv" in proc.stdout
    elif command == "maps":
        assert (tmp_path / "out" / "index.json").is_file()
    else:
        assert (tmp_path / "report.html").stat().st_size > 1000
