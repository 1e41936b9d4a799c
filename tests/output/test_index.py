"""``jsonable`` and ``dumps_json``: numpy values, paths and non-finite floats become plain JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from convlens.output import OutputDir, dumps_json, jsonable, write_index


def test_numpy_scalars_become_python_numbers() -> None:
    out = jsonable({"f": np.float32(1.5), "i": np.int64(7), "u": np.uint8(255), "b": np.bool_(True),
                    "h": np.float16(0.25)})
    assert out == {"f": 1.5, "i": 7, "u": 255, "b": True, "h": 0.25}
    assert [type(v) for v in out.values()] == [float, int, int, bool, float]


def test_arrays_become_nested_lists_and_nan_becomes_null() -> None:
    a = np.array([[1.0, np.nan], [np.inf, -np.inf]], np.float32)
    assert jsonable(a) == [[1.0, None], [None, None]]
    assert jsonable(np.arange(3, dtype=np.int32)) == [0, 1, 2]
    assert jsonable(np.float64("nan")) is None and jsonable(float("-inf")) is None
    assert jsonable(np.zeros((0, 2))) == []


def test_containers_paths_and_keys() -> None:
    out = jsonable({1: (np.int8(1), [Path("a/b.png"), {"x": math.nan}]), "s": "text", "n": None})
    assert out == {"1": [1, ["a/b.png", {"x": None}]], "s": "text", "n": None}


def test_dumps_json_parses_in_any_browser() -> None:
    obj = {"name": "ünï", "values": np.array([0.5, np.nan]), "k": np.int64(3)}
    text = dumps_json(obj)
    assert "NaN" not in text and "ünï" in text and "\n  " in text  # indented, UTF-8 kept
    assert json.loads(text) == {"name": "ünï", "values": [0.5, None], "k": 3}
    compact = dumps_json(obj, indent=None)
    assert " " not in compact.replace("ünï", "") and json.loads(compact) == json.loads(text)


def test_dumps_json_refuses_what_is_not_json() -> None:
    with pytest.raises(TypeError):
        dumps_json({"x": object()})


def test_write_index_merges_at_commit_time(tmp_path: Path) -> None:
    (tmp_path / "old.png").write_bytes(b"x")
    (tmp_path / "index.json").write_text(json.dumps({"maps": [{"file": "old.png"}], "filters": [{"file": "f"}]}))
    with OutputDir(tmp_path) as staging:
        staging.write_bytes("new.png", b"y")
        write_index(staging, "maps", [{"file": "new.png", "v": np.float32(2.0)}], {"model": "m"})
    index = json.loads((tmp_path / "index.json").read_text())
    assert index == staging.results["index.json"] | {"maps": [{"file": "old.png"}, {"file": "new.png", "v": 2.0}]}
    assert index["model"] == "m" and index["filters"] == [{"file": "f"}]
    assert [e["file"] for e in index["maps"]] == ["old.png", "new.png"]
