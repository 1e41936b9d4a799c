"""``convlens evaluate`` and ``Lens.evaluate`` on the demo: files, table, report section, and every bad input.

Bad input is one line on stderr, exit 2, and nothing written; a metric that
cannot run beside others that can is skipped with its reason and the others run.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convlens import DEMO_IMAGE, Evaluation, Lens, Model, UnsupportedModel
from convlens.cli import main
from convlens.evaluate import evaluate

FAST = ["--method", "gradcam,saliency", "--steps", "5", "--samples", "2"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> list[str]:
    tmp = tmp_path_factory.mktemp("digits")
    pixels = np.asarray(Image.open(DEMO_IMAGE).convert("L"))
    second = tmp / "shifted.png"
    Image.fromarray(np.roll(pixels, (2, -3), axis=(0, 1))).save(second)
    return [str(DEMO_IMAGE), str(second)]


def _cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(args, stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_the_command_writes_the_index_page_and_curves(digits, tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"digit.png": [[6, 4, 14, 20]], "shifted": [{"bbox": [3, 6, 14, 20]}]}))
    out = tmp_path / "ev"
    rc, stdout, stderr = _cli(["evaluate", "demo", *digits, "--out", str(out), *FAST, "--boxes", str(boxes)])
    assert rc == 0, stderr
    index = json.loads((out / "index.json").read_text())
    rows = index["evaluate"]
    assert [r["method"] for r in rows] != [] and {r["method"] for r in rows} == {"gradcam", "saliency"}
    for r in rows:
        assert len(r["randomisation"]["spearman_curve"]) == 5  # the demo's five weighted layers
        assert r["deletion"]["random_auc"] is not None and r["insertion"]["edges_auc"] is not None
        assert r["pointing"]["images"] == 2 and 0 <= r["pointing"]["energy"] <= 1
        assert [i["image"] for i in r["images"]] == ["digit", "shifted"]
        assert len(r["images"][0]["deletion"]["curve"]) == 6
    assert index["evaluation"]["randomised_layers"][0] == "predictions"
    page = (out / "evaluate.html").read_text()
    assert "Randomisation strips" in page and "data:image/png;base64," in page
    for name in ("randomisation_strips.png", "randomisation.png", "deletion.png", "insertion.png"):
        assert (out / "evaluate" / name).read_bytes()[:4] == b"\x89PNG"
    assert "Grad-CAM" in stdout and "best:" in stdout and "pointing (higher)" in stdout


def test_the_api_result_is_like_the_others(digits, tmp_path):
    ev = Lens("demo").evaluate(digits, "gradcam,scorecam", metrics="deletion,random-logit", steps=4)
    assert isinstance(ev, Evaluation)
    data = ev.to_json()
    assert json.loads(json.dumps(data))["metrics"] == ["deletion", "random-logit"]
    assert "<img" in ev._repr_html_() and "Score-CAM" in ev._repr_html_()
    assert ev.save(tmp_path / "api") == tmp_path / "api" / "index.json"
    ranked = ev.ranking()
    assert [r["rank"] for r in ranked] == [1, 2]
    for r in ranked:
        assert r["deletion"]["beats_random"] == (r["deletion"]["auc"] < r["deletion"]["random_auc"])


def test_the_report_section_is_opt_in_and_shows_the_table(digits, tmp_path):
    report = Lens("demo").report(digits, sections=["inputs", "evaluate"], out=tmp_path / "r.html",
                                 section_options={"evaluate": {"method": "gradcam", "metrics": "deletion",
                                                               "steps": 4}})
    html = (tmp_path / "r.html").read_text()
    assert "Can these heatmaps be trusted?" in html and "deletion AUC (lower)" in html
    assert report is not None


def test_the_report_section_says_why_with_one_image(tmp_path):
    Lens("demo").report([str(DEMO_IMAGE)], sections=["evaluate"], out=tmp_path / "one.html")
    assert "not evaluated: evaluate ranks methods" in (tmp_path / "one.html").read_text()


def _box_file(tmp_path: Path, boxes: dict) -> str:
    path = tmp_path / "b.json"
    path.write_text(json.dumps(boxes))
    return str(path)


@pytest.mark.parametrize("extra, message", [
    (["--metrics", "pointing"], "needs the objects' boxes"),
    (["--metrics", "faithfulnes"], "unknown metric 'faithfulnes'"),
    (["--boxes", "BOXES:{\"cat.png\": [[0, 0, 4, 4]]}"], "'cat.png', which is not among the images given"),
    (["--boxes", "BOXES:{\"digit.png\": [[20, 20, 10, 10]]}"], "lies outside the image (28x28 pixels)"),
    (["--boxes", "BOXES:[1, 2]"], "expected a JSON object of boxes per image"),
])
def test_bad_input_is_one_line_and_writes_nothing(digits, tmp_path, extra, message):
    args = [a if not a.startswith("BOXES:") else _box_file(tmp_path, json.loads(a[6:])) for a in extra]
    out = tmp_path / "nothing"
    rc, stdout, stderr = _cli(["evaluate", "demo", *digits, "--out", str(out), *FAST, *args])
    assert rc == 2 and message in stderr and stderr.count("\n") == 1, stderr
    assert not out.exists()


def test_one_image_is_refused(tmp_path):
    rc, _, stderr = _cli(["evaluate", "demo", str(DEMO_IMAGE), "--out", str(tmp_path / "x"), *FAST])
    assert rc == 2 and "at least 2 images" in stderr and not (tmp_path / "x").exists()


class _Locked(nn.Module):
    """A module holding a lock: ``copy.deepcopy`` cannot copy it."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, 3))

    def forward(self, x):
        return self.net(x)


def test_weights_that_cannot_be_copied(digits):
    torch.manual_seed(0)
    model = Model.open(_Locked().eval(), input_shape=(8, 8, 1), preprocess="unit")
    images = [np.random.default_rng(i).random((8, 8, 1)).astype(np.float32) for i in range(2)]
    with pytest.raises(UnsupportedModel, match="cannot be copied.*cannot be randomised"):
        evaluate(model, images, "saliency", metrics="randomisation")
    # beside another metric, it is skipped with the reason and the other one runs
    ev = evaluate(model, images, "saliency", metrics="randomisation,deletion", steps=4)
    assert "deletion" in ev.summary_of("saliency") and "cannot be copied" in ev.skipped["saliency"]["randomisation"]
    assert "not run: randomisation for saliency" in ev.summary()


def test_the_page_escapes_what_the_user_named(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    paths = []
    for i, name in enumerate(["<i>x", "a&b"]):
        path = tmp_path / f"{name}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (4, 4), dtype=np.uint8)).save(path)
        paths.append(str(path))
    ev = evaluate(Model.open(net, input_shape=(4, 4, 1), preprocess="unit"), paths, "saliency",
                  metrics="deletion", steps=2)
    page = ev.html()
    assert "&lt;i&gt;x" in page and "<i>x" not in page
    assert "Content-Security-Policy" in page
