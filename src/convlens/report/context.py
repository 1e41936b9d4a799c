"""What a section builder gets: :class:`ReportContext`, every field typed."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.layers import LayerInfo
from ..core.stats import LayerStats
from ..images import Image
from ..passes import PassConsumer
from ..render.maps import RenderOptions

if TYPE_CHECKING:  # pragma: no cover
    from ..methods import RecordedForward
    from ..model import Model

__all__ = ["DrawnLayer", "FilterAtlas", "ReportContext", "SectionConsumer"]


@dataclass
class DrawnLayer:
    """One layer drawn for one image, as the page holds it.

    Attributes:
        b64: the grid as base64 PNG.
        layout: ``"grid"``, ``"signals"`` or ``"strip"`` (see :func:`convlens.render.maps.render_map`).
        shape: the layer's output for one image, canonical.
        reduced: what was drawn before enlarging: ``(c, h, w)``, ``(c, L)`` or ``(C,)``.
        grid: the picture's ``(height, width)``.
        flags: flagged channel numbers per flag.
        scale: grids only: per drawn channel, the values the colormap's two ends stand for.
    """

    b64: str
    layout: str
    shape: tuple[int, ...]
    reduced: tuple[int, ...]
    grid: tuple[int, int]
    flags: dict[str, list[int]]
    scale: tuple[Any, Any] | None = None


@dataclass
class FilterAtlas:
    """One conv layer's filter pictures for the filters section (PNG bytes, drawn off the main thread).

    Attributes:
        layer: the layer.
        pictures: ``(png, alt text, css class)`` per picture.
        caption: the figure's caption.
        error: why the kernels could not be read (then there are no pictures).
    """

    layer: LayerInfo
    pictures: list[tuple[bytes, str, str]] = field(default_factory=list)
    caption: str = ""
    error: str | None = None


class SectionConsumer(PassConsumer):
    """A section's own consumer of the report's forward pass (``register_section(consumer=...)``).

    Subclasses override :meth:`on_layer` (and ``on_batch``/``finish`` if needed).
    The pass feeds it only the layers in :attr:`layers`, which may include
    layers outside the report's selection (the pass then also computes those,
    and the other sections never see them).

    Attributes:
        layers: the layers this consumer wants, rows of ``model.layers()``.
    """

    def __init__(self, layers: list[LayerInfo]) -> None:
        self.layers = list(layers)


@dataclass
class ReportContext:
    """What a section builder can use.

    Attributes:
        model: the :class:`~convlens.model.Model` (its adapter runs more passes if a section needs them).
        images: the images as loaded.
        inputs: the preprocessed arrays the network saw, one ``(H, W, C)`` float32 per image.
        outputs: the model's output per image, batch axis first (``(1, K)`` for a classifier).
        layers: the selected layers, in execution order.
        stats: channel statistics over all images, one per selected layer.
        options: how feature maps are drawn.
        preprocess: the preprocessing preset used.
        labels: class names, when known (``--labels``, the demo's digits, ImageNet's for
            zoo and torchvision classifiers; see :meth:`convlens.Lens.class_names`).
        label_source: where ``labels`` come from, in words (``""`` when unknown).
        notes: sentences shown at the top of the report; sections may append.
        data: the page script's JSON data; sections may add keys (escaped when written).
        sections: the keys of the sections being built, in page order.
        drawn: by layer index, the layer's grid per image (the maps section's viewer).
        per_image: by layer index, per image the statistics of the DRAWN channels
            (the viewer's value ranges; with one image, the layer's statistics).
        global_ranges: with ``norm="global"``, per image number the one value range
            of all its drawn layers.
        atlases: the filter pictures, drawn beside the forward passes (``None``
            when the filters section was not asked for).
        predictions: per image, the top classes as ``(label, probability)``; the
            predictions section fills it (empty lists otherwise).
        section_options: per section key, that section's own options, as given
            to ``build_report(..., section_options=...)``; a section reads
            ``ctx.section_options.get(its key, {})``.
        consumers: per section key, the :class:`SectionConsumer` its factory
            made, after the pass (see :func:`~convlens.report.registry.register_section`).
        shared: results a section leaves for the sections after it, by the
            leaving section's key (the visualize section leaves its
            :class:`~convlens.visualize.Visualization`, which the dataset
            section sets beside the crops).
        recorded: the report's forward pass when it also recorded the CAM
            layer's gradients of each image's top classes (the heatmaps
            section's Grad-CAM then needs no pass); ``None`` otherwise.
    """

    model: Model
    images: list[Image]
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    layers: list[LayerInfo]
    stats: list[LayerStats]
    options: RenderOptions
    preprocess: str
    labels: list[str] | None
    label_source: str
    notes: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)
    drawn: dict[int, list[DrawnLayer]] = field(default_factory=dict)
    per_image: dict[int, list[LayerStats]] = field(default_factory=dict)
    global_ranges: dict[int, tuple[float, float]] = field(default_factory=dict)
    atlases: Future[list[FilterAtlas]] | None = None
    predictions: list[list[tuple[str, float]]] = field(default_factory=list)
    section_options: Mapping[str, Any] = field(default_factory=dict)
    consumers: dict[str, SectionConsumer] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    recorded: RecordedForward | None = None
