"""Small file helpers shared by the adapters."""

from __future__ import annotations

import zipfile
from pathlib import Path


def is_zip(path: Path) -> bool:
    """``zipfile.is_zipfile``, which raises BadZipFile itself on some damaged end records."""
    try:
        return zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return False

