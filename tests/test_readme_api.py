"""The README's Python API block runs as written, on the demo model, and gives what its comments say."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

import convlens

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The Python API"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_api_block_runs_and_gives_what_it_says(tmp_path, monkeypatch, capsys):
    blocks = _api_blocks()
    assert len(blocks) == 1 and "Lens(\"demo\")" in blocks[0]
    monkeypatch.chdir(tmp_path)  # the block writes into out/
    ns: dict = {}
    exec(compile(blocks[0], str(README), "exec"), ns)  # noqa: S102 - our own README
    assert "conv1" in capsys.readouterr().out  # print(lens.layers())
    assert ns["maps"]["conv1"].shape == (1, 28, 28, 16)
    assert ns["rgb"].dtype == np.uint8 and ns["rgb"].shape[2] == 3
    assert ns["path"] == Path("out/index.json")
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    for key in ("maps", "filters", "stats", "heatmaps", "visualize"):
        assert index[key], key
    assert all((tmp_path / "out" / e["file"]).is_file() for e in index["maps"])
    assert ns["kernels"]["conv1"].shape[:2] == (16, 1)
    assert ns["stats"].layer("conv3").dead.shape == (64,)
    assert isinstance(ns["hm"], convlens.Heatmaps) and ns["hm"].map(0, "gradcam").shape == (28, 28)
    assert len(ns["hm"].entries) == 4  # two methods x the top two classes
    assert isinstance(ns["vis"], convlens.Visualization) and ns["vis"].images.shape == (4, 28, 28, 1)
    page = tmp_path / "out" / "report.html"
    assert page.is_file() and page.read_text(encoding="utf-8") == ns["report"].html
    best = ns["report"].to_json()["predictions"][0][0]
    assert best["label"] == "7" and best["probability"] > 0.9
