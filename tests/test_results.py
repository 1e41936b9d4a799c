"""Every public result type has the same three methods: ``save(out) -> Path``, ``to_json()``, ``_repr_html_()``.

Each result is computed on the demo model (or a tiny torch net for the timeline), saved into
``tmp_path``: ``save`` returns the path of the index (or page) it wrote, ``to_json`` survives
``json.dumps`` with NaN refused, and the notebook view is HTML with the image names escaped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convlens
from convlens import (
    ChannelStats,
    DatasetResult,
    FeatureMaps,
    Filters,
    Heatmaps,
    Lens,
    Report,
    Timeline,
    Visualization,
)
from convlens.torch import LensRecorder

#: An image name that would break out of HTML if it were not escaped.
HOSTILE = "<i>x&.png"


@pytest.fixture(scope="module")
def demo() -> Lens:
    return Lens("demo")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("img")
    path = folder / HOSTILE
    Image.open(convlens.DEMO_IMAGE).save(path, format="PNG")
    return path


def _json_ready(value: dict) -> dict:
    text = json.dumps(value, allow_nan=False)
    assert json.loads(text) == value  # a round trip changes nothing: plain JSON types only
    return value


def _index(path: Path, out: Path, key: str) -> dict:
    assert path == out / "index.json" and path.is_file()
    index = json.loads(path.read_text())
    assert index[key], f"index.json lists no {key}"
    for entry in index[key]:
        if isinstance(entry, dict) and "file" in entry:
            assert (out / entry["file"]).is_file()
    return index


def _escaped_html(html: str, *, picture: bool = True) -> None:
    assert isinstance(html, str)
    assert "<i>x" not in html
    if picture:
        assert "<img src='data:image/png;base64," in html or '<img src="data:image/png;base64,' in html


def test_every_result_type_is_exported():
    for name in ("FeatureMaps", "Filters", "ChannelStats", "LayerStats", "Heatmaps", "Visualization",
                 "DatasetResult", "Report", "Timeline", "Model", "select"):
        assert name in convlens.__all__ and hasattr(convlens, name)
    for cls in (FeatureMaps, Filters, ChannelStats, Heatmaps, Visualization, DatasetResult, Report, Timeline):
        for method in ("save", "to_json", "_repr_html_"):
            assert callable(getattr(cls, method, None)), f"{cls.__name__}.{method}"


def test_select_returns_layer_records_in_both_places(demo):
    table = demo.layers()
    picked = convlens.select(table, "conv")
    assert picked == demo.select("conv")
    assert [layer.name for layer in picked] == ["conv1", "conv2", "conv3"]
    assert all(isinstance(layer, convlens.LayerInfo) for layer in picked)


def test_feature_maps(demo, image, tmp_path):
    maps = demo.feature_maps(image, layers="conv")
    index = _index(maps.save(tmp_path), tmp_path, "maps")
    assert [e["layer"] for e in index["maps"]] == ["conv1", "conv2", "conv3"]
    assert index["model"] == demo.name
    data = _json_ready(maps.to_json())
    assert [rec["array_shape"] for rec in data["layers"]] == [list(maps[n].shape) for n in maps]
    assert data["images"][0]["name"] == image.stem
    _escaped_html(maps._repr_html_())


def test_filters(demo, tmp_path):
    kernels = demo.filters()
    index = _index(kernels.save(tmp_path), tmp_path, "filters")
    assert {e["layer"] for e in index["filters"]} == {"conv1", "conv2", "conv3"}
    data = _json_ready(kernels.to_json())
    first = data["layers"][0]
    assert first["layer"] == "conv1" and first["kernel_shape"] == list(kernels["conv1"].shape)
    norms = np.sqrt((kernels["conv1"].astype(np.float64) ** 2).sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(first["l2_norms"], norms, atol=1e-5)
    _escaped_html(kernels._repr_html_())


def test_channel_stats(demo, image, tmp_path):
    stats = demo.channel_stats(image, layers="conv")
    index = _index(stats.save(tmp_path), tmp_path, "stats")
    on_disk = json.loads((tmp_path / "stats.json").read_text())
    assert on_disk == _json_ready(stats.to_json())
    assert [layer["name"] for layer in on_disk["layers"]] == ["conv1", "conv2", "conv3"]
    assert "conv3" in (tmp_path / "stats.txt").read_text()
    assert {e["file"] for e in index["stats"]} == {"stats.json", "stats.txt"}
    _escaped_html(stats._repr_html_(), picture=False)  # a table: numbers, no picture
    assert "<table>" in stats._repr_html_() and "&lt;i&gt;x&amp;" in stats._repr_html_()


def test_heatmaps(demo, image, tmp_path):
    hm = demo.heatmaps(image, "gradcam,occlusion", method_options={"window": 7, "stride": 7})
    assert isinstance(hm, Heatmaps)
    index = _index(hm.save(tmp_path), tmp_path, "heatmaps")
    data = _json_ready(hm.to_json())
    assert [(r["method"], r["class"]) for r in data["heatmaps"]] == \
        [(r["method"], r["class"]) for r in index["heatmaps"]]
    assert data["heatmaps"][1]["extra"]["window"] == 7
    _escaped_html(hm._repr_html_())


def test_visualization(demo, tmp_path):
    vis = demo.visualize("conv1", "0-1", steps=2, size=16, batch_size=2)
    assert isinstance(vis, Visualization) and vis.settings["batch_size"] == 2
    index = _index(vis.save(tmp_path), tmp_path, "visualize")
    assert index["visualize"][0] == _json_ready(vis.to_json())
    _escaped_html(vis._repr_html_())


def test_dataset_result(demo, tmp_path):
    data = tmp_path / "data" / HOSTILE.replace(".png", "")
    data.mkdir(parents=True)
    for i, k in enumerate((0, 3, 7)):
        Image.fromarray(np.full((28, 28), 30 * k + 10, np.uint8)).save(data / f"{i}.png")
        Image.open(convlens.DEMO_IMAGE).rotate(30 * k).save(data / f"r{i}.png")
    result = demo.dataset(tmp_path / "data", layers="conv3", k=2, batch_size=4)
    assert isinstance(result, DatasetResult)
    out = tmp_path / "out"
    index = json.loads(result.save(out).read_text())
    assert (out / "index.json").is_file() and index["layers"][0]["name"] == "conv3"
    view = _json_ready(result.to_json())
    assert view["layers"][0]["name"] == "conv3" and view["images"] == 6
    assert [c["top"][0]["id"] for c in view["layers"][0]["channels_info"]] == \
        [c["top"][0]["id"] for c in index["layers"][0]["channels_info"]]
    assert len(view["channels"][0]["mean"]) == view["layers"][0]["channels"]
    _escaped_html(result._repr_html_())


def test_report(demo, image, tmp_path):
    report = demo.report(image, layers="conv", sections=["inputs", "predictions", "maps"])
    assert isinstance(report, Report)
    path = report.save(tmp_path / "r.html")
    assert path == tmp_path / "r.html" and path.read_text(encoding="utf-8") == report.html
    data = _json_ready(report.to_json())
    assert data["sections"] == ["inputs", "predictions", "maps"]
    top = data["predictions"][0]
    assert len(top) == 5 and abs(sum(p["probability"] for p in top)) <= 1.0 + 1e-6
    html = report._repr_html_()
    assert html.startswith("<iframe") and "<i>x" not in html  # the page, escaped into srcdoc


def test_timeline(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 10 * 10, 2))
    images = torch.rand(2, 1, 12, 12)
    with LensRecorder(net, images, layers="conv", out=tmp_path / "run", tensorboard=False) as recorder:
        for step in (1, 2):
            with torch.no_grad():
                net[0].weight.add_(0.1)
            recorder.record(step)
    timeline = Timeline.load(tmp_path / "run")
    assert [c["step"] for c in timeline.checkpoints] == [1, 2]
    page = timeline.save(tmp_path / "timeline.html")
    assert page == tmp_path / "timeline.html" and "<html" in page.read_text(encoding="utf-8").lower()
    data = _json_ready(timeline.to_json())
    assert data == json.loads((tmp_path / "run" / "index.json").read_text())
    html = timeline._repr_html_()
    _escaped_html(html)
    assert "2 checkpoints" in html
