"""The self-contained HTML report: a model, some images, and everything convlens sees.

:func:`build_report` runs ONE batched forward pass (:func:`convlens.passes.run_pass`);
each selected layer's output feeds both its feature-map grid (the same grid
``convlens maps`` draws) and the layer's :class:`~convlens.core.stats.StatsAccumulator`,
then the page is assembled from sections:

==========  =====  ==========================================================
key         order  shows
==========  =====  ==========================================================
inputs        10   the images as given and as the network sees them
predictions   20   top-5 classes of a classifier (softmax if needed)
layers        30   the layer table with receptive fields
maps          40   one grid per layer; a tile opens its channel, arrows step
heatmaps      45   top classes of each image under each heatmap method
stats         50   channel health: summary lines, sortable tables
filters       60   filter atlases of the conv layers
visualize     55   not by default: one layer's feature visualisations beside its maps
dataset       57   not by default (``dataset=DIR``): each channel's map beside its dataset crops
==========  =====  ==========================================================

The package:

* :mod:`~convlens.report.registry`: :func:`register_section` and friends;
* :mod:`~convlens.report.context`: :class:`ReportContext`, what every builder gets (typed);
* :mod:`~convlens.report.grids`: the pass's consumer that draws the grids;
* :mod:`~convlens.report.build`: :func:`build_report`;
* :mod:`~convlens.report.page`: the page around the sections, and :class:`Report`;
* :mod:`~convlens.report.templating`: the Jinja2 environment (autoescaping) and shared pieces;
* ``sections/<key>.py``, one file per section, each with ``templates/sections/<key>.html``.

A later method adds its own section without touching the rest: a module
``sections/<key>.py`` whose builder is decorated with
``@register_section(key, title, order=...)`` (heatmaps would take 45, after
the feature maps), gets the :class:`ReportContext` and returns HTML rendered
from its template (``render("sections/<key>.html", ...)``) or ``None``. Its
own options travel typed-free but namespaced: ``build_report(...,
section_options={"heatmaps": {...}})`` (also ``Lens.report``) reaches the
builder as ``ctx.section_options["heatmaps"]``; the section documents what
it reads there. The page is one file, works offline and runs no network
request (see :mod:`convlens.render.html`).
"""

from __future__ import annotations

from ..classes import read_labels
from .build import REPORT_TILE_SIZE, build_report
from .context import DrawnLayer, FilterAtlas, ReportContext, SectionConsumer
from .page import Report
from .registry import register_section, section_keys, unregister_section
from .sections import (  # noqa: F401  (registers them)
    dataset,
    evaluate,
    filters,
    heatmaps,
    inputs,
    layers,
    maps,
    predictions,
    stats,
    visualize,
)

__all__ = ["REPORT_TILE_SIZE", "DrawnLayer", "FilterAtlas", "Report", "ReportContext", "SectionConsumer",
           "build_report", "read_labels", "register_section", "section_keys", "unregister_section"]
