"""The public API: ``Lens(model)`` and what it returns."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import LayerNotFound, UnsupportedModel
from ._progress import NullProgress, Progress
from .adapters.base import Adapter
from .core.layers import LayerInfo
from .core.normalize import global_range
from .core.text import pair_text, shape_text
from .dataset.result import DatasetResult
from .evaluate import Evaluation
from .heatmaps import DEFAULT_METHOD, Heatmaps
from .heatmaps import heatmaps as compute_heatmaps
from .images import Image, PreparedBatch
from .maps import draw_filter_files, draw_map_file, layer_title
from .methods.targets import TargetSpec
from .model import Model
from .output import OutputDir, check_file_target, png_figure_html, pre_html, write_index
from .passes import CollectMaps, MapConsumer, StatsConsumer, missing_note, run_pass
from .render.colormap import lut as colormap_lut
from .render.filters import filter_grid, filter_norms, first_layer_composites
from .render.html import escape
from .render.maps import RenderOptions, reduce_map, render_map
from .selection import DEFAULT_FILTER_SELECTION
from .stats import ChannelStats
from .visualize import Visualization
from .visualize import visualize as run_visualize
from .visualize.api import DEFAULT_BATCH, DEFAULT_LR, DEFAULT_STEPS

if TYPE_CHECKING:  # pragma: no cover - the report imports this module, never the reverse
    from .report import Report

__all__ = ["FeatureMaps", "Filters", "LayerTable", "Lens", "format_table", "render_options"]

ImageLike = Any  # a path, a PIL image or an array; see convlens.images.load_image

_DRAWING = RenderOptions()


def render_options(options: RenderOptions | None = None, *, norm: str = _DRAWING.norm,
                   cmap: str = _DRAWING.cmap, max_channels: int | None = _DRAWING.max_channels,
                   columns: int | None = _DRAWING.columns, numbers: bool = _DRAWING.numbers,
                   tile_size: int | None = None) -> RenderOptions:
    """The drawing options of a call: ``options`` (default :class:`RenderOptions`'s), then each
    named option that differs from its default on top.

    ``tile_size=None`` keeps the base's (the report's base has its own, smaller one).
    """
    changed = _changes(norm=norm, cmap=cmap, max_channels=max_channels, columns=columns, numbers=numbers,
                       tile_size=tile_size)
    return dataclasses.replace(options or RenderOptions(), **changed)


def _changes(*, tile_size: int | None, **named: Any) -> dict[str, Any]:
    """The named drawing options that differ from :class:`RenderOptions`'s defaults."""
    changed = {k: v for k, v in named.items() if v != getattr(_DRAWING, k)}
    if tile_size is not None:
        changed["tile_size"] = tile_size
    return changed


def _shape(shape: Sequence[int | None] | None) -> str:
    return shape_text(shape, free="None")


def _rf_cells(layer: LayerInfo, times: str = "x") -> tuple[str, str]:
    """The receptive field and jump columns: ``all``/``-`` for global layers, ``?``/``?`` where unknown."""
    if layer.global_rf:
        return "all", "-"
    if layer.rf_size is None or layer.rf_jump is None:
        return "?", "?"
    return pair_text(layer.rf_size, times=times), pair_text(layer.rf_jump, times=times)


def _depths(layers: Sequence[LayerInfo]) -> list[int]:
    """How deep each row is nested in containers (its ``parent`` chain's length; 0 at the top)."""
    by_index = {layer.index: layer for layer in layers}
    depths: list[int] = []
    for layer in layers:
        depth, seen, parent = 0, {layer.index}, layer.parent
        while parent is not None and parent in by_index and parent not in seen:
            seen.add(parent)
            depth += 1
            parent = by_index[parent].parent
        depths.append(depth)
    return depths


def format_table(layers: Sequence[LayerInfo]) -> str:
    """The layer table as aligned text; a row inside a container is indented under it (two spaces a level).

    A container's own row comes after its contents (rows are in the order
    their outputs are made): it is the block's output.
    """
    head = ("#", "name", "type", "output shape", "params", "kernel", "stride", "RF", "jump")
    rows = [head]
    for layer, depth in zip(layers, _depths(layers)):
        rows.append((
            str(layer.index), "  " * depth + layer.name, layer.type, _shape(layer.output_shape), f"{layer.params:,}",
            _shape(layer.kernel_shape) if layer.kernel_shape else "-",
            pair_text(layer.stride),
            *_rf_cells(layer),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    right = {0, 4, 7, 8}
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    total = sum(layer.params for layer in layers)
    lines.append(f"{len(layers)} layers, {total:,} parameters. kernel: (filters, inputs, kh, kw); "
                 "RF: receptive field in input pixels; jump: input pixels between neighbouring outputs; "
                 "?: not derivable from the model.")
    return "\n".join(lines)


class LayerTable(list):
    """The layer table: a list of :class:`LayerInfo` that prints as a table."""

    def __str__(self) -> str:
        return format_table(self)

    def _repr_html_(self) -> str:
        return pre_html(format_table(self))

    def to_json(self) -> list[dict[str, Any]]:
        return [layer.as_dict() for layer in self]


@dataclass
class FeatureMaps(Mapping[str, np.ndarray]):
    """The outputs of the selected layers for a batch of images.

    A mapping from layer name to a float32 array with the batch first:
    ``(N, H, W, C)`` maps, ``(N, L, C)`` signals or ``(N, C)`` vectors. When
    the images had different sizes (a model that takes any size), a layer's
    value is instead a list of N arrays, one per image without the batch axis,
    and so are ``inputs`` and, if its shapes differ, ``output``: ``maps[name][k]``
    is image ``k``'s output in both cases.

    Attributes:
        layers: the selected layers, in execution order.
        images: the images as loaded.
        inputs: the preprocessed batch the network saw, ``(N, H, W, C)``.
        output: the model's own output for the batch.
        notes: what was done to the inputs (resizing, channel changes), and the
            selected layers the model produced no output for (left out).
        model: the model's name.
        framework: the framework that ran it.
    """

    layers: list[LayerInfo]
    arrays: dict[str, np.ndarray]
    images: list[Image]
    inputs: np.ndarray
    output: np.ndarray
    notes: list[str] = field(default_factory=list)
    model: str = ""
    framework: str = ""

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
            vr = global_range(reduce_map(a[image], opts) for a in self.arrays.values())
        return render_map(self[layer][image], opts, title=layer_title(info), value_range=vr).rgb

    def save(self, out: str | os.PathLike[str], options: RenderOptions | None = None, *,
             norm: str = _DRAWING.norm, cmap: str = _DRAWING.cmap,
             max_channels: int | None = _DRAWING.max_channels, columns: int | None = _DRAWING.columns,
             numbers: bool = _DRAWING.numbers, tile_size: int | None = None) -> Path:
        """Write one PNG grid per layer and image, plus ``index.json``, as :meth:`Lens.save_maps` does.

        Args:
            out: the output folder (created; other files in it stay).
            options: drawing options; the named ones below override them where
                they differ from their defaults (see :func:`render_options`).

        Returns:
            The path of ``out/index.json``.
        """
        opts = render_options(options, norm=norm, cmap=cmap, max_channels=max_channels, columns=columns,
                              numbers=numbers, tile_size=tile_size)
        out_path = Path(out)
        drawn = [info for info in self.layers if info.name in self.arrays]
        entries = []
        with OutputDir(out_path) as staging:
            for i, im in enumerate(self.images):
                xs = [self.arrays[info.name][i] for info in drawn]
                vr = None
                if opts.norm == "global":  # one range over every layer of the image, as save_maps
                    xs = [reduce_map(x, opts) for x in xs]
                    vr = global_range(xs)
                for info, x in zip(drawn, xs):
                    total = int(self.arrays[info.name].shape[-1]) if self.arrays[info.name].ndim > 1 else 1
                    entries.append(_write_map(staging, opts, im, info, x, total, vr))
            entries.sort(key=lambda e: (e["image"], e["index"]))
            write_index(staging, "maps", entries, {
                "model": self.model, "framework": self.framework,
                "images": _image_records(self.images), "notes": self.notes,
                "options": {"norm": opts.norm, "cmap": opts.cmap, "max_channels": opts.max_channels,
                            "columns": opts.columns},
            })
        return out_path / "index.json"

    def to_json(self) -> dict[str, Any]:
        """What was computed, JSON-ready: model, images, notes, and each layer's record and array shape."""
        return {"model": self.model, "framework": self.framework, "images": _image_records(self.images),
                "notes": list(self.notes), "output_shape": list(self.output.shape),
                "layers": [{**info.as_dict(), "array_shape": list(self.arrays[info.name].shape)}
                           for info in self.layers if info.name in self.arrays]}

    def _repr_html_(self) -> str:
        parts = [(f"<div><b>{len(self)} layers</b> for image "
                  f"{escape(self.images[0].name)}</div>")]
        opts = RenderOptions()
        for info in self.layers:
            rgb = render_map(self.arrays[info.name][0], opts, title=layer_title(info)).rgb
            parts.append(png_figure_html(rgb, f"{info.index} {info.name}"))
        return "".join(parts)


def _stacked(arrays: Sequence[np.ndarray]) -> Any:
    """Per-image arrays stacked batch first when they have one shape, else the list itself."""
    return np.stack(arrays) if len({a.shape for a in arrays}) <= 1 and arrays else list(arrays)


def _image_records(images: Sequence[Image]) -> list[dict[str, Any]]:
    return [im.record() for im in images]


class Filters(dict):
    """Kernels by layer name, ``(O, I, kh, kw)`` float32; shows its atlases inline in Jupyter.

    Attributes:
        layers: each layer's table row, by name.
        model: the model's name.
        framework: the framework that holds the model.
    """

    def __init__(self, kernels: Iterable[tuple[str, np.ndarray]] = (), *, layers: Mapping[str, LayerInfo] | None = None,
                 model: str = "", framework: str = "") -> None:
        super().__init__(kernels)
        self.layers: dict[str, LayerInfo] = dict(layers or {})
        self.model = model
        self.framework = framework

    def render(self, layer: str, *, cmap: str = "gray", max_filters: int = 64, max_inputs: int = 16) -> np.ndarray:
        """The filter x input grid of one layer, with each filter's L2 norm, as RGB."""
        return filter_grid(self[layer], colormap_lut(cmap), max_filters=max_filters, max_inputs=max_inputs)

    def save(self, out: str | os.PathLike[str], *, cmap: str = "gray", max_filters: int | None = 64,
             max_inputs: int = 16, progress: Progress | None = None) -> Path:
        """Write a filter atlas per layer, plus ``index.json``.

        First-layer filters with 3 input channels also get RGB composites, each
        filter normalised on its own to 0-1. Every layer gets a filter x input
        channel grid, capped at ``max_filters`` x ``max_inputs``, with each
        filter's L2 norm.

        Returns:
            The path of ``out/index.json``.
        """
        progress = progress or NullProgress()
        progress.start(len(self), "filters")
        entries: list[dict[str, Any]] = []
        out_path = Path(out)
        with OutputDir(out_path) as staging:
            for name, k in self.items():
                drawn = draw_filter_files(staging, self.layers[name], k, cmap=cmap, max_filters=max_filters,
                                          max_inputs=max_inputs)
                entries.extend(d.entry for d in drawn)
                progress.advance()
            write_index(staging, "filters", entries, {"model": self.model, "framework": self.framework})
        progress.finish()
        return out_path / "index.json"

    def to_json(self) -> dict[str, Any]:
        """Per layer its row, kernel shape and every filter's L2 norm, JSON-ready (not the kernels)."""
        return {"model": self.model, "framework": self.framework,
                "layers": [{"layer": name, "index": self.layers[name].index if name in self.layers else None,
                            "type": self.layers[name].type if name in self.layers else None,
                            "kernel_shape": list(k.shape),
                            "l2_norms": [round(float(v), 6) for v in filter_norms(k)]}
                           for name, k in self.items()]}

    def _repr_html_(self) -> str:
        parts = []
        for name, k in self.items():
            if k.shape[1] in (1, 3):
                parts.append(png_figure_html(first_layer_composites(k, 64), f"{name} {k.shape}: each filter, 0-1"))
            parts.append(png_figure_html(self.render(name), f"{name} {k.shape}: filters x inputs"))
        return "".join(parts)


class _MapFiles(MapConsumer):
    """``save_maps``'s consumer: each layer of each image as a PNG grid in the output folder."""

    def __init__(self, options: RenderOptions, staging: OutputDir, images: list[Image]) -> None:
        super().__init__(options)
        self.staging = staging
        self.images = images
        self.entries: list[dict[str, Any]] = []
        self._entries_lock = threading.Lock()

    def draw(self, image: int, layer: LayerInfo, x: np.ndarray, total: int, shape: tuple[int, ...],
             value_range: tuple[float, float] | None) -> None:
        drawn = draw_map_file(self.staging, self.images[image].name, layer, x, self.options, total=total,
                              value_range=value_range)
        with self._entries_lock:
            self.entries.append(drawn.entry)


def _write_map(staging: OutputDir, options: RenderOptions, im: Image, layer: LayerInfo, x: np.ndarray,
               total: int, value_range: tuple[float, float] | None) -> dict[str, Any]:
    """Draw one layer of one image into ``maps/<image>/<index>_<layer>.png``; its index record.

    ``x`` is the layer's output for the image, or, when ``value_range`` is given, its
    :func:`reduce_map` (``norm="global"``).
    """
    return draw_map_file(staging, im.name, layer, x, options, total=total, value_range=value_range).entry


class Lens:
    """A model seen through convlens.

    Args:
        model: a ``keras.Model``, a ``.keras``/``.h5`` path, a zoo name such as
            ``"vgg16"``, or ``"demo"``.
        weights: zoo models only: ``"imagenet"`` (default), ``"none"`` or a file.
        input_shape: ``(H, W, C)`` for models that do not know theirs.
        trust: allow model files that run code when loaded (Lambda layers).
        preprocess: preprocessing preset (a name of :data:`convlens.images.PRESET_NAMES`); zoo
            models pick theirs, other models default to ``unit`` (x/255).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. ``None``: ``auto`` (the
            accelerator if there is one) for files and names; an in-memory model stays where it is.
        image_input: a model with several inputs (Keras, PyTorch, ONNX): the name of the input
            the images fill; ``None``: the first input that looks like an image.
        inputs: the values the model's other inputs are held at for every image, by name, one
            item each (no batch axis) in the framework's own layout; an input left out is held
            at zeros, with a note.

    Example:
        >>> lens = Lens("demo")
        >>> maps = lens.feature_maps(convlens.DEMO_IMAGE, layers="conv")
        >>> maps["conv1"].shape
        (1, 28, 28, 16)
    """

    def __init__(self, model: Any, *, weights: str | None = None,
                 input_shape: Sequence[int | None] | None = None, trust: bool = False,
                 preprocess: str | None = None, device: str | None = None, image_input: str | None = None,
                 inputs: Mapping[str, Any] | None = None) -> None:
        #: the :class:`~convlens.model.Model` every view runs on
        self.model: Model = Model.open(model, weights=weights, input_shape=input_shape, trust=trust,
                                       preprocess=preprocess, device=device, image_input=image_input,
                                       inputs=inputs)

    @property
    def adapter(self) -> Adapter:
        return self.model.adapter

    @property
    def preprocess(self) -> str:
        return self.model.preprocess

    @property
    def source(self) -> str | None:
        """What the model was opened from (a path or a name such as ``vgg16``), else ``None``."""
        return self.model.source

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self.model.input_shape

    @property
    def device(self) -> str:
        """Where the model runs: ``"cpu"``, ``"cuda:0"``, ``"mps"``."""
        return self.model.device

    def layers(self) -> LayerTable:
        """Every layer: index, name, type, output shape, parameters, kernel, stride, receptive field."""
        return LayerTable(self.model.layers())

    def select(self, layers: str | Iterable[str] | None = None) -> list[LayerInfo]:
        """The layers a selection names (see :meth:`convlens.model.Model.select`)."""
        return self.model.select(layers)

    # ------------------------------------------------------------------ inputs

    def _prepare(self, images: ImageLike | Sequence[ImageLike], size: Any,
                 preprocess: str | None) -> PreparedBatch:
        return self.model.prepare(images, size=size, preprocess=preprocess)

    def class_names(self, labels: str | os.PathLike[str] | Sequence[str] | None = None, *,
                    classes: int | None = None, output_shape: Sequence[int] | None = None
                    ) -> tuple[list[str] | None, str]:
        """The model's class names, and where they come from (see :meth:`convlens.model.Model.class_names`)."""
        return self.model.class_names(labels, classes=classes, output_shape=output_shape)

    # ------------------------------------------------------------------ feature maps

    def feature_maps(self, images: ImageLike | Sequence[ImageLike], layers: str | Iterable[str] | None = None,
                     *, size: int | tuple[int, int] | None = None,
                     preprocess: str | None = None) -> FeatureMaps:
        """The outputs of the selected layers, from one batched forward pass.

        Images of the same prepared size go through the network together. On a
        model that takes any size, images of different sizes work too: then
        each layer's value is a list with one array per image (``(H, W, C)``
        each, sizes differing), and ``inputs``/``output`` are lists likewise;
        ``maps[layer][k]`` is image ``k``'s map either way.

        Args:
            images: one image or a list (paths, PIL images or arrays).
            layers: a selection; default every conv and pool layer.
            size: ``(H, W)`` for models that accept any size; default the image's own.
            preprocess: preprocessing preset; default the model's.
        """
        chosen = self.select(layers)
        batch = self._prepare(images, size, preprocess)
        collect = CollectMaps(chosen, len(batch.arrays))
        result = run_pass(self.model, chosen, batch.arrays, [collect], workers=0)  # it keeps them all anyway
        notes = [*batch.notes, *([missing_note(result.missing)] if result.missing else [])]
        return FeatureMaps(layers=[layer for layer in chosen if layer not in result.missing],
                           arrays={name: _stacked(got) for name, got in collect.arrays.items()},
                           images=batch.images, inputs=_stacked(batch.arrays),
                           output=_stacked([o[0] for o in result.outputs]), notes=notes,
                           model=self.name, framework=self.adapter.framework)

    def save_maps(self, images: ImageLike | Sequence[ImageLike], out: str | os.PathLike[str],
                  layers: str | Iterable[str] | None = None, *, size: int | tuple[int, int] | None = None,
                  preprocess: str | None = None, progress: Progress | None = None,
                  options: RenderOptions | None = None, norm: str = _DRAWING.norm, cmap: str = _DRAWING.cmap,
                  max_channels: int | None = _DRAWING.max_channels, columns: int | None = _DRAWING.columns,
                  numbers: bool = _DRAWING.numbers, tile_size: int | None = None) -> Path:
        """Write one PNG grid per selected layer and per image, plus ``index.json``.

        Images of the same size go through the network in batches (bounded by
        :data:`convlens.passes.MEMORY_BUDGET`); each layer is drawn and encoded
        as soon as the network produces it, so memory holds a few layer outputs
        at a time (except ``norm="global"``, which keeps the reduced maps of one
        batch). Nothing is written if anything fails; a selected layer the model
        never produced is left out and noted in the index's ``notes``.

        Args:
            images: one image or a list.
            out: the output folder (created; existing unrelated files stay).
            layers: a selection; default :data:`~convlens.selection.DEFAULT_SELECTION`.
            size: ``(H, W)`` for models that accept any size; default the image's own.
            preprocess: preprocessing preset; default the model's.
            progress: one step per layer and image.
            options: drawing options (:class:`RenderOptions`); the named ones
                (``norm``, ``cmap``, ``max_channels``, ``columns``, ``numbers``,
                ``tile_size``) override them where they differ from their defaults.

        Returns:
            The path of ``out/index.json`` (``json.loads(path.read_text())`` reads it).
        """
        opts = render_options(options, norm=norm, cmap=cmap, max_channels=max_channels, columns=columns,
                              numbers=numbers, tile_size=tile_size)
        chosen = self.select(layers)
        batch = self._prepare(images, size, preprocess)
        out_path = Path(out)
        with OutputDir(out_path) as staging:
            files = _MapFiles(opts, staging, batch.images)
            result = run_pass(self.model, chosen, batch.arrays, [files], progress=progress,
                              label="feature maps")
            notes = [*batch.notes, *([missing_note(result.missing)] if result.missing else [])]
            entries = sorted(files.entries, key=lambda e: (e["image"], e["index"]))
            # merged at commit time, under OutputDir's lock: another run may have written meanwhile
            write_index(staging, "maps", entries, {
                "model": self.name,
                "framework": self.adapter.framework,
                "images": _image_records(batch.images),
                "notes": notes,
                "options": {"norm": opts.norm, "cmap": opts.cmap, "max_channels": opts.max_channels,
                            "columns": opts.columns, "preprocess": preprocess or self.preprocess},
            })
        return out_path / "index.json"

    # ------------------------------------------------------------------ filters

    def filters(self, layers: str | Iterable[str] | None = DEFAULT_FILTER_SELECTION) -> Filters:
        """Kernels of the selected conv layers as ``(O, I, kh, kw)`` float32 arrays.

        Args:
            layers: a selection; default :data:`~convlens.selection.DEFAULT_FILTER_SELECTION`
                (only convolutions have kernels).
        """
        chosen = [layer for layer in self.select(layers) if layer.has_kernels]
        if not chosen:
            raise UnsupportedModel(f"none of the selected layers of {self.name} has convolution "
                                   "kernels; select conv layers (--layers conv)")
        return Filters(((layer.name, self.adapter.kernels(layer.index)) for layer in chosen),
                       layers={layer.name: layer for layer in chosen}, model=self.name,
                       framework=self.adapter.framework)

    def save_filters(self, out: str | os.PathLike[str],
                     layers: str | Iterable[str] | None = DEFAULT_FILTER_SELECTION, *,
                     cmap: str = "gray", max_filters: int | None = 64, max_inputs: int = 16,
                     progress: Progress | None = None) -> Path:
        """Write a filter atlas per conv layer, plus ``index.json``: ``self.filters(layers).save(out, ...)``.

        Returns:
            The path of ``out/index.json`` (see :meth:`Filters.save`).
        """
        return self.filters(layers).save(out, cmap=cmap, max_filters=max_filters, max_inputs=max_inputs,
                                         progress=progress)

    # ------------------------------------------------------------------ channel statistics

    def channel_stats(self, images: ImageLike | Sequence[ImageLike], layers: str | Iterable[str] | None = None,
                      *, size: int | tuple[int, int] | None = None, preprocess: str | None = None,
                      progress: Progress | None = None) -> ChannelStats:
        """Channel health of the selected layers over all the images.

        For every channel: mean, standard deviation, minimum, maximum and share
        of exact zeros over every finite value of every image, and flags for
        dead (zero everywhere for these inputs), constant and non-finite
        channels (see :mod:`convlens.core.stats`). Images of the same size go
        through the network in batches; each layer's output is reduced per
        image and channel and folded into its running statistics as soon as it
        exists, so memory holds one layer's output at a time, never all of
        them. Images of different sizes are fine (they run in separate batches).

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
        batch = self._prepare(images, size, preprocess)
        stats = StatsConsumer(chosen)
        # Inline (workers=0): each output is folded inside the adapter's callback and dropped, so
        # memory holds one layer's output at a time however many layers and images there are.
        result = run_pass(self.model, chosen, batch.arrays, [stats], progress=progress,
                          label="channel statistics", unit="image", workers=0)
        # A selected layer that the model never produced is left out, and said so.
        notes = [*batch.notes, *([missing_note(result.missing)] if result.missing else [])]
        return ChannelStats(stats.results(), model=self.name, images=[image.name for image in batch.images],
                            notes=notes)

    # ------------------------------------------------------------------ report

    def report(self, images: ImageLike | Sequence[ImageLike], layers: str | Iterable[str] | None = None, *,
               labels: str | os.PathLike[str] | Sequence[str] | None = None,
               out: str | os.PathLike[str] | None = None, size: int | tuple[int, int] | None = None,
               preprocess: str | None = None, sections: Sequence[str] | None = None,
               progress: Progress | None = None, section_options: Mapping[str, Any] | None = None,
               dataset: str | os.PathLike[str] | None = None, options: RenderOptions | None = None,
               norm: str = _DRAWING.norm, cmap: str = _DRAWING.cmap,
               max_channels: int | None = _DRAWING.max_channels, columns: int | None = _DRAWING.columns,
               numbers: bool = _DRAWING.numbers, tile_size: int | None = None) -> Report:
        """A self-contained HTML report: layers, inputs, predictions, maps, channel health, filters.

        One batched forward pass feeds both the feature-map grids and the
        channel statistics. In Jupyter the returned report shows inline.

        Args:
            images: one image or a list (statistics cover all of them).
            layers: a selection; default every conv and pool layer.
            labels: class names for the predictions: a file (one per line) or a list.
            out: write the page here (atomically) as well.
            sections: keys of the sections to include (default all).
            section_options: per section key, that section's own options (e.g.
                ``{"heatmaps": {...}}``), handed to its builder as
                ``ctx.section_options[key]``.
            dataset: a folder written by ``convlens dataset`` (:meth:`dataset`): adds the
                "Dataset examples" section, each channel's map beside its dataset crops.
            options: drawing options (:class:`RenderOptions`); the named ones override
                them where they differ from their defaults. ``tile_size`` defaults to
                :data:`convlens.report.REPORT_TILE_SIZE` unless given (here or in ``options``).

        Returns:
            A :class:`convlens.report.Report`; ``report.save(path)`` writes it and returns its path.
        """
        # The report package builds on this module, so it is imported here, at call time:
        # lens never imports the report at module level, and the layering has no cycle.
        from .report import build_report

        if out is not None:
            check_file_target(out)  # before the forward passes: a folder given as --out fails at once
        changed = _changes(norm=norm, cmap=cmap, max_channels=max_channels, columns=columns, numbers=numbers,
                           tile_size=tile_size)
        drawing = {**(dataclasses.asdict(options) if options is not None else {}), **changed}
        result = build_report(self.model, images, layers, labels=labels, size=size, preprocess=preprocess,
                              sections=sections, progress=progress, section_options=section_options,
                              dataset=dataset, **drawing)
        if out is not None:
            result.save(out)
        return result

    # ------------------------------------------------------------------ dataset view

    def dataset(self, data: str | os.PathLike[str], layers: str | Iterable[str] | None = None, *,
                k: int = 9, engine: str = "local", batch_size: int = 32, size: Any = None,
                preprocess: str | None = None, out: str | os.PathLike[str] | None = None,
                resume: bool = False, resume_dir: str | os.PathLike[str] | None = None,
                checkpoint_every: int = 1000, ray_address: str | None = None,
                workers: int | None = None, gpus_per_worker: float | None = None,
                progress: Progress | None = None) -> DatasetResult:
        """What each channel responds to across a whole data set: see :mod:`convlens.dataset.api`.

        Per channel of each selected layer: the top-k images by its maximum
        (position and receptive-field crop), the bottom-k by mean, the top-k of
        the negative, dataset-wide health and, with labels, class selectivity.
        Streamed in batches in bounded memory.

        Args:
            data: a folder (``DATA/<class>/<image>`` gives labels), a glob, a
                text file of paths, or a Parquet file or folder.
            layers: a selection; default every conv and pool layer.
            k: examples per channel (at most the number of images).
            engine: ``"local"`` or ``"ray"`` (needs ``pip install 'convlens[ray]'``
                and a model opened from a file or name).
            batch_size: images per forward pass.
            size: ``H`` or ``(H, W)`` for models of any input size (default 224x224).
            preprocess: preprocessing preset; default the model's.
            out: also save the result there (atomically).
            resume: continue an interrupted run from its checkpoint.
            resume_dir: the checkpoint folder (default: beside ``out``, else none).
            checkpoint_every: images between checkpoints.
            ray_address, workers: the Ray engine's cluster and model actors.
            gpus_per_worker: the Ray engine on GPUs (the model opened with ``device`` cuda, or auto on
                a cluster with GPUs): GPUs each actor reserves (default 1; 0.5: two actors a GPU).
            progress: receives ``advance(images)`` per batch.

        Returns:
            A :class:`convlens.DatasetResult` (``.crops()``, ``.save(out)``,
            ``.to_json()``, an inline view in Jupyter).
        """
        from .dataset.api import run_dataset  # the engines load only when a data set runs

        return run_dataset(self.adapter, data, layers=self.select(layers), k=k, engine=engine,
                           batch_size=batch_size, size=size, preprocess=preprocess or self.preprocess,
                           resume_dir=resume_dir, checkpoint_every=checkpoint_every,
                           ray_address=ray_address, workers=workers, model_spec=self.model.spec,
                           gpus_per_worker=gpus_per_worker, progress=progress, resume=resume, out=out,
                           model_name=self.name,
                           notes=[n for n in [self.model.preprocess_note(preprocess), *self.model.input_notes] if n])

    # ------------------------------------------------------------------ heatmaps

    def heatmaps(self, images: ImageLike | Sequence[ImageLike], method: str | Sequence[str] = DEFAULT_METHOD, *,
                 layer: str | int | None = None, target: TargetSpec = None, top: int = 1,
                 size: int | tuple[int, int] | None = None, preprocess: str | None = None,
                 labels: str | os.PathLike[str] | Sequence[str] | None = None,
                 progress: Progress | None = None,
                 method_options: Mapping[str, Any] | None = None,
                 box: Sequence[float] | None = None, mask: Any = None, output: int | str | None = None,
                 output_index: int | None = None, reference: ImageLike | None = None) -> Heatmaps:
        """Where the network looks when it decides: see :func:`convlens.heatmaps.heatmaps`.

        Args:
            images: one image or a list.
            method: ``"gradcam"``, ``"gradcam,ig"`` or a list (:mod:`convlens.methods`).
            layer: CAM methods: the layer; default the output of the last conv layer.
            target: the class(es) to explain; ``None``: each image's ``top`` classes.
            top: with ``target=None``, how many top classes per image (1-10).
            size: ``(H, W)`` for models that accept any size.
            preprocess: preprocessing preset; default the model's.
            labels: the class names (a file or a list); default the model's own.
            progress: receives the progress of slow methods.
            method_options: the methods' own options by name, each given to the
                methods that take it: ``{"steps": 32}`` (IG), ``{"samples": 10}``
                (SmoothGrad), ``{"window": 16, "stride": 8}`` (occlusion).
            box: ``(x0, y0, x1, y1)`` in pixels of the image as given: a
                detector's detection of ``target`` that best overlaps it, or a
                segmentation's region.
            mask: a segmentation's region (an image, non-zero pixels count) or ``"predicted"``.
            output: which model output to explain (a name or position).
            output_index: one raw value of the output to explain, signed (regression).
            reference: an image; the score is the cosine similarity of the
                output (an embedding) with the reference's.

        Returns:
            A :class:`convlens.Heatmaps` (``.map()``, ``.render()``, ``.save()``, ``.to_json()``).
        """
        return compute_heatmaps(self.model, images, method, layer=layer, target=target, top=top, size=size,
                                preprocess=preprocess, labels=labels, progress=progress,
                                method_options=method_options, box=box, mask=mask, output=output,
                                output_index=output_index, reference=reference)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, images: ImageLike | Sequence[ImageLike], method: str | Sequence[str] | None = None, *,
                 metrics: str | Sequence[str] | None = None, layer: str | int | None = None,
                 target: TargetSpec = None, boxes: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                 masks: Sequence[Any] | None = None, steps: int = 20, replace: str = "blur",
                 patch: int | None = None, threshold: float = 0.5, samples: int = 8, noise: float = 0.05,
                 seed: int = 0, size: int | tuple[int, int] | None = None, preprocess: str | None = None,
                 labels: str | os.PathLike[str] | Sequence[str] | None = None,
                 method_options: Mapping[str, Any] | None = None,
                 progress: Progress | None = None) -> Evaluation:
        """Which heatmap method can be trusted for this model on these images: see :func:`convlens.evaluate.evaluate`.

        Returns:
            A :class:`convlens.Evaluation` (``.summary()``, ``.save()``, ``.to_json()``).
        """
        from .evaluate import evaluate as run_evaluate

        return run_evaluate(self.model, images, method, metrics=metrics, layer=layer, target=target, boxes=boxes,
                            masks=masks, steps=steps, replace=replace, patch=patch, threshold=threshold,
                            samples=samples, noise=noise, seed=seed, size=size, preprocess=preprocess,
                            labels=labels, method_options=method_options, progress=progress)

    # ------------------------------------------------------------------ feature visualisation

    def visualize(self, layer: str | int | None = None, channels: str | int | Sequence[int] | None = None, *,
                  objective: str = "channel", negative: bool = False, steps: int = DEFAULT_STEPS,
                  size: int | None = None, seed: int = 0, batch_size: int = DEFAULT_BATCH,
                  lr: float = DEFAULT_LR, diversity: float = 0.0, copies: int = 1,
                  input_size: tuple[int, int] | None = None, preprocess: str | None = None,
                  progress: Progress | None = None) -> Visualization:
        """The images that most excite channels, neurons or classes (Lucid's feature visualisation).

        See :func:`convlens.visualize.visualize` for every argument.

        Returns:
            A :class:`convlens.Visualization`: ``.atlas()``, ``.save(out)``,
            ``.to_json()`` and an inline view in Jupyter.
        """
        return run_visualize(self.model, layer, channels, objective=objective, negative=negative, steps=steps,
                             size=size, seed=seed, batch_size=batch_size, lr=lr, diversity=diversity,
                             copies=copies, input_size=input_size, preprocess=preprocess, progress=progress)
