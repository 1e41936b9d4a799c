"""``Lens.heatmaps``: arrays at both resolutions, overlays, files, the notebook view, bad input.

The trained demo CNN (Keras) is the model: it is small enough that every
method runs in a fraction of a second, and its maps can be compared with the
methods' own results exactly. A hand-built map-output network stands in for a
segmentation model, and a TFLite file (converted here) for a forward-only one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convlens
from convlens import BadArgument, BadImage, Lens, methods
from convlens.heatmaps import Heatmaps, parse_methods
from convlens.images import load_image, prepare
from convlens.render.overlay import resize_map

DIGITS = [f"digit {d}" for d in range(10)]
EVIL = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def lens(keras) -> Lens:
    return Lens("demo")


@pytest.fixture(scope="module")
def wide_digit(tmp_path_factory) -> Path:
    """The demo digit stretched to 84x56 (W x H): not the network's 28x28, not square."""
    path = tmp_path_factory.mktemp("img") / "wide.png"
    Image.open(convlens.DEMO_IMAGE).resize((84, 56), Image.Resampling.NEAREST).save(path)
    return path


@pytest.fixture(scope="module")
def both(lens, wide_digit) -> Heatmaps:
    return lens.heatmaps([convlens.DEMO_IMAGE, wide_digit], "gradcam,scorecam,ig", labels=DIGITS)


pytestmark = pytest.mark.keras


def test_maps_are_the_methods_own_at_the_input_resolution(lens, both):
    batch = np.stack([prepare(load_image(convlens.DEMO_IMAGE), size=(28, 28), channels=1)[0],
                      prepare(load_image(both.images[1].source), size=(28, 28), channels=1)[0]])
    assert both.methods == ["gradcam", "scorecam", "ig"]
    assert len(both) == 6  # 2 images x 3 methods, top-1 each
    for name in both.methods:
        want = methods.create(name).compute(lens.adapter, batch)
        for i in range(2):
            entry = both.find(i, name)
            assert entry.class_index == int(want.classes[i]) == 7
            assert entry.label == "digit 7"
            assert entry.map.shape == (28, 28)
            np.testing.assert_allclose(entry.map, want.maps[i], atol=1e-6)
            assert entry.score == pytest.approx(float(want.scores[i]), rel=1e-5)
    assert both.find(0, "ig").signed and not both.find(0, "gradcam").signed
    assert "completeness_gap" in both.find(0, "ig").extra


def test_the_original_resolution_map_is_the_input_map_resized_to_the_image(both):
    small = both.map(1, "gradcam")
    full = both.map(1, "gradcam", original=True)
    assert small.shape == (28, 28)
    assert full.shape == (56, 84)  # the image as given, height x width
    np.testing.assert_array_equal(full, resize_map(small, (56, 84)))


def test_probabilities_and_captions(both):
    entry = both.find(0, "gradcam")
    # the demo ends in a softmax: the score is the probability
    assert entry.scores_are_probabilities
    assert entry.probability == pytest.approx(entry.score, abs=1e-6)
    assert entry.caption().startswith("Grad-CAM · digit 7 (7) · p 1.000 · layer conv3")


def test_several_classes_by_index_and_name(lens):
    hm = lens.heatmaps(convlens.DEMO_IMAGE, "gradcam", target=["digit 3", "7,1"], labels=DIGITS)
    assert [e.class_index for e in hm.entries] == [3, 7, 1]
    assert hm.find(0, target="digit 1") is hm.entries[2]
    assert hm.find(0, target=7) is hm.entries[1]
    assert not np.allclose(hm.entries[0].map, hm.entries[1].map)
    with pytest.raises(BadArgument, match="digit 3 \\(3\\), digit 7 \\(7\\), digit 1 \\(1\\)"):
        hm.find(0, target=5)
    with pytest.raises(BadArgument, match="scorecam.*gradcam"):
        hm.find(0, "scorecam")


def test_render_blends_on_the_image_as_given(both):
    rgb = both.render(1, "gradcam")
    assert rgb.dtype == np.uint8 and rgb.ndim == 3
    # 84x56 is enlarged by an integer factor (to at least 256 px): 4 -> 336 wide
    assert rgb.shape[1] == 336
    plain = both.render(1, "gradcam", colorbar=False, alpha=0.0)
    pixels = np.asarray(Image.open(both.images[1].source).convert("RGB"))
    np.testing.assert_array_equal(plain[-224:, :336], pixels.repeat(4, 0).repeat(4, 1))


def test_save_writes_overlays_arrays_and_an_index(both, tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"maps": [{"file": "keep.png"}]}))
    (tmp_path / "keep.png").write_bytes(b"x")
    path = both.save(tmp_path)
    assert path == tmp_path / "index.json"
    index = json.loads(path.read_text())
    assert index["maps"] == [{"file": "keep.png"}]  # another command's entries stay
    assert len(index["heatmaps"]) == 6
    rec = next(r for r in index["heatmaps"] if r["image"] == "wide" and r["method"] == "ig")
    assert rec["file"] == "heatmaps/wide/ig_7.png" and rec["array"] == "heatmaps/wide/ig_7.npy"
    assert (rec["class"], rec["label"], rec["signed"], rec["range"]) == (7, "digit 7", True, [-1.0, 1.0])
    arr = np.load(tmp_path / rec["array"], allow_pickle=False)
    assert arr.dtype == np.float32 and arr.shape == (56, 84) == tuple(rec["array_shape"])
    np.testing.assert_array_equal(arr, both.map("wide", "ig", original=True))
    png = Image.open(tmp_path / rec["file"])
    assert png.mode == "RGB" and png.width == 336


def test_a_failing_save_writes_nothing(both, tmp_path, monkeypatch):
    calls = []

    def broken(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return np.zeros((4, 4, 3), np.uint8)

    monkeypatch.setattr(Heatmaps, "render", broken)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        both.save(out)
    assert not out.exists()


def test_notebook_view_escapes_names(lens, tmp_path):
    path = tmp_path / f"{EVIL}.png"
    Image.open(convlens.DEMO_IMAGE).save(path)
    hm = lens.heatmaps(path, "gradcam", labels=[EVIL] * 10)
    assert hm.images[0].name == EVIL
    page = hm._repr_html_()
    assert EVIL not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("data:image/png;base64,") == 1


def test_method_names_and_options(lens):
    assert parse_methods("Grad-CAM++, scorecam,gradcam++") == ["gradcam++", "scorecam"]
    hm = lens.heatmaps(convlens.DEMO_IMAGE, ["ig", "occlusion"],
                       method_options={"steps": 4, "window": 7, "stride": 7})
    assert hm.find(0, "ig").extra["steps"] == 4
    assert hm.find(0, "occlusion").extra["window"] == 7
    with pytest.raises(BadArgument, match="'steps' is an option of ig, not of gradcam"):
        lens.heatmaps(convlens.DEMO_IMAGE, "gradcam", method_options={"steps": 4})
    with pytest.raises(BadArgument, match="did you mean gradcam"):
        lens.heatmaps(convlens.DEMO_IMAGE, "gradcm")


# ---------------------------------------------------------------- bad input, before any pass


@pytest.fixture()
def no_pass(lens, monkeypatch):
    """Fails the test if the model runs at all."""
    def run(*args, **kwargs):
        raise AssertionError("a forward pass ran before the input was checked")

    monkeypatch.setattr(lens.adapter, "run", run)
    monkeypatch.setattr(lens.adapter, "gradients", run)
    return lens


def test_a_class_out_of_range_or_unknown_fails_before_any_pass(no_pass):
    with pytest.raises(BadArgument, match=r"class 12 is out of range: the model has 10 classes \(0-9\)"):
        no_pass.heatmaps(convlens.DEMO_IMAGE, "gradcam", target=12)
    with pytest.raises(BadArgument, match="unknown class 'digit 77'; closest: 'digit 7'"):
        no_pass.heatmaps(convlens.DEMO_IMAGE, "gradcam", target="digit 77", labels=DIGITS)


def test_a_layer_without_spatial_maps_fails_before_any_pass(no_pass):
    with pytest.raises(BadArgument, match="'flatten' outputs .* not 2-D maps.*conv3 7x7"):
        no_pass.heatmaps(convlens.DEMO_IMAGE, "scorecam", layer="flatten")


def test_an_image_of_one_colour_fails_before_any_pass(no_pass, tmp_path):
    Image.new("L", (40, 30), 9).save(tmp_path / "flat.png")
    with pytest.raises(BadImage, match="flat has the same value at every pixel"):
        no_pass.heatmaps(tmp_path / "flat.png", "gradcam")


@pytest.fixture(scope="module")
def segmenter(keras) -> Lens:
    """Output (8, 8, 3): a per-pixel class map, not one score per class."""
    L = keras.layers
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, padding="same", activation="relu",
                                                                 name="c1"),
                              L.Conv2D(3, 1, name="classes")], name="seg")
    return Lens(model)


def test_a_map_output_needs_a_class(segmenter):
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    with pytest.raises(BadArgument, match=r"shape \(8, 8, 3\), not one score per class.*--class"):
        segmenter.heatmaps(image, "gradcam")
    hm = segmenter.heatmaps(image, "gradcam", target=2)
    assert hm.entries[0].class_index == 2 and hm.entries[0].probability is None
    assert "score" in hm.entries[0].caption()

