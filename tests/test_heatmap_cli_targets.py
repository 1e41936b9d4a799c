"""``convlens heatmap`` beyond classifiers: --box, --mask, --output, --output-index, --reference, --top,
on small PyTorch programs saved with torch.export; every bad input one line, exit 2, nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_helpers import call, one_line_error  # noqa: E402


class Segmenter(torch.nn.Module):
    """Class 0's score is the red channel, class 1's the green one, per pixel (hand-set)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = 1
            self.features.weight[1, 1] = 1
        self.relu = torch.nn.ReLU()
        self.head = torch.nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(2)[:, :, None, None])

    def forward(self, x):
        return self.head(self.relu(self.features(x)))


class Embedder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(2)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x))).flatten(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets")
    x = torch.zeros(1, 3, 32, 32)
    for name, module in (("seg", Segmenter()), ("emb", Embedder())):
        torch.export.save(torch.export.export(module.eval(), (x,)), root / f"{name}.pt2")
    img = np.full((32, 32, 3), 12, np.uint8)
    img[:, :16, 0] = 255
    img[:, 16:, 1] = 255
    Image.fromarray(img).save(root / "halves.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(mask).save(root / "right.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "empty.png")
    np.random.seed(0)
    Image.fromarray((np.random.random((32, 32, 3)) * 255).astype(np.uint8)).save(root / "noise.png")
    return root


def test_segmentation_box_and_mask_from_the_command_line(files, tmp_path):
    out = tmp_path / "seg"
    code, stdout, err = call("heatmap", str(files / "seg.pt2"), str(files / "halves.png"), "--class", "1",
                             "--mask", str(files / "right.png"), "--layer", "relu", "--preprocess", "unit",
                             "--out", str(out))
    assert code == 0, err
    assert "mask was resized" in err  # a note: notes go to stderr
    rec = json.loads((out / "index.json").read_text())["heatmaps"][0]
    assert rec["target"] == "segmentation"
    m = np.load(out / rec["array"])
    assert m[:, 16:].min() > 0.9 and m[:, :16].max() < 0.1
    code, _, err = call("heatmap", str(files / "seg.pt2"), str(files / "halves.png"), "--class", "0",
                        "--box", "0,0,16,32", "--layer", "relu", "--preprocess", "unit", "--out", str(tmp_path / "b"))
    assert code == 0, err


def test_reference_and_output_index_from_the_command_line(files, tmp_path):
    out = tmp_path / "emb"
    code, stdout, err = call("heatmap", str(files / "emb.pt2"), str(files / "noise.png"), "--reference",
                             str(files / "halves.png"), "--layer", "conv", "--preprocess", "unit", "--out", str(out))
    assert code == 0, err
    assert "cosine similarity" in stdout
    code, stdout, err = call("heatmap", str(files / "emb.pt2"), str(files / "noise.png"), "--output-index", "5",
                             "--method", "saliency", "--preprocess", "unit", "--out", str(tmp_path / "idx"))
    assert code == 0, err
    assert "output 5" in stdout


@pytest.mark.parametrize("model, args, needles", [
    ("seg", ["--class", "0", "--box", "40,40,60,60"], ["lies outside the 32x32 image"]),
    ("seg", ["--class", "0", "--box", "1,2,3"], ["--box", "four numbers"]),
    ("seg", ["--class", "0", "--mask", "EMPTY"], ["no non-zero pixel"]),
    ("seg", ["--class", "0", "--output", "scores"], ["no output named 'scores'"]),
    ("seg", ["--class", "0", "--reference", "NOISE"], ["not a vector"]),
    ("emb", ["--box", "1,1,8,8"], ["cannot decode", "layouts known", "--output-index"]),
    ("emb", ["--output-index", "99"], ["output index 99 is out of range"]),
    ("emb", ["--reference", "NOISE", "--method", "scorecam"], ["Score-CAM scores the model's class outputs"]),
])
def test_bad_targets_are_one_line_and_write_nothing(files, tmp_path, model, args, needles):
    out = tmp_path / "never"
    args = [str(files / "empty.png") if a == "EMPTY" else str(files / "noise.png") if a == "NOISE" else a
            for a in args]
    code, _, err = call("heatmap", str(files / f"{model}.pt2"), str(files / "halves.png"), *args,
                        "--preprocess", "unit", "--out", str(out))
    one_line_error(code, err, *needles)
    assert not out.exists()
