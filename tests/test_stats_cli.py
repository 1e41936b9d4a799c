"""Channel health through ``Lens.channel_stats`` and ``convlens stats``, on a Keras CNN with hand-set channels.

The first conv layer has four channels whose outputs are known exactly:
0 is dead (zero kernel, bias -1, ReLU), 1 is constant 2 (zero kernel, bias 2),
2 is the 3x3x3 local mean of the input, 3 is ReLU(local mean - 0.5): dead for
a dark image, alive for one with a bright half.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from convlens import ChannelStats, LayerNotFound, Lens
from convlens.cli import main
from convlens.core.stats import channel_stats

pytestmark = pytest.mark.keras


def dark_image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 51, (8, 8, 3)).astype(np.uint8)


def half_bright_image() -> np.ndarray:
    x = np.zeros((8, 8, 3), np.uint8)
    x[:, 4:] = 255
    return x


def expected_c1(image: np.ndarray) -> np.ndarray:
    """(6, 6, 4) output of c1 for an (8, 8, 3) uint8 image, computed with numpy."""
    local = sliding_window_view(image.astype(np.float64) / 255, (3, 3), axis=(0, 1)).mean(axis=(2, 3, 4))
    return np.stack([np.zeros_like(local), np.full_like(local, 2.0), local, np.maximum(local - 0.5, 0)], -1)


@pytest.fixture(scope="module")
def model(keras):
    L = keras.layers
    m = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, activation="relu", name="c1"),
                          L.MaxPooling2D(2, name="p1"), L.Flatten(name="f"), L.Dense(2, name="d")])
    kernel = np.zeros((3, 3, 3, 4), np.float32)
    kernel[..., 2:] = 1 / 27
    m.get_layer("c1").set_weights([kernel, np.array([-1.0, 2.0, 0.0, -0.5], np.float32)])
    return m


@pytest.fixture(scope="module")
def lens(model) -> Lens:
    return Lens(model)


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "hand_set.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("img")
    Image.fromarray(dark_image()).save(folder / "dark.png")
    Image.fromarray(half_bright_image()).save(folder / "bright.png")
    return folder / "dark.png", folder / "bright.png"


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_exact_numbers_of_one_image(lens):
    stats = lens.channel_stats(dark_image())
    assert isinstance(stats, ChannelStats)
    assert [(s.index, s.name, s.type) for s in stats] == [(1, "c1", "Conv2D"), (2, "p1", "MaxPooling2D")]
    c1 = stats.layer("c1")
    ref = expected_c1(dark_image()).reshape(-1, 4)
    assert (c1.images, c1.channels, c1.values_per_channel) == (1, 4, 36)
    np.testing.assert_allclose(c1.mean, ref.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(c1.std, ref.std(axis=0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(c1.max, ref.max(axis=0), rtol=1e-5)
    assert c1.mean[1] == 2.0 and c1.std[1] == 0.0
    assert c1.zero_fraction.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert c1.dead.tolist() == [True, False, False, True]
    assert c1.constant.tolist() == [True, True, False, True]
    assert not c1.nonfinite.any()
    assert c1.summary() == "c1: 2 of 4 channels are zero for this image; 1 more is constant"
    p1 = stats.layer("p1")
    assert p1.values_per_channel == 9 and p1.dead.tolist() == [True, False, False, True]
    assert stats.images == ["array0"]


def test_two_images_fold_together_and_a_channel_alive_in_one_is_not_dead(lens):
    stats = lens.channel_stats([dark_image(), half_bright_image()], layers="c1,d")
    c1 = stats.layer("c1")
    both = np.concatenate([expected_c1(dark_image()), expected_c1(half_bright_image())]).reshape(-1, 4)
    assert c1.images == 2
    assert c1.dead.tolist() == [True, False, False, False]
    assert c1.constant.tolist() == [True, True, False, False]
    np.testing.assert_allclose(c1.mean, both.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(c1.std, both.std(axis=0), rtol=1e-4, atol=1e-7)
    assert c1.zero_fraction[3] == pytest.approx((both[:, 3] == 0).mean(), abs=1e-12)
    assert c1.summary() == "c1: 1 of 4 channels is zero for these 2 images; 1 more is constant"
    d = stats.layer("d")
    assert (d.channels, d.values_per_channel, d.images) == (2, 1, 2)
    # the same numbers as feature_maps gives, folded by the core directly
    maps = lens.feature_maps([dark_image(), half_bright_image()], layers="c1,d")
    for name in ("c1", "d"):
        direct = channel_stats(maps[name])
        np.testing.assert_allclose(stats.layer(name).mean, direct.mean, rtol=1e-12)
        np.testing.assert_allclose(stats.layer(name).std, direct.std, rtol=1e-12)
        assert stats.layer(name).dead.tolist() == direct.dead.tolist()


def test_progress_and_notes(lens):
    events = []

    class Spy:
        def start(self, total, label):
            events.append(("start", total))

        def advance(self, n=1):
            events.append(("advance", n))

        def finish(self):
            events.append(("finish",))

    big = np.zeros((16, 16, 3), np.uint8)  # resized to the model's 8x8, and said so
    stats = lens.channel_stats([big, dark_image()], progress=Spy())
    assert events == [("start", 2), ("advance", 2), ("finish",)]  # both 8x8 now: one batch of two
    assert any("resized" in n for n in stats.notes)


def test_text_json_and_html(lens):
    stats = lens.channel_stats([dark_image(), half_bright_image()])
    text = str(stats)
    lines = text.splitlines()
    assert lines[1].split()[:4] == ["#", "name", "type", "channels"]
    assert lines[3].split()[:7] == ["1", "c1", "Conv2D", "4", "1", "1", "0"]
    assert lines[-1] == "p1: 1 of 4 channels is zero for these 2 images; 1 more is constant"
    data = json.loads(json.dumps(stats.to_json(), allow_nan=False))
    assert [layer["name"] for layer in data["layers"]] == ["c1", "p1"]
    assert data["layers"][0]["mean"][1] == 2.0 and data["layers"][0]["dead"] == [True, False, False, False]
    page = stats._repr_html_()
    assert page.count("<tr>") == 1 + 2 + 2 * (1 + 4)  # layer table; per layer a header and four channels
    assert "c1" in page and "1 of 4 channels is zero" in page


def test_html_escapes_every_name(lens):
    s = channel_stats(np.zeros((1, 2, 2, 1), np.float32), index=3, name="<img src=x onerror=alert(1)>",
                      type="<em>T</em>")
    page = ChannelStats([s], model="<script>m</script>", images=["<i>im</i>"])._repr_html_()
    tags = set(re.findall(r"</?([a-zA-Z]+)", page))
    assert tags == {"div", "b", "table", "tr", "th", "td", "p", "details", "summary"}  # none injected
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;script&gt;m&lt;/script&gt;" in page


def test_notebook_html_lists_a_wide_layer_s_flagged_channels_and_not_every_one():
    # ResNet-50 has 94,000 channels: a row for each made 26 MB of HTML in the notebook.
    x = np.random.default_rng(0).random((1, 3, 3, 200)).astype(np.float32) + 1
    x[..., [100, 150]] = 0
    page = ChannelStats([channel_stats(x, name="wide")])._repr_html_()
    assert page.count("<tr>") == 1 + 1 + 1 + 64  # layer table, then a header and 64 channels
    channels = re.findall(r"<tr><td style='text-align:right'>(\d+)</td>", page.split("<details>")[1])
    assert channels == [str(c) for c in [*range(62), 100, 150]]
    assert "64 of 200 channels" in page and "to_json()" in page


def test_unknown_layer_in_the_result_names_the_ones_there(lens):
    stats = lens.channel_stats(dark_image(), layers="c1")
    with pytest.raises(LayerNotFound, match="c1"):
        stats.layer("p1")


# ------------------------------------------------------------------ the command line


def test_cli_table(model_file, image_files):
    code, out, err = cli("stats", str(model_file), *map(str, image_files))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("channel statistics of ") and lines[0].endswith(" over 2 images (dark, bright)")
    rows = {line.split()[1]: line.split() for line in lines[3:5]}
    assert set(rows) == {"c1", "p1"}
    assert rows["c1"][3:7] == ["4", "1", "1", "0"]  # channels, dead, constant (not dead), non-finite
    assert lines[-2:] == ["c1: 1 of 4 channels is zero for these 2 images; 1 more is constant",
                          "p1: 1 of 4 channels is zero for these 2 images; 1 more is constant"]
    assert "channel  " not in out  # no per-channel rows without --channels


def test_cli_channels(model_file, image_files):
    code, out, err = cli("stats", str(model_file), str(image_files[0]), "--layers", "c1", "--channels")
    assert code == 0, err
    lines = out.splitlines()
    start = lines.index("1 c1 (Conv2D): 4 channels")
    assert lines[start + 1].split() == ["channel", "mean", "std", "min", "max", "zeros", "flags"]
    rows = [line.split() for line in lines[start + 3:start + 7]]
    assert rows[0] == ["0", "0", "0", "0", "0", "100.0%", "dead"]
    assert rows[1] == ["1", "2", "0", "2", "2", "0.0%", "constant"]
    assert rows[2][0] == "2" and len(rows[2]) == 6  # a live channel carries no flag
    assert rows[3][-1] == "dead"
    assert lines[-1] == "c1: 2 of 4 channels are zero for this image; 1 more is constant"


def test_cli_json(model_file, image_files):
    code, out, err = cli("stats", str(model_file), *map(str, image_files), "--layers", "conv,d", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["images"] == ["dark", "bright"]
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert list(layers) == ["c1", "d"]
    c1 = layers["c1"]
    both = np.concatenate([expected_c1(dark_image()), expected_c1(half_bright_image())]).reshape(-1, 4)
    assert c1["images"] == 2 and c1["channels"] == 4
    np.testing.assert_allclose(c1["mean"], both.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(c1["std"], both.std(axis=0), rtol=1e-4, atol=1e-7)
    assert c1["min"][:2] == [0.0, 2.0] and c1["max"][:2] == [0.0, 2.0]
    assert c1["zero_fraction"][:3] == [1.0, 0.0, 1 / 6]  # the bright image's dark left third
    assert c1["zero_fraction"] == pytest.approx((both == 0).mean(axis=0).tolist(), abs=1e-12)
    assert c1["flags"] == {"dead": [0], "constant": [0, 1], "nonfinite": []}
    assert c1["counts"] == {"dead": 1, "constant": 2, "nonfinite": 0, "flagged": 2}
    assert layers["d"]["values_per_channel"] == 1


@pytest.mark.parametrize("args, needle", [
    (["--layers", "nope"], "convlens layers"),
    (["--size", "4x4"], "fixed input"),
])
def test_cli_errors_are_one_line(model_file, image_files, args, needle):
    code, out, err = cli("stats", str(model_file), str(image_files[0]), *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convlens: error: ") and needle in lines[0], err


def test_cli_missing_image_is_one_line(model_file, tmp_path):
    code, _, err = cli("stats", str(model_file), str(tmp_path / "missing.png"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "missing.png" in err


def test_cli_as_a_process(model_file, image_files):
    proc = subprocess.run([sys.executable, "-m", "convlens", "stats", str(model_file), str(image_files[1]),
                           "--layers", "p1", "--json"], capture_output=True, text=True, env=dict(os.environ),
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    p1 = json.loads(proc.stdout)["layers"][0]
    assert p1["name"] == "p1" and p1["dead"] == [True, False, False, False]
    proc = subprocess.run([sys.executable, "-m", "convlens", "stats", str(model_file), str(image_files[1]),
                           "--layers", "zzz"], capture_output=True, text=True, env=dict(os.environ),
                          timeout=600, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("convlens: error: ")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


class _FakeAdapter:
    """A framework-free adapter: two conv layers whose outputs are the batch's mean; can drop layer 2."""

    framework, name, input_shape, preprocess = "fake", "fake", (4, 4, 1), "raw"
    class_names, class_names_source, final_activation = None, "", None

    def gradients_unavailable(self):
        return "a fake adapter has no gradients"

    def gradients(self, batch, target, layers=(), *, wrt_input=False, need_output=True):
        raise NotImplementedError

    def __init__(self, drop_second: bool) -> None:
        self.drop_second = drop_second
        self.retained: list[bool] = []

    def layers(self):
        from convlens import LayerInfo

        return [LayerInfo(0, "in", "Input", "input", (4, 4, 1)), LayerInfo(1, "a", "Conv", "conv", (4, 4, 2)),
                LayerInfo(2, "b", "Conv", "conv", (4, 4, 2))]

    def run(self, batch, wanted, on_output):
        import weakref

        for i in wanted:
            if i == 2 and self.drop_second:
                continue
            out = np.broadcast_to(batch.mean(axis=(1, 2, 3))[:, None, None, None],
                                  (len(batch), 4, 4, 2)).astype(np.float32)
            ref = weakref.ref(out)
            on_output(i, out)
            del out
            self.retained.append(ref() is not None)  # was the map kept after the callback?
        return np.zeros((len(batch), 1), np.float32)

    def kernels(self, index):
        raise NotImplementedError


def test_maps_are_folded_and_dropped_layer_by_layer():
    adapter = _FakeAdapter(drop_second=False)
    stats = Lens(adapter).channel_stats([np.full((4, 4), 3, np.uint8), np.full((4, 4), 5, np.uint8)])
    assert adapter.retained == [False] * 2  # one batch of both images; no map outlives its callback
    assert [s.name for s in stats] == ["a", "b"] and stats.layer("b").mean.tolist() == [4.0, 4.0]
    assert stats.layer("a").std.tolist() == [1.0, 1.0] and stats.layer("a").images == 2


def test_a_layer_the_adapter_never_produced_is_left_out_and_noted():
    stats = Lens(_FakeAdapter(drop_second=True)).channel_stats(np.zeros((4, 4), np.uint8))
    assert [s.name for s in stats] == ["a"]
    assert stats.notes == ["the model produced no output for b; left out (select other layers, "
                           "see convlens layers MODEL)"]
    assert stats.layer("a").dead.tolist() == [True, True]
