"""File names: the one rule that turns a layer, image or method name into a safe file name."""

from __future__ import annotations

import re

__all__ = ["safe_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, default: str = "layer") -> str:
    """A layer, image or method name as one file-name component.

    ``/`` (a nested layer such as ``block1/conv``) becomes ``__``; every run
    of other characters outside ``A-Z a-z 0-9 . _ -`` becomes one ``_``; dots
    and underscores at either end are dropped, so the result never names a
    hidden file, ``.`` or ``..``.

    Args:
        name: any text.
        default: what an empty result becomes (a name made only of unsafe characters).

    Returns:
        A non-empty name made of ``A-Z a-z 0-9 . _ -``, e.g. ``block1__conv`` for ``block1/conv``.

    Example:
        >>> safe_name("features/0 (conv)")
        'features__0_conv'
    """
    return _UNSAFE.sub("_", name.replace("/", "__")).strip("._") or default
