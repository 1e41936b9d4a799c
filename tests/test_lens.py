"""The Python API on the built-in demo model and small hand-built models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import convlens
from convlens import BadArgument, Lens, OutputError

pytestmark = pytest.mark.keras


@pytest.fixture(scope="module")
def demo(keras):
    return Lens("demo")


def test_demo_model_classifies_its_digit(demo):
    meta = json.loads((convlens.DEMO_MODEL.with_suffix(".json")).read_text())
    maps = demo.feature_maps(convlens.DEMO_IMAGE, layers="conv")
    assert int(np.argmax(maps.output[0])) == meta["sample_image"]["label"]
    assert meta["test_accuracy"] >= 0.95
    assert set(maps) == {t.name for t in demo.layers() if t.kind == "conv"}
    assert maps.inputs.shape == (1, 28, 28, 1) and 0 <= maps.inputs.min() and maps.inputs.max() <= 1


def test_several_images_one_pass_each(demo):
    digit = np.asarray(Image.open(convlens.DEMO_IMAGE))
    maps = demo.feature_maps([convlens.DEMO_IMAGE, digit, 255 - digit], layers="0,1")
    first = maps[demo.layers()[1].name]
    assert first.shape[0] == 3
    np.testing.assert_allclose(first[0], first[1], rtol=1e-6)  # the file and its pixels agree
    assert not np.allclose(first[0], first[2])
    assert [im.name for im in maps.images] == ["digit", "array1", "array2"]


def test_rendering_in_python_and_inline(demo):
    maps = demo.feature_maps(convlens.DEMO_IMAGE)
    name = demo.layers()[1].name
    rgb = maps.render(name, norm="layer", cmap="gray", columns=4)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    html = maps._repr_html_()
    assert html.count("<img src='data:image/png;base64,") == len(maps)
    assert "<td>" not in demo.layers()._repr_html_() and "conv" in demo.layers()._repr_html_()
    with pytest.raises(BadArgument, match="viridis|colormap"):
        maps.render(name, cmap="viridiss")
    with pytest.raises(convlens.LayerNotFound, match="layers="):
        maps.render("nope")


def test_save_maps_every_norm_and_index(demo, tmp_path):
    for norm in ("standardize", "minmax", "layer", "global"):
        out = tmp_path / norm
        path = demo.save_maps(convlens.DEMO_IMAGE, out, layers="all", norm=norm, max_channels=7)
        assert path == out / "index.json"
        index = json.loads(path.read_text())
        assert index["options"]["norm"] == norm
        for entry in index["maps"]:
            assert (out / entry["file"]).is_file()
            if entry["layout"] == "grid":  # vectors are drawn whole, as one strip
                assert entry["channels_shown"] == min(7, entry["channels_total"])
        # the same maps through the result: the same files and records
        again = demo.feature_maps(convlens.DEMO_IMAGE, layers="all").save(tmp_path / f"{norm}-result",
                                                                          norm=norm, max_channels=7)
        records = json.loads(again.read_text())["maps"]
        assert [(e["file"], e["channels_shown"], e["flags"]) for e in records] == \
            [(e["file"], e["channels_shown"], e["flags"]) for e in index["maps"]]


def test_maps_and_filters_share_an_output_folder(demo, tmp_path):
    demo.save_maps(convlens.DEMO_IMAGE, tmp_path, layers="conv")
    demo.save_filters(tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["maps"] and index["filters"]
    assert all((tmp_path / e["file"]).is_file() for e in index["maps"] + index["filters"])


def test_a_failure_midway_writes_nothing(demo, tmp_path, monkeypatch):
    from convlens import maps as maps_module  # save_maps draws with convlens.maps

    calls = {"n": 0}
    real = maps_module.render_map

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OutputError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(maps_module, "render_map", flaky)
    out = tmp_path / "out"
    with pytest.raises(OutputError):
        demo.save_maps(convlens.DEMO_IMAGE, out, layers="all")
    assert calls["n"] >= 3
    assert list(tmp_path.iterdir()) == []


def test_filters_of_the_demo(demo):
    kernels = demo.filters()
    first = next(iter(kernels.values()))
    assert first.shape[1:] == (1, 3, 3)
    assert all(k.dtype == np.float32 for k in kernels.values())


def test_filters_render_inline_and_gray_composites(demo, tmp_path):
    kernels = demo.filters("conv1")
    html = kernels._repr_html_()
    assert html.count("data:image/png;base64,") == 2  # one patch per filter, and filters x inputs
    grid = kernels.render("conv1")
    assert grid.dtype == np.uint8 and grid.shape[2] == 3
    path = demo.save_filters(tmp_path, layers="conv1")
    assert path == tmp_path / "index.json"
    index = json.loads(path.read_text())
    assert [e["file"] for e in index["filters"]] == ["filters/001_conv1_gray.png", "filters/001_conv1.png"]
    assert len(index["filters"][0]["l2_norms"]) == 16
    norms = np.sqrt((kernels["conv1"].astype(np.float64) ** 2).sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(index["filters"][0]["l2_norms"], norms, atol=1e-5)


def test_any_size_model_keeps_the_image_size_or_takes_size(keras):
    L = keras.layers
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, L.MaxPooling2D(name="pool")(L.Conv2D(4, 3, padding="same", name="conv")(inp)))
    lens = Lens(model)
    photo = Image.open(convlens.SAMPLE_PHOTO).resize((90, 60))
    maps = lens.feature_maps(photo)
    assert maps["conv"].shape == (1, 60, 90, 4) and maps["pool"].shape == (1, 30, 45, 4)
    assert not any("resized" in n for n in maps.notes)
    maps = lens.feature_maps(photo, size=(32, 48))
    assert maps["conv"].shape == (1, 32, 48, 4)
    assert any("resized" in n and "size asked for" in n for n in maps.notes)
    with pytest.raises(BadArgument, match="--size"):
        Lens("demo").feature_maps(convlens.DEMO_IMAGE, size=(32, 32))


def test_progress_bar_draws_on_a_terminal_only():
    import io

    from convlens.cli import BarProgress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = BarProgress(stream, delay=0.0)
        bar.start(4, "feature maps")
        for _ in range(4):
            bar.advance()
        bar.finish()
    assert tty.getvalue().rstrip().endswith("feature maps [" + "#" * 30 + "] 4/4")
    assert pipe.getvalue() == ""


def test_images_of_different_sizes_give_one_array_per_image(keras):
    inp = keras.Input((None, None, 1))
    conv = keras.layers.Conv2D(2, 3, name="c", kernel_initializer="ones", bias_initializer="zeros")
    lens = Lens(keras.Model(inp, conv(inp)), preprocess="raw")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 4, (8, 8)).astype("uint8"), rng.integers(0, 4, (9, 7)).astype("uint8"),
              rng.integers(0, 4, (9, 7)).astype("uint8")]
    maps = lens.feature_maps(images)
    got = maps["c"]
    assert isinstance(got, list) and [a.shape for a in got] == [(6, 6, 2), (7, 5, 2), (7, 5, 2)]
    assert [a.shape for a in maps.inputs] == [(8, 8, 1), (9, 7, 1), (9, 7, 1)]
    for k, image in enumerate(images):  # integer sums of a ones kernel: exact, image by image
        alone = lens.feature_maps(image)["c"]
        assert alone.shape == (1, *got[k].shape) and np.array_equal(alone[0], got[k])
        window = np.lib.stride_tricks.sliding_window_view(image.astype(np.float64), (3, 3)).sum(axis=(-1, -2))
        assert np.array_equal(got[k][..., 0], window)
    assert lens.feature_maps(images, size=(10, 12))["c"].shape == (3, 8, 10, 2)  # one size: stacked
