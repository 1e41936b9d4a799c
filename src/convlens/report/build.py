""":func:`build_report`: one batched forward pass over the images, then the sections, then the page."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .._progress import Progress
from ..classes import read_labels
from ..core.layers import LayerInfo
from ..core.text import count
from ..passes import Batch, Consumer, Job, PassConsumer, StatsConsumer, missing_note, run_pass
from ..render.maps import RenderOptions
from .context import ReportContext, SectionConsumer
from .grids import ReportGrids
from .page import Report, header, page_data, render_page
from .registry import get_section, select_sections
from .sections.filters import draw_atlases, read_kernels
from .sections.heatmaps import recorded_forward
from .sections.predictions import output_classes
from .templating import Markup, render

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["REPORT_TILE_SIZE", "build_report"]

#: Maps wider than this are averaged down in the report (``tile_size``), so VGG16's 224x224
#: maps take a quarter of the bytes and the page stays small enough to mail.
REPORT_TILE_SIZE = 80


def build_report(model: Model, images: Any, layers: str | Iterable[str] | None = None, *,
                 labels: str | os.PathLike[str] | Sequence[str] | None = None,
                 size: int | tuple[int, int] | None = None, preprocess: str | None = None,
                 sections: Sequence[str] | None = None, title: str | None = None,
                 progress: Progress | None = None, section_options: Mapping[str, Any] | None = None,
                 dataset: str | os.PathLike[str] | None = None, **options: Any) -> Report:
    """Run the images through the model once (batched) and assemble the report.

    Args:
        model: the model.
        images: one image or a list (paths, PIL images, arrays).
        layers: a selection (default every conv and pool layer).
        labels: class names (a file, one per line, or a list) for the predictions.
        size: ``(H, W)`` for models that accept any size.
        preprocess: preprocessing preset; default the model's.
        sections: keys of the sections to include (default all, see :func:`section_keys`).
        title: the page title; default ``convlens report: MODEL``.
        progress: one step per layer and image.
        section_options: per section key, that section's own options (a mapping
            the section documents, e.g. ``{"heatmaps": {"methods": ["gradcam"]}}``);
            the builder reads ``ctx.section_options.get(key, {})``. Keys of
            sections that are not registered are refused.
        dataset: a folder written by ``convlens dataset``: adds the "Dataset
            examples" section (:mod:`convlens.report.sections.dataset`) and
            sets its ``dir`` option.
        **options: drawing options as :class:`~convlens.render.maps.RenderOptions`;
            ``tile_size`` defaults to :data:`REPORT_TILE_SIZE` here.

    Returns:
        The :class:`Report` (not written; see :meth:`Report.save`).
    """
    options.setdefault("tile_size", REPORT_TILE_SIZE)
    opts = dataclasses.replace(RenderOptions(**options), title=False)  # titles are HTML text
    keys = select_sections(sections)
    per_section = dict(section_options or {})
    select_sections(list(per_section))  # an unknown key in section_options fails like --sections
    if dataset is not None:  # asking for a dataset folder asks for its section
        per_section["dataset"] = {**per_section.get("dataset", {}), "dir": dataset}
        keys = select_sections([*keys, "dataset"])
    names = read_labels(labels) if labels is not None else None  # a bad file fails before any pass
    chosen = model.select(layers)
    own = _section_consumers(model, chosen, keys, per_section)  # a bad option fails before any pass
    batch = model.prepare(images, size=size, preprocess=preprocess)
    stats = StatsConsumer(chosen)
    grids = ReportGrids(opts, chosen, batch.images)
    with ThreadPoolExecutor(max_workers=1) as side:
        # Filter atlases need no forward pass: kernels are read here (adapters need not be
        # thread-safe), then drawn on a side thread while the images go through the network.
        atlases = side.submit(draw_atlases, chosen, read_kernels(model, chosen)) if "filters" in keys else None
        fed, consumers = _feed(chosen, [stats, grids], own.values())
        # ONE forward pass per image batch: with a gradient CAM in the heatmaps section, the same
        # pass records the CAM layer's gradients of each image's top classes (restructure, part 4)
        recorded = recorded_forward(model, per_section.get("heatmaps", {})) if "heatmaps" in keys else None
        result = run_pass(model, fed, batch.arrays, consumers, forward=recorded, progress=progress,
                          label="report")
        if atlases is not None:
            atlases.result()
    outputs = result.outputs
    layer_stats = stats.results()
    drawn = grids.drawn_layers()
    lost = [layer for layer in result.missing if layer in chosen]
    chosen = [layer for layer in chosen if layer not in lost]  # the one policy: left out, noted

    notes = list(dict.fromkeys(batch.notes))  # the same note for several images once
    if lost:
        notes.append(missing_note(lost))
    maps = "maps" in keys  # the grids, their notes and the viewer's data serve the maps section only
    capped = [s for s in layer_stats if maps and opts.max_channels is not None
              and s.channels > opts.max_channels and drawn[s.index][0].layout == "grid"]
    if capped:
        notes.append(f"feature maps show the first {opts.max_channels} channels of each layer "
                     f"({count(len(capped), 'layer has', 'layers have')} more; the statistics cover "
                     "every channel); --max-channels all draws them all")
    shrunk = [s for s in layer_stats if maps and drawn[s.index][0].layout == "grid"
              and drawn[s.index][0].reduced[1:] != drawn[s.index][0].shape[:2]]
    if shrunk:
        notes.append(f"maps larger than {opts.tile_size} pixels are averaged down to fit the report "
                     f"({count(len(shrunk), 'layer', 'layers')}); --tile-size sets the limit")
    classes = output_classes(model, outputs)
    label_list, label_source = model.class_names(
        names, classes=classes, output_shape=tuple(outputs[0].shape[1:]) if outputs else ())
    hint = model.labels_hint(label_list, classes)
    if hint:
        notes.append(hint)
    ctx = ReportContext(
        model=model, images=batch.images, inputs=batch.arrays, outputs=outputs, layers=chosen,
        stats=layer_stats, options=opts, preprocess=preprocess or model.preprocess, labels=label_list,
        label_source=label_source, notes=notes, sections=keys, drawn=drawn,
        per_image=grids.per_image_stats(layer_stats), global_ranges=grids.global_ranges,
        atlases=atlases, predictions=[[] for _ in batch.images], section_options=per_section,
        consumers=own, recorded=recorded)
    ctx.data.update(page_data(ctx))
    if not maps:  # megabytes of base64 grids that nothing on the page would show
        ctx.data["layers"] = []
    bodies: list[tuple[str, str, Markup | str]] = []
    for key in keys:
        entry = get_section(key)
        body = entry.build(ctx)
        if body is not None:
            bodies.append((entry.key, entry.title, Markup(body)))
    title = title or f"convlens report: {model.name}"
    page = render_page(title=title, header=header(ctx, title, [(k, t) for k, t, _ in bodies]),
                       body=render("body.html", sections=bodies), data=ctx.data)
    return Report(page, title=title, stats={s.name: s for s in layer_stats},
                  predictions=ctx.predictions, notes=ctx.notes, sections=[k for k, _, _ in bodies])



def _section_consumers(model: Model, chosen: Sequence[LayerInfo], keys: Sequence[str],
                       per_section: Mapping[str, Any]) -> dict[str, SectionConsumer]:
    """The pass consumers that the sections being built ask for, by section key."""
    own: dict[str, SectionConsumer] = {}
    for key in keys:
        factory = get_section(key).consumer
        made = factory(model, chosen, per_section.get(key, {})) if factory is not None else None
        if made is not None:
            own[key] = made
    return own


def _feed(chosen: Sequence[LayerInfo], report: Sequence[Consumer],
          own: Iterable[SectionConsumer]) -> tuple[list[LayerInfo], list[Consumer]]:
    """The layers the ONE pass computes and its consumers, each fed only the layers it wants.

    The report's own consumers see exactly the selected layers; a section's
    consumer may want others (the dataset section: the layers of a dataset
    folder), which the pass then computes too, in the model's order.
    """
    wanted = {layer.index: layer for layer in chosen}
    own = list(own)
    for consumer in own:
        for layer in consumer.layers:
            wanted.setdefault(layer.index, layer)
    selected = {layer.index for layer in chosen}
    if len(wanted) == len(selected):
        layers = list(chosen)
        consumers: list[Consumer] = list(report)
    else:
        layers = sorted(wanted.values(), key=lambda layer: layer.index)
        consumers = [_Only(c, selected) for c in report]
    for consumer in own:
        indices = {layer.index for layer in consumer.layers}
        consumers.append(consumer if indices == set(wanted) else _Only(consumer, indices))
    return layers, consumers


class _Only(PassConsumer):
    """A consumer fed only some of the pass's layers (its images' other calls pass through)."""

    def __init__(self, consumer: Consumer, indices: set[int]) -> None:
        self._consumer = consumer
        self._indices = indices
        ops = getattr(consumer, "reductions", None) or {}
        self.reductions = {i: o for i, o in ops.items() if i in indices}

    def on_layer(self, batch: Batch, layer: LayerInfo, array: Any) -> None:
        if layer.index in self._indices:
            self._consumer.on_layer(batch, layer, array)

    def on_reduced(self, batch: Batch, layer: LayerInfo, reduced: Mapping[str, Any]) -> None:
        if layer.index in self._indices:
            self._consumer.on_reduced(batch, layer, reduced)  # type: ignore[attr-defined]

    def on_batch(self, batch: Batch, output: Any) -> Iterable[Job] | None:
        return self._consumer.on_batch(batch, output)

    def finish(self) -> None:
        self._consumer.finish()

