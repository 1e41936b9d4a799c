"""Feature-map grids and filter atlases as files: the one drawing of ``save_maps``, ``save_filters``
and the training recorder.

:func:`draw_map_file` draws one layer's output for one image as a PNG grid
(:func:`convlens.render.maps.render_map`) and stages it with its
``index.json`` entry; :func:`draw_filter_files` does the same for one conv
layer's kernels (an RGB or gray composite for a first layer, and the filter
x input atlas). :meth:`convlens.Lens.save_maps`, :meth:`convlens.Lens.save_filters`
and :class:`convlens.timeline.Recorder` all call them, so a checkpoint's
pictures are drawn with the same value ranges, flags and captions as
``convlens maps`` and ``convlens filters`` (the recorder adds the checkpoint's
label to the caption).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .core.layers import LayerInfo
from .core.text import shape_text
from .output import OutputDir, safe_name
from .render.colormap import lut as colormap_lut
from .render.filters import filter_grid, filter_norms, first_layer_composites
from .render.grid import add_title
from .render.maps import RenderOptions, render_map
from .render.png import encode_png

__all__ = ["DrawnFile", "draw_filter_files", "draw_map_file", "filter_base", "layer_title",
           "map_file"]

#: Between the parts of a picture's caption.
_SEP = "  ·  "


@dataclass(frozen=True)
class DrawnFile:
    """One staged picture.

    Attributes:
        file: its path relative to the output folder.
        png: the PNG file's bytes (the recorder also sends them to TensorBoard).
        entry: its record for ``index.json`` (``entry["file"] == file``).
    """

    file: str
    png: bytes
    entry: dict[str, Any]


def layer_title(layer: LayerInfo) -> str:
    """A map grid's caption: ``"3 conv2  ·  Conv2D  ·  (None, 14, 14, 32)"``."""
    return _SEP.join((f"{layer.index} {layer.name}", layer.type,
                      shape_text(layer.output_shape, free="None")))


def map_file(image: str, layer: LayerInfo) -> str:
    """``maps/<image>/<NNN>_<layer>.png``, names made safe (:func:`~convlens.output.safe_name`)."""
    return f"maps/{safe_name(image)}/{layer.index:03d}_{safe_name(layer.name)}.png"


def filter_base(layer: LayerInfo) -> str:
    """``filters/<NNN>_<layer>``: the atlas is this plus ``.png``, the composite ``_rgb.png``/``_gray.png``."""
    return f"filters/{layer.index:03d}_{safe_name(layer.name)}"


def draw_map_file(staging: OutputDir, image: str, layer: LayerInfo, x: np.ndarray, options: RenderOptions, *,
                  total: int, value_range: tuple[float, float] | None = None,
                  note: str | None = None) -> DrawnFile:
    """Draw one layer's output for one image as a grid and stage it at :func:`map_file`.

    Args:
        staging: the open output folder.
        image: the image's name.
        layer: the layer.
        x: its output for the image, without the batch axis: ``(H, W, C)``,
            ``(L, C)`` or ``(C,)``; or, when ``value_range`` is given, already
            reduced by :func:`~convlens.render.maps.reduce_map`.
        options: how maps are drawn.
        total: the layer's channel count.
        value_range: ``norm="global"``'s range for this image
            (:func:`convlens.core.normalize.global_range`), else ``None``.
        note: appended to the caption (the recorder's checkpoint label).

    Returns:
        The staged file, with its ``index.json`` entry (image, layer, index,
        type, shape, file, layout, channel counts, flagged channels).
    """
    rel = map_file(image, layer)
    title = layer_title(layer) if note is None else _SEP.join((layer_title(layer), note))
    rendered = render_map(x, options, title=title, channels_total=total, value_range=value_range,
                          reduced=value_range is not None)
    png = rendered.png()
    staging.write_bytes(rel, png)
    entry = {
        "image": image, "layer": layer.name, "index": layer.index, "type": layer.type,
        "shape": list(layer.output_shape) if layer.output_shape else None,
        "file": rel, "layout": rendered.layout,
        "channels_total": rendered.channels_total,
        "channels_shown": rendered.channels_shown, "flags": rendered.flags.indices(),
    }
    return DrawnFile(rel, png, entry)


def draw_filter_files(staging: OutputDir, layer: LayerInfo, kernels: np.ndarray, *, cmap: str = "gray",
                      max_filters: int | None = 64, max_inputs: int = 16,
                      note: str | None = None) -> list[DrawnFile]:
    """Draw one conv layer's kernels and stage them under :func:`filter_base`.

    A first layer (1 or 3 input channels) gets one picture per filter, each
    normalised on its own to 0-1 (``_rgb.png`` or ``_gray.png``); every layer
    gets the filter x input grid with each filter's L2 norm, capped at
    ``max_filters`` x ``max_inputs``.

    Args:
        staging: the open output folder.
        layer: the conv layer.
        kernels: its kernels, ``(O, I, kh, kw)``.
        cmap: the atlas's colour map.
        max_filters: filters drawn (``None``: all).
        max_inputs: input channels drawn per filter.
        note: appended to the captions (the recorder's checkpoint label).

    Returns:
        The composite (first layers only), then the atlas; each entry holds
        ``kind`` (``"composite"`` or ``"atlas"``), the kernel shape, how many
        filters and inputs are shown and the shown filters' L2 norms.
    """
    k = kernels
    cap = max_filters or 10**9
    shown = min(cap, k.shape[0])
    inputs = min(max_inputs, k.shape[1])
    base = filter_base(layer)
    head = _SEP.join((f"{layer.index} {layer.name}", layer.type, f"kernel {shape_text(k.shape, free='None')}"))
    if note is not None:
        head = _SEP.join((head, note))
    pictures: list[tuple[str, str, np.ndarray]] = []
    if k.shape[1] in (1, 3):  # a first layer: each filter as one picture, per-filter 0-1
        suffix, label = ("_rgb", "RGB") if k.shape[1] == 3 else ("_gray", "gray")
        pictures.append((base + suffix + ".png", "composite",
                         add_title(first_layer_composites(k, cap), _SEP.join((head, label)))))
    grid = filter_grid(k, colormap_lut(cmap), max_filters=cap, max_inputs=max_inputs)
    caps = [f"{what} 0-{n - 1} of {total}" for what, n, total in
            (("filters", shown, k.shape[0]), ("inputs", inputs, k.shape[1])) if n < total]
    pictures.append((base + ".png", "atlas", add_title(grid, _SEP.join([head, *caps]))))
    norms = [round(float(v), 6) for v in filter_norms(k)[:shown]]
    drawn = []
    for rel, kind, rgb in pictures:
        png = encode_png(rgb)
        staging.write_bytes(rel, png)
        drawn.append(DrawnFile(rel, png, {
            "layer": layer.name, "index": layer.index, "type": layer.type, "kind": kind,
            "kernel_shape": list(k.shape), "file": rel, "filters_shown": shown, "inputs_shown": inputs,
            "l2_norms": norms}))
    return drawn
