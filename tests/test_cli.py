"""The ``convlens`` command end to end, in a subprocess, and every bad input.

One run starts a real ``python -m convlens`` process (test_maps_end_to_end; the
other suites' process runs cover exit status 2 and a quiet start: test_size_errors,
test_heatmap_cli, test_stats_cli). The others call ``convlens.cli.main`` in this
process and see what a user would see of a process: the exit status, stdout, and on
stderr what convlens wrote plus whatever reached file descriptors 1 and 2 natively
and every Python warning shown. Each interpreter start (TensorFlow's import) costs
seconds, tens of seconds on a loaded machine.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convlens

pytestmark = pytest.mark.keras


def process(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m convlens ARGS`` in a new interpreter."""
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "convlens", *args], capture_output=True, text=True,
                          env=env, timeout=600, check=False)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """``convlens ARGS`` in this process, as a process would show it (an exception escaping fails the test).

    stdout and stderr are what ``main`` wrote plus what reached file descriptors 1 and 2
    (framework logs); stderr also gets the Python warnings, under Python's default filters
    (which show each warning, and hide the deprecation and resource ones).
    """
    from convlens.cli import main

    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryFile() as native_out, tempfile.TemporaryFile() as native_err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        saved_streams = sys.stdout, sys.stderr
        os.dup2(native_out.fileno(), 1)
        os.dup2(native_err.fileno(), 2)
        sys.stdout, sys.stderr = out, err  # a stray print is the user's stdout/stderr too
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")
                for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                                 ResourceWarning):
                    warnings.simplefilter("ignore", category)
                code = main(list(args), stdout=out, stderr=err)
        finally:
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        native_out.seek(0)
        native_err.seek(0)
        stdout = out.getvalue() + native_out.read().decode("utf-8", "replace")
        stderr = (err.getvalue() + native_err.read().decode("utf-8", "replace")
                  + "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
                            for w in caught))
    return subprocess.CompletedProcess(["convlens", *args], code, stdout, stderr)


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("convlens: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, keras) -> Path:
    L = keras.layers
    model = keras.Sequential([keras.Input((32, 32, 3)), L.Conv2D(5, 3, activation="relu", name="c1"),
                              L.MaxPooling2D(name="p1"), L.Conv2D(17, 3, name="c2"), L.Flatten(name="f"),
                              L.Dense(3, name="d")])
    path = tmp_path_factory.mktemp("model") / "small.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "cat.png"
    Image.open(convlens.SAMPLE_PHOTO).resize((40, 30)).save(path)
    return path


def test_layers_table_and_json(small_model):
    proc = run("layers", str(small_model))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["#", "name", "type", "output"]
    assert any(line.split()[1:4] == ["c2", "Conv2D", "(13,"] for line in lines[2:])
    proc = run("layers", str(small_model), "--json")
    records = json.loads(proc.stdout)
    assert [r["name"] for r in records][1:] == ["c1", "p1", "c2", "f", "d"]
    assert records[3]["kernel_shape"] == [17, 5, 3, 3] and records[3]["rf_size"] == [8, 8]


def test_maps_end_to_end(small_model, photo, tmp_path):
    out = tmp_path / "out"
    proc = process("maps", str(small_model), str(photo), str(photo), "--layers", "conv,d", "--out",
                   str(out), "--numbers", "--cmap", "magma")
    assert proc.returncode == 0, proc.stderr
    index = json.loads((out / "index.json").read_text())
    assert [(e["image"], e["layer"]) for e in index["maps"]] == [
        ("cat", "c1"), ("cat", "c2"), ("cat", "d"), ("cat-2", "c1"), ("cat-2", "c2"), ("cat-2", "d")]
    for entry in index["maps"]:
        png = Image.open(out / entry["file"])
        assert png.mode == ("P" if entry["layout"] == "grid" else "RGB") and png.width > 30
    assert index["maps"][1]["channels_total"] == 17 == index["maps"][1]["channels_shown"]
    assert any("resized" in n for n in index["notes"])
    assert "wrote 6 maps pictures" in proc.stdout


def test_filters_and_demo(small_model, tmp_path):
    out = tmp_path / "f"
    proc = run("filters", str(small_model), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == ["filters/001_c1.png", "filters/001_c1_rgb.png", "filters/003_c2.png"]
    demo = tmp_path / "demo"
    proc = run("demo", "--out", str(demo))
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout
    index = json.loads((demo / "index.json").read_text())
    assert len(index["maps"]) >= 5 and len(index["filters"]) >= 2
    assert (demo / "layers.txt").read_text().split()[:2] == ["#", "name"]
    assert "conv1" in (demo / "stats.txt").read_text()
    page = (demo / "report.html").read_text()
    assert page.lower().startswith("<!doctype html>") and "conv1" in page and "http://" not in page


def test_vgg16_blocks_writes_five_grids(photo, tmp_path):
    out = tmp_path / "vgg"
    proc = run("maps", "vgg16", "--weights", "none", str(convlens.SAMPLE_PHOTO), "--layers", "blocks",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    index = json.loads((out / "index.json").read_text())
    assert [e["index"] for e in index["maps"]] == [2, 5, 9, 13, 17]
    assert len(list(out.rglob("*.png"))) == 5


# --------------------------------------------------------------------------- bad input


def test_missing_image_and_not_an_image(small_model, tmp_path):
    out = tmp_path / "o"
    one_line_error(run("maps", str(small_model), str(tmp_path / "nope.jpg"), "--out", str(out)), "not found")
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    one_line_error(run("maps", str(small_model), str(text), "--out", str(out)), "notes.jpg")
    assert not out.exists()


def test_truncated_jpeg_and_bomb(small_model, tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / "o"
    one_line_error(run("maps", str(small_model), str(cut), "--out", str(out)), "truncated")
    one_line_error(run("maps", str(small_model), str(good), "--out", str(out), "--max-pixels", "1000"),
                   "pixels")
    assert not out.exists()


def test_bad_models(tmp_path):
    text = tmp_path / "model.keras"
    text.write_text("not a zip")
    one_line_error(run("layers", str(text)), "not a .keras file")
    one_line_error(run("layers", str(tmp_path / "none.h5")), "not found")
    one_line_error(run("layers", "vgg17"), "vgg16")


def test_unknown_layer_and_no_conv(small_model, photo, tmp_path, keras):
    out = tmp_path / "o"
    line = one_line_error(run("maps", str(small_model), str(photo), "--layers", "c3", "--out", str(out)),
                          "convlens layers MODEL")
    assert "c1" in line or "c2" in line
    dense = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    path = tmp_path / "dense.keras"
    dense.save(path)
    one_line_error(run("maps", str(path), str(photo), "--out", str(out)), "--layers")
    one_line_error(run("filters", str(path), "--out", str(out)), "conv")
    assert not out.exists()


def test_lambda_needs_trust(fixtures, tmp_path):
    one_line_error(run("layers", str(fixtures / "legacy_tfkeras2_lambda.h5")), "--trust")


def test_unwritable_output(small_model, photo, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(run("maps", str(small_model), str(photo), "--out", str(blocker / "sub")), "--out")
    assert blocker.read_text() == "x"


def test_failure_midway_leaves_nothing(small_model, photo, tmp_path):
    out = tmp_path / "o"
    good = str(photo)
    one_line_error(run("maps", str(small_model), good, str(tmp_path / "missing.png"), "--out", str(out)),
                   "missing.png")
    assert not out.exists()
    assert not any(p.name.startswith(".o") for p in tmp_path.iterdir())


def test_usage_mistakes_are_one_line(tmp_path):
    line = one_line_error(run("maps", "demo", "x.png", "--out", str(tmp_path / "o"), "--norm", "foo"),
                          "--norm", "--help")
    assert "standardize" in line
    one_line_error(run("maps", "demo"), "required")
    one_line_error(run("layers", "demo", "--input-shape", "abc"), "H,W,C")
    assert not (tmp_path / "o").exists()


def test_legacy_h5_loads_quietly(fixtures):
    proc = run("layers", str(fixtures / "legacy_tfkeras2.h5"))
    assert proc.returncode == 0 and proc.stderr == ""
    assert "max_pooling2d_2" in proc.stdout and "(17, 17, 32)" in proc.stdout
