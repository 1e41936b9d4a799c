"""The size hint of a real detector with a free input size: YOLOv8n exported to ONNX with dynamic height
and width needs sides that are multiples of 32, its largest stride that is upsampled and concatenated
in its neck (the hint used to say 128: the neck's stride-2 convs after an upsampling were read as
downsampling further)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics builds from YAML; it must never download

torch = pytest.importorskip("torch")

from convlens.adapters import open_model  # noqa: E402
from convlens.cli import main  # noqa: E402
from convlens.core.sizes import size_multiple  # noqa: E402

pytestmark = pytest.mark.slow  # builds and exports YOLOv8n (about 10 s)


@pytest.fixture(scope="module")
def yolo_onnx(tmp_path_factory):
    from ultralytics import YOLO
    from ultralytics.nn.modules import Detect

    torch.manual_seed(0)
    model = YOLO("yolov8n.yaml").model.eval()
    for head in model.modules():  # ultralytics' own ONNX export: the (N, 4 + C, A) tensor alone
        if isinstance(head, Detect):
            head.export, head.format, head.dynamic = True, "onnx", True
    path = tmp_path_factory.mktemp("yolo") / "yolov8n.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 224, 256), str(path), input_names=["images"], output_names=["output0"],
                      dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                    "output0": {0: "batch", 2: "anchors"}},
                      opset_version=17, dynamo=False)
    return path


def test_yolov8n_onnx_at_the_photos_own_size_suggests_multiples_of_32(yolo_onnx, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 450, 3), dtype=np.uint8)).save(photo)
    err = io.StringIO()
    assert main(["maps", str(yolo_onnx), str(photo), "--out", str(tmp_path / "maps")],
                stdout=io.StringIO(), stderr=err) == 2
    line = err.getvalue()
    assert line.count("\n") == 1 and line.startswith("convlens: error: "), line
    assert "multiples of 32: try --size 288x448 (size=(288, 448) in Python)" in line, line
    assert not (tmp_path / "maps").exists()
    adapter = open_model(str(yolo_onnx))
    assert size_multiple(adapter.layers()) == ((32, 32), True)
    # the size it suggests runs
    out = adapter.run(np.zeros((1, 288, 448, 3), np.float32), [], lambda i, a: None)
    assert out.shape[0] == 1 and 84 in out.shape[1:]
