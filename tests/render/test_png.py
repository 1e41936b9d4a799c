"""PNG encoding and the all-or-nothing output folder."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens import BadArgument, OutputError
from convlens.core.normalize import normalize_channels
from convlens.render import png
from convlens.render.colormap import lut
from convlens.render.grid import tile
from convlens.render.png import OutputDir, atomic_write_bytes, encode_png


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# ---------------------------------------------------------------- encode_png


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 13, 3), (64, 48, 3), (5, 6), (5, 6, 4),
                                   (300, 200, 3)])
def test_roundtrip_is_lossless(shape):
    rgb = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(decode(encode_png(rgb)), rgb)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_every_compress_level_decodes(level):
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[10:20] = (200, 10, 30)
    assert np.array_equal(decode(encode_png(rgb, compress_level=level)), rgb)


def test_plain_zlib_fallback_decodes(monkeypatch):
    monkeypatch.setattr(png, "_isal", None)
    rgb = np.random.default_rng(1).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    assert np.array_equal(decode(encode_png(rgb)), rgb)


def test_non_contiguous_input():
    rgb = np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)[::2, ::3]
    assert np.array_equal(decode(encode_png(rgb)), rgb)


def test_encode_rejects_bad_pictures():
    with pytest.raises(BadArgument):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(BadArgument):
        encode_png(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(BadArgument):
        encode_png(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(BadArgument):
        encode_png(np.zeros((4, 4, 3), np.uint8), compress_level=10)


def test_vgg_block1_layer_renders_quickly():
    # VGG16 block1_conv1 for one 224x224 image: (64, 224, 224) float32.
    x = np.maximum(np.random.default_rng(0).standard_normal((64, 224, 224)), 0).astype(np.float32)
    table = lut("viridis")

    def run() -> float:
        t = time.perf_counter()
        data = encode_png(tile(normalize_channels(x)[0], table))
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        return time.perf_counter() - t

    run()
    assert min(run() for _ in range(2)) < 1.0  # ~45 ms with isal; generous for slow CI machines


# ---------------------------------------------------------------- OutputDir


def test_commit_creates_the_folder_with_all_files(tmp_path):
    target = tmp_path / "out"
    rgb = np.full((4, 5, 3), 9, np.uint8)
    with OutputDir(target) as out:
        out.write_png("maps/cat/001_conv.png", rgb)
        out.write_text("layers.txt", "hello\n")
        out.write_json("index.json", {"b": 1, "a": [np.int64(2), np.float32(0.5), float("nan")]})
        out.write_bytes("raw.bin", b"\x00\x01")
        assert not target.exists()  # nothing visible before the commit
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == [
        "index.json", "layers.txt", "maps/cat/001_conv.png", "raw.bin"]
    assert out.written == ["maps/cat/001_conv.png", "layers.txt", "index.json", "raw.bin"]
    assert np.array_equal(decode((target / "maps/cat/001_conv.png").read_bytes()), rgb)
    text = (target / "index.json").read_text()
    assert json.loads(text) == {"b": 1, "a": [2, 0.5, None]}
    assert text.index('"b"') < text.index('"a"')  # insertion order kept
    assert _leftovers(tmp_path) == []


def test_an_exception_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with OutputDir(target) as out:
            out.write_text("maps/a.txt", "x")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_an_exception_leaves_an_existing_folder_untouched(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "index.json").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with OutputDir(target) as out:
            out.write_text("index.json", "new")
            out.write_text("maps/x.txt", "new")
            raise KeyboardInterrupt
    assert sorted(os.listdir(target)) == ["index.json"]
    assert (target / "index.json").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_existing_folder_keeps_unrelated_files_and_gets_the_new(tmp_path):
    target = tmp_path / "out"
    (target / "maps").mkdir(parents=True)
    (target / "notes.md").write_text("mine")
    (target / "maps" / "old.png").write_bytes(b"old")
    (target / "index.json").write_text("old")
    with OutputDir(target) as out:
        out.write_text("index.json", "new")
        out.write_text("maps/new.png", "new")
    assert (target / "notes.md").read_text() == "mine"
    assert (target / "maps" / "old.png").read_bytes() == b"old"
    assert (target / "maps" / "new.png").read_text() == "new"
    assert (target / "index.json").read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_folder_under_a_regular_file_is_an_output_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputError) as err:
        with OutputDir(blocker / "out"):
            pass
    message = str(err.value)
    assert "cannot write to" in message and "file.txt is a file" in message and "--out" in message
    assert blocker.read_text() == "x"


def test_path_that_is_a_file_is_an_output_error(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"png")
    with pytest.raises(OutputError, match="it is a file, not a folder"):
        with OutputDir(target):
            pass
    assert target.read_bytes() == b"png"


def test_conflicting_existing_entries_fail_the_commit_without_moving_anything(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "maps").write_text("a file where a folder is needed")
    with pytest.raises(OutputError, match="maps"):
        with OutputDir(target) as out:
            out.write_text("index.json", "new")
            out.write_text("maps/a.png", "new")
    assert sorted(os.listdir(target)) == ["maps"]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("rel", ["/etc/passwd", "../escape.txt", "a/../../b", "", "C:\\x",
                                 "a/..\\..\\b"])
def test_paths_must_stay_inside(tmp_path, rel):
    with OutputDir(tmp_path / "out") as out:
        with pytest.raises(BadArgument):
            out.write_text(rel, "x")
    assert not (tmp_path / "escape.txt").exists()


def test_relative_paths_are_normalised(tmp_path):
    with OutputDir(tmp_path / "out") as out:
        out.write_text("./maps//a.txt", "1")
        out.write_text("maps/a.txt", "2")  # the same file: listed once
    assert out.written == ["maps/a.txt"]
    assert (tmp_path / "out" / "maps" / "a.txt").read_text() == "2"


def test_writing_outside_the_with_block_is_an_error(tmp_path):
    out = OutputDir(tmp_path / "out")
    with pytest.raises(OutputError, match="with"):
        out.write_text("a.txt", "x")


def test_writes_from_threads(tmp_path):
    target = tmp_path / "out"
    with OutputDir(target) as out:
        def work(k: int) -> None:
            for i in range(25):
                out.write_text(f"t{k}/sub{i % 3}/{i}.txt", f"{k}-{i}")

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(out.written) == 100
    expected = sorted(f"t{k}/sub{i % 3}/{i}.txt" for k in range(4) for i in range(25))
    assert sorted(out.written) == expected
    assert (target / "t3" / "sub1" / "22.txt").read_text() == "3-22"


def test_committed_folder_gets_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with OutputDir(tmp_path / "out") as out:
            out.write_text("a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


# ---------------------------------------------------------------- atomic_write_bytes


def test_atomic_write_bytes(tmp_path):
    target = tmp_path / "deep" / "file.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["file.bin"]


def test_atomic_write_bytes_errors(tmp_path):
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        atomic_write_bytes(tmp_path / "blocker" / "f.bin", b"x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputError):
        atomic_write_bytes(tmp_path / "adir", b"x")


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*convlens-tmp*")]
