"""``visualize()``: the checks before any work, the result, its files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convlens._errors import BadArgument, LayerNotFound, UnsupportedModel
from convlens.core.layers import LayerInfo
from convlens.visualize import Visualization, parse_channels, visualize


def test_parse_channels():
    assert parse_channels("all", 4) == [0, 1, 2, 3]
    assert parse_channels("0-2,5, 7..8", 10) == [0, 1, 2, 5, 7, 8]
    assert parse_channels(3, 4) == [3]
    assert parse_channels(np.arange(2), 4) == [0, 1]
    assert parse_channels("1,1,0", 4) == [1, 0]
    with pytest.raises(BadArgument, match="channel 4 is out of range for conv: it has 4 channels"):
        parse_channels("2-4", 4, where=" for conv")
    with pytest.raises(BadArgument, match="backwards"):
        parse_channels("3-1", 4)
    with pytest.raises(BadArgument, match="comma-separated"):
        parse_channels("first", 4)
    with pytest.raises(BadArgument):
        parse_channels([0.5], 4)


def test_result_and_files(numpy_net, tmp_path):
    vis = visualize(numpy_net, "conv", "1-3", steps=4, size=16)
    assert isinstance(vis, Visualization)
    assert vis.channels == [1, 2, 3] and vis.images.shape == (3, 16, 16, 3)
    atlas = vis.atlas()
    assert atlas.dtype == np.uint8 and atlas.shape[2] == 3
    path = vis.save(tmp_path)
    assert path == tmp_path / "index.json"
    folder = tmp_path / "visualize" / "001_conv_channel"
    assert sorted(p.name for p in folder.iterdir()) == [
        "atlas.png", "channel_0001.png", "channel_0002.png", "channel_0003.png"]
    on_disk = json.loads((tmp_path / "index.json").read_text())
    run = on_disk["visualize"][0]
    assert run == json.loads(json.dumps(vis.to_json()))
    assert run["layer"] == "conv" and run["settings"]["steps"] == 4
    assert [e["activation"] for e in run["images"]] == pytest.approx(vis.activations, abs=1e-6)
    # a second run of another objective is added; the same run again replaces itself
    visualize(numpy_net, None, "0", objective="class", steps=2, size=16).save(tmp_path)
    vis.save(tmp_path)
    runs = json.loads((tmp_path / "index.json").read_text())["visualize"]
    assert [r["folder"] for r in runs] == ["visualize/output_class", "visualize/001_conv_channel"]
    assert "data:image/png;base64," in vis._repr_html_()


def test_copies_and_diversity(numpy_net):
    vis = visualize(numpy_net, "conv", "0-1", copies=2, diversity=10.0, steps=3, size=16)
    assert vis.channels == [0, 0, 1, 1]
    assert [e["file"] for e in vis.entries()] == ["channel_0000_0.png", "channel_0000_1.png",
                                                  "channel_0001_0.png", "channel_0001_1.png"]


def test_default_channels_are_one_batch(numpy_net):
    assert visualize(numpy_net, "conv", steps=1, size=16, batch_size=2).channels == [0, 1]


@pytest.mark.parametrize("kwargs,error,match", [
    ({"layer": "conv", "channels": "4"}, BadArgument, "channel 4 is out of range for conv"),
    ({"layer": None, "channels": "3", "objective": "class"}, BadArgument, "class 3 is out of range"),
    ({"layer": "input"}, BadArgument, "model's input"),
    ({"layer": "nope"}, LayerNotFound, "nope"),
    ({"layer": "conv,gap"}, BadArgument, "names 2 layers"),
    ({"layer": "gap", "objective": "neuron"}, BadArgument, "no spatial positions"),
    ({"layer": None}, BadArgument, "needs a layer"),
    ({"layer": "conv", "objective": "class"}, BadArgument, "leave --layer out"),
    ({"layer": "conv", "objective": "pixels"}, BadArgument, "objective 'pixels'"),
    ({"layer": "conv", "steps": 0}, BadArgument, "steps must be a whole number from 1"),
    ({"layer": "conv", "size": 8}, BadArgument, "size must be a whole number from 16 to 1024"),
    ({"layer": "conv", "size": 5000}, BadArgument, "size"),
    ({"layer": "conv", "lr": -1.0}, BadArgument, "lr must be a positive"),
    ({"layer": "conv", "diversity": 1.0}, BadArgument, "copies of 2 or more"),
    ({"layer": "conv", "seed": -3}, BadArgument, "seed"),
])
def test_bad_requests_fail_before_any_work(numpy_net, kwargs, error, match):
    with pytest.raises(error, match=match):
        visualize(numpy_net, **kwargs)
    assert numpy_net.calls == 0


def test_models_without_gradients_or_channels(numpy_net):
    numpy_net.gradients_unavailable = lambda: "a TFLite interpreter computes no gradients"
    with pytest.raises(UnsupportedModel, match="feature visualisation needs gradients, which numpynet cannot give: a TFLite interpreter"):
        visualize(numpy_net, "conv")


def test_a_layer_without_channels(numpy_net, monkeypatch):
    table = numpy_net.layers()
    table[2] = LayerInfo(2, "gap", "Custom", "other", None)
    monkeypatch.setattr(numpy_net, "layers", lambda: table)
    with pytest.raises(UnsupportedModel, match="layer gap has no channels"):
        visualize(numpy_net, "gap")
