"""The report's visualize section: asked for by key, one layer's images beside its maps."""

from __future__ import annotations

import re

import pytest

import convlens
from convlens import Lens
from convlens.cli import main
from convlens.report import section_keys
from convlens.report.registry import select_sections

pytestmark = pytest.mark.keras

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_not_in_a_default_report():
    assert "visualize" in section_keys()
    assert "visualize" not in select_sections(None)
    assert select_sections("maps,visualize") == ["maps", "visualize"]


@pytest.fixture(scope="module")
def page(tmp_path_factory, keras):
    out = tmp_path_factory.mktemp("rep") / "report.html"
    lens = Lens("demo")
    report = lens.report(convlens.DEMO_IMAGE, "conv", sections=["maps", "visualize"], out=out,
                         section_options={"visualize": {"layer": "conv2", "channels": "0-3", "steps": 6}})
    assert report.sections == ["maps", "visualize"]
    return out


def test_each_channel_has_its_image_and_its_map(page):
    html = page.read_text(encoding="utf-8")
    section = html[html.index('id="cl-visualize"'):]
    assert "3 conv2: each channel" in section and "6 steps" in section
    for channel in range(4):
        assert f'alt="channel {channel}: the image it likes most"' in section
        assert f'alt="channel {channel} for digit"' in section
    assert len(re.findall(r"<figure", section)) == 4


def test_the_section_in_the_browser(page):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(page.as_uri())
            tab.locator("#cl-visualize").scroll_into_view_if_needed()
            tab.wait_for_function("Array.from(document.querySelectorAll('#cl-visualize img'))"
                                  ".every(i => i.complete && i.naturalWidth > 0)", timeout=10_000)
            sizes = tab.evaluate("Array.from(document.querySelectorAll('#cl-visualize img'))"
                                 ".map(i => [i.naturalWidth, i.getBoundingClientRect().width])")
        finally:
            browser.close()
    assert errors == []
    assert len(sizes) == 8
    assert sorted({natural for natural, _ in sizes}) == [14, 28]  # conv2's 14x14 maps, 28-px images
    assert all(shown >= 100 for _, shown in sizes)  # both drawn large enough to compare


def test_options_without_the_section_fail_at_once(tmp_path, capsys):
    out = tmp_path / "r.html"
    rc = main(["report", "demo", str(convlens.DEMO_IMAGE), "--visualize-steps", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "add it with --sections ...,visualize" in err and err.count("\n") == 1
    assert not out.exists()
