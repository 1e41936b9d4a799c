"""The training recorder draws maps and filters with save_maps's and save_filters's own functions.

A torch model with integer weights on integer pixels (``preprocess="raw"``):
every output is an exact integer in float32 on any CPU, so both passes see
the same arrays, and the pictures must be the same pixels.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convlens import Lens
from convlens.maps import draw_map_file
from convlens.output import OutputDir
from convlens.render.maps import RenderOptions
from convlens.timeline.recorder import Recorder


@pytest.fixture(scope="module")
def lens() -> Lens:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, bias=False),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    with torch.no_grad():
        for conv in (model[0], model[2]):
            conv.weight.copy_(torch.randint(-2, 3, conv.weight.shape).float())
    return Lens(model.eval(), input_shape=(12, 12, 3), preprocess="raw")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _bar(picture: np.ndarray) -> int:
    """Rows of the caption bar: the leading rows whose left margin has the bar's colour."""
    margin = (picture[:, :2] == picture[0, 0]).all(axis=(1, 2))
    return int(np.argmin(margin)) if not margin.all() else picture.shape[0]


def _same_picture_below_the_caption(a: Path, b: Path) -> None:
    """The same picture under captions that differ only by the recorder's label.

    A longer caption may widen the file (``add_title`` pads the picture with
    white on the right), never change the picture or the bar's height.
    """
    pa, pb = _pixels(a), _pixels(b)
    bar = _bar(pa)
    assert 10 <= bar == _bar(pb) < pa.shape[0] == pb.shape[0]
    width = min(pa.shape[1], pb.shape[1])
    assert np.array_equal(pa[bar:, :width], pb[bar:, :width])
    for p in (pa, pb):
        assert (p[bar:, width:] == 255).all()  # only the white padding of the wider caption


@pytest.mark.parametrize("norm", ["standardize", "minmax", "layer", "global"])
def test_a_checkpoint_map_is_save_maps_picture(lens: Lens, image: np.ndarray, tmp_path: Path, norm: str) -> None:
    run = tmp_path / "run"
    recorder = Recorder(lens, [image], out=run, layers="conv", filters="first", tensorboard=False, page=False,
                        norm=norm)
    assert recorder.checkpoint(1, label="step 1")
    recorder.close()
    assert recorder.error is None
    saved = json.loads(lens.save_maps(image, tmp_path / "maps", layers="conv", preprocess="raw", norm=norm).read_text())
    checkpoint = json.loads((run / "checkpoint-0001" / "index.json").read_text())
    assert [m["file"] for m in checkpoint["maps"]] == [m["file"] for m in saved["maps"]]
    for mine, theirs in zip(checkpoint["maps"], saved["maps"]):
        # the same entry as save_maps's: layout, channels, flags
        assert mine == theirs
        _same_picture_below_the_caption(run / "checkpoint-0001" / mine["file"], tmp_path / "maps" / theirs["file"])


def test_without_a_label_the_files_are_byte_equal(lens: Lens, image: np.ndarray, tmp_path: Path) -> None:
    saved = json.loads(lens.save_maps(image, tmp_path / "maps", layers="conv", preprocess="raw", norm="layer").read_text())
    arrays = lens.feature_maps(image, "conv", preprocess="raw")
    with OutputDir(tmp_path / "direct") as staging:
        drawn = [draw_map_file(staging, arrays.images[0].name, layer, arrays[layer.name][0],
                               RenderOptions(norm="layer"), total=arrays[layer.name].shape[-1])
                 for layer in arrays.layers]
    assert [d.entry for d in drawn] == saved["maps"]
    for d in drawn:
        assert d.png == (tmp_path / "maps" / d.file).read_bytes() == (tmp_path / "direct" / d.file).read_bytes()


def test_a_checkpoint_filter_atlas_is_save_filters_picture(lens: Lens, image: np.ndarray, tmp_path: Path) -> None:
    run = tmp_path / "run"
    recorder = Recorder(lens, [image], out=run, layers="conv", filters="conv", tensorboard=False, page=False)
    recorder.checkpoint(3)
    recorder.close()
    saved = json.loads(lens.save_filters(tmp_path / "filters", layers="conv").read_text())
    checkpoint = json.loads((run / "checkpoint-0001" / "index.json").read_text())
    assert [f["file"] for f in checkpoint["filters"]] == [f["file"] for f in saved["filters"]]
    assert [f["kind"] for f in saved["filters"]] == ["composite", "atlas", "atlas"]
    for mine, theirs in zip(checkpoint["filters"], saved["filters"]):
        assert {k: v for k, v in mine.items() if k != "kernels"} == theirs
        _same_picture_below_the_caption(run / "checkpoint-0001" / mine["file"], tmp_path / "filters" / theirs["file"])
    kernels = np.load(io.BytesIO((run / "checkpoint-0001" / checkpoint["filters"][1]["kernels"]).read_bytes()))
    assert np.array_equal(kernels, lens.filters("conv")[checkpoint["filters"][1]["layer"]])
