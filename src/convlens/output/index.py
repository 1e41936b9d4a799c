"""``index.json``: JSON that any browser parses, and one index shared by several commands.

* :func:`jsonable` turns numpy scalars and arrays, paths and tuples into
  plain JSON values, and NaN or infinite floats into ``null``.
* :func:`dumps_json` is the one JSON encoding of every file convlens writes.
* :func:`merge_index` folds a run's entries into an ``index.json`` that other
  commands may already have written into the same folder; :func:`write_index`
  stages that merge so that it happens at commit time.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .._version import __version__

__all__ = ["Staging", "dumps_json", "jsonable", "merge_index", "write_index"]


class Staging(Protocol):
    """What :func:`write_index` needs of an open :class:`~convlens.output.files.OutputDir`."""

    path: Path

    def write_json_on_commit(self, rel: str, make: Callable[[], Any]) -> None: ...


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values, ready for ``json.dumps(..., allow_nan=False)``.

    Dicts (keys become strings), lists and tuples are walked; numpy arrays
    become (nested) lists and numpy scalars Python numbers; NaN and infinite
    floats become ``None`` (``null``: browsers cannot parse ``NaN``); paths
    become strings. Anything else is returned as it is.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def dumps_json(obj: Any, *, indent: int | None = 2) -> str:
    """``obj`` (through :func:`jsonable`) as JSON text, UTF-8 characters kept, keys in insertion order.

    Args:
        obj: what to encode.
        indent: spaces per level; ``None`` for compact text (no spaces: the C
            encoder, about ten times faster on an index of thousands of entries).
    """
    separators = (",", ":") if indent is None else None
    return json.dumps(jsonable(obj), indent=indent, separators=separators, ensure_ascii=False, allow_nan=False)


def merge_index(out: str | os.PathLike[str], key: str, entries: list[dict[str, Any]],
                meta: dict[str, Any]) -> dict[str, Any]:
    """Fold this run's entries into an ``index.json`` already in ``out`` (other commands' files stay).

    Args:
        out: the output folder (its ``index.json`` is read, if any; a broken one is replaced).
        key: this command's list in the index, e.g. ``"maps"`` or ``"filters"``.
        entries: this run's records, each with a ``"file"`` relative to ``out``; an
            older record of the same file is replaced, and older records whose
            file is gone are dropped.
        meta: top-level keys to set (model, framework, options...).

    Returns:
        The merged index (to be written with :meth:`OutputDir.write_json`).
    """
    folder = Path(out)
    index: dict[str, Any] = {}
    old = folder / "index.json"
    if old.is_file():
        try:
            index = json.loads(old.read_text())
        except (OSError, ValueError):
            index = {}
        if not isinstance(index, dict):
            index = {}
    new_files = {e["file"] for e in entries}
    kept = [e for e in index.get(key, []) if isinstance(e, dict) and e.get("file") not in new_files
            and (folder / str(e.get("file"))).exists()]
    index.update(meta)
    index["convlens"] = __version__
    index[key] = kept + entries
    return index


def write_index(staging: Staging, key: str, entries: Sequence[dict[str, Any]],
                meta: dict[str, Any]) -> None:
    """Stage ``index.json`` as :func:`merge_index` of the folder's index at commit time.

    Merged under the commit lock, the index sees what another run committed
    into the same folder meanwhile. Once the ``with`` block of ``staging``
    ends, the index written is ``staging.results["index.json"]``.

    Args:
        staging: the open output folder.
        key, entries, meta: as for :func:`merge_index`.
    """
    rows = list(entries)
    staging.write_json_on_commit("index.json", lambda: merge_index(staging.path, key, rows, meta))
