"""``convlens dataset``: a run on the demo model, and bad input as one line, exit 2, nothing written."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens.cli import main

pytestmark = pytest.mark.keras


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """12 random 28x28 gray PNGs in two class folders, and one file that is not an image."""
    root = tmp_path_factory.mktemp("digits")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / cls / f"{i}.png")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("convlens: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def test_a_run_writes_the_files_and_counts_the_unreadable_image(digits, tmp_path):
    out = tmp_path / "ds"
    code, stdout, err = run("dataset", "demo", str(digits), "--layers", "conv3,re:^dense$", "--k", "3",
                            "--batch-size", "5", "--out", str(out))
    assert code == 0, err
    assert "wrote" in stdout and "12 images, 1 could not be read" in stdout
    assert "2 layers, 128 channels" in stdout
    index = json.loads((out / "index.json").read_text())
    assert index["images"] == 12 and index["k"] == 3 and index["class_names"] == ["a", "b"]
    assert [f["name"] for f in index["failed"]] == ["b/broken.png"]
    by = {layer["name"]: layer for layer in index["layers"]}
    # the dense layer has no spatial map: statistics and rankings all the same, crops whole images
    assert by["dense"]["map_hw"] is None and by["conv3"]["map_hw"] == [7, 7]
    assert len(by["dense"]["channels_info"][0]["top"]) == 3
    assert (out / "channels.csv").is_file()
    assert not (tmp_path / ".ds.convlens-resume").exists()   # removed after a successful run


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    assert_one_line_error(*run("dataset", "demo", str(tmp_path / "empty"), "--out", str(out)),
                          "empty")
    assert not out.exists() and not (tmp_path / ".out.convlens-resume").exists()


def test_k_larger_than_the_images(digits, tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(*run("dataset", "demo", str(digits), "--k", "20", "--out", str(out)),
                          "k=20 is larger than the 13 images", "--k 13")
    assert not out.exists()


def test_unknown_layer(digits, tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(*run("dataset", "demo", str(digits), "--layers", "nope", "--out", str(out)),
                          "nope")
    assert not out.exists()


def test_ray_engine_without_ray_names_the_extra(digits, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "convlens.dataset.ray_engine", None)  # import fails
    out = tmp_path / "out"
    assert_one_line_error(*run("dataset", "demo", str(digits), "--engine", "ray", "--out", str(out)),
                          "pip install 'convlens[ray]'")
    assert not out.exists()


def test_out_is_a_file(digits, tmp_path):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(*run("dataset", "demo", str(digits), "--out", str(tmp_path / "file")),
                          "it is a file")


def test_ctrl_c_says_how_to_resume(digits, tmp_path, monkeypatch):
    from convlens.dataset.engine import default_checkpoint_folder
    from convlens.lens import Lens

    out = tmp_path / "out"

    def interrupted(self, *args, **kwargs):
        folder = default_checkpoint_folder(out)   # as an interrupted run leaves it
        folder.mkdir()
        (folder / "state.npz").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(Lens, "dataset", interrupted)
    code, stdout, err = run("dataset", "demo", str(digits), "--out", str(out))
    assert code == 130 and stdout == "" and not out.exists()
    assert err.count("\n") == 1 and err.startswith("convlens: interrupted; nothing was written")
    assert "--resume to continue" in err
    assert str(default_checkpoint_folder(out)) in err
