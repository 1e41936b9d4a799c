"""The all-or-nothing output folder, atomic single files and the merged index.json."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens import BadArgument, OutputError
from convlens.output import OutputDir, atomic_write_bytes, check_file_target, merge_index


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


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
    with pytest.raises(RuntimeError, match="boom"), OutputDir(target) as out:
        out.write_text("maps/a.txt", "x")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_an_exception_leaves_an_existing_folder_untouched(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "index.json").write_text("old")
    with pytest.raises(KeyboardInterrupt), OutputDir(target) as out:
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
    with pytest.raises(OutputError) as err, OutputDir(blocker / "out"):
        pass
    message = str(err.value)
    assert "cannot write to" in message and "file.txt is a file" in message and "--out" in message
    assert blocker.read_text() == "x"


def test_path_that_is_a_file_is_an_output_error(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"png")
    with pytest.raises(OutputError, match="it is a file, not a folder"), OutputDir(target):
        pass
    assert target.read_bytes() == b"png"


def test_conflicting_existing_entries_fail_the_commit_without_moving_anything(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "maps").write_text("a file where a folder is needed")
    with pytest.raises(OutputError, match="maps"), OutputDir(target) as out:
        out.write_text("index.json", "new")
        out.write_text("maps/a.png", "new")
    assert sorted(os.listdir(target)) == ["maps"]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("rel", ["/etc/passwd", "../escape.txt", "a/../../b", "", "C:\\x",
                                 "a/..\\..\\b"])
def test_paths_must_stay_inside(tmp_path, rel):
    with OutputDir(tmp_path / "out") as out, pytest.raises(BadArgument):
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


# ---------------------------------------------------------------- merge_index, check_file_target


def test_merge_index_keeps_other_commands_and_replaces_the_same_files(tmp_path):
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "old.png").write_bytes(b"x")
    (tmp_path / "maps" / "same.png").write_bytes(b"x")
    (tmp_path / "index.json").write_text(json.dumps({
        "model": "before", "filters": [{"file": "f.png"}],
        "maps": [{"file": "maps/old.png", "n": 1}, {"file": "maps/same.png", "n": 1},
                 {"file": "maps/gone.png", "n": 1}, "not a record"],
    }))
    index = merge_index(tmp_path, "maps", [{"file": "maps/same.png", "n": 2}], {"model": "after"})
    assert index["model"] == "after" and index["filters"] == [{"file": "f.png"}]
    # the older record of a rewritten file is replaced, one whose file is gone is dropped
    assert index["maps"] == [{"file": "maps/old.png", "n": 1}, {"file": "maps/same.png", "n": 2}]
    assert index["convlens"]


@pytest.mark.parametrize("content", ["{broken", "[1, 2]"])
def test_merge_index_replaces_an_unreadable_index(tmp_path, content):
    (tmp_path / "index.json").write_text(content)
    index = merge_index(tmp_path, "filters", [{"file": "a.png"}], {})
    assert index["filters"] == [{"file": "a.png"}] and "maps" not in index


def test_check_file_target_refuses_a_folder(tmp_path):
    assert check_file_target(tmp_path / "r.html") == tmp_path / "r.html"
    with pytest.raises(OutputError, match="is a folder; give the report a file name such as"):
        check_file_target(tmp_path)
