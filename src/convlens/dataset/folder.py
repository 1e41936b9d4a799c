"""The dataset folder's files: the one writer and the one reader, with one format version.

``convlens dataset --out DIR`` (:meth:`DatasetResult.save
<convlens.dataset.result.DatasetResult.save>`) writes, besides the pictures:

* ``index.json``: the run, every layer and channel, every ranked image;
* ``channels.json``: per layer ``LayerStats.as_dict()`` plus ``"selectivity"``;
* ``channels.csv``: the same statistics, one row per channel, for spreadsheets
  (never read back).

Both JSON files start with ``"convlens": "dataset"`` and ``"version":``
:data:`FORMAT_VERSION`. :func:`read_folder` is the only code that reads them
back: :meth:`DatasetResult.load <convlens.dataset.result.DatasetResult.load>`
and the report's "Dataset examples" section call it, so a folder is refused
for the same reason with the same message by both. Plain JSON, never pickle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import BadArgument
from ..output import OutputDir, dumps_json

__all__ = ["CHANNELS_CSV", "CHANNELS_JSON", "FORMAT_VERSION", "INDEX", "KIND", "DatasetFiles", "read_folder",
           "write_folder"]

#: The version of the files :func:`write_folder` writes; :func:`read_folder` reads only this one.
FORMAT_VERSION = 1
#: ``"convlens"``'s value in both JSON files: what tells a dataset folder from other commands' output.
KIND = "dataset"
INDEX = "index.json"
CHANNELS_JSON = "channels.json"
CHANNELS_CSV = "channels.csv"


@dataclass(frozen=True)
class DatasetFiles:
    """A dataset folder's JSON files, as read and checked by :func:`read_folder`.

    Attributes:
        root: the folder.
        index: ``index.json``.
        channels: ``channels.json``, or ``None`` when the folder has none
            (only when :func:`read_folder` was told it may be missing).
    """

    root: Path
    index: dict[str, Any]
    channels: dict[str, Any] | None


def _header(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with ``"convlens"`` and ``"version"`` first (any older values replaced)."""
    rest = {k: v for k, v in obj.items() if k not in ("convlens", "version")}
    return {"convlens": KIND, "version": FORMAT_VERSION, **rest}


def write_folder(staging: OutputDir, index: dict[str, Any], channels: dict[str, Any],
                 channels_csv: str) -> dict[str, Any]:
    """Stage ``index.json``, ``channels.json`` and ``channels.csv`` of a dataset folder.

    JSON is compact (the C encoder: an index of thousands of channels is
    written ten times faster than indented), numpy values and non-finite
    floats made plain (:func:`~convlens.output.jsonable`).

    Args:
        staging: the open output folder.
        index: the run (:data:`INDEX`'s content, without its header).
        channels: the statistics (:data:`CHANNELS_JSON`'s, without its header).
        channels_csv: the text of :data:`CHANNELS_CSV`.

    Returns:
        The index as written (with its header).
    """
    index = _header(index)
    staging.write_bytes(INDEX, (dumps_json(index, indent=None) + "\n").encode("utf-8"))
    staging.write_bytes(CHANNELS_JSON, (dumps_json(_header(channels), indent=None) + "\n").encode("utf-8"))
    staging.write_text(CHANNELS_CSV, channels_csv)
    return index


def read_folder(path: str | os.PathLike[str], *, need_channels: bool = True) -> DatasetFiles:
    """Read and check a dataset folder's ``index.json`` and ``channels.json``.

    Args:
        path: the folder (``~`` expanded).
        need_channels: refuse a folder without ``channels.json``; ``False``
            reads it as ``None`` instead.

    Raises:
        BadArgument: the folder is missing, a file is missing, unreadable or
            not a dataset view's, or its format version is not
            :data:`FORMAT_VERSION` (one line, saying how to make a folder).
    """
    root = Path(os.fspath(path)).expanduser()
    make = f"make one with: convlens dataset MODEL DATA --layers SEL --out {root}"
    if not root.is_dir():
        raise BadArgument(f"dataset folder {root} not found; {make}")
    index = _read(root, INDEX, make)
    if index is None:
        raise BadArgument(f"{root} is not a convlens dataset folder (it has no {INDEX}); {make}")
    channels = _read(root, CHANNELS_JSON, make)
    if channels is None and need_channels:
        raise BadArgument(f"{root} is not a whole convlens dataset folder (it has no {CHANNELS_JSON}); {make}")
    return DatasetFiles(root=root, index=index, channels=channels)


def _read(root: Path, name: str, make: str) -> dict[str, Any] | None:
    """One JSON file of the folder, checked; ``None`` when it does not exist."""
    path = root / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadArgument(f"{path} cannot be read as JSON ({type(e).__name__}); {make}") from None
    if not isinstance(data, dict) or data.get("convlens") != KIND:
        raise BadArgument(f"{path} was not written by convlens dataset (it is another command's); {make}")
    if data.get("version") != FORMAT_VERSION:
        raise BadArgument(f"{path} has dataset format version {data.get('version')!r}, this convlens reads "
                          f"version {FORMAT_VERSION}; {make}")
    return data
