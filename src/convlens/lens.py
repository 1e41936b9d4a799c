"""The public API: ``Lens(model)`` and what it returns."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import __version__
from ._errors import BadArgument, LayerNotFound, UnsupportedModel
from ._progress import NullProgress, Progress
from .adapters import open_model
from .core.layers import LayerInfo
from .core.normalize import finite_range
from .core.stats import StatsAccumulator
from .images import Image, load_images, prepare
from .render.colormap import lut as colormap_lut
from .render.filters import filter_grid, filter_norms, rgb_composites
from .render.grid import add_title
from .render.maps import RenderOptions, reduce_map, render_map
from .render.png import OutputDir, encode_png
from .selection import select
from .stats import ChannelStats

__all__ = ["FeatureMaps", "Filters", "LayerTable", "Lens", "format_table"]

ImageLike = Any  # a path, a PIL image or an array; see convlens.images.load_image


def _safe(name: str) -> str:
    """A layer or image name as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "__")).strip("._") or "layer"


def _shape(shape: Sequence[int | None] | None) -> str:
    if shape is None:
        return "?"
    dims = ["None" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _pair_text(p: Sequence[int] | None) -> str:
    if not p:
        return "-"
    return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"


def format_table(layers: Sequence[LayerInfo]) -> str:
    """The layer table as aligned text."""
    head = ("#", "name", "type", "output shape", "params", "kernel", "stride", "RF", "jump")
    rows = [head]
    for layer in layers:
        rows.append((
            str(layer.index), layer.name, layer.type, _shape(layer.output_shape), f"{layer.params:,}",
            _shape(layer.kernel_shape) if layer.kernel_shape else "-",
            _pair_text(layer.stride),
            "all" if layer.global_rf else _pair_text(layer.rf_size),
            "-" if layer.global_rf else _pair_text(layer.rf_jump),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    right = {0, 4, 7, 8}
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    total = sum(layer.params for layer in layers)
    lines.append(f"{len(layers)} layers, {total:,} parameters. kernel: (filters, inputs, kh, kw); "
                 "RF: receptive field in input pixels; jump: input pixels between neighbouring outputs.")
    return "\n".join(lines)


class LayerTable(list):
    """The layer table: a list of :class:`LayerInfo` that prints as a table."""

    def __str__(self) -> str:
        return format_table(self)

    def _repr_html_(self) -> str:
        text = html.escape(format_table(self))
        return f"<pre style='font-size:12px'>{text}</pre>"

    def to_json(self) -> list[dict[str, Any]]:
        return [layer.as_dict() for layer in self]


def _png_html(rgb: np.ndarray, caption: str) -> str:
    data = base64.b64encode(encode_png(rgb)).decode("ascii")
    return (f"<figure style='margin:0 0 12px 0'><img src='data:image/png;base64,{data}' "
            f"style='max-width:100%;image-rendering:pixelated'/><figcaption style='font:12px monospace'>"
            f"{html.escape(caption)}</figcaption></figure>")


@dataclass
class FeatureMaps(Mapping[str, np.ndarray]):
    """The outputs of the selected layers for a batch of images.

    A mapping from layer name to a float32 array with the batch first:
    ``(N, H, W, C)`` maps, ``(N, L, C)`` signals or ``(N, C)`` vectors.

    Attributes:
        layers: the selected layers, in execution order.
        images: the images as loaded.
        inputs: the preprocessed batch the network saw, ``(N, H, W, C)``.
        output: the model's own output for the batch.
        notes: what was done to the inputs (resizing, channel changes).
    """

    layers: list[LayerInfo]
    arrays: dict[str, np.ndarray]
    images: list[Image]
    inputs: np.ndarray
    output: np.ndarray
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self.arrays:
            return self.arrays[key]
        short = [k for k in self.arrays if k.rsplit("/", 1)[-1] == key]
        if len(short) == 1:
            return self.arrays[short[0]]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def render(self, layer: str, image: int = 0, **options: Any) -> np.ndarray:
        """One layer's grid as an ``(H, W, 3)`` uint8 picture; options as :class:`RenderOptions`."""
        opts = RenderOptions(**options)
        info = next((i for i in self.layers if i.name == layer or i.name.rsplit("/", 1)[-1] == layer), None)
        if info is None:
            raise LayerNotFound(f"{layer!r} is not among these feature maps ({', '.join(self.arrays)}); "
                                "select it when calling feature_maps(..., layers=...)")
        vr = None
        if opts.norm == "global":
            vr = _union_range(finite_range(reduce_map(a[image], opts)) for a in self.arrays.values())
        return render_map(self[layer][image], opts, title=_title(info), value_range=vr).rgb

    def _repr_html_(self) -> str:
        parts = [f"<div><b>{html.escape(str(len(self)))} layers</b> for image "
                 f"{html.escape(self.images[0].name)}</div>"]
        opts = RenderOptions()
        for info in self.layers:
            rgb = render_map(self.arrays[info.name][0], opts, title=_title(info)).rgb
            parts.append(_png_html(rgb, f"{info.index} {info.name}"))
        return "".join(parts)


def _title(info: LayerInfo) -> str:
    return f"{info.index} {info.name}  ·  {info.type}  ·  {_shape(info.output_shape)}"


def _composites(kernels: np.ndarray, cap: int) -> np.ndarray:
    """First-layer filters as one patch each: RGB for 3 inputs, gray for 1."""
    return rgb_composites(np.repeat(kernels, 3, axis=1) if kernels.shape[1] == 1 else kernels,
                          max_filters=cap)


class Filters(dict):
    """Kernels by layer name, ``(O, I, kh, kw)`` float32; shows its atlases inline in Jupyter."""

    def render(self, layer: str, *, cmap: str = "gray", max_filters: int = 64, max_inputs: int = 16) -> np.ndarray:
        """The filter x input grid of one layer, with each filter's L2 norm, as RGB."""
        return filter_grid(self[layer], colormap_lut(cmap), max_filters=max_filters, max_inputs=max_inputs)

    def _repr_html_(self) -> str:
        parts = []
        for name, k in self.items():
            if k.shape[1] in (1, 3):
                parts.append(_png_html(_composites(k, 64), f"{name} {k.shape}: each filter, 0-1"))
            parts.append(_png_html(self.render(name), f"{name} {k.shape}: filters x inputs"))
        return "".join(parts)


def _union_range(ranges: Iterable[tuple[float, float]]) -> tuple[float, float]:
    rs = list(ranges)
    return (min(r[0] for r in rs), max(r[1] for r in rs)) if rs else (0.0, 0.0)


def _merge_index(out: Path, key: str, entries: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Fold this run's entries into an index.json already in ``out`` (other commands' files stay)."""
    index: dict[str, Any] = {}
    old = out / "index.json"
    if old.is_file():
        try:
            index = json.loads(old.read_text())
        except (OSError, ValueError):
            index = {}
        if not isinstance(index, dict):
            index = {}
    new_files = {e["file"] for e in entries}
    kept = [e for e in index.get(key, []) if isinstance(e, dict) and e.get("file") not in new_files
            and (out / str(e.get("file"))).exists()]
    index.update(meta)
    index["convlens"] = __version__
    index[key] = kept + entries
    return index


class Lens:
    """A model seen through convlens.

    Args:
        model: a ``keras.Model``, a ``.keras``/``.h5`` path, a zoo name such as
            ``"vgg16"``, or ``"demo"``.
        weights: zoo models only: ``"imagenet"`` (default), ``"none"`` or a file.
        input_shape: ``(H, W, C)`` for models that do not know theirs.
        trust: allow model files that run code when loaded (Lambda layers).
        preprocess: preprocessing preset (``unit caffe torch tf raw``); zoo
            models pick theirs, other models default to ``unit`` (x/255).

    Example:
        >>> lens = Lens("demo")
        >>> maps = lens.feature_maps(convlens.DEMO_IMAGE, layers="conv")
        >>> maps["conv1"].shape
        (1, 28, 28, 16)
    """

    def __init__(self, model: Any, *, weights: str | None = None,
                 input_shape: Sequence[int | None] | None = None, trust: bool = False,
                 preprocess: str | None = None) -> None:
        self.adapter = open_model(model, weights=weights, input_shape=input_shape, trust=trust,
                                  preprocess=preprocess)
        self.preprocess = preprocess or self.adapter.preprocess or "unit"
        #: what the model was opened from (a name such as ``vgg16`` tells the report its class names)
        self.source = model if isinstance(model, (str, os.PathLike)) else None

    @property
    def name(self) -> str:
        return self.adapter.name

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self.adapter.input_shape

    def layers(self) -> LayerTable:
        """Every layer: index, name, type, output shape, parameters, kernel, stride, receptive field."""
        return LayerTable(self.adapter.layers())

    def select(self, layers: str | Iterable[str] | None = None) -> list[LayerInfo]:
        """The layers a selection names (see :mod:`convlens.selection`)."""
        table = self.adapter.layers()
        chosen = [table[i] for i in select(table, layers)]
        if not chosen:
            kinds = sorted({layer.kind for layer in table if layer.kind != "input"})
            raise UnsupportedModel(f"{self.name} has no layer of the selected kinds "
                                   f"({layers or 'conv,pool'}); it has {', '.join(kinds)} layers: "
                                   "choose with --layers (e.g. --layers all)")
        return chosen

    # ------------------------------------------------------------------ inputs

    def _prepare(self, images: ImageLike | Sequence[ImageLike], size: Any, preprocess: str | None
                 ) -> tuple[list[Image], list[np.ndarray], list[str]]:
        if len(self.input_shape) != 3:
            raise UnsupportedModel(f"{self.name} takes input of shape {self.input_shape}, not images "
                                   "(H, W, C); its layer table and filters work, feature maps need an "
                                   "image model")
        loaded = load_images(images)
        h, w, c = self.input_shape
        if size is not None:
            sh, sw = (size, size) if isinstance(size, int) else tuple(size)
            if (h is not None and h != sh) or (w is not None and w != sw):
                raise BadArgument(f"{self.name} takes a fixed input of {h}x{w}; --size {sh}x{sw} "
                                  "cannot be used with it (leave --size out)")
            target = (sh, sw)
        elif h is not None and w is not None:
            target = (h, w)
        else:
            target = None
        why = "the size asked for" if size is not None else "the model's fixed input size"
        arrays, notes = [], []
        for image in loaded:
            arr, n = prepare(image, size=target, channels=c, preprocess=preprocess or self.preprocess)
            arrays.append(arr)
            notes.extend(f"{note} ({why})" if note.startswith("resized") else note for note in n)
        return loaded, arrays, notes

    # ------------------------------------------------------------------ feature maps

    def feature_maps(self, images: ImageLike | Sequence[ImageLike], layers: str | Iterable[str] | None = None,
                     *, size: int | tuple[int, int] | None = None,
                     preprocess: str | None = None) -> FeatureMaps:
        """The outputs of the selected layers, from one forward pass per image.

        Args:
            images: one image or a list (paths, PIL images or arrays).
            layers: a selection; default every conv and pool layer.
            size: ``(H, W)`` for models that accept any size; default the image's own.
            preprocess: preprocessing preset; default the model's.
        """
        chosen = self.select(layers)
        loaded, arrays, notes = self._prepare(images, size, preprocess)
        if len({a.shape for a in arrays}) > 1:
            raise BadArgument("images of different sizes cannot be stacked into one batch; pass size= "
                              "or use save_maps, which handles each image on its own")
        wanted = [layer.index for layer in chosen]
        table = self.adapter.layers()
        collected: dict[str, list[np.ndarray]] = {layer.name: [] for layer in chosen}
        outputs = []
        for arr in arrays:
            outputs.append(self.adapter.run(arr[None], wanted,
                                            lambda i, a: collected[table[i].name].append(a[0])))
        stacked = {k: np.stack(v) for k, v in collected.items() if v}
        return FeatureMaps(layers=chosen, arrays=stacked, images=loaded,
                           inputs=np.stack(arrays), output=np.concatenate(outputs), notes=notes)

    def save_maps(self, images: ImageLike | Sequence[ImageLike], out: str | os.PathLike[str],
                  layers: str | Iterable[str] | None = None, *, size: Any = None,
                  preprocess: str | None = None, progress: Progress | None = None,
                  **options: Any) -> dict[str, Any]:
        """Write one PNG grid per selected layer and per image, plus ``index.json``.

        Each image gets one forward pass; each layer is drawn and encoded as soon
        as the network produces it, so memory holds one layer at a time (except
        ``norm="global"``, which keeps the reduced maps of one image). Nothing is
        written if anything fails.

        Args:
            images: one image or a list.
            out: the output folder (created; existing unrelated files stay).
            layers: a selection; default every conv and pool layer.
            **options: see :class:`RenderOptions` (norm, cmap, max_channels, ...).

        Returns:
            The index that was written to ``out/index.json``.
        """
        opts = RenderOptions(**options)
        chosen = self.select(layers)
        wanted = [layer.index for layer in chosen]
        table = self.adapter.layers()
        loaded, arrays, notes = self._prepare(images, size, preprocess)
        progress = progress or NullProgress()
        progress.start(len(loaded) * len(chosen), "feature maps")
        entries: list[dict[str, Any]] = []
        out_path = Path(out)
        with OutputDir(out_path) as staging, ThreadPoolExecutor(max_workers=2) as pool:
            pending: list[Future[None]] = []

            in_flight = threading.BoundedSemaphore(4)  # bounds memory: at most 4 layers queued

            def draw(image: Image, info: LayerInfo, x: np.ndarray, total: int,
                     vr: tuple[float, float] | None) -> None:
                try:
                    rel = f"maps/{_safe(image.name)}/{info.index:03d}_{_safe(info.name)}.png"
                    rendered = render_map(x, opts, title=_title(info), channels_total=total,
                                          value_range=vr, reduced=vr is not None)
                    staging.write_bytes(rel, rendered.png())
                    entries.append({
                        "image": image.name, "layer": info.name, "index": info.index, "type": info.type,
                        "shape": list(info.output_shape) if info.output_shape else None,
                        "file": rel, "layout": rendered.layout,
                        "channels_total": rendered.channels_total,
                        "channels_shown": rendered.channels_shown, "flags": rendered.flags.indices(),
                    })
                    progress.advance()
                finally:
                    in_flight.release()

            def emit(image: Image, info: LayerInfo, x: np.ndarray, total: int,
                     vr: tuple[float, float] | None) -> None:
                # Reducing, drawing and encoding run on two worker threads, beside the forward
                # pass and each other (numpy and deflate release the GIL). ``x`` is reduced
                # already when a global scale (vr) was needed.
                in_flight.acquire()
                pending.append(pool.submit(draw, image, info, x, total, vr))

            for image, arr in zip(loaded, arrays):
                buffered: list[tuple[LayerInfo, np.ndarray, int]] = []

                def on_output(i: int, a: np.ndarray, image: Image = image,
                              buffered: list = buffered) -> None:
                    info = table[i]
                    total = int(a.shape[-1]) if a.ndim > 1 else 1
                    if opts.norm == "global":
                        buffered.append((info, reduce_map(a[0], opts), total))
                    else:
                        emit(image, info, a[0], total, None)

                self.adapter.run(arr[None], wanted, on_output)
                if buffered:
                    vr = _union_range(finite_range(r) for _, r, _ in buffered)
                    for info, reduced, total in buffered:
                        emit(image, info, reduced, total, vr)
            for f in pending:
                f.result()
            entries.sort(key=lambda e: (e["image"], e["index"]))
            index = _merge_index(out_path, "maps", entries, {
                "model": self.name,
                "framework": self.adapter.framework,
                "images": [{"name": im.name, "source": im.source,
                            "size": list(im.original_size)} for im in loaded],
                "notes": notes,
                "options": {"norm": opts.norm, "cmap": opts.cmap, "max_channels": opts.max_channels,
                            "columns": opts.columns, "preprocess": preprocess or self.preprocess},
            })
            staging.write_json("index.json", index)
        progress.finish()
        return index

    # ------------------------------------------------------------------ filters

    def filters(self, layers: str | Iterable[str] | None = "conv") -> Filters:
        """Kernels of the selected conv layers as ``(O, I, kh, kw)`` float32 arrays."""
        chosen = [layer for layer in self.select(layers) if layer.has_kernels]
        if not chosen:
            raise UnsupportedModel(f"none of the selected layers of {self.name} has convolution "
                                   "kernels; select conv layers (--layers conv)")
        return Filters((layer.name, self.adapter.kernels(layer.index)) for layer in chosen)

    def save_filters(self, out: str | os.PathLike[str], layers: str | Iterable[str] | None = "conv", *,
                     cmap: str = "gray", max_filters: int | None = 64, max_inputs: int = 16,
                     progress: Progress | None = None) -> dict[str, Any]:
        """Write a filter atlas per conv layer, plus ``index.json``.

        First-layer filters with 3 input channels also get RGB composites, each
        filter normalised on its own to 0-1. Every layer gets a filter x input
        channel grid, capped at ``max_filters`` x ``max_inputs``, with each
        filter's L2 norm.
        """
        kernels = self.filters(layers)
        table = {layer.name: layer for layer in self.adapter.layers()}
        lut = colormap_lut(cmap)
        cap = max_filters or 10**9
        progress = progress or NullProgress()
        progress.start(len(kernels), "filters")
        entries: list[dict[str, Any]] = []
        out_path = Path(out)
        with OutputDir(out_path) as staging:
            for name, k in kernels.items():
                info = table[name]
                base = f"filters/{info.index:03d}_{_safe(name)}"
                shown = min(cap, k.shape[0])
                head = f"{info.index} {name}  ·  {info.type}  ·  kernel {_shape(k.shape)}"
                files = []
                if k.shape[1] in (1, 3):  # a first layer: each filter as one picture, per-filter 0-1
                    suffix, label = ("_rgb", "RGB") if k.shape[1] == 3 else ("_gray", "gray")
                    staging.write_png(base + suffix + ".png", add_title(_composites(k, cap), f"{head}  ·  {label}"))
                    files.append(base + suffix + ".png")
                grid = filter_grid(k, lut, max_filters=cap, max_inputs=max_inputs)
                caps = [f"{label} 0-{n - 1} of {total}" for label, n, total in
                        (("filters", shown, k.shape[0]), ("inputs", min(max_inputs, k.shape[1]), k.shape[1]))
                        if n < total]
                staging.write_png(base + ".png", add_title(grid, "  ·  ".join([head, *caps])))
                files.append(base + ".png")
                norms = filter_norms(k)
                for f in files:
                    entries.append({"layer": name, "index": info.index, "type": info.type,
                                    "kernel_shape": list(k.shape), "file": f,
                                    "filters_shown": shown, "inputs_shown": min(max_inputs, k.shape[1]),
                                    "l2_norms": [round(float(v), 6) for v in norms[:shown]]})
                progress.advance()
            index = _merge_index(out_path, "filters", entries,
                                 {"model": self.name, "framework": self.adapter.framework})
            staging.write_json("index.json", index)
        progress.finish()
        return index

    # ------------------------------------------------------------------ channel statistics

    def channel_stats(self, images: ImageLike | Sequence[ImageLike], layers: str | Iterable[str] | None = None,
                      *, size: int | tuple[int, int] | None = None, preprocess: str | None = None,
                      progress: Progress | None = None) -> ChannelStats:
        """Channel health of the selected layers over all the images.

        For every channel: mean, standard deviation, minimum, maximum and share
        of exact zeros over every finite value of every image, and flags for
        dead (zero everywhere for these inputs), constant and non-finite
        channels (see :mod:`convlens.core.stats`). One forward pass per image;
        each layer's output is folded into its running statistics as soon as
        it exists, so memory holds one layer's output at a time, never all of
        them. Images of different sizes are fine (each runs on its own).

        Args:
            images: one image or a list (paths, PIL images or arrays).
            layers: a selection; default every conv and pool layer, as
                everywhere in convlens. Models with separate activation layers
                (ResNet, most PyTorch models) show dead ReLUs in ``act``
                layers: add them with ``"conv,act,pool"``.
            size: ``(H, W)`` for models that accept any size; default the image's own.
            preprocess: preprocessing preset; default the model's.
            progress: receives one step per image.

        Returns:
            :class:`ChannelStats`, a list of :class:`LayerStats` in execution order.
        """
        chosen = self.select(layers)
        loaded, arrays, notes = self._prepare(images, size, preprocess)
        accumulators = {layer.index: StatsAccumulator(layer.index, layer.name, layer.type) for layer in chosen}
        wanted = list(accumulators)
        progress = progress or NullProgress()
        progress.start(len(arrays), "channel statistics")
        for arr in arrays:
            self.adapter.run(arr[None], wanted, lambda i, a: accumulators[i].add(a))
            progress.advance()
        progress.finish()
        # An adapter that never produced a selected layer's output leaves it out, and says so.
        missing = [acc.name for acc in accumulators.values() if acc.images == 0]
        if missing:
            notes = [*notes, f"no output was captured for {', '.join(missing)}; left out"]
        return ChannelStats((acc.result() for acc in accumulators.values() if acc.images), model=self.name,
                            images=[image.name for image in loaded], notes=notes)

    # ------------------------------------------------------------------ report

    def report(self, images: ImageLike | Sequence[ImageLike], layers: str | Iterable[str] | None = None, *,
               labels: str | os.PathLike[str] | Sequence[str] | None = None,
               out: str | os.PathLike[str] | None = None, size: Any = None, preprocess: str | None = None,
               sections: Sequence[str] | None = None, progress: Progress | None = None,
               **options: Any) -> Any:
        """A self-contained HTML report: layers, inputs, predictions, maps, channel health, filters.

        One forward pass per image feeds both the feature-map grids and the
        channel statistics. In Jupyter the returned report shows inline.

        Args:
            images: one image or a list (statistics cover all of them).
            layers: a selection; default every conv and pool layer.
            labels: class names for the predictions: a file (one per line) or a list.
            out: write the page here (atomically) as well.
            sections: keys of the sections to include (default all).
            **options: drawing options (norm, cmap, max_channels, tile_size, ...).

        Returns:
            A :class:`convlens.report.Report`; ``report.save(path)`` writes it.
        """
        from .report import _check_out, build_report

        if out is not None:
            _check_out(out)  # before the forward passes: a folder given as --out fails at once
        result = build_report(self, images, layers, labels=labels, size=size, preprocess=preprocess,
                              sections=sections, progress=progress, **options)
        if out is not None:
            result.save(out)
        return result

    # ------------------------------------------------------------------ feature visualisation

    def visualize(self, layer: str | int | None = None, channels: Any = None, **options: Any) -> Any:
        """The images that most excite channels, neurons or classes (Lucid's feature visualisation).

        See :func:`convlens.visualize.visualize` for the options (objective,
        negative, steps, size, seed, batch, diversity, copies, progress).

        Returns:
            A :class:`convlens.visualize.Visualization`: ``.atlas()``,
            ``.save(out)``, and an inline view in Jupyter.
        """
        from .visualize import visualize

        if options.get("preprocess") is None:
            options["preprocess"] = self.preprocess
        return visualize(self.adapter, layer, channels, **options)
