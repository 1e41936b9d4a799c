"""A full disk and two runs writing one folder: the output is whole or absent, never partial or mixed.

* A disk that fills up mid-run: simulated in this process (the writes raise
  ENOSPC after a byte budget, leaving the file half written as a real full
  disk does), and for real on a 40 KB tmpfs (mounted here; the suite runs as
  root). Nothing of the run remains, an existing folder is left exactly as it
  was, and the error is one line that says the disk is full and that nothing
  was written.
* A commit that fails half way through merging into an existing folder puts
  back every file it had replaced.
* Two runs committing into one folder at once take turns (``flock``), so each
  file comes from one run, the later run's files win throughout, and
  ``index.json`` lists exactly the files present: once with threads whose
  renames are slowed down so that two unlocked commits would interleave, and
  once with two ``convlens maps`` processes.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import convlens
from convlens import OutputError
from convlens.cli import main
from convlens.output import OutputDir
from convlens.output import files as png  # OutputDir and atomic_write_bytes live in convlens.output.files

DIGIT = str(convlens.DEMO_IMAGE)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too), by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    code = main(argv, stdout=io.StringIO(), stderr=err)
    return code, err.getvalue()


def _disk_full_error(code: int, err: str) -> str:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("convlens: error: "), err
    assert "the disk is full" in err and "nothing was written" in err, err
    return err


class _Budget:
    """File writes that fail with ENOSPC once ``limit`` bytes were written in all (half-written files stay)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self.failures = limit, 0, 0
        self._lock = threading.Lock()

    def write(self, f, data: bytes) -> None:
        with self._lock:
            room = max(self.limit - self.used, 0)
            self.used += min(room, len(data))
        f.write(data[:room])
        if room < len(data):
            self.failures += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def open(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115 - closed by Limited.__exit__, or by the caller
        if "w" not in mode:
            return f
        budget = self

        class Limited:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                budget.write(f, data)

        return Limited()

    def write_new(self, path: Path, data: bytes) -> None:  # stands in for output._write_new
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            self.write(f, data)


@pytest.fixture
def budget(monkeypatch) -> _Budget:
    """The output writers of this process on a disk with 20 KB free."""
    b = _Budget(20_000)
    monkeypatch.setattr(png, "open", b.open, raising=False)  # OutputDir's staged files
    monkeypatch.setattr(png, "_write_new", b.write_new)  # atomic_write_bytes (the report)
    return b


@pytest.mark.parametrize("command", ["maps", "filters", "report"])
def test_a_full_disk_mid_run_leaves_nothing(budget, tmp_path, command):
    out = tmp_path / ("report.html" if command == "report" else "out")
    argv = {"maps": ["maps", "demo", DIGIT, "--layers", "all", "--out", str(out)],
            "filters": ["filters", "demo", "--layers", "all", "--max-filters", "all", "--out", str(out)],
            "report": ["report", "demo", DIGIT, "--layers", "all", "--out", str(out)]}[command]
    _disk_full_error(*_cli(argv))
    assert budget.failures >= 1 and budget.used == budget.limit  # it did fail mid-run, after writing
    assert list(tmp_path.iterdir()) == []  # no output, no staging folder, no temporary file


def test_a_full_disk_leaves_an_existing_folder_as_it_was(monkeypatch, tmp_path):
    out = tmp_path / "out"
    code, err = _cli(["maps", "demo", DIGIT, "--layers", "conv", "--out", str(out)])
    assert code == 0, err
    before = _snapshot(tmp_path)
    b = _Budget(20_000)
    monkeypatch.setattr(png, "open", b.open, raising=False)
    _disk_full_error(*_cli(["maps", "demo", DIGIT, "--layers", "all", "--cmap", "magma", "--out", str(out)]))
    assert b.failures >= 1
    assert _snapshot(tmp_path) == before


def test_a_commit_that_fails_half_way_puts_everything_back(monkeypatch, tmp_path):
    out = tmp_path / "out"
    with OutputDir(out) as d:
        for i in range(4):
            d.write_text(f"old/{i}.txt", f"old {i}")
        d.write_text("keep.txt", "keep")
    before = _snapshot(tmp_path)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 5:  # half way through moving the new files in
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(png.os, "replace", replace)
    with pytest.raises(OutputError, match="the disk is full .*nothing was written"), OutputDir(out) as d:
        for i in range(4):
            d.write_text(f"old/{i}.txt", f"new {i}")
        d.write_text("new/deep/file.txt", "new")
    assert len(calls) > 5  # the files it had moved were moved back
    assert _snapshot(tmp_path) == before  # old files back, new folders gone, no staging left


def _tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, check=False).returncode == 0


def test_a_real_full_disk(tmp_path, monkeypatch):
    disk = tmp_path / "disk"
    mounted = _tmpfs(disk, "40k")
    if not mounted:  # not allowed to mount here: the same 40 KB, in this process
        b = _Budget(40_000)
        monkeypatch.setattr(png, "open", b.open, raising=False)
    try:
        out = disk / "out"
        _disk_full_error(*_cli(["maps", "demo", DIGIT, "--layers", "all", "--out", str(out)]))
        assert list(disk.iterdir()) == []
        if mounted:  # every block the staged files took is free again
            st = os.statvfs(disk)
            assert st.f_bfree == st.f_blocks, (st.f_bfree, st.f_blocks)
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


def test_two_commits_at_once_take_turns(monkeypatch, tmp_path):
    out = tmp_path / "out"
    with OutputDir(out) as d:  # an earlier run's output
        d.write_text("shared/0.txt", "earlier")
        d.write_json("index.json", {"files": ["shared/0.txt"]})
    real_replace = os.replace

    def slow_replace(src, dst):  # widen the window in which two unlocked commits interleave
        time.sleep(0.01)
        real_replace(src, dst)

    monkeypatch.setattr(png.os, "replace", slow_replace)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(tag: str) -> None:
        try:
            with OutputDir(out) as d:
                mine = [f"shared/{i}.txt" for i in range(8)] + [f"{tag}/{i}.txt" for i in range(3)]
                for rel in mine:
                    d.write_text(rel, tag)

                def index(mine=mine):
                    old = json.loads((out / "index.json").read_text())["files"]
                    return {"files": sorted(set(mine) | {f for f in old if (out / f).exists()})}

                d.write_json_on_commit("index.json", index)
                start.wait()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    files = _snapshot(out)
    shared = {files[f"shared/{i}.txt"] for i in range(8)}
    assert len(shared) == 1, shared  # every shared file from the same run: no mix
    winner = shared.pop().decode()
    assert {k for k in files if k.startswith(("a/", "b/"))} == {f"{t}/{i}.txt" for t in "ab" for i in range(3)}
    listed = json.loads(files.pop("index.json"))["files"]
    assert listed == sorted(files)  # the index lists exactly the files present
    assert winner in ("a", "b")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


def test_two_maps_runs_on_one_folder(tmp_path):
    refs = {}
    for cmap in ("magma", "gray"):  # what each run alone writes
        refs[cmap] = tmp_path / f"ref-{cmap}"
        code, err = _cli(["maps", "demo", DIGIT, "--layers", "all", "--cmap", cmap, "--out", str(refs[cmap])])
        assert code == 0, err
    out = tmp_path / "out"
    code, err = _cli(["maps", "demo", DIGIT, "--layers", "conv", "--out", str(out)])  # an earlier run
    assert code == 0, err
    procs = [subprocess.Popen([sys.executable, "-m", "convlens", "maps", "demo", DIGIT, "--layers", "all",
                               "--cmap", cmap, "--out", str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for cmap in ("magma", "gray")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    index = json.loads((out / "index.json").read_text())
    cmap = index["options"]["cmap"]
    ref = _snapshot(refs[cmap])
    files = _snapshot(out)
    listed = {e["file"] for e in index["maps"]}
    assert listed == {k for k in files if k.endswith(".png")}  # the index and the folder agree
    for rel in listed:
        assert files[rel] == ref[rel], rel  # and every picture is the index's run's: no mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ref-gray", "ref-magma"]
