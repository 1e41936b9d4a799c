"""Artefacts: everything convlens writes, in one package.

* :mod:`~convlens.output.files`: :class:`OutputDir` (a folder of outputs
  written as one transaction), :func:`atomic_write_bytes`,
  :func:`check_file_target`;
* :mod:`~convlens.output.names`: :func:`safe_name`, the one file-name rule;
* :mod:`~convlens.output.index`: :func:`jsonable`, :func:`dumps_json`,
  :func:`merge_index`, :func:`write_index` (``index.json``);
* :mod:`~convlens.output.notebook`: :func:`png_figure_html`, :func:`pre_html`
  (what results show in Jupyter);
* :mod:`~convlens.output.templates`: the one Jinja2 environment (autoescape)
  of the report and the timeline page.
"""

from __future__ import annotations

from .files import OutputDir, atomic_write_bytes, check_file_target
from .index import dumps_json, jsonable, merge_index, write_index
from .names import safe_name
from .notebook import png_figure_html, pre_html
from .templates import Markup, asset, environment, render

__all__ = ["Markup", "OutputDir", "asset", "atomic_write_bytes", "check_file_target", "dumps_json",
           "environment", "jsonable", "merge_index", "png_figure_html", "pre_html", "render", "safe_name",
           "write_index"]
