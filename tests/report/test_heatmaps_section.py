"""The report's Heatmaps section: in Python, from the CLI, and in a real browser (Chromium).

The trained demo CNN (Keras) gives real top classes quickly; an image named
like an HTML tag checks the escaping; a TFLite file converted here checks the
forward-only defaults.
"""

from __future__ import annotations

import base64
import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convlens
from convlens import BadArgument, Lens, UnsupportedModel
from convlens.cli import main

EVIL = "<img src=x onerror=alert(1)>"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _section(page: str) -> str:
    match = re.search(r'<section class="cl-section" id="cl-heatmaps">(.*?)</section>', page, re.DOTALL)
    assert match, "no heatmaps section"
    return match.group(1)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("digits")
    evil = d / f"{EVIL}.png"
    Image.open(convlens.DEMO_IMAGE).save(evil)
    flipped = d / "flipped.png"
    Image.open(convlens.DEMO_IMAGE).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped)
    return [evil, flipped]


@pytest.fixture(scope="module")
def report(keras, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    lens = Lens("demo")
    return lens.report(digits, out=out, sections=["inputs", "predictions", "heatmaps"],
                       section_options={"heatmaps": {"methods": "gradcam,scorecam,ig"}}), out


@pytest.mark.keras
def test_the_section_holds_each_images_top_classes_under_each_method(report):
    rep, _ = report
    assert rep.sections == ["inputs", "predictions", "heatmaps"]
    body = _section(rep.html)
    buttons = re.findall(r'<button type="button" class="cl-hm-method" data-method="([^"]+)" '
                         r'aria-pressed="(true|false)">([^<]+)</button>', body)
    assert buttons == [("gradcam", "true", "Grad-CAM"), ("scorecam", "false", "Score-CAM"),
                       ("ig", "false", "Integrated Gradients")]
    sets = re.findall(r'<div class="cl-hm-set" data-method="([^"]+)"( hidden)?>', body)
    assert sets == [("gradcam", ""), ("scorecam", " hidden"), ("ig", " hidden")] * 2
    assert body.count("<figure>") == 2 * 3 * 3  # images x methods x top-3 classes
    # the top classes, in the order of the predictions
    first = [name for name, _ in rep.predictions[0][:3]]
    captions = re.findall(r"<figcaption>(\d)\. ([^<]+?) \((\d)\) · p ", body)[:3]
    assert [c[1] for c in captions] == first and [c[0] for c in captions] == ["1", "2", "3"]


@pytest.mark.keras
def test_the_pictures_are_the_overlays_and_the_names_are_escaped(report):
    rep, _ = report
    body = _section(rep.html)
    assert EVIL not in rep.html
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
    uris = re.findall(r'data-src="data:image/(?:jpeg|png);base64,([^"]+)"', body)
    assert len(uris) == 18
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(uris[0]))))
    # a 28x28 digit enlarged 7x to at least 192 px, then its colour bar below
    assert picture.shape[1] == 196 and picture.shape[0] > 196


@pytest.mark.keras
def test_defaults_and_options(keras, digits):
    lens = Lens("demo")
    rep = lens.report(digits[1], sections=["heatmaps"], section_options={"heatmaps": {"top": 2}})
    body = _section(rep.html)
    assert "cl-hm-method" not in body  # one method: no buttons
    assert re.findall(r'<div class="cl-hm-set" data-method="([^"]+)">', body) == ["gradcam"]
    assert body.count("<figure>") == 2
    with pytest.raises(BadArgument, match="unknown heatmaps option 'steps'"):
        lens.report(digits[1], sections=["heatmaps"], section_options={"heatmaps": {"steps": 4}})


@pytest.mark.keras
def test_a_model_that_is_not_a_classifier_gets_a_note(keras):
    L = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(2, 3, padding="same")], name="seg")
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    body = _section(Lens(model).report(image, sections=["heatmaps"]).html)
    assert "does not output one score per class" in body and "<figure>" not in body


@pytest.fixture(scope="module")
def tflite_file(tmp_path_factory) -> Path:
    import keras
    import tensorflow as tf

    L = keras.layers
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(4, 3, activation="relu"),
                              L.GlobalAveragePooling2D(), L.Dense(3, activation="softmax")], name="tiny")
    d = tmp_path_factory.mktemp("tflite")
    model.export(str(d / "saved"), format="tf_saved_model", verbose=False)
    path = d / "tiny.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(d / "saved")).convert())
    return path


def test_a_forward_only_model_gets_score_cam_and_refuses_gradient_methods(tflite_file):
    lens = Lens(tflite_file)
    image = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    body = _section(lens.report(image, sections=["heatmaps"]).html)
    assert re.findall(r'<div class="cl-hm-set" data-method="([^"]+)">', body) == ["scorecam"]
    assert "under Score-CAM" in body and body.count("<figure>") == 3
    with pytest.raises(UnsupportedModel, match="Grad-CAM needs gradients"):
        lens.report(image, sections=["heatmaps"], section_options={"heatmaps": {"methods": ["gradcam"]}})


@pytest.mark.keras
def test_cli_options_and_their_mistakes(keras, tmp_path, capsys):
    out = tmp_path / "r.html"
    code = main(["report", "demo", str(convlens.DEMO_IMAGE), "--sections", "heatmaps", "--heatmap-methods",
                 "eigencam,gradcam", "--heatmap-top", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    body = _section(out.read_text())
    assert re.findall(r'data-method="([^"]+)" aria-pressed', body) == ["eigencam", "gradcam"]
    assert body.count("<figure>") == 4
    for args, needle in ((["--sections", "inputs", "--heatmap-methods", "gradcam"], "add heatmaps to --sections"),
                         (["--heatmap-methods", "gradcm"], "unknown heatmap method 'gradcm'")):
        bad = tmp_path / "bad.html"
        assert main(["report", "demo", str(convlens.DEMO_IMAGE), *args, "--out", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not bad.exists()


# ---------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


def _wait(page, predicate: str, timeout: float = 10.0) -> None:
    """Poll a JS predicate (the page's CSP forbids the eval that wait_for_function uses)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(0.02)


@pytest.mark.keras
def test_switching_the_method_in_the_browser(browser, report, tmp_path):
    _, path = report
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (errors.append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    section = page.locator("#cl-heatmaps")
    section.scroll_into_view_if_needed()
    assert section.is_visible()
    visible = ("s => Array.from(document.querySelectorAll('.cl-hm-set'))"
               ".filter(e => !e.hidden).map(e => e.dataset.method)")
    assert page.evaluate(f"({visible})()") == ["gradcam", "gradcam"]
    _wait(page, "() => Array.from(document.querySelectorAll('.cl-hm-set:not([hidden]) img'))"
                ".every(i => i.naturalWidth > 0)")
    page.click('.cl-hm-method[data-method="scorecam"]')
    assert page.evaluate(f"({visible})()") == ["scorecam", "scorecam"]
    assert page.get_attribute('.cl-hm-method[data-method="scorecam"]', "aria-pressed") == "true"
    assert page.get_attribute('.cl-hm-method[data-method="gradcam"]', "aria-pressed") == "false"
    # the pictures of the method just shown load when they appear (they were lazy and hidden)
    _wait(page, "() => Array.from(document.querySelectorAll('.cl-hm-set:not([hidden]) img'))"
                ".every(i => i.naturalWidth > 0)")
    page.keyboard.press("Tab")  # buttons work from the keyboard too
    page.focus('.cl-hm-method[data-method="ig"]')
    page.keyboard.press("Enter")
    assert page.evaluate(f"({visible})()") == ["ig", "ig"]
    section.screenshot(path=str(tmp_path / "heatmaps.png"))
    shot = np.asarray(Image.open(tmp_path / "heatmaps.png").convert("RGB"))
    assert shot.shape[0] > 200 and shot.std() > 20  # pictures, not a blank box
    assert errors == []
    page.close()
