"""The self-contained HTML report: a model, some images, and everything convlens sees.

:func:`build_report` runs ONE forward pass per image; each selected layer's
output feeds both its feature-map grid (the same grid ``convlens maps`` draws)
and the layer's :class:`~convlens.core.stats.StatsAccumulator`, then the page is
assembled from sections:

==========  =====  ==========================================================
key         order  shows
==========  =====  ==========================================================
inputs        10   the images as given and as the network sees them
predictions   20   top-5 classes of a classifier (softmax if needed)
layers        30   the layer table with receptive fields
maps          40   one grid per layer; a tile opens its channel, arrows step
stats         50   channel health: summary lines, sortable tables
filters       60   filter atlases of the conv layers
==========  =====  ==========================================================

Later methods add their own section with :func:`register_section` (a builder
gets the :class:`ReportContext` and returns escaped HTML), without touching
the rest. The page is one file, works offline and runs no network request
(see :mod:`convlens.render.html`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import os
import threading
from base64 import b64encode
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from ._errors import BadArgument, ConvlensError, OutputError
from ._progress import NullProgress, Progress
from .adapters import DATA_DIR
from .core.layers import LayerInfo
from .core.normalize import finite_range
from .core.stats import LayerStats, StatsAccumulator, channel_stats
from .images import Image
from .lens import _union_range
from .render.colormap import lut as colormap_lut
from .render.filters import filter_grid
from .render.grid import grid_shape, palette
from .render.html import attr, data_uri, escape, lazy_img, render_page, table, write_page
from .render.maps import RenderOptions, reduce_map, render_map
from .render.png import encode_png

if TYPE_CHECKING:  # pragma: no cover
    from .lens import Lens

__all__ = ["REPORT_TILE_SIZE", "Report", "ReportContext", "build_report", "read_labels",
           "register_section", "section_keys", "unregister_section"]

#: Maps wider than this are averaged down in the report (``tile_size``), so VGG16's 224x224
#: maps take a quarter of the bytes and the page stays small enough to mail.
REPORT_TILE_SIZE = 80
#: Longest side of both pictures of each input, as given and as seen (display only).
_PREVIEW_SIDE = 384
_TOP_K = 5
#: Filter atlases in the report: first filters x first inputs (``save_filters`` draws 64 x 16).
_REPORT_FILTERS = 32
_REPORT_INPUTS = 8
_IMAGENET_CLASSES = DATA_DIR / "imagenet_classes.txt"


# ---------------------------------------------------------------- the context and the registry


@dataclass
class ReportContext:
    """What a section builder can use.

    Attributes:
        lens: the :class:`~convlens.Lens` (its adapter runs more passes if a section needs them).
        images: the images as loaded.
        inputs: the preprocessed arrays the network saw, one ``(H, W, C)`` float32 per image.
        outputs: the model's output per image, batch axis first (``(1, K)`` for a classifier).
        layers: the selected layers, in execution order.
        stats: channel statistics over all images, one per selected layer.
        options: how feature maps are drawn.
        preprocess: the preprocessing preset used.
        labels: class names, when known (``--labels``, the demo's digits, ImageNet's for zoo models).
        notes: sentences shown at the top of the report; sections may append.
        data: the page script's JSON data; sections may add keys (escaped when written).
        extra: free-form results sections share (e.g. the predictions).
    """

    lens: Lens
    images: list[Image]
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    layers: list[LayerInfo]
    stats: list[LayerStats]
    options: RenderOptions
    preprocess: str
    labels: list[str] | None
    notes: list[str]
    data: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


#: A section builder: the context in, the section's body as escaped HTML out (``None``: no section).
SectionBuilder = Callable[[ReportContext], "str | None"]


@dataclass(frozen=True)
class _Entry:
    key: str
    title: str
    order: float
    build: SectionBuilder


_SECTIONS: dict[str, _Entry] = {}


def register_section(key: str, title: str, *, order: float) -> Callable[[SectionBuilder], SectionBuilder]:
    """Add a section to every report (a decorator).

    Args:
        key: a short id (letters, digits, ``-``), also the section's anchor;
            registering a key again replaces the old builder.
        title: the heading.
        order: where it goes; built-in sections use 10-60 (see the module doc),
            e.g. heatmaps would take 45, after the feature maps.

    The builder receives the :class:`ReportContext` and returns the body HTML
    (built with :func:`convlens.render.html.escape` and friends: anything not
    escaped is the builder's responsibility) or ``None`` to leave it out.
    Pictures below the fold should use :func:`convlens.render.html.lazy_img`.
    """
    if not key or not all(ch.isalnum() or ch == "-" for ch in key):
        raise BadArgument(f"section key {key!r}: use letters, digits and '-'")

    def decorate(build: SectionBuilder) -> SectionBuilder:
        _SECTIONS[key] = _Entry(key, title, float(order), build)
        return build

    return decorate


def unregister_section(key: str) -> None:
    """Remove a section added with :func:`register_section` (unknown keys are ignored)."""
    _SECTIONS.pop(key, None)


def section_keys() -> list[str]:
    """Registered section keys, in page order."""
    return [e.key for e in sorted(_SECTIONS.values(), key=lambda e: e.order)]


# ---------------------------------------------------------------- the report object


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
        target = _check_out(path)
        write_page(target, self.html)
        self.path = target
        return target

    def _repr_html_(self) -> str:
        # The page runs inside a sandboxed iframe: its script and style cannot reach the
        # notebook, and the notebook's cannot reach it. srcdoc is an attribute, hence escaped.
        return (f'<iframe{attr("title", self.title)} sandbox="allow-scripts" '
                f'style="width:100%;height:820px;border:1px solid #ccc"'
                f'{attr("srcdoc", self.html)}></iframe>')

    def __repr__(self) -> str:
        where = f", saved to {self.path}" if self.path else ""
        return (f"Report({self.title!r}, {len(self.stats)} layers, sections={self.sections}, "
                f"{self.nbytes / 1e6:.2f} MB{where})")


def _check_out(path: str | os.PathLike[str]) -> Path:
    target = Path(os.fspath(path)).expanduser()
    if target.is_dir():
        raise OutputError(f"{target} is a folder; give the report a file name such as "
                          f"{target / 'report.html'}")
    return target


# ---------------------------------------------------------------- labels


def read_labels(labels: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """Class names from a file (one per line, UTF-8) or a list.

    Raises:
        BadArgument: the file cannot be read, or holds no names.
    """
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


def _known_labels(lens: Lens, k: int) -> tuple[list[str] | None, str]:
    """Class names convlens knows for this model without being told, and where they come from."""
    source = getattr(lens, "source", None)
    text = os.fspath(source) if isinstance(source, (str, os.PathLike)) else ""
    if text == "demo":
        meta = json.loads((DATA_DIR / "demo_cnn.json").read_text())
        names = [str(n) for n in meta.get("class_names", [])]
        if len(names) == k:
            return names, "the demo model's digits"
    if k == 1000 and text and not Path(text).exists():
        from .adapters.keras import ZOO

        key = text.lower().removeprefix("keras:")
        if key in ZOO or key.startswith("torchvision:"):
            return _IMAGENET_CLASSES.read_text(encoding="utf-8").splitlines(), "ImageNet class names"
    return None, ""


# ---------------------------------------------------------------- building


@dataclass
class _Drawn:
    """One layer drawn for one image."""

    b64: str
    layout: str
    shape: tuple[int, ...]  # the layer's output for one image, canonical
    reduced: tuple[int, ...]  # what was drawn before enlarging: (c, h, w), (c, L) or (C,)
    grid: tuple[int, int]  # the picture's (height, width)
    flags: dict[str, list[int]]
    # grids: per drawn channel, the values the colormap's two ends stand for
    scale: tuple[Any, Any] | None = None


def build_report(lens: Lens, images: Any, layers: str | Iterable[str] | None = None, *,
                 labels: str | os.PathLike[str] | Sequence[str] | None = None,
                 size: int | tuple[int, int] | None = None, preprocess: str | None = None,
                 sections: Sequence[str] | None = None, title: str | None = None,
                 progress: Progress | None = None, **options: Any) -> Report:
    """Run the images through the model once each and assemble the report.

    Args:
        lens: the model.
        images: one image or a list (paths, PIL images, arrays).
        layers: a selection (default every conv and pool layer).
        labels: class names (a file, one per line, or a list) for the predictions.
        size: ``(H, W)`` for models that accept any size.
        preprocess: preprocessing preset; default the model's.
        sections: keys of the sections to include (default all, see :func:`section_keys`).
        title: the page title; default ``convlens report: MODEL``.
        **options: drawing options as :class:`~convlens.render.maps.RenderOptions`;
            ``tile_size`` defaults to :data:`REPORT_TILE_SIZE` here.

    Returns:
        The :class:`Report` (not written; see :meth:`Report.save`).
    """
    options.setdefault("tile_size", REPORT_TILE_SIZE)
    opts = dataclasses.replace(RenderOptions(**options), title=False)  # titles are HTML text
    keys = _check_sections(sections)
    names = read_labels(labels) if labels is not None else None
    chosen = lens.select(layers)
    loaded, arrays, notes = lens._prepare(images, size, preprocess)
    progress = progress or NullProgress()
    progress.start(len(loaded) * len(chosen), "report")
    with ThreadPoolExecutor(max_workers=1) as side:
        # Filter atlases need no forward pass: kernels are read here (adapters need not be
        # thread-safe), then drawn on a side thread while the images go through the network.
        atlases = side.submit(_atlases, chosen, _kernels(lens, chosen)) if "filters" in keys else None
        drawn, stats, per_image, outputs, ranges = _forward(lens, chosen, loaded, arrays, opts, progress)
        if atlases is not None:
            atlases.result()
    progress.finish()

    notes = list(dict.fromkeys(notes))  # the same note for several images once
    maps = "maps" in keys  # the grids, their notes and the viewer's data serve the maps section only
    capped = [s for s in stats if maps and opts.max_channels is not None
              and s.channels > opts.max_channels and drawn[s.index][0].layout == "grid"]
    if capped:
        notes.append(f"feature maps show the first {opts.max_channels} channels of each layer "
                     f"({_count(len(capped), 'layer has', 'layers have')} more; the statistics cover "
                     "every channel); --max-channels all draws them all")
    shrunk = [s for s in stats if maps and drawn[s.index][0].layout == "grid"
              and drawn[s.index][0].reduced[1:] != drawn[s.index][0].shape[:2]]
    if shrunk:
        notes.append(f"maps larger than {opts.tile_size} pixels are averaged down to fit the report "
                     f"({_count(len(shrunk), 'layer', 'layers')}); --tile-size sets the limit")
    label_list, label_source = _labels_for(lens, outputs, names)
    ctx = ReportContext(
        lens=lens, images=loaded, inputs=arrays, outputs=outputs, layers=chosen, stats=stats,
        options=opts, preprocess=preprocess or lens.preprocess, labels=label_list, notes=notes,
        data={}, extra={"drawn": drawn, "per_image": per_image, "label_source": label_source,
                        "global_ranges": ranges, "atlases": atlases, "sections": keys})
    ctx.data.update(_page_data(ctx))
    if not maps:  # megabytes of base64 grids that nothing on the page would show
        ctx.data["layers"] = []
    bodies: list[tuple[_Entry, str]] = []
    for key in keys:
        entry = _SECTIONS[key]
        body = entry.build(ctx)
        if body is not None:
            bodies.append((entry, body))
    title = title or f"convlens report: {lens.name}"
    header = _header(ctx, title, [(e.key, e.title) for e, _ in bodies])
    body_html = "".join(f'<section class="cl-section"{attr("id", "cl-" + e.key)}>'
                        f"<h2>{escape(e.title)}</h2>{b}</section>" for e, b in bodies)
    page = render_page(title=title, header=header, body=body_html, data=ctx.data)
    return Report(page, title=title, stats={s.name: s for s in stats},
                  predictions=ctx.extra.get("predictions", [[] for _ in loaded]), notes=ctx.notes,
                  sections=[e.key for e, _ in bodies])


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _check_sections(sections: Sequence[str] | None) -> list[str]:
    every = section_keys()
    if sections is None:
        return every
    if isinstance(sections, str):
        sections = [s.strip() for s in sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in _SECTIONS]
    if unknown:
        raise BadArgument(f"unknown report section {', '.join(map(repr, unknown))}; "
                          f"choose from {', '.join(every)}")
    return [k for k in every if k in set(sections)]


def _forward(lens: Lens, chosen: list[LayerInfo], loaded: list[Image], arrays: list[np.ndarray],
             opts: RenderOptions, progress: Progress
             ) -> tuple[dict[int, list[_Drawn]], list[LayerStats], dict[int, list[LayerStats]],
                        list[np.ndarray], dict[int, tuple[float, float]]]:
    """One pass per image; each captured output feeds its grid and its statistics.

    Returns:
        ``(drawn, stats, per_image, outputs, ranges)``: drawn grids by layer index, one
        per image; statistics over all images per layer; per-image statistics of
        the DRAWN channels by layer index (the viewer's value ranges); the
        model's output per image; with ``norm="global"``, the value range of
        each image's drawn layers.
    """
    table = lens.adapter.layers()
    wanted = [layer.index for layer in chosen]
    overall = {i: StatsAccumulator(i, table[i].name, table[i].type) for i in wanted}
    locks = {i: threading.Lock() for i in wanted}
    n_images = len(loaded)
    drawn: dict[int, list[_Drawn | None]] = {i: [None] * n_images for i in wanted}
    per_image: dict[int, list[LayerStats | None]] = {i: [None] * n_images for i in wanted}
    outputs: list[np.ndarray] = []
    ranges: dict[int, tuple[float, float]] = {}
    in_flight = threading.BoundedSemaphore(4)  # bounds memory: at most 4 layer outputs queued

    def draw(k: int, i: int, x: np.ndarray, total: int, shape: tuple[int, ...],
             vr: tuple[float, float] | None) -> None:
        r = x if vr is not None else reduce_map(x, opts)
        rendered = render_map(r, opts, channels_total=total, value_range=vr, reduced=True)
        # The colour bar describes the maps as drawn: averaged down, their spread and extremes
        # are not the layer's own (those stay in the viewer's value rows).
        scale = None
        if r.ndim == 3:
            scale = _color_scale(channel_stats(np.moveaxis(r, 0, -1)[None]), opts.norm, vr)
        drawn[i][k] = _Drawn(b64=b64encode(rendered.png()).decode("ascii"), layout=rendered.layout,
                             shape=shape, reduced=tuple(r.shape), grid=rendered.pixels.shape[:2],
                             flags=rendered.flags.indices(), scale=scale)
        progress.advance()

    def measure(k: int, i: int, a: np.ndarray) -> np.ndarray | None:
        with locks[i]:
            overall[i].add(a)
        if n_images > 1:  # the viewer's per-image ranges: only the drawn channels are needed
            cap = a.shape[-1] if opts.max_channels is None or a.ndim < 3 else opts.max_channels
            acc = StatsAccumulator(i, table[i].name, table[i].type)
            acc.add(a[..., :cap])
            per_image[i][k] = acc.result()
        x = a[0]
        total = int(a.shape[-1]) if a.ndim > 1 else 1
        if opts.norm == "global":
            return reduce_map(x, opts)
        draw(k, i, x, total, tuple(x.shape), None)
        return None

    with ThreadPoolExecutor(max_workers=2) as pool:
        for k, arr in enumerate(arrays):
            # (layer, its output's shape, the job): outputs themselves are not kept, so memory
            # holds at most the few layers in flight (the reduced maps with norm="global").
            pending: list[tuple[int, tuple[int, ...], Future[np.ndarray | None]]] = []

            def on_output(i: int, a: np.ndarray, k: int = k, pending: list = pending) -> None:
                # Statistics, reducing, drawing and encoding run on two worker threads beside
                # the forward pass (numpy and deflate release the GIL).
                in_flight.acquire()

                def job() -> np.ndarray | None:
                    try:
                        return measure(k, i, a)
                    finally:
                        in_flight.release()

                pending.append((i, tuple(a.shape), pool.submit(job)))

            outputs.append(np.asarray(lens.adapter.run(arr[None], wanted, on_output)))
            reduced = [(i, shape, f.result()) for i, shape, f in pending]
            if opts.norm == "global":  # one scale over every layer of this image
                vr = ranges[k] = _union_range(finite_range(r) for _, _, r in reduced if r is not None)
                jobs = [pool.submit(draw, k, i, r, shape[-1] if len(shape) > 1 else 1, shape[1:], vr)
                        for i, shape, r in reduced if r is not None]
                for f in jobs:
                    f.result()
            missing = [table[i].name for i in wanted if drawn[i][k] is None]
            if missing:
                raise BadArgument(f"the model produced no output for {', '.join(missing)} on "
                                  f"{loaded[k].name}; select other layers (convlens layers MODEL)")
    stats = [overall[i].result() for i in wanted]
    if n_images == 1:
        for s in stats:
            per_image[s.index][0] = s
    return drawn, stats, per_image, outputs, ranges  # type: ignore[return-value]


def _labels_for(lens: Lens, outputs: list[np.ndarray], names: list[str] | None
                ) -> tuple[list[str] | None, str]:
    k = _classes(outputs)
    if names is not None:
        if k is None:
            shape = tuple(outputs[0].shape[1:]) if outputs else ()
            raise BadArgument(f"--labels was given but {lens.name} is not a classifier (its output "
                              f"per image has shape {shape}, not (K,) with K > 1); leave --labels out")
        if len(names) != k:
            raise BadArgument(f"the labels hold {len(names)} names but {lens.name} outputs {k} "
                              "classes; give one name per class, in the model's order")
        return names, "--labels"
    if k is None:
        return None, ""
    return _known_labels(lens, k)


def _classes(outputs: list[np.ndarray]) -> int | None:
    """K when every output is ``(1, K)`` with K > 1, else ``None``."""
    if not outputs or any(o.ndim != 2 or o.shape[1] < 2 for o in outputs):
        return None
    return int(outputs[0].shape[1])


def _sig(a: np.ndarray | float) -> Any:
    """Numbers rounded to 4 significant digits for the page (NaN -> None), keeping JSON small.

    Vectorised: ``round(x / 10**k) * 10**k`` (or ``/ 10**-k``) multiplies or divides an
    integer by an exact power of ten, so each result is the double nearest to the 4-digit
    decimal and prints as that decimal.
    """
    x = np.asarray(a, np.float64)
    finite = np.isfinite(x)
    safe = np.where(finite & (x != 0), np.abs(x), 1.0)
    k = np.floor(np.log10(safe)) - 3
    up = np.power(10.0, np.maximum(k, 0))
    down = np.power(10.0, np.maximum(-k, 0))
    with np.errstate(all="ignore"):
        r = np.where(k >= 0, np.round(x / up) * up, np.round(x * down) / down)
    if x.ndim == 0:
        return float(r) if finite else None
    return [v if ok else None for v, ok in zip(r.tolist(), finite.tolist())]


def _shape_text(shape: Sequence[Any] | None) -> str:
    if shape is None:
        return "?"
    return "×".join("?" if d is None else str(d) for d in shape)


def _color_scale(ps: LayerStats, norm: str, vr: tuple[float, float] | None) -> tuple[Any, Any]:
    """Per drawn channel, the values that the colormap's two ends stand for."""
    if norm == "standardize":  # (x - mean) / std * 64 + 128: index 0 at -2 std, 255 at +2 std
        return _sig(ps.mean - 2 * ps.std), _sig(ps.mean + 2 * ps.std)
    if norm == "minmax":
        return _sig(ps.min), _sig(ps.max)
    lo, hi = (ps.layer_min(), ps.layer_max()) if norm == "layer" else (vr or (np.nan, np.nan))
    return _sig(np.full(ps.channels, lo)), _sig(np.full(ps.channels, hi))


def _page_data(ctx: ReportContext) -> dict[str, Any]:
    """The JSON the page script reads: grids, their geometry and value ranges, statistics."""
    drawn: dict[int, list[_Drawn]] = ctx.extra["drawn"]
    per_image: dict[int, list[LayerStats]] = ctx.extra["per_image"]
    opts = ctx.options
    pal = palette(colormap_lut(opts.cmap))[:240]
    layers = []
    for info, s in zip(ctx.layers, ctx.stats):
        first = drawn[info.index][0]
        entry: dict[str, Any] = {
            "name": info.name, "index": info.index, "type": info.type,
            "shape": _shape_text(info.output_shape), "total": s.channels, "layout": first.layout,
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
                lo, hi = d.scale
                scales.append({"lo": lo, "hi": hi, "min": _sig(ps_c.min), "max": _sig(ps_c.max),
                               "mean": _sig(ps_c.mean), "std": _sig(ps_c.std)})
            entry.update({"shown": c, "rows": rows, "cols": cols, "sep": 1, "geo": geo, "scales": scales})
        layers.append(entry)
    stats = []
    for s in ctx.stats:
        stats.append({
            "name": s.name, "index": s.index, "type": s.type, "channels": s.channels,
            "images": s.images, "summary": s.summary(),
            "mean": _sig(s.mean), "std": _sig(s.std), "min": _sig(s.min), "max": _sig(s.max),
            "zero": _sig(s.zero_fraction), "flags": s.notable.indices(),
        })
    return {
        "version": __version__, "model": ctx.lens.name, "norm": opts.norm, "cmap": opts.cmap,
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


# ---------------------------------------------------------------- page parts


def _header(ctx: ReportContext, title: str, sections: list[tuple[str, str]]) -> str:
    opts = ctx.options
    n = len(ctx.images)
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = (f"{ctx.lens.adapter.framework} · {n} image{'s' if n != 1 else ''} · "
            f"{len(ctx.layers)} layers · preprocessing {ctx.preprocess} · norm {opts.norm} · "
            f"cmap {opts.cmap} · convlens {__version__} · {when}")
    nav = "".join(f'<a{attr("href", "#cl-" + key)}>{escape(name)}</a>' for key, name in sections)
    picker = ""
    if n > 1:
        buttons = "".join(f'<button type="button" class="cl-image-btn"{attr("data-image", k)}'
                          f'{attr("aria-pressed", "true" if k == 0 else "false")}>{escape(im.name)}</button>'
                          for k, im in enumerate(ctx.images))
        picker = f'<div class="cl-image-select" role="group" aria-label="image"><span>image</span>{buttons}</div>'
    notes = ""
    if ctx.notes:
        notes = '<ul class="cl-notes">' + "".join(f"<li>{escape(t)}</li>" for t in ctx.notes) + "</ul>"
    return (f'<header class="cl-header"><h1>{escape(title)}</h1><p class="cl-meta">{escape(meta)}</p>{notes}'
            f'</header><div class="cl-bar"><nav class="cl-nav" aria-label="sections">{nav}</nav>{picker}</div>')


def _jpeg_or_png(rgb: np.ndarray) -> tuple[bytes, str]:
    """Photos as JPEG (a tenth of the bytes), anything else as PNG."""
    from PIL import Image as PILImage

    if rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 64:
        buf = io.BytesIO()
        PILImage.fromarray(rgb).save(buf, "JPEG", quality=90)
        return buf.getvalue(), "image/jpeg"
    return encode_png(rgb), "image/png"


def _preview(pixels: np.ndarray) -> np.ndarray:
    """An ``(H, W, C)`` 0..255 float image as uint8, its longer side at most ``_PREVIEW_SIDE``."""
    from PIL import Image as PILImage

    a = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    a = a[..., 0] if a.shape[2] == 1 else a
    h, w = a.shape[:2]
    if max(h, w) > _PREVIEW_SIDE:
        f = _PREVIEW_SIDE / max(h, w)
        a = np.asarray(PILImage.fromarray(a).resize((max(1, round(w * f)), max(1, round(h * f))),
                                                    PILImage.Resampling.LANCZOS))
    return a


def _as_seen(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The network's input, one min-max stretch over all channels (channel balance kept)."""
    lo, hi = finite_range(x)
    span = hi - lo
    y = np.zeros(x.shape, np.float32) if span <= 0 else (np.nan_to_num(x, nan=lo) - lo) * (255.0 / span)
    y = np.clip(np.round(y), 0, 255).astype(np.uint8)
    return (y[..., 0] if y.shape[2] == 1 else y), lo, hi


def _img(data: bytes, mime: str, alt: str, cls: str = "") -> str:
    return f'<img{attr("class", cls)}{attr("alt", alt)}{attr("src", data_uri(data, mime))}>'


@register_section("inputs", "Images", order=10)
def _inputs_section(ctx: ReportContext) -> str:
    cards = []
    bgr = ctx.preprocess == "caffe"
    for k, (im, x) in enumerate(zip(ctx.images, ctx.inputs)):
        preview = _preview(im.pixels)
        given, mime = _jpeg_or_png(preview)
        small = "cl-pixelated" if max(preview.shape[:2]) < 224 else ""  # enlarged by CSS: keep pixels sharp
        seen, lo, hi = _as_seen(x)
        # A model that takes any size sees the photo whole: a 12-megapixel PNG would be most of the page.
        seen_png = encode_png(_preview(seen if seen.ndim == 3 else seen[..., None]))
        w, h = im.original_size
        order = " Channels in the network's order (BGR), so colours look swapped." if bgr and x.shape[2] == 3 else ""
        cards.append(
            f'<div class="cl-card"{attr("data-image", k)}><h3>{escape(im.name)}</h3><div class="cl-pair">'
            f'<figure>{_img(given, mime, f"{im.name} as given", small)}'
            f"<figcaption>as given: {escape(f'{w}×{h}')} ({escape(im.mode)})</figcaption></figure>"
            f'<figure>{_img(seen_png, "image/png", f"{im.name} as the network sees it", "cl-pixelated")}'
            f"<figcaption>as the network sees it: {escape(_shape_text(x.shape))}, "
            f"preprocessing {escape(ctx.preprocess)}, values {escape(f'{lo:.4g} … {hi:.4g}')} "
            f"stretched to black … white.{escape(order)}</figcaption></figure></div></div>")
    return f'<div class="cl-cards">{"".join(cards)}</div>'


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@register_section("predictions", "Predictions", order=20)
def _predictions_section(ctx: ReportContext) -> str | None:
    k = _classes(ctx.outputs)
    ctx.extra["predictions"] = [[] for _ in ctx.images]
    if k is None:
        shape = _shape_text(ctx.outputs[0].shape[1:]) if ctx.outputs else "?"
        return (f'<p class="cl-muted">{escape(ctx.lens.name)} is not a classifier (its output per image '
                f"is {escape(shape)}, not K class scores), so there are no predictions.</p>")
    out = np.concatenate(ctx.outputs).astype(np.float64)
    finite = np.isfinite(out).all()
    probabilities = finite and out.min() >= 0 and out.max() <= 1 and np.allclose(out.sum(axis=1), 1, atol=1e-3)
    p = out if probabilities else _softmax(np.nan_to_num(out, nan=-np.inf, posinf=1e300, neginf=-1e300))
    how = ("the model's own probabilities" if probabilities
           else "softmax of the model's outputs (they are not probabilities)")
    names = ctx.labels
    source = ctx.extra.get("label_source") or ""
    if names is None:
        hint = " The 1,000 outputs look like ImageNet's: --labels src/convlens/data/imagenet_classes.txt " \
               "names them." if k == 1000 else " --labels FILE (one name per line) names them."
        label_note = f"Classes are numbered: convlens does not know this model's class names.{hint}"
    else:
        label_note = f"Class names: {source}."
    cards = []
    for i, im in enumerate(ctx.images):
        order = np.argsort(-p[i], kind="stable")[:_TOP_K]
        top = [((names[j] if names else f"class {j}"), float(p[i, j]), int(j)) for j in order]
        ctx.extra["predictions"][i] = [(t[0], t[1]) for t in top]
        rows = "".join(
            f'<tr><td class="num">{r}</td><td>{escape(name)}</td><td class="num">{j}</td>'
            f'<td class="cl-bar-cell"><meter min="0" max="1"{attr("value", f"{prob:.6f}")}></meter> '
            f"{escape(f'{prob:.2%}')}</td></tr>"
            for r, (name, prob, j) in enumerate(top, 1))
        cards.append(f'<div class="cl-card"{attr("data-image", i)}><h3>{escape(im.name)}</h3>'
                     f'<table class="cl-top"><thead><tr><th>#</th><th>class</th><th>id</th>'
                     f"<th>probability</th></tr></thead><tbody>{rows}</tbody></table></div>")
    return (f'<p class="cl-muted">Top {min(_TOP_K, k)} of {k} classes; {escape(how)}. '
            f'{escape(label_note)}</p><div class="cl-cards">{"".join(cards)}</div>')


def _pair_text(p: Sequence[int] | None) -> str:
    if not p:
        return "-"
    return str(p[0]) if p[0] == p[1] else f"{p[0]}×{p[1]}"


@register_section("layers", "Layers", order=30)
def _layers_section(ctx: ReportContext) -> str:
    rows, extra = [], []
    maps = "maps" in ctx.extra.get("sections", ["maps"])  # rows link to the maps only when they are there
    position = {info.index: pos for pos, info in enumerate(ctx.layers)} if maps else {}
    all_layers = ctx.lens.layers()
    for info in all_layers:
        rf = "all" if info.global_rf else _pair_text(info.rf_size)
        rf_key = 1e9 if info.global_rf else (info.rf_size[0] * info.rf_size[1] if info.rf_size else -1)
        rows.append([
            info.index, info.name, info.type, info.kind, _shape_text(info.output_shape),
            (f"{info.params:,}", info.params),
            _shape_text(info.kernel_shape) if info.kernel_shape else "-",
            _pair_text(info.stride), (rf, rf_key),
            "-" if info.global_rf else _pair_text(info.rf_jump),
        ])
        pos = position.get(info.index)
        extra.append(f' class="cl-goto"{attr("data-goto", pos)} tabindex="0" title="show its feature maps"'
                     if pos is not None else "")
    total = sum(i.params for i in all_layers)
    head = ["#", "name", "type", "kind", "output", "params", "kernel (O, I, kh, kw)", "stride",
            "receptive field", "jump"]
    numeric = [True, False, False, False, False, True, False, False, True, False]
    return (f'<p class="cl-muted">{len(all_layers)} layers, {total:,} parameters. Receptive field: the '
            "input pixels one output sees; jump: input pixels between neighbouring outputs. "
            + ("Highlighted rows are drawn below: click one to see its maps; " if maps else "")
            + "click a heading to sort.</p>"
            + table(head, rows, numeric=numeric, row_attrs=extra))


@register_section("maps", "Feature maps", order=40)
def _maps_section(ctx: ReportContext) -> str:
    drawn: dict[int, list[_Drawn]] = ctx.extra["drawn"]
    buttons = []
    for pos, (info, s) in enumerate(zip(ctx.layers, ctx.stats)):
        n = s.flagged
        flagged = f'<span class="cl-flag">{n} of {s.channels} flagged</span>' if n else ""
        buttons.append(
            f'<button type="button" class="cl-layer"{attr("data-layer", pos)}'
            f'{attr("aria-pressed", "true" if pos == 0 else "false")}>'
            f'<span class="cl-layer-name">{escape(info.name)}</span>'
            f'<span class="cl-layer-meta">{escape(_shape_text(info.output_shape))} · {escape(info.type)}'
            f"</span>{flagged}</button>")
    grid_layers = sum(1 for i in ctx.layers if drawn[i.index][0].layout == "grid")
    how = {"standardize": "each channel standardised ((x − mean) / std · 64 + 128, as the tutorials do)",
           "minmax": "each channel stretched from its minimum to its maximum",
           "layer": "one scale per layer, so its channels compare",
           "global": "one scale over every drawn layer"}[ctx.options.norm]
    hint = ("Click a tile to open that channel; in the viewer ← → step through channels, ↑ ↓ through "
            "layers, Esc closes." if grid_layers else "")
    return (f'<p class="cl-muted">Colours: {escape(ctx.options.cmap)}, {escape(how)}. Channels crossed '
            f"out in red are dead, constant or hold NaN/inf. {escape(hint)}</p>"
            f'<div class="cl-maps"><nav class="cl-layer-list" aria-label="layers">{"".join(buttons)}</nav>'
            f'<div class="cl-map-panel"><h3 id="cl-map-title"></h3><p id="cl-map-sub" class="cl-muted"></p>'
            f'<div class="cl-map-frame"><img id="cl-map-img" alt="" tabindex="0"></div></div></div>')


@register_section("stats", "Channel health", order=50)
def _stats_section(ctx: ReportContext) -> str:
    n = len(ctx.images)
    lines = "".join(f'<li{attr("class", "cl-bad" if s.flagged else "")}>{escape(s.summary())}</li>'
                    for s in ctx.stats)
    rows, extra = [], []
    for pos, s in enumerate(ctx.stats):
        rows.append([
            s.index, s.name, s.type, s.channels, int(s.dead.sum()), int(s.notable.constant.sum()),
            int(s.nonfinite.sum()), _num(s.layer_mean()), _num(s.layer_std()), _num(s.layer_max()),
            (_percent(s.mean_zero_fraction()), _key(s.mean_zero_fraction())),
        ])
        extra.append(f' class="cl-stats-row"{attr("data-stats", pos)} tabindex="0"')
    head = ["#", "layer", "type", "channels", "dead", "constant", "NaN/inf", "mean", "std", "max", "zeros"]
    numeric = [True, False, False, True, True, True, True, True, True, True, True]
    over = "this image" if n == 1 else f"the {n} images together"
    return (f'<p class="cl-muted">Per channel, over {escape(over)}: dead = zero everywhere, constant = one '
            "value everywhere, NaN/inf = holds non-finite values. Click a heading to sort, a row to see its "
            f'channels.</p><ul class="cl-summary">{lines}</ul>'
            + table(head, rows, numeric=numeric, row_attrs=extra, id="cl-stats-layers")
            + '<div id="cl-channels" hidden><h3 id="cl-channels-title"></h3>'
              '<table class="cl-sortable" id="cl-channel-table"></table></div>')


def _percent(v: float) -> str:
    """A fraction as a percentage, rounded down: 99.97 % zeros must not read as 100.0 %."""
    return f"{np.floor(v * 1000) / 10:.1f}%" if np.isfinite(v) else "-"


def _num(v: float) -> tuple[str, Any]:
    return (f"{v:.4g}" if np.isfinite(v) else "-"), _key(v)


def _key(v: float) -> Any:
    return f"{v:.6g}" if np.isfinite(v) else ""


def _kernels(lens: Lens, layers: list[LayerInfo]) -> dict[int, np.ndarray | ConvlensError]:
    """The kernels of the selected conv layers (or why one cannot be read), on the caller's thread."""
    out: dict[int, np.ndarray | ConvlensError] = {}
    for info in layers:
        if info.has_kernels:
            try:
                out[info.index] = lens.adapter.kernels(info.index)
            except ConvlensError as e:
                out[info.index] = e
    return out


def _atlases(layers: list[LayerInfo], kernels: dict[int, np.ndarray | ConvlensError]) -> list[str]:
    """One ``<figure>`` per conv layer: its filter atlases, lazily loaded. Pure numpy and PNG work."""
    from .lens import _composites

    lut = colormap_lut("gray")
    figures = []
    for info in layers:
        k = kernels.get(info.index)
        if k is None:
            continue
        if isinstance(k, ConvlensError):
            figures.append(f'<p class="cl-muted">{escape(info.name)}: {escape(k)}</p>')
            continue
        shown_f, shown_i = min(_REPORT_FILTERS, k.shape[0]), min(_REPORT_INPUTS, k.shape[1])
        cap = f"{info.index} {info.name} · kernel {_shape_text(k.shape)} (filters, inputs, kh, kw)"
        if shown_f < k.shape[0] or shown_i < k.shape[1]:
            cap += f" · filters 0-{shown_f - 1}, inputs 0-{shown_i - 1}"
        pics = []
        if k.shape[1] in (1, 3):  # a first layer: each filter as one picture, per-filter 0-1
            pics.append(lazy_img(encode_png(_composites(k, _REPORT_FILTERS)), f"{info.name} filters as pictures",
                                 cls="cl-pixelated"))
        grid = filter_grid(k, lut, max_filters=_REPORT_FILTERS, max_inputs=_REPORT_INPUTS)
        pics.append(lazy_img(encode_png(grid), f"{info.name} filters x inputs"))
        figures.append(f'<figure class="cl-filter">{"".join(pics)}<figcaption>{escape(cap)}</figcaption></figure>')
    return figures


@register_section("filters", "Filters", order=60)
def _filters_section(ctx: ReportContext) -> str | None:
    pending = ctx.extra.get("atlases")  # drawn beside the forward passes by build_report
    figures = pending.result() if pending is not None else _atlases(ctx.layers, _kernels(ctx.lens, ctx.layers))
    if not figures:
        return None
    return ('<p class="cl-muted">Each filter normalised on its own (gray: its smallest weight black, '
            "its largest white); |w| is its L2 norm. First layers that see RGB also show each filter as "
            f"a colour patch. convlens filters MODEL draws every filter.</p>"
            f'<div class="cl-filters">{"".join(figures)}</div>')
