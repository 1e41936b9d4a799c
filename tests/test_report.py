"""The HTML report, in Python and in a real browser (Debian's Chromium driven by Playwright).

One tiny Keras CNN with hand-set weights, saved as .keras, makes every number
exact: its first conv layer has a dead channel (zero kernel and bias), a
constant channel (bias 0.5) and two channels that copy the red and green
input; a max-pool, a 1x1 conv that moves those to three channels, a global
average pool and a dense layer of logits (not probabilities, so the report
applies softmax) follow. The same network is saved twice: with that conv layer
named ``conv``, and named ``<img src=x onerror=alert(1)>`` (the escaping case).
The latter runs one pass per Lens: TensorFlow's traced second pass rejects the
name as a scope name (an adapter matter, see the report to the lead).
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens import BadArgument, Lens, OutputError
from convlens.cli import main
from convlens.render.html import escape, json_for_script
from convlens.report import register_section, unregister_section

EVIL = "<img src=x onerror=alert(1)>"
CONV = "conv"
EVIL_LABEL = "<script>alert(3)</script> & co"
EVIL_IMAGE = "cat <i>x <img src=y onerror=alert(2)>"  # no "/": it is a file name
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _pixels() -> np.ndarray:
    """An 8x8 RGB image: red a ramp (7 to 224), green its complement, blue zero."""
    i, j = np.mgrid[0:8, 0:8]
    red = 28 * i + 3 * j + 7
    green = 255 - red
    return np.stack([red, green, np.zeros_like(red)], axis=-1).astype(np.uint8)


def _second() -> np.ndarray:
    """The second image of the several-images report: the first, mirrored left to right."""
    return np.ascontiguousarray(_pixels()[:, ::-1])


def _expected_logits(rgb: np.ndarray) -> np.ndarray:
    """What the hand-set network computes: [0.5, mean(maxpool(R)), mean(maxpool(G))] / 255 scale."""
    x = rgb.astype(np.float64) / 255.0
    pooled = x.reshape(4, 2, 4, 2, 3).max(axis=(1, 3))
    return np.array([0.5, pooled[..., 0].mean(), pooled[..., 1].mean()])


def _save_model(keras, path: Path, conv_name: str) -> None:
    inp = keras.Input((8, 8, 3), name="pixels")
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=conv_name)
    x = conv(inp)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    mix = keras.layers.Conv2D(3, 1, name="mix")
    x = mix(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    dense = keras.layers.Dense(3, name="logits")
    out = dense(x)
    model = keras.Model(inp, out, name="tiny")
    k = np.zeros((3, 3, 3, 4), np.float32)
    b = np.zeros(4, np.float32)
    b[1] = 0.5            # channel 1: constant 0.5
    k[1, 1, 0, 2] = 1.0   # channel 2: the red input
    k[1, 1, 1, 3] = 1.0   # channel 3: the green input; channel 0 stays dead
    conv.set_weights([k, b])
    km = np.zeros((1, 1, 4, 3), np.float32)
    for j in range(3):
        km[0, 0, j + 1, j] = 1.0  # mix channel j = conv channel j + 1
    mix.set_weights([km, np.zeros(3, np.float32)])
    dense.set_weights([np.eye(3, dtype=np.float32), np.zeros(3, np.float32)])
    model.save(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory, keras):
    root = tmp_path_factory.mktemp("report")
    model_path, evil_path = root / "tiny.keras", root / "evil.keras"
    _save_model(keras, model_path, CONV)
    _save_model(keras, evil_path, EVIL)
    image_path = root / f"{EVIL_IMAGE}.png"
    Image.fromarray(_pixels()).save(image_path)
    labels = root / "labels.txt"
    labels.write_text(f"zero\n{EVIL_LABEL}\ntwo\n")
    return {"root": root, "model": model_path, "evil": evil_path, "image": image_path, "labels": labels}


@pytest.fixture(scope="module")
def lens(files):
    return Lens(str(files["model"]))


@pytest.fixture(scope="module")
def single(files):
    """A report of one image by the model whose first layer is named EVIL, written to disk."""
    out = files["root"] / "single.html"
    report = Lens(str(files["evil"])).report(files["image"], labels=files["labels"], out=out)
    return report, out


@pytest.fixture(scope="module")
def several(files, lens):
    """A report of two images: the file and another array."""
    out = files["root"] / "several.html"
    report = lens.report([files["image"], _second()], labels=files["labels"], out=out, norm="minmax")
    return report, out


def _data(page_html: str) -> dict:
    m = re.search(r'<script type="application/json" id="cl-data">(.*?)</script>', page_html, re.DOTALL)
    assert m is not None
    return json.loads(m.group(1))


# ---------------------------------------------------------------- Python


@pytest.mark.keras
def test_statistics_and_predictions_are_exact(single, files):
    report, out = single
    s = report.stats[EVIL]
    assert s.dead.tolist() == [True, False, False, False]
    assert s.constant.tolist() == [True, True, False, False]
    rgb = _pixels().astype(np.float64) / 255
    np.testing.assert_allclose(s.mean, [0, 0.5, rgb[..., 0].mean(), rgb[..., 1].mean()], rtol=1e-6)
    np.testing.assert_allclose(s.max, [0, 0.5, rgb[..., 0].max(), rgb[..., 1].max()], rtol=1e-6)
    assert report.stats["pool"].dead.tolist() == [True, False, False, False]
    assert report.stats["mix"].constant.tolist() == [True, False, False]
    # the global average pool gives one value per unit: constant by definition, so not flagged
    gap = report.stats["gap"]
    assert gap.constant.all() and gap.flagged == 0 and s.flagged == 2
    assert _data(report.html)["stats"][3]["flags"] == {"dead": [], "constant": [], "nonfinite": []}
    logits = _expected_logits(_pixels())
    p = np.exp(logits) / np.exp(logits).sum()
    top = report.predictions[0]
    assert [name for name, _ in top] == [["zero", EVIL_LABEL, "two"][j] for j in np.argsort(-p)]
    np.testing.assert_allclose([prob for _, prob in top], np.sort(p)[::-1], rtol=1e-5)
    assert out.read_text(encoding="utf-8") == report.html and report.path == out
    assert report.sections == ["inputs", "predictions", "layers", "maps", "heatmaps", "stats", "filters"]


@pytest.mark.keras
def test_page_is_self_contained_and_escaped(single):
    page = single[0].html
    assert '<meta http-equiv="Content-Security-Policy"' in page and "default-src &#x27;none&#x27;" in page
    assert re.search(r"(src|href)=[\"']?(https?:)?//", page) is None  # nothing from the network
    assert EVIL not in page and escape(EVIL) in page
    assert EVIL_LABEL.split(" &")[0] not in page  # the label's <script> only ever appears escaped
    data_block = re.search(r'id="cl-data">(.*?)</script>', page, re.DOTALL).group(1)
    assert "<" not in data_block and ">" not in data_block and "&" not in data_block
    assert json_for_script({"k": "</script><!--&"}) == '{"k":"\\u003c/script\\u003e\\u003c!--\\u0026"}'
    assert _data(page)["layers"][0]["name"] == EVIL


@pytest.mark.keras
def test_jupyter_shows_the_page_in_a_sandboxed_iframe(single):
    html = single[0]._repr_html_()
    assert html.startswith("<iframe") and 'sandbox="allow-scripts"' in html
    srcdoc = re.search(r'srcdoc="([^"]*)"', html).group(1)
    assert "<" not in srcdoc and "&amp;lt;img src=x" in srcdoc  # escaped in the page, then again


@pytest.mark.keras
def test_bad_labels_out_and_sections_fail_before_writing(files, lens, tmp_path):
    out = tmp_path / "r.html"
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    with pytest.raises(BadArgument, match="2 names but tiny outputs 3 classes"):
        lens.report(files["image"], labels=short, out=out)
    with pytest.raises(BadArgument, match="labels file not found"):
        lens.report(files["image"], labels=tmp_path / "missing.txt", out=out)
    with pytest.raises(BadArgument, match="unknown report section 'heatmap'"):
        lens.report(files["image"], sections=["maps", "heatmap"], out=out)
    with pytest.raises(OutputError, match="is a folder"):
        lens.report(files["image"], out=tmp_path)
    assert not out.exists() and list(tmp_path.iterdir()) == [short]


@pytest.mark.keras
def test_a_failing_section_leaves_the_old_file_whole(files, lens, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("old report")

    def broken(ctx):
        raise BadArgument("this section cannot be built")

    register_section("broken", "Broken", order=99)(broken)
    try:
        with pytest.raises(BadArgument, match="cannot be built"):
            lens.report(files["image"], out=out)
    finally:
        unregister_section("broken")
    assert out.read_text() == "old report" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


@pytest.mark.keras
def test_later_methods_add_sections_without_touching_the_rest(files, lens):
    def extra(ctx):
        return f'<p id="cl-extra-body">{escape(ctx.layers[0].name)} of {len(ctx.stats)} layers</p>'

    register_section("extra", "Extra <heatmaps>", order=45)(extra)
    try:
        report = lens.report(files["image"], sections=["maps", "extra", "stats"])
    finally:
        unregister_section("extra")
    assert report.sections == ["maps", "extra", "stats"]
    page = report.html
    assert page.index('id="cl-maps"') < page.index('id="cl-extra"') < page.index('id="cl-stats"')
    assert "conv of 4 layers" in page  # conv, pool, mix and the global average pool
    assert "Extra &lt;heatmaps&gt;" in page
    assert 'href="#cl-extra"' in page and 'id="cl-filters"' not in page


@pytest.mark.keras
def test_not_a_classifier_has_no_predictions(files, keras, tmp_path):
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, keras.layers.Conv2D(2, 3, name="only")(inp), name="fcn")
    report = Lens(model).report(files["image"])
    # a map of class scores is a segmenter's: the section lists the classes by the area they win
    assert report.predictions == [[]] and "is a segmenter" in report.html
    with pytest.raises(BadArgument, match="not a classifier"):
        Lens(model).report(files["image"], labels=["a", "b"])


@pytest.fixture(scope="module")
def any_size(files, keras):
    """A model that takes any image size, a report of two images of different sizes, one global scale."""
    inp = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(2, 1, name="copy")
    model = keras.Model(inp, keras.layers.MaxPooling2D(2, name="half")(conv(inp)), name="anysize")
    conv.set_weights([np.eye(3, 2, dtype=np.float32)[None, None], np.array([0.0, 1.0], np.float32)])
    tall = np.zeros((12, 6, 3), np.uint8)
    tall[..., 0] = np.arange(12 * 6).reshape(12, 6) * 3
    tall[..., 1] = 255
    report = Lens(model).report([_pixels(), tall], norm="global", out=files["root"] / "any.html")
    return report, files["root"] / "any.html", tall


@pytest.mark.keras
def test_images_of_different_sizes_get_their_own_geometry_and_one_global_scale(any_size):
    report, _, tall = any_size
    data = _data(report.html)
    copy = data["layers"][0]
    assert [(g["H"], g["W"]) for g in copy["geo"]] == [(8, 8), (12, 6)]
    assert [(g["H"], g["W"]) for g in data["layers"][1]["geo"]] == [(4, 4), (6, 3)]
    # global: one scale per image over both drawn layers, here the copy layer's range
    for k, img in enumerate([_pixels(), tall]):
        x = img.astype(np.float64) / 255
        lo, hi = min(x[..., 0].min(), x[..., 1].min() + 1), max(x[..., 0].max(), x[..., 1].max() + 1)
        for layer in data["layers"]:
            np.testing.assert_allclose(layer["scales"][k]["lo"], [lo, lo], rtol=1e-3)
            np.testing.assert_allclose(layer["scales"][k]["hi"], [hi, hi], rtol=1e-3)
    assert report.stats["copy"].images == 2 and report.stats["copy"].values_per_channel in (64, 72)


@pytest.mark.keras
def test_the_colour_bar_of_an_averaged_down_map_names_the_values_drawn(files, lens):
    # tile_size 4: the 8x8 maps are drawn as 4x4 means of 2x2 blocks; minmax stretches those.
    report = lens.report(files["image"], CONV, sections=["maps"], norm="minmax", tile_size=4)
    layer = _data(report.html)["layers"][0]
    assert (layer["geo"][0]["h"], layer["geo"][0]["H"]) == (4, 8)
    red = _pixels()[..., 0].astype(np.float64) / 255
    blocks = red.reshape(4, 2, 4, 2).mean(axis=(1, 3))
    scale = layer["scales"][0]
    np.testing.assert_allclose([scale["lo"][2], scale["hi"][2]], [blocks.min(), blocks.max()], rtol=1e-3)
    # the value rows still tell the layer's own values, at full resolution
    np.testing.assert_allclose([scale["min"][2], scale["max"][2]], [red.min(), red.max()], rtol=1e-3)


@pytest.mark.keras
def test_a_report_without_the_maps_section_carries_no_grids(files, lens):
    report = lens.report(files["image"], sections=["layers", "stats"], max_channels=2)
    data = _data(report.html)
    assert data["layers"] == []
    assert not re.search(r"<tr[^>]*data-goto", report.html) and "see its maps" not in report.html  # no dead links
    assert [s["name"] for s in data["stats"]] == [CONV, "pool", "mix", "gap"]
    assert not any("feature maps" in note or "averaged down" in note for note in report.notes)


@pytest.mark.keras
def test_a_big_input_is_shown_small_in_the_page(keras):
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, keras.layers.Conv2D(1, 1, name="one")(inp), name="anysize1")
    photo = np.random.default_rng(0).integers(0, 256, (900, 1200, 3), dtype=np.uint8)
    report = Lens(model).report(photo, sections=["inputs"])
    m = re.search(r'alt="array0 as the network sees it" src="data:image/png;base64,([^"]+)"', report.html)
    assert m is not None
    assert Image.open(io.BytesIO(base64.b64decode(m.group(1)))).size == (384, 288)
    assert "as the network sees it: 900×1200×3" in report.html and report.nbytes < 1_500_000


def test_cli_end_to_end_and_an_error_leaves_no_file(files, tmp_path, capsys):
    out = tmp_path / "cli" / "report.html"
    rc = main(["report", str(files["model"]), str(files["image"]), "--out", str(out), "--layers", "conv",
               "--labels", str(files["labels"]), "--cmap", "magma", "--max-channels", "3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"wrote {out}" in captured.out and "2 layers, 1 image" in captured.out
    assert "channel health: 3 of 7 channels are dead, constant or non-finite in 2 of 2 layers" in captured.out
    assert "first 3 channels of each layer (1 layer has more" in captured.err  # a note: notes go to stderr
    data = _data(out.read_text(encoding="utf-8"))
    assert data["cmap"] == "magma" and [layer["shown"] for layer in data["layers"]] == [3, 3]
    bad = tmp_path / "bad.html"
    rc = main(["report", str(files["model"]), str(files["image"]), "--out", str(bad), "--layers", "nope"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("convlens: error: ") and err.count("\n") == 1
    assert not bad.exists() and not any(p.name.startswith(".bad") for p in tmp_path.iterdir())


# ---------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


class Watched:
    """A page that records console errors, page errors, dialogs and every request."""

    def __init__(self, browser, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

        def dialog(d) -> None:
            self.dialogs.append(d.message)
            d.dismiss()

        self.page.on("dialog", dialog)
        self.page.goto(url)
        self.page.wait_for_load_state("load")

    def close(self) -> None:
        self.page.close()


@pytest.fixture()
def opened(browser, single):
    w = Watched(browser, single[1].as_uri())
    yield w
    w.close()


def _wait(page, predicate: str, timeout: float = 10.0) -> None:
    """Poll a JS predicate (an arrow function) until it holds.

    Playwright's wait_for_function polls with eval() inside the page, which the
    report's Content-Security-Policy forbids; page.evaluate is not subject to it.
    """
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(0.02)


def _click_sort(page, header: str, expected: str) -> None:
    """Click a sortable table's header until its ``aria-sort`` reads ``expected``.

    Under load, lazy pictures can still be laying out when Playwright clicks, and a click
    aimed at the header may land beside it; the header's state says whether it was taken,
    so a missed click (state unchanged) is repeated, never a taken one.
    """
    before = page.get_attribute(header, "aria-sort")
    for _ in range(5):
        page.click(header)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            now = page.get_attribute(header, "aria-sort")
            if now == expected:
                return
            if now != before:
                raise AssertionError(f"{header} sorted {now}, expected {expected}")
            time.sleep(0.05)
    raise AssertionError(f"clicking {header} never sorted it {expected}")


def _tile_point(page, layer: int, channel: int, image: int = 0) -> tuple[float, float]:
    """Viewport coordinates of the centre of one tile of the shown grid."""
    return page.evaluate(
        """([pos, ch, k]) => {
            const D = JSON.parse(document.getElementById('cl-data').textContent).layers[pos];
            const L = Object.assign({}, D, D.geo[k]);
            const img = document.getElementById('cl-map-img');
            img.scrollIntoView({block: 'center'});
            const r = img.getBoundingClientRect();
            const col = ch % L.cols, row = Math.floor(ch / L.cols);
            const nx = L.sep + col * (L.tw + L.sep) + L.tw / 2, ny = L.sep + row * (L.th + L.sep) + L.th / 2;
            return [r.left + img.clientLeft + nx * img.clientWidth / img.naturalWidth,
                    r.top + img.clientTop + ny * img.clientHeight / img.naturalHeight];
        }""", [layer, channel, image])


def _canvas_rgb(page) -> np.ndarray:
    shape_and_pixels = page.evaluate(
        """() => { const c = document.getElementById('cl-viewer-canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   return [c.height, c.width, Array.from(d)]; }""")
    h, w, flat = shape_and_pixels
    return np.array(flat, np.uint8).reshape(h, w, 4)[..., :3]


def _tile_rgb(report, layer: int, channel: int, image: int = 0) -> np.ndarray:
    """The same tile cut from the grid PNG in Python, at the map's own size."""
    L = _data(report.html)["layers"][layer]
    L = {**L, **L["geo"][image]}
    grid = np.asarray(Image.open(io.BytesIO(base64.b64decode(L["grids"][image]))).convert("RGB"))
    col, row = channel % L["cols"], channel // L["cols"]
    y, x = L["sep"] + row * (L["th"] + L["sep"]), L["sep"] + col * (L["tw"] + L["sep"])
    f = L["th"] // L["h"]
    # The tile is the map enlarged f times; nearest-neighbour sampling takes each block's centre
    # (which matters only where a red cross marks a flagged channel).
    return grid[y + f // 2:y + L["th"]:f, x + f // 2:x + L["tw"]:f]


def test_page_opens_offline_without_errors(opened):
    page = opened.page
    assert page.title() == "convlens report: tiny"
    for key in ("inputs", "predictions", "layers", "maps", "stats", "filters"):
        assert page.locator(f"#cl-{key}").is_visible()
    assert page.text_content("#cl-map-title") == f"1 {EVIL} · Conv2D · 8×8×4"
    _wait(page, "() => document.getElementById('cl-map-img').naturalWidth > 0")
    assert all(u.startswith(("file:", "data:")) for u in opened.requests), opened.requests
    assert opened.errors == [] and opened.dialogs == []


def test_clicking_a_layer_then_a_tile_opens_the_channel_and_arrows_step(opened, single):
    page = opened.page
    page.click(".cl-layer[data-layer='1']")  # the pool layer
    assert page.text_content("#cl-map-title") == "2 pool · MaxPooling2D · 4×4×4"
    _wait(page, "() => document.getElementById('cl-map-img').naturalWidth > 0")
    assert page.locator("#cl-viewer").is_hidden()
    page.mouse.click(*_tile_point(page, 1, 2))
    assert page.locator("#cl-viewer").is_visible()
    assert page.text_content("#cl-viewer-layer") == "pool" and page.text_content("#cl-viewer-channel") == "2"
    _wait(page, "() => document.getElementById('cl-viewer-canvas').getAttribute('data-channel') === '2'")
    shown = _canvas_rgb(page)
    assert shown.shape == (4, 4, 3)  # the map at its own size (4x4), enlarged only by CSS
    np.testing.assert_array_equal(shown, _tile_rgb(single[0], 1, 2))
    info = page.text_content("#cl-viewer-info")
    red = _pixels()[..., 0].astype(np.float64).reshape(4, 2, 4, 2).max(axis=(1, 3)) / 255
    assert f"{red.min():.4g} … {red.max():.4g}" in info and "channel2 of 4" in info

    page.keyboard.press("ArrowRight")
    assert page.text_content("#cl-viewer-channel") == "3"
    _wait(page, "() => document.getElementById('cl-viewer-canvas').getAttribute('data-channel') === '3'")
    np.testing.assert_array_equal(_canvas_rgb(page), _tile_rgb(single[0], 1, 3))
    page.keyboard.press("ArrowRight")  # past the last channel: back to the first
    assert page.text_content("#cl-viewer-channel") == "0"
    assert "dead: zero everywhere" in page.text_content("#cl-viewer-info")
    page.keyboard.press("ArrowLeft")
    assert page.text_content("#cl-viewer-channel") == "3"
    page.keyboard.press("ArrowDown")  # next layer, the channel kept where it exists (mix has 3)
    assert page.text_content("#cl-viewer-layer") == "mix" and page.text_content("#cl-viewer-channel") == "2"
    assert page.text_content("#cl-map-title").startswith("3 mix")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    assert page.text_content("#cl-viewer-layer") == EVIL
    page.keyboard.press("Escape")
    assert page.locator("#cl-viewer").is_hidden()
    page.focus("#cl-map-img")  # the keyboard alone: Enter on the grid opens its first channel
    page.keyboard.press("Enter")
    assert page.text_content("#cl-viewer-layer") == EVIL and page.text_content("#cl-viewer-channel") == "0"
    page.keyboard.press("Escape")
    assert opened.errors == [] and opened.dialogs == []


def _column(page, table: str, index: int) -> list[str]:
    return page.eval_on_selector_all(
        f"{table} tbody tr", f"rows => rows.map(r => r.cells[{index}].getAttribute('data-key') ?? "
                             f"r.cells[{index}].textContent)")


def test_statistics_tables_sort(opened):
    page = opened.page
    summary = page.text_content(".cl-summary")
    assert f"{EVIL}: 1 of 4 channels is zero for this image; 1 more is constant" in summary
    dead = "#cl-stats-layers thead th:nth-child(5)"
    assert page.text_content(dead).strip() == "dead"
    assert _column(page, "#cl-stats-layers", 1) == [EVIL, "pool", "mix", "gap"]
    assert _column(page, "#cl-stats-layers", 5) == ["1", "1", "1", "0"]  # constant (not dead)
    assert page.locator(".cl-layer .cl-flag").all_text_contents() == ["2 of 4 flagged", "2 of 4 flagged",
                                                                       "1 of 3 flagged"]
    _click_sort(page, dead, "ascending")
    assert [float(v) for v in _column(page, "#cl-stats-layers", 4)] == [0, 0, 1, 1]
    assert _column(page, "#cl-stats-layers", 1) == ["mix", "gap", EVIL, "pool"]  # ties keep their order
    assert page.get_attribute(dead, "aria-sort") == "ascending"
    _click_sort(page, dead, "descending")
    assert _column(page, "#cl-stats-layers", 1) == [EVIL, "pool", "mix", "gap"]
    assert page.get_attribute(dead, "aria-sort") == "descending"
    _click_sort(page, "#cl-stats-layers thead th:nth-child(2)", "ascending")  # by name, as text
    assert _column(page, "#cl-stats-layers", 1) == ["<img src=x onerror=alert(1)>", "gap", "mix", "pool"]

    page.click(f"#cl-stats-layers tr.cl-stats-row:has-text('{EVIL}')")
    assert page.locator("#cl-channels").is_visible()
    assert page.text_content("#cl-channels-title") == f"1 {EVIL}: 4 channels, over this image"
    assert _column(page, "#cl-channel-table", 6) == ["dead", "constant", "", ""]
    _click_sort(page, "#cl-channel-table thead th:nth-child(2)", "ascending")  # mean: descending after two
    _click_sort(page, "#cl-channel-table thead th:nth-child(2)", "descending")
    means = [float(v) for v in _column(page, "#cl-channel-table", 1)]
    assert means == sorted(means, reverse=True) and means[-1] == 0
    assert _column(page, "#cl-channel-table", 0)[-1] == "0"  # the dead channel sorts last
    assert opened.errors == []


def test_names_and_labels_show_as_text_and_run_nothing(opened):
    page = opened.page
    assert page.text_content(".cl-layer[data-layer='0'] .cl-layer-name") == EVIL
    assert EVIL_LABEL in page.text_content("#cl-predictions")
    assert EVIL_IMAGE in page.text_content("#cl-inputs")
    assert page.locator("img[src='x'], img[src='y'], #cl-predictions script").count() == 0
    page.locator("#cl-filters").scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    page.click(".cl-layer[data-layer='0']")
    page.mouse.click(*_tile_point(page, 0, 1))
    assert page.text_content("#cl-viewer-layer") == EVIL
    assert opened.dialogs == [] and opened.errors == []


def test_pictures_below_the_fold_load_when_scrolled_to(opened):
    page = opened.page
    lazy = "#cl-filters img.cl-lazy"
    assert page.locator(lazy).count() == 3  # EVIL: colour patches and the grid; mix: the grid
    assert page.eval_on_selector_all(lazy, "imgs => imgs.every(i => !i.src && i.dataset.src)")
    page.locator("#cl-filters").scroll_into_view_if_needed()
    _wait(page, f"() => [...document.querySelectorAll('{lazy}')].every(i => i.complete && i.naturalWidth > 0)")
    assert opened.errors == []


def test_a_report_of_several_images(browser, several, files):
    report, out = several
    assert report.stats[CONV].images == 2 and len(report.predictions) == 2
    both = np.stack([_pixels(), _second()]).astype(np.float64) / 255
    np.testing.assert_allclose(report.stats[CONV].mean[2], both[..., 0].mean(), rtol=1e-6)
    w = Watched(browser, out.as_uri())
    try:
        page = w.page
        assert "these 2 images" in page.text_content(".cl-summary")
        assert page.locator(".cl-bar .cl-image-btn").all_text_contents() == [EVIL_IMAGE, "array1"]
        assert page.locator("#cl-inputs .cl-card").count() == 2
        assert page.locator("#cl-predictions .cl-card").count() == 2
        first = page.get_attribute("#cl-map-img", "src")
        page.click(".cl-bar .cl-image-btn[data-image='1']")
        assert page.get_attribute(".cl-bar .cl-image-btn[data-image='1']", "aria-pressed") == "true"
        assert page.get_attribute("#cl-map-img", "src") != first
        assert "image array1" in page.text_content("#cl-map-sub")
        _wait(page, "() => document.getElementById('cl-map-img').naturalWidth > 0")
        page.mouse.click(*_tile_point(page, 0, 2, image=1))
        _wait(page, "() => document.getElementById('cl-viewer-canvas').getAttribute('data-channel') === '2'")
        np.testing.assert_array_equal(_canvas_rgb(page), _tile_rgb(report, 0, 2, image=1))
        info = page.text_content("#cl-viewer-info")
        red = _second()[..., 0] / 255  # minmax: the ends are this image's own min and max
        assert "imagearray1" in info and f"{red.min():.4g} … {red.max():.4g}" in info
        assert page.text_content("#cl-bar-lo") == f"{red.min():.4g}"
        page.click("#cl-viewer-images .cl-image-btn[data-image='0']")  # change image in the viewer
        _wait(page, "() => document.getElementById('cl-viewer-canvas').getAttribute('data-image') === '0'")
        np.testing.assert_array_equal(_canvas_rgb(page), _tile_rgb(report, 0, 2, image=0))
        assert w.errors == [] and w.dialogs == []
    finally:
        w.close()


def test_the_viewer_shows_each_image_at_its_own_size(browser, any_size):
    report, out, _ = any_size
    w = Watched(browser, out.as_uri())
    try:
        page = w.page
        page.click(".cl-bar .cl-image-btn[data-image='1']")
        _wait(page, "() => document.getElementById('cl-map-img').naturalWidth > 0")
        page.mouse.click(*_tile_point(page, 0, 1, image=1))
        _wait(page, "() => document.getElementById('cl-viewer-canvas').getAttribute('data-image') === '1'")
        shown = _canvas_rgb(page)
        assert shown.shape == (12, 6, 3)
        np.testing.assert_array_equal(shown, _tile_rgb(report, 0, 1, image=1))
        assert "12×6" in page.text_content("#cl-viewer-info")
        page.keyboard.press("ArrowDown")
        _wait(page, "() => document.getElementById('cl-viewer-canvas').getAttribute('data-layer') === 'half'")
        assert _canvas_rgb(page).shape == (6, 3, 3)
        assert w.errors == []
    finally:
        w.close()


def test_the_jupyter_iframe_runs_the_page(browser, single):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.set_content(f"<!doctype html><html><body>{single[0]._repr_html_()}</body></html>")
        frame = page.frames[1]
        frame.wait_for_selector("#cl-map-title")
        _wait(frame, "() => document.getElementById('cl-map-title').textContent.length > 0")
        assert frame.text_content("#cl-map-title") == f"1 {EVIL} · Conv2D · 8×8×4"
        assert errors == []
    finally:
        page.close()


def test_the_cli_report_works_in_the_browser(browser, files, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", str(files["model"]), str(files["image"]), "--out", str(out), "--norm", "layer",
                 "--columns", "3"]) == 0
    w = Watched(browser, out.as_uri())
    try:
        page = w.page
        assert page.text_content("#cl-predictions").count("class ") >= 3  # no labels: numbered
        page.mouse.click(*_tile_point(page, 0, 3))  # 3 columns: the second row's first tile
        assert page.text_content("#cl-viewer-channel") == "3"
        _wait(page, "() => document.getElementById('cl-viewer-canvas').getAttribute('data-channel') === '3'")
        report = type("R", (), {"html": out.read_text(encoding="utf-8")})
        assert _data(report.html)["layers"][0]["cols"] == 3
        np.testing.assert_array_equal(_canvas_rgb(page), _tile_rgb(report, 0, 3))
        assert w.errors == []
    finally:
        w.close()


def test_screenshot_looks_like_a_report(opened, tmp_path):
    page = opened.page
    page.click(".cl-layer[data-layer='1']")
    page.mouse.click(*_tile_point(page, 1, 2))
    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot))
    rgb = np.asarray(Image.open(shot).convert("RGB"))
    assert rgb.shape[:2] == (900, 1280)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50  # a drawn page, not a blank one
