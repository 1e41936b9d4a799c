"""Heatmap differences of two checkpoints: Grad-CAM of A and of B on each given image.

For each image (the first :data:`HEATMAP_IMAGES`), Grad-CAM explains A's
top-1 class in A and the same class in B (B's own top-1 when B has no such
class), so that the two maps answer the same question; the Spearman rank
correlation of the two maps says how much of where the network looks
survived, and the picture shows A | B | |A - B| on the image.

Grad-CAM needs gradients: on a forward-only model (TFLite) the differences
are not computed and a note says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import ConvlensError
from ..heatmaps import Heatmap, heatmaps
from ..methods import gradients_problem
from ..model import Model
from ..render.grid import add_title
from ..render.overlay import overlay, resize_map
from ..render.png import encode_png
from .metrics import spearman

__all__ = ["HEATMAP_IMAGES", "HeatmapDiff", "heatmap_differences"]

#: Images whose heatmaps are compared (the first ones given); a note says when there were more.
HEATMAP_IMAGES = 8


@dataclass
class HeatmapDiff:
    """Grad-CAM of A and B on one image.

    Attributes:
        image: the image's number among those compared.
        name: the image's name.
        target: the class both maps explain (A's top-1), by name when known.
        top1_a, top1_b: each model's top-1 class, by name when known.
        spearman: the rank correlation of the two maps (-1..1; 1 = same order of
            importance); ``None`` when a map is flat.
        mean_abs_diff: the mean of ``|A - B|`` over the map (maps are 0..1).
        picture: the PNG's file name (``heatmaps_<image>.png``).
    """

    image: int
    name: str
    target: Any
    top1_a: Any
    top1_b: Any
    spearman: float | None
    mean_abs_diff: float
    picture: str


def _label(names: Sequence[str] | None, index: int) -> Any:
    return names[index] if names and 0 <= index < len(names) else index


def heatmap_differences(ma: Model, mb: Model, images: Sequence[Any], *, size_a: Any = None, size_b: Any = None,
                        preprocess_a: str | None = None, preprocess_b: str | None = None,
                        labels: Sequence[str] | None = None
                        ) -> tuple[list[HeatmapDiff], dict[str, bytes], list[str]]:
    """Grad-CAM of ``ma`` and ``mb`` on the first :data:`HEATMAP_IMAGES` of ``images``.

    Args:
        ma, mb: the two networks (A is the reference).
        images: the images compared (paths, arrays, PIL images).
        size_a, size_b, preprocess_a, preprocess_b: each side's preparation.
        labels: class names (default A's own).

    Returns:
        Per image a :class:`HeatmapDiff`, the pictures (file name -> PNG bytes) and notes
        (no gradients, images left out, a map that could not be computed). Never raises for
        what the models cannot do: the comparison goes on without the heatmaps.
    """
    notes: list[str] = []
    for m in (ma, mb):
        problem = gradients_problem(m.adapter, "Grad-CAM", alternatives=False)
        if problem is not None:
            return [], {}, [f"{problem}; the heatmap differences were not computed"]
    chosen = list(images[:HEATMAP_IMAGES])
    if len(images) > HEATMAP_IMAGES:
        notes.append(f"heatmaps compared on the first {HEATMAP_IMAGES} of {len(images)} images")
    try:
        ha = heatmaps(ma, chosen, "gradcam", size=size_a, preprocess=preprocess_a)
    except ConvlensError as e:
        return [], {}, [f"Grad-CAM of {ma.name} failed ({e}); the heatmap differences were not computed"]
    names = list(labels) if labels is not None else ha.class_names
    diffs: list[HeatmapDiff] = []
    pictures: dict[str, bytes] = {}
    for i, image in enumerate(chosen):
        ea = ha.find(i)
        try:
            hb = heatmaps(mb, [image], "gradcam", size=size_b, preprocess=preprocess_b, target=ea.class_index)
        except ConvlensError:
            try:  # B has no such class: its own top-1
                hb = heatmaps(mb, [image], "gradcam", size=size_b, preprocess=preprocess_b)
            except ConvlensError as e:
                notes.append(f"Grad-CAM of {mb.name} failed on image {i} ({e})")
                continue
            notes.append(f"image {i}: {mb.name} has no class {ea.class_index}; its map explains its own top-1")
        eb = hb.find(0)
        out_b = np.ravel(np.asarray(hb.outputs[0], np.float64))
        top_b = int(np.argmax(out_b)) if out_b.size else eb.class_index
        out_a = np.ravel(np.asarray(ha.outputs[i], np.float64))
        top_a = int(np.argmax(out_a)) if out_a.size else ea.class_index
        map_a = np.asarray(ea.map, np.float64)
        map_b = np.asarray(eb.map, np.float64)
        if map_b.shape != map_a.shape:
            map_b = resize_map(map_b, map_a.shape).astype(np.float64)
        diff = np.abs(map_a - map_b)
        rho = None if ea.flat or eb.flat else spearman(map_a, map_b)
        file = f"heatmaps_{i}.png"
        name = ha.images[i].name if i < len(ha.images) else str(i)
        pictures[file] = _picture(ha.images[i].pixels, ea, eb, map_a, map_b, diff, name, rho)
        diffs.append(HeatmapDiff(i, name, _label(names, ea.class_index), _label(names, top_a),
                                 _label(names, top_b), rho, float(diff.mean()), file))
    return diffs, pictures, notes


def _picture(pixels: np.ndarray, ea: Heatmap, eb: Heatmap, map_a: np.ndarray, map_b: np.ndarray,
             diff: np.ndarray, name: str, rho: float | None) -> bytes:
    """``A | B | |A - B|`` Grad-CAM overlays on the image, one colour scale 0..1."""
    panels = [overlay(pixels, m, caption=c, value_range=(0.0, 1.0), min_side=160)
              for m, c in ((map_a, f"A: class {ea.label}"), (map_b, f"B: class {eb.label}"), (diff, "|A - B|"))]
    h = max(p.shape[0] for p in panels)
    gap = np.full((h, 8, 3), 255, np.uint8)
    row: list[np.ndarray] = []
    for p in panels:
        padded = np.full((h, p.shape[1], 3), 255, np.uint8)
        padded[: p.shape[0]] = p
        row.extend([padded, gap])
    title = f"Grad-CAM, image {name}: Spearman {'-' if rho is None else f'{rho:.3f}'}"
    return encode_png(add_title(np.concatenate(row[:-1], axis=1), title))
