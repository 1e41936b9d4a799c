"""Which score a heatmap explains: top-1, classes by index or name, a region of a segmentation.

A user's target (``None``, ``3``, ``"tabby"``, ``[3, "dog"]``) is resolved
against the model's output into rows: one ``(image, class)`` pair per map.
Several classes at once give one map per image and class, image-major.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._errors import BadArgument
from ..adapters.base import Target

__all__ = [
    "Rows",
    "TargetSpec",
    "box_mask",
    "class_index",
    "class_scores",
    "parse_classes",
    "resolve_rows",
]

#: What a caller may ask for: ``None`` (each image's top class), a class index
#: or name, or several of them (a list, or a comma-separated string).
TargetSpec = None | int | str | Sequence[int | str]


@dataclass(frozen=True)
class Rows:
    """The resolved targets: row ``m`` explains class ``classes[m]`` of image ``images[m]``.

    Attributes:
        images: ``(M,)`` int, index into the batch.
        classes: ``(M,)`` int, index into the model's output channels.
        labels: ``M`` class labels (the class name, or the index as text).
        mask: ``(h, w)`` weights over the output's positions for a
            segmentation model (a box of ones), or ``None``.
    """

    images: np.ndarray
    classes: np.ndarray
    labels: list[str]
    mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def target(self) -> Target:
        """The adapter :class:`Target` of these rows: each class's score, summed over the mask."""
        return Target(
            layer=None, channels=tuple(int(c) for c in self.classes), reduce="sum", mask=self.mask
        )

    def scores(self, output: np.ndarray) -> np.ndarray:
        """``(M,)`` float64: each row's score in ``output``, its own image's output ``(M, ...)``."""
        return class_scores(output, self.classes, self.mask, per_row=True)


def class_scores(
    output: np.ndarray,
    classes: Sequence[int] | np.ndarray,
    mask: np.ndarray | None = None,
    *,
    per_row: bool = False,
) -> np.ndarray:
    """Scores of ``classes`` in a model output: the class's value, summed over ``mask`` for a map.

    Args:
        output: ``(B, K)`` or ``(B, h, w, K)`` canonical model output.
        classes: class indexes.
        mask: ``(h, w)`` weights over positions for a map output (``None``: all ones).
        per_row: ``classes[b]`` belongs to item ``b`` (returns ``(B,)``); else
            every class for every item (returns ``(B, len(classes))``).

    Returns:
        float64 scores.
    """
    out = np.asarray(output, np.float64)
    idx = np.asarray(classes, int)
    picked = out[np.arange(len(out)), ..., idx] if per_row else out[..., idx]
    if out.ndim == 2:
        return picked
    if per_row:  # (B, h, w)
        weights = np.ones(out.shape[1:-1]) if mask is None else np.asarray(mask, np.float64)
        return (picked * weights).reshape(len(out), -1).sum(axis=1)
    weights = np.ones(out.shape[1:-1]) if mask is None else np.asarray(mask, np.float64)
    return (picked * weights[..., None]).reshape(len(out), -1, len(idx)).sum(axis=1)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def class_index(item: int | str, n_classes: int | None, names: Sequence[str] | None) -> int:
    """One class: an index (``int`` or digits) or a name, checked against the output.

    Raises:
        BadArgument: an index out of range, or a name the model does not have
            (with the closest names).
    """
    if isinstance(item, (bool, np.bool_)):
        raise BadArgument(f"class {item!r} is not a class index or name")
    if isinstance(item, (int, np.integer)) or (
        isinstance(item, str) and re.fullmatch(r"\s*-?\d+\s*", item)
    ):
        k = int(item)
        if n_classes is not None and not 0 <= k < n_classes:
            raise BadArgument(
                f"class {k} is out of range: the model has {n_classes} classes (0-{n_classes - 1})"
            )
        if n_classes is None and k < 0:
            raise BadArgument(f"class {k} is out of range: class indexes start at 0")
        return k
    if not isinstance(item, str):
        raise BadArgument(f"class {item!r} is not a class index or name")
    if not names:
        raise BadArgument(
            f"class {item!r}: the model's class names are unknown; give a class index "
            "or pass the class names (--labels FILE, class_names=[...])"
        )
    wanted = _norm(item)
    normed = [_norm(n) for n in names]
    if wanted in normed:
        return normed.index(wanted)
    close = difflib.get_close_matches(wanted, normed, n=3, cutoff=0.6)
    hint = f"; closest: {', '.join(repr(names[normed.index(c)]) for c in close)}" if close else ""
    raise BadArgument(
        f"unknown class {item!r}{hint}; give a class index (0-{len(names) - 1}) "
        "or one of the model's class names"
    )


def parse_classes(
    spec: TargetSpec, n_classes: int | None, names: Sequence[str] | None
) -> list[int] | None:
    """The class indexes a target names; ``None`` for top-1.

    A string is split on commas unless it is one of the class names as a whole
    (ImageNet has ``"crane"`` twice but also names with commas in some lists).
    """
    if spec is None:
        return None
    if isinstance(spec, (bool, np.bool_)):
        raise BadArgument(f"class {spec!r} is not a class index or name")
    if isinstance(spec, str):
        whole = names is not None and _norm(spec) in {_norm(n) for n in names}
        items: list[int | str] = [spec] if whole else [s for s in spec.split(",") if s.strip()]
    elif isinstance(spec, (int, np.integer)):
        items = [int(spec)]
    else:
        items = list(spec)
    if not items:
        raise BadArgument(
            "empty class list; give a class index or name, or leave it out for the top class"
        )
    return [class_index(item, n_classes, names) for item in items]


def box_mask(
    box: Sequence[float], input_hw: tuple[int, int], output_hw: tuple[int, int]
) -> np.ndarray:
    """A ``(h, w)`` mask of ones over the output positions whose centres fall in ``box``.

    Args:
        box: ``(top, left, bottom, right)`` in the network input's pixels,
            bottom and right exclusive.
        input_hw: the network input's ``(H, W)``.
        output_hw: the output's ``(h, w)``.

    Raises:
        BadArgument: a malformed box, or one that holds no output position.
    """
    try:
        top, left, bottom, right = (float(v) for v in box)
    except (TypeError, ValueError):
        raise BadArgument(
            f"box {box!r}: give four numbers (top, left, bottom, right) in input pixels"
        ) from None
    if not (bottom > top and right > left):
        raise BadArgument(
            f"box {tuple(box)} is empty: bottom must exceed top and right exceed left"
        )
    h, w = output_hw
    ys = (np.arange(h) + 0.5) * input_hw[0] / h
    xs = (np.arange(w) + 0.5) * input_hw[1] / w
    mask = ((ys >= top) & (ys < bottom))[:, None] & ((xs >= left) & (xs < right))[None, :]
    if not mask.any():
        raise BadArgument(
            f"box {tuple(box)} holds no output position of the {input_hw[0]}x{input_hw[1]} "
            "input; give a larger box inside the image"
        )
    return mask.astype(np.float32)


def resolve_rows(
    spec: TargetSpec,
    output: np.ndarray | None,
    *,
    n_images: int,
    n_classes: int | None,
    names: Sequence[str] | None,
    box: Sequence[float] | None = None,
    input_hw: tuple[int, int] | None = None,
) -> Rows:
    """Resolve a target against the model's output.

    Args:
        spec: see :data:`TargetSpec`.
        output: the model's output for the batch (canonical, ``(N, K)`` or
            ``(N, h, w, K)``), or ``None`` when it is not computed yet (then
            ``spec`` must name classes, and ``box`` cannot be used).
        n_images: the batch size N.
        n_classes: K when known, to check indexes before any work.
        names: the class names, if known.
        box: a region for a segmentation output (see :func:`box_mask`).
        input_hw: the network input's size, to place ``box``.

    Raises:
        BadArgument: a bad class, no class for an output that is not a vector
            of class scores, a box for a classifier.
    """
    if output is not None:
        n_classes = int(output.shape[-1])
        spatial = output.shape[1:-1]
    else:
        spatial = ()
    classes = parse_classes(spec, n_classes, names)
    if spatial and classes is None:
        raise BadArgument(
            f"the model's output is a map of shape {tuple(spatial)} x {n_classes}, not one score "
            "per class, so there is no top class: name the class to explain (--class)"
        )
    mask = None
    if box is not None:
        if output is None or len(spatial) != 2:
            raise BadArgument(
                "a box selects pixels of a segmentation output; this model's output has no "
                "spatial axes (leave the box out)"
            )
        mask = box_mask(box, input_hw or tuple(spatial), (int(spatial[0]), int(spatial[1])))
    if classes is None:
        if output is None:
            raise ValueError(
                "a top-1 target is resolved from the model's output: run the forward pass first"
            )
        if output.ndim != 2:
            raise BadArgument(
                f"the model's output has shape {tuple(output.shape[1:])}, not one score per "
                "class: name the class to explain (--class)"
            )
        top = np.argmax(output, axis=1)
        images, picked = np.arange(n_images), top
    else:
        images = np.repeat(np.arange(n_images), len(classes))
        picked = np.tile(np.asarray(classes, int), n_images)
    labels = [str(names[k]) if names is not None and k < len(names) else str(k) for k in picked]
    return Rows(
        images=images.astype(int), classes=np.asarray(picked, int), labels=labels, mask=mask
    )
