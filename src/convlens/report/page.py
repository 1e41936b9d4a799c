"""Assembling the page: the header, the sections, the page script's data, the CSP; and :class:`Report`.

The page is one file (``templates/page.html``): CSS and JavaScript inlined
verbatim and allowed by their SHA-256 hashes in a Content-Security-Policy
that forbids every network load; the data the script reads is JSON inside
``<script type="application/json">``, written by
:func:`convlens.render.html.json_for_script` so that no value can end the
script element (see :mod:`convlens.render.html`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from .._errors import BadArgument
from .._version import __version__
from ..core.stats import LayerStats
from ..core.text import shape_text
from ..output import atomic_write_bytes, check_file_target
from ..render.colormap import lut as colormap_lut
from ..render.grid import grid_shape, palette
from ..render.html import csp, escape, json_for_script
from .context import ReportContext
from .grids import sig
from .templating import asset, render

__all__ = ["Report", "page_data", "render_page"]


class Report:
    """A finished report: one HTML page.

    Attributes:
        html: the page (self-contained, UTF-8 text).
        title: the page's title.
        stats: channel statistics by layer name, over all images.
        predictions: per image, the top classes as ``(label, probability)``;
            empty lists when the model is not a classifier.
        notes: what the report says about its inputs and choices.
        sections: the keys of the sections it holds, in order.
        path: where :meth:`save` last wrote it, if anywhere.
    """

    def __init__(self, html: str, *, title: str, stats: dict[str, LayerStats],
                 predictions: list[list[tuple[str, float]]], notes: list[str], sections: list[str]) -> None:
        self.html = html
        self.title = title
        self.stats = stats
        self.predictions = predictions
        self.notes = notes
        self.sections = sections
        self.path: Path | None = None

    @property
    def nbytes(self) -> int:
        """Size of the page in bytes (UTF-8)."""
        return len(self.html.encode("utf-8"))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the page to ``path`` atomically (a failure leaves no file) and return the path.

        Raises:
            OutputError: ``path`` is a folder or cannot be written.
        """
        target = check_file_target(path)
        atomic_write_bytes(target, self.html.encode("utf-8"))
        self.path = target
        return target

    def to_json(self) -> dict[str, Any]:
        """What the report found, JSON-ready (not the page): title, sections, notes, each image's top
        classes and every layer's channel statistics."""
        return {"title": self.title, "sections": list(self.sections), "notes": list(self.notes),
                "predictions": [[{"label": label, "probability": float(p)} for label, p in top]
                                for top in self.predictions],
                "stats": [s.as_dict() for s in self.stats.values()],
                "path": str(self.path) if self.path is not None else None}

    def _repr_html_(self) -> str:
        # The page runs inside a sandboxed iframe: its script and style cannot reach the
        # notebook, and the notebook's cannot reach it. srcdoc is an attribute, hence escaped.
        return str(render("iframe.html", title=self.title, page=self.html))

    def __repr__(self) -> str:
        where = f", saved to {self.path}" if self.path else ""
        return (f"Report({self.title!r}, {len(self.stats)} layers, sections={self.sections}, "
                f"{self.nbytes / 1e6:.2f} MB{where})")


def render_page(*, title: str, header: Markup | str, body: Markup | str, data: Any) -> str:
    """The whole report page as one HTML string.

    Args:
        title: the document title (escaped by the template).
        header: HTML of the header bar (``Markup``; a ``str`` is escaped).
        body: HTML of the sections (``Markup``; a ``str`` is escaped).
        data: JSON-ready data for the page script (written by :func:`json_for_script`).
    """
    style, script = asset("report.css"), asset("report.js")
    if "</script" in script.lower() or "</style" in style.lower():  # pragma: no cover - our own files
        raise BadArgument("report assets must not close their own element")
    # The CSS and JS go in verbatim (Markup): the CSP allows exactly these bytes by their hashes.
    # The CSP is escaped by render.html.escape (as it always was: ' as &#x27;), not re-escaped.
    return str(render("page.html", title=title, csp=Markup(escape(csp(style, script))), style=Markup(style),
                      script=Markup(script), header=header, body=body,
                      data=Markup(json_for_script(data))))


def header(ctx: ReportContext, title: str, sections: Sequence[tuple[str, str]]) -> Markup:
    """The header bar: title, one line of facts, the notes, the section links and the image picker."""
    opts = ctx.options
    n = len(ctx.images)
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = (f"{ctx.model.adapter.framework} · {n} image{'s' if n != 1 else ''} · "
            f"{len(ctx.layers)} layers · preprocessing {ctx.preprocess}{_guessed(ctx)} · norm {opts.norm} · "
            f"cmap {opts.cmap} · convlens {__version__} · {when}")
    return render("header.html", title=title, meta=meta, notes=ctx.notes, sections=list(sections),
                  images=[im.name for im in ctx.images])


def _guessed(ctx: ReportContext) -> str:
    """`` (guessed)`` when the preset was a guess (the notes then say how to fix it)."""
    note = ctx.model.preprocess_note()
    return " (guessed: see the note)" if note and note in ctx.notes else ""


def page_data(ctx: ReportContext) -> dict[str, Any]:
    """The JSON the page script reads: grids, their geometry and value ranges, statistics."""
    drawn, per_image = ctx.drawn, ctx.per_image
    opts = ctx.options
    pal = palette(colormap_lut(opts.cmap))[:240]
    layers = []
    for info, s in zip(ctx.layers, ctx.stats):
        first = drawn[info.index][0]
        entry: dict[str, Any] = {
            "name": info.name, "index": info.index, "type": info.type,
            "shape": shape_text(info.output_shape, times=True), "total": s.channels, "layout": first.layout,
            "grids": [d.b64 for d in drawn[info.index]],
            "flags": [d.flags for d in drawn[info.index]],
        }
        if first.layout == "grid":
            c = first.reduced[0]
            rows, cols = grid_shape(c, opts.columns)
            geo = []  # per image: images of models that take any size give maps of their own size
            for d in drawn[info.index]:
                gh, gw = d.grid
                geo.append({"th": (gh - 1) // rows - 1, "tw": (gw - 1) // cols - 1,  # 1-pixel separators
                            "h": d.reduced[1], "w": d.reduced[2], "H": d.shape[0], "W": d.shape[1]})
            scales = []
            for d, ps in zip(drawn[info.index], per_image[info.index]):
                ps_c = _slice_stats(ps, c)
                lo, hi = d.scale if d.scale is not None else (None, None)  # grids always have one
                scales.append({"lo": lo, "hi": hi, "min": sig(ps_c.min), "max": sig(ps_c.max),
                               "mean": sig(ps_c.mean), "std": sig(ps_c.std)})
            entry.update({"shown": c, "rows": rows, "cols": cols, "sep": 1, "geo": geo, "scales": scales})
        layers.append(entry)
    stats = []
    for s in ctx.stats:
        stats.append({
            "name": s.name, "index": s.index, "type": s.type, "channels": s.channels,
            "images": s.images, "summary": s.summary(),
            "mean": sig(s.mean), "std": sig(s.std), "min": sig(s.min), "max": sig(s.max),
            "zero": sig(s.zero_fraction), "flags": s.notable.indices(),
        })
    return {
        "version": __version__, "model": ctx.model.name, "norm": opts.norm, "cmap": opts.cmap,
        "palette": pal.tobytes().hex(), "tile_size": opts.tile_size,
        "images": [im.name for im in ctx.images], "layers": layers, "stats": stats,
    }


def _slice_stats(s: LayerStats, c: int) -> LayerStats:
    """The first ``c`` channels of a layer's statistics."""
    if s.channels == c:
        return s
    cut = {f.name: getattr(s, f.name)[:c] for f in dataclasses.fields(s)
           if isinstance(getattr(s, f.name), np.ndarray)}
    return dataclasses.replace(s, channels=c, **cut)
