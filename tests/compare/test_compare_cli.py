"""``convlens compare``: the command in-process, its page in Chromium, and the bad input cases."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens.cli import main

from .shared import opened_page


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, images) -> list[str]:
    folder = tmp_path_factory.mktemp("compare-images")
    paths = []
    for i, pixels in enumerate(images(4)):
        path = folder / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(argv, stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def _nothing_written(out: Path) -> bool:
    return not out.exists() and not any(p.name.startswith(f".{out.name}") for p in out.parent.iterdir())


@pytest.fixture(scope="module")
def int8_run(agree, pictures, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cli") / "cmp"
    rc, stdout, stderr = _run(["compare", str(agree["keras_file"]), str(agree["int8"]), *pictures,
                               "--out", str(out), "--preprocess", "unit"])
    assert rc == 0, stderr
    return out, stdout


def test_the_command_compares_float_and_int8(int8_run):
    out, stdout = int8_run
    assert "the same network in two forms" in stdout
    assert "first divergence: relu1 ~ agree_1/conv1_1" in stdout and "worst layer:" in stdout
    assert "top-1 flips:" in stdout and "SQNR dB" in stdout
    index = json.loads((out / "index.json").read_text())
    assert index["kind"] == "compare" and index["images"] == 4 and len(index["pairs"]) == 6
    assert all(p["sqnr_db"] > 10 for p in index["pairs"])
    for name in ["compare.html", *index["pictures"]]:
        assert (out / name).is_file(), name
    assert (out / "errors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_works_in_chromium_without_network(int8_run):
    out, _ = int8_run
    with opened_page(out / "compare.html") as page:  # no console error, no request but file: and data:
        assert page.locator("#pair-table tbody tr").count() == 6
        assert "First divergence: relu1" in page.locator("#verdict").inner_text()
        loaded = page.evaluate("() => [...document.images].map(i => i.complete && i.naturalWidth > 0)")
        assert loaded and all(loaded)  # every picture decodes (the CSP allows data: images)
        assert page.locator("svg.cl-chart").count() == 1  # the error-growth chart


def test_pairs_file_overrides_the_pairing(agree, pictures, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("a,b\nconv1,/conv1/Conv\nfc,/fc/Gemm\n")
    rc, stdout, stderr = _run(["compare", str(agree["onnx"]), str(agree["onnx"]), *pictures, "--out",
                               str(tmp_path / "o"), "--pairs", str(pairs), "--preprocess", "unit"])
    assert rc == 2 and "has no layer 'conv1'" in stderr  # A is the ONNX file: its layer is /conv1/Conv
    assert stderr.count("\n") == 1 and _nothing_written(tmp_path / "o")
    pairs.write_text("/conv1/Conv,/conv1/Conv\n/fc/Gemm,/fc/Gemm\n")
    rc, stdout, stderr = _run(["compare", str(agree["onnx"]), str(agree["onnx"]), *pictures, "--out",
                               str(tmp_path / "o"), "--pairs", str(pairs), "--preprocess", "unit"])
    assert rc == 0, stderr
    index = json.loads((tmp_path / "o" / "index.json").read_text())
    assert index["pairing"] == "file" and [p["a"] for p in index["pairs"]] == ["/conv1/Conv", "/fc/Gemm"]
    assert "/relu1/Relu" in index["unpaired"]["a"]


def test_no_layer_paired_is_one_line_and_exit_2(agree, pictures, tmp_path):
    import torch
    from torch import nn

    other = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    path = tmp_path / "other.onnx"
    torch.onnx.export(other, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False)
    out = tmp_path / "o"
    rc, stdout, stderr = _run(["compare", str(agree["onnx"]), str(path), *pictures[:2], "--out", str(out)])
    assert rc == 2 and stderr.startswith("convlens: error: no layer of") and "--pairs" in stderr
    assert stderr.count("\n") == 1 and stdout == "" and _nothing_written(out)


def test_different_input_sizes_and_outputs_are_notes_not_errors(agree, pictures, tmp_path):
    import copy

    import torch
    from torch import nn

    bigger = tmp_path / "big.onnx"
    torch.onnx.export(agree["torch"], (torch.zeros(1, 3, 48, 48),), str(bigger), dynamo=False)
    rc, stdout, stderr = _run(["compare", str(agree["onnx"]), str(bigger), *pictures, "--out",
                               str(tmp_path / "sizes"), "--preprocess", "unit"])
    assert rc == 0, stderr
    assert "the two models take different inputs (32x32 and 48x48)" in stdout
    index = json.loads((tmp_path / "sizes" / "index.json").read_text())
    conv = index["pairs"][0]
    assert conv["rel_error"] is None and "CKA only" in conv["note"] and conv["cka"] is not None

    five = copy.deepcopy(agree["torch"])
    five.fc = nn.Linear(12, 5)
    path = tmp_path / "five.onnx"
    torch.onnx.export(five.eval(), (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False)
    rc, stdout, stderr = _run(["compare", str(agree["onnx"]), str(path), *pictures, "--out",
                               str(tmp_path / "outs"), "--preprocess", "unit"])
    assert rc == 0, stderr
    assert "the outputs cannot be compared" in stdout and "no divergence" in stdout
    assert "/fc/Gemm" in json.loads((tmp_path / "outs" / "index.json").read_text())["unpaired"]["a"]


def test_usage_errors_write_nothing(agree, pictures, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    rc, _, stderr = _run(["compare", str(agree["onnx"]), str(agree["onnx"]), *pictures, "--out", str(target)])
    assert rc == 2 and stderr.count("\n") == 1 and target.read_text() == "x"
    rc, _, stderr = _run(["compare", str(agree["onnx"]), str(agree["onnx"]), *pictures, "--out",
                          str(tmp_path / "m"), "--metric", "psnr"])
    assert rc == 2 and "invalid choice" in stderr and _nothing_written(tmp_path / "m")
    rc, _, stderr = _run(["compare", str(agree["onnx"]), str(tmp_path / "missing.onnx"), *pictures, "--out",
                          str(tmp_path / "m")])
    assert rc == 2 and stderr.count("\n") == 1 and _nothing_written(tmp_path / "m")
    np.testing.assert_equal(len(pictures), 4)
