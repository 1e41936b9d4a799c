"""Marks drawn on an overlay: detection boxes with their class and score, a region's outline.

Numpy in, pixels out, as the rest of :mod:`convlens.render`: boxes are drawn
into an ``(H, W, 3)`` uint8 picture at the picture's own resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Box", "draw_boxes", "draw_outline"]

#: The explained detection's colour, and the other detections'.
EXPLAINED = (255, 255, 255)
OTHER = (0, 255, 255)


@dataclass(frozen=True)
class Box:
    """One box to draw: ``(x0, y0, x1, y1)`` in the image's pixels, a label, thick or thin."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str = ""
    thick: bool = False


def _rect(pic: np.ndarray, box: Box, colour: tuple[int, int, int], width: int, sy: float, sx: float) -> None:
    h, w = pic.shape[:2]
    x0, x1 = int(round(box.x0 * sx)), int(round(box.x1 * sx)) - 1
    y0, y1 = int(round(box.y0 * sy)), int(round(box.y1 * sy)) - 1
    x0, x1 = max(0, min(x0, w - 1)), max(0, min(x1, w - 1))
    y0, y1 = max(0, min(y0, h - 1)), max(0, min(y1, h - 1))
    if x1 < x0 or y1 < y0:
        return
    c = np.asarray(colour, np.uint8)
    for k in range(width):
        top, bottom = min(y0 + k, y1), max(y1 - k, y0)
        left, right = min(x0 + k, x1), max(x1 - k, x0)
        pic[top, x0:x1 + 1] = c
        pic[bottom, x0:x1 + 1] = c
        pic[y0:y1 + 1, left] = c
        pic[y0:y1 + 1, right] = c


def draw_boxes(picture: np.ndarray, boxes: Sequence[Box], image_hw: tuple[int, int]) -> np.ndarray:
    """``picture`` with the boxes drawn: thin ones first, the thick (explained) one on top, with labels.

    Args:
        picture: ``(H', W', 3)`` uint8, the image drawn at any scale.
        boxes: in pixels of the image as given (``image_hw``).
        image_hw: the image's ``(H, W)``; boxes are scaled to the picture.
    """
    from .grid import draw_texts

    pic = np.array(picture, np.uint8, copy=True)
    sy, sx = pic.shape[0] / image_hw[0], pic.shape[1] / image_hw[1]
    width = max(2, round(max(pic.shape[:2]) / 200))
    texts: list[tuple[int, int, str]] = []
    for box in sorted(boxes, key=lambda b: b.thick):
        _rect(pic, box, EXPLAINED if box.thick else OTHER, width if box.thick else 1, sy, sx)
        if box.label and box.thick:
            size = max(11, width * 5)
            texts.append((int(max(0, box.x0 * sx) + width + 2), int(max(0, box.y0 * sy) + width + size // 2 + 1),
                          box.label))
    if texts:
        pic = draw_texts(pic, texts, size=max(11, width * 5), color=EXPLAINED)
    return pic


def draw_outline(picture: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``picture`` with the edge of ``region`` (``(h, w)``, any resolution, non-zero inside) drawn in white."""
    pic = np.array(picture, np.uint8, copy=True)
    h, w = pic.shape[:2]
    m = np.asarray(region) != 0
    ys = np.minimum((np.arange(h) + 0.5) * m.shape[0] / h, m.shape[0] - 1).astype(int)
    xs = np.minimum((np.arange(w) + 0.5) * m.shape[1] / w, m.shape[1] - 1).astype(int)
    inside = m[ys][:, xs]
    edge = np.zeros_like(inside)
    edge[:-1] |= inside[:-1] != inside[1:]
    edge[1:] |= inside[1:] != inside[:-1]
    edge[:, :-1] |= inside[:, :-1] != inside[:, 1:]
    edge[:, 1:] |= inside[:, 1:] != inside[:, :-1]
    edge[[0, -1], :] |= inside[[0, -1], :]
    edge[:, [0, -1]] |= inside[:, [0, -1]]
    pic[edge] = EXPLAINED
    return pic
