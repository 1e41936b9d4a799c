"""The dataset folder: one writer, one reader, one format version, for DatasetResult.load and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convlens import BadArgument
from convlens.dataset.folder import FORMAT_VERSION, read_folder, write_folder
from convlens.dataset.result import FORMAT_VERSION as RESULT_VERSION
from convlens.dataset.result import DatasetResult
from convlens.output import OutputDir
from convlens.report.sections.dataset import read_dataset_folder


def _folder(path: Path, **index: object) -> Path:
    with OutputDir(path) as staging:
        write_folder(staging, {"model": "m", "k": np.int64(2), "layers": [], **index},
                     {"images": 3, "layers": [{"name": "conv", "mean": np.array([0.5, np.nan])}]}, "layer\n")
    return path


def test_both_files_carry_the_header_and_stay_plain_json(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "d")
    index = json.loads((folder / "index.json").read_text())
    channels = json.loads((folder / "channels.json").read_text())
    assert list(index)[:2] == ["convlens", "version"] and index["version"] == FORMAT_VERSION == RESULT_VERSION
    assert index["k"] == 2 and channels["layers"][0]["mean"] == [0.5, None]
    assert (folder / "channels.csv").read_text() == "layer\n"
    files = read_folder(folder)
    assert files.index == index and files.channels == channels and files.root == folder


def _messages(folder: Path) -> list[str]:
    out = []
    for read in (DatasetResult.load, read_dataset_folder, read_folder):
        with pytest.raises(BadArgument) as info:
            read(folder)
        out.append(str(info.value))
    return out


def test_a_wrong_version_is_refused_with_one_message_by_both_callers(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "d")
    index = json.loads((folder / "index.json").read_text())
    index["version"] = FORMAT_VERSION + 1
    (folder / "index.json").write_text(json.dumps(index))
    messages = _messages(folder)
    assert len(set(messages)) == 1, messages
    assert f"has dataset format version {FORMAT_VERSION + 1}, this convlens reads version {FORMAT_VERSION}" \
        in messages[0] and "make one with: convlens dataset" in messages[0]
    assert "\n" not in messages[0]


def test_a_wrong_channels_version_too(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "d")
    (folder / "channels.json").write_text(json.dumps({"convlens": "dataset", "version": "1"}))
    messages = _messages(folder)
    assert len(set(messages)) == 1 and "channels.json has dataset format version '1'" in messages[0]


@pytest.mark.parametrize(("make", "needle"), [
    (lambda p: None, "not found"),
    (lambda p: p.mkdir(), "has no index.json"),
    (lambda p: (p.mkdir(), (p / "index.json").write_text("{oops")), "cannot be read as JSON"),
    (lambda p: (p.mkdir(), (p / "index.json").write_text('{"convlens": "0.1", "maps": []}')),
     "was not written by convlens dataset"),
])
def test_other_folders_are_refused_alike(tmp_path: Path, make, needle: str) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "d"
    make(folder)
    messages = _messages(folder)
    assert len(set(messages)) == 1 and needle in messages[0], messages


def test_channels_json_is_needed_to_load_but_not_for_the_report(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "d", root=str(tmp_path), data="x", kind="folder", images=3)
    (folder / "channels.json").unlink()
    with pytest.raises(BadArgument, match="has no channels.json"):
        DatasetResult.load(folder)
    assert read_folder(folder, need_channels=False).channels is None
    assert read_dataset_folder(folder).has_stats is False
