"""Class names: from the user (``--labels``), ImageNet's, the demo's digits.

Adapters say which names their model has (``Adapter.class_names``, set by the
one dispatch point in :mod:`convlens.adapters`); :meth:`convlens.Lens.class_names`
checks them, or the user's, against the model's output. Only files that ship
with convlens are read here besides the user's labels file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from ._errors import BadArgument

__all__ = ["DEMO_SOURCE", "IMAGENET_KEYWORD", "IMAGENET_SOURCE", "LABELS_SOURCE", "check_class_names",
           "demo_class_names", "imagenet_class_names", "is_imagenet_keyword", "read_labels"]

_DATA = Path(__file__).resolve().parent / "data"
#: How the report names each source of class names.
IMAGENET_SOURCE = "ImageNet class names"
DEMO_SOURCE = "the demo model's digits"
LABELS_SOURCE = "--labels"


@cache
def _imagenet() -> tuple[str, ...]:
    return tuple((_DATA / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines())


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names, in the order of keras.applications and torchvision."""
    return list(_imagenet())


def demo_class_names() -> list[str]:
    """The built-in demo model's classes: the digits ``"0"`` .. ``"9"`` (from ``data/demo_cnn.json``)."""
    meta = json.loads((_DATA / "demo_cnn.json").read_text())
    return [str(n) for n in meta.get("class_names", [])]


#: ``--labels imagenet`` (``labels="imagenet"``): the built-in ImageNet-1k names, for any 1000-way model.
IMAGENET_KEYWORD = "imagenet"


def is_imagenet_keyword(labels: object) -> bool:
    """Whether ``labels`` asks for the built-in ImageNet names (``"imagenet"``, unless a file of that name exists)."""
    return isinstance(labels, str) and labels.strip().lower() == IMAGENET_KEYWORD and not Path(labels).exists()


def read_labels(labels: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """Class names from a file (one per line, UTF-8) or a list; ``"imagenet"``: the built-in ImageNet names.

    Raises:
        BadArgument: the file cannot be read, or holds no names.
    """
    if is_imagenet_keyword(labels):
        return imagenet_class_names()
    if isinstance(labels, (str, os.PathLike)):
        path = Path(os.fspath(labels)).expanduser()
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise BadArgument(f"labels file not found: {path}; give a text file with one class "
                              "name per line") from None
        except (OSError, UnicodeDecodeError) as e:
            raise BadArgument(f"cannot read labels file {path}: {e}; give a UTF-8 text file with "
                              "one class name per line") from None
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()
        where = str(path)
    else:
        names = [str(n) for n in labels]
        where = "labels"
    if not names:
        raise BadArgument(f"{where} holds no class names; give one name per line")
    return names


def check_class_names(model: str, classes: int | None, *, given: Sequence[str] | None,
                      known: Sequence[str] | None, known_source: str,
                      output_shape: Sequence[int] = ()) -> tuple[list[str] | None, str]:
    """The class names to show for a model's ``classes`` outputs, and where they come from.

    Args:
        model: the model's name, for messages.
        classes: K when the model's output per image is ``(K,)`` with K > 1, else ``None``
            (not a classifier).
        given: the user's names (``--labels``), already read; they win.
        known: the names the adapter knows, if any.
        known_source: where ``known`` come from, in words.
        output_shape: the model's output per image, for the message when it is not a classifier.

    Returns:
        ``(names, source)``: ``(None, "")`` when no names fit; names the adapter
        knows but whose count differs from ``classes`` are not used.

    Raises:
        BadArgument: ``given`` for a model that is not a classifier, or of the wrong length.
    """
    if given is not None:
        if classes is None:
            raise BadArgument(f"--labels was given but {model} is not a classifier (its output "
                              f"per image has shape {tuple(output_shape)}, not (K,) with K > 1); "
                              "leave --labels out")
        if len(given) != classes:
            raise BadArgument(f"the labels hold {len(given)} names but {model} outputs {classes} "
                              "classes; give one name per class, in the model's order")
        return list(given), LABELS_SOURCE
    if classes is None or known is None or len(known) != classes:
        return None, ""
    return list(known), known_source
