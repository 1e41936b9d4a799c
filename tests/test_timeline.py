"""The timeline page and ``convlens timeline``: a run recorded from a PyTorch loop, drawn and clicked through."""

from __future__ import annotations

import base64
import html as html_lib
import io
import json
import re
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convlens import BadArgument
from convlens.cli import main
from convlens.timeline import build_timeline, read_run, save_timeline
from convlens.torch import LensRecorder

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Five checkpoints of a tiny CNN learning to tell bright from dark 12x12 pictures."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    x = torch.rand(64, 3, 12, 12)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    opt = torch.optim.SGD(model.parameters(), 0.5)
    out = tmp_path_factory.mktemp("timeline") / "run"
    try:
        with LensRecorder(model, x[:3], layers="conv,act", out=out) as recorder:
            for step in range(1, 11):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                if step % 2 == 0:
                    recorder.record(step, epoch=step // 2)
    finally:
        torch.set_num_threads(before)
    return out


def _data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="tl-data">(.*?)</script>', html, re.DOTALL)
    assert m is not None
    return json.loads(m.group(1))


def test_the_page_holds_every_checkpoint_and_charts_all_of_them(run_dir):
    html = build_timeline(run_dir)
    data = _data(html)
    assert [c["step"] for c in data["checkpoints"]] == [2, 4, 6, 8, 10] and data["total"] == 5
    assert html.count('class="tl-ckpt"') == 5
    assert html.count("<svg") == 3
    # each chart: one point per checkpoint for each series (4 layers' dead share, 3 weighted layers' change)
    charts = re.findall(r"<svg.*?</svg>", html, re.DOTALL)
    assert charts[0].count("<circle") == 4 * 5 and charts[1].count("<circle") == 3 * 5
    index = read_run(run_dir)
    entry = json.loads((run_dir / "checkpoint-0003" / "index.json").read_text())
    png = (run_dir / "checkpoint-0003" / entry["maps"][0]["file"]).read_bytes()
    assert base64.b64encode(png).decode() in html  # the pictures themselves, inline
    assert index["checkpoints"][2]["label"] == "step 6 · epoch 3"
    # no network: a CSP that allows only the page's own script and style, and data: pictures
    csp = html_lib.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1))
    assert "default-src 'none'" in csp and "img-src data: blob:" in csp
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html


def test_max_checkpoints_keeps_the_first_and_the_last(run_dir, tmp_path, capsys):
    out = tmp_path / "t.html"
    assert main(["timeline", str(run_dir), "--out", str(out), "--max-checkpoints", "2"]) == 0
    assert capsys.readouterr().out.endswith("; pictures of 2 of 5 checkpoints)\n")
    html = out.read_text(encoding="utf-8")
    assert [c["step"] for c in _data(html)["checkpoints"]] == [2, 10]
    assert html.count('class="tl-ckpt"') == 2
    assert re.findall(r"<svg.*?</svg>", html, re.DOTALL)[0].count("<circle") == 4 * 5  # the charts keep all


def test_cli_end_to_end_and_errors_in_one_line(run_dir, tmp_path, capsys):
    out = tmp_path / "page" / "timeline.html"
    assert main(["timeline", str(run_dir), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said == f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB; 5 checkpoints)\n"
    assert out.read_text(encoding="utf-8").startswith("<!doctype html>")
    for args, words in (([str(tmp_path / "nowhere")], "is not a folder"),
                        ([str(tmp_path / "page")], "holds no index.json")):
        bad = tmp_path / "bad.html"
        rc = main(["timeline", *args, "--out", str(bad)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("convlens: error: ") and err.count("\n") == 1 and words in err, err
        assert not bad.exists()
    rc = main(["timeline", str(run_dir), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "is a folder" in err
    # argparse's own one-line usage error: main() returns its status
    rc = main(["timeline", str(run_dir), "--out", str(tmp_path / "x.html"), "--max-checkpoints", "0"])
    assert rc == 2 and "must be at least 1" in capsys.readouterr().err


def test_a_run_without_checkpoints_or_that_stopped(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    index = json.loads((copy / "index.json").read_text())
    index.update(status="stopped", error="writing checkpoint 6 (step 12) failed: disk full")
    (copy / "index.json").write_text(json.dumps(index))
    assert "recording stopped: writing checkpoint 6 (step 12) failed: disk full" in build_timeline(copy)
    index["checkpoints"] = []
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(BadArgument, match="holds no checkpoint yet"):
        build_timeline(copy)
    (copy / "index.json").write_text(json.dumps({"maps": []}))  # `convlens maps` output is not a run
    with pytest.raises(BadArgument, match="not written by a training recorder"):
        build_timeline(copy)


def test_a_crafted_index_can_neither_inject_markup_nor_pull_in_other_files(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    secret = tmp_path / "secret.png"
    buf = io.BytesIO()
    Image.new("RGB", (3, 3), (1, 2, 3)).save(buf, format="PNG")
    secret.write_bytes(buf.getvalue())
    evil = '</script><script>alert(1)</script><img src=x onerror=alert(2)>'
    index = json.loads((copy / "index.json").read_text())
    index["model"] = evil
    index["checkpoints"][0]["label"] = evil
    index["checkpoints"][0]["dead_fraction"] = {evil: 0.9}
    index["images"][0]["file"] = "../secret.png"
    (copy / "index.json").write_text(json.dumps(index))
    entry = json.loads((copy / "checkpoint-0001" / "index.json").read_text())
    entry["maps"][0]["file"] = str(secret)  # absolute
    entry["maps"][1]["file"] = "../../secret.png"
    entry["maps"][2]["layer"] = evil
    entry["maps"][3]["file"] = "index.json"  # inside, but not a PNG
    (copy / "checkpoint-0001" / "index.json").write_text(json.dumps(entry))
    html = build_timeline(copy)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in html
    assert base64.b64encode(secret.read_bytes()).decode() not in html
    assert base64.b64encode((copy / "checkpoint-0001" / "index.json").read_bytes()).decode() not in html
    assert html.count("<script") == 2  # the data block and the page's own script


def test_save_timeline_is_atomic(run_dir, tmp_path):
    out = tmp_path / "t.html"
    out.write_text("old page")
    with pytest.raises(BadArgument):
        save_timeline(tmp_path / "missing", out)
    assert out.read_text() == "old page" and sorted(p.name for p in tmp_path.iterdir()) == ["t.html"]
    assert save_timeline(run_dir, out) == out and out.read_text(encoding="utf-8") != "old page"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_in_the_browser_every_control_moves_the_checkpoint(browser, run_dir):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto((run_dir / "timeline.html").as_uri())
    page.wait_for_load_state("load")
    xs = [c["x"] for c in _data(page.content())["checkpoints"]]

    def state() -> tuple[str, str, list[float]]:
        shown = page.locator(".tl-ckpt:not([hidden])")
        assert shown.count() == 1
        cursors = page.eval_on_selector_all(".cl-cursor", "ls => ls.map(l => +l.getAttribute('x1'))")
        return shown.get_attribute("data-k"), page.text_content("#tl-label"), cursors

    k, label, cursors = state()
    assert k == "4" and label == "checkpoint 5 of 5 · step 10 · epoch 5" and cursors == [xs[4]] * 3
    page.click("#tl-prev")
    assert state()[0] == "3"
    page.keyboard.press("ArrowLeft")
    k, label, cursors = state()
    assert k == "2" and label == "checkpoint 3 of 5 · step 6 · epoch 3" and cursors == [xs[2]] * 3
    page.click("#tl-next")
    assert state()[0] == "3"
    page.locator("#tl-slider").fill("0")
    assert state()[0] == "0"
    # the pictures of a shown checkpoint are loaded, those of hidden ones are not decoded at all
    assert page.evaluate("() => Array.from(document.querySelectorAll('.tl-ckpt:not([hidden]) img'))"
                         ".every(i => i.complete && i.naturalWidth > 0)")
    assert page.evaluate("() => document.querySelectorAll('.tl-ckpt[data-k=\"1\"] img[src]').length") == 0
    assert page.evaluate("() => Array.from(document.querySelectorAll('img.tl-input')).every(i => i.naturalWidth > 0)")
    page.click("#tl-play")
    deadline = time.monotonic() + 10
    while state()[0] != "4":  # plays to the last checkpoint, then stops
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert page.get_attribute("#tl-play", "aria-pressed") == "false"
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    page.close()


def test_the_recorded_pictures_are_convlens_maps_grids(run_dir):
    """Same drawing as `convlens maps`: a title bar over a grid of one tile per channel."""
    entry = json.loads((run_dir / "checkpoint-0005" / "index.json").read_text())
    m = next(m for m in entry["maps"] if m["layer"] == "2" and m["image"] == "input0")
    picture = np.asarray(Image.open(run_dir / "checkpoint-0005" / m["file"]).convert("RGB"))
    assert m["layout"] == "grid" and m["channels_total"] == 8 and m["channels_shown"] == 8
    assert picture.shape[0] > 20 and picture[2, 2].tolist() != [255, 255, 255]  # the dark title bar
