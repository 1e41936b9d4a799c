"""Dataset examples: each channel's map for the report's images beside its strongest dataset crops.

Not part of a default report: it reads a folder written by ``convlens dataset``
(:mod:`convlens.dataset`), asked for with ``convlens report MODEL IMAGE
--dataset DIR`` or ``Lens.report(..., dataset=DIR)``. Options, in
``section_options["dataset"]``:

* ``dir``: the dataset folder (required; ``dataset=DIR`` sets it);
* ``channels``: channels shown per layer, an int or ``"all"`` (default
  :data:`REPORT_CHANNELS`): the channels whose maximum over the report's
  images is highest come first, so the page shows what these images excite.

For every layer of the folder that the model has, each shown channel gets its
map for each of the first :data:`MAX_IMAGES` report images, its mosaic of
top-k dataset crops (the PNG the dataset command wrote, inlined as a ``data:``
URI so the page stays one file), its statistics over the dataset and, with
labels, its best class and selectivity index. Below, the folder's health
table: every layer ranked by dead channels.

The maps come from the report's one forward pass: the section's consumer
(:class:`DatasetMaps`) asks the pass for the folder's layers, even those
outside the report's ``--layers`` selection. A folder made with another model
(``index.json``'s ``model``) or a layer the model lacks (or has with another
channel count) is said on the page; a folder that is not a dataset output is
a :class:`~convlens.BadArgument` before any work. A name does not tell
weights apart (random weights differ on every run), so one dataset image is
read again and run once more: its scores must be the ones the folder recorded
(:func:`_check_scores`; the page says which, and warns when they differ).

The folder is a user's file: every name in it is escaped, mosaic paths must
stay inside the folder and be PNG files, and inlined pictures stop at
:data:`MAX_BYTES` in total.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..._errors import BadArgument, ConvlensError
from ...core.layers import LayerInfo
from ...core.normalize import normalize_channels
from ...core.text import count, number, pair_text, percent, shape_text, sort_key
from ...dataset.folder import CHANNELS_JSON, INDEX, read_folder
from ...images import load_image, prepare
from ...passes import Batch, call_model
from ...render.colormap import apply_lut
from ...render.colormap import lut as colormap_lut
from ...render.grid import downsample
from ...render.png import encode_png
from ..context import ReportContext, SectionConsumer
from ..registry import register_section
from ..templating import Markup, lazy_img, render, table

if TYPE_CHECKING:  # pragma: no cover
    from ...model import Model

__all__ = ["MAX_BYTES", "MAX_IMAGES", "OPTIONS", "REPORT_CHANNELS", "DatasetFolder", "DatasetLayer",
           "DatasetMaps", "dataset_section", "read_dataset_folder"]

#: Channels shown per layer unless ``channels`` says otherwise.
REPORT_CHANNELS = 16
#: Report images whose maps are shown beside the crops.
MAX_IMAGES = 4
#: Pictures read from the folder stop here (base64 adds a third on the page).
MAX_BYTES = 30_000_000
#: A single mosaic or atlas larger than this is not inlined.
MAX_PICTURE = 8_000_000
#: The options the section reads from ``ctx.section_options["dataset"]``.
OPTIONS = ("dir", "channels")
_MAP_SIDE = 80  # maps are averaged down to this before they are kept (as the report's grids are)
_PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- the folder


@dataclass
class DatasetLayer:
    """One layer of a dataset folder, as ``index.json`` and ``channels.json`` describe it.

    Attributes:
        index, name, type, channels: the layer as the dataset's model had it.
        map_hw: its spatial size at the dataset's input size (``None``: a vector).
        rf_size, rf_jump: receptive field and jump, when known.
        dead, constant, nonfinite: channel counts over the dataset.
        atlas: the atlas PNG's path relative to the folder, if any.
        channels_info: by channel, its ``index.json`` entry (mosaic, top, best_class, selectivity).
        stats: by channel, its ``channels.json`` values (mean, std, min, max, zero_fraction, dead, ...).
    """

    index: int
    name: str
    type: str
    channels: int
    map_hw: tuple[int, int] | None
    rf_size: tuple[int, int] | None
    rf_jump: tuple[int, int] | None
    dead: int
    constant: int
    nonfinite: int
    atlas: str | None
    channels_info: dict[int, dict[str, Any]] = field(default_factory=dict)
    stats: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class DatasetFolder:
    """What the section needs from a ``convlens dataset`` output folder.

    Attributes:
        root: the folder.
        data_root: where the data were read from (``index.json``'s ``root``), if recorded.
        model: the model the folder was made with (``index.json``'s ``model``).
        data: the data it was made from, in words.
        kind: ``"folder"``, ``"glob"``, ``"list"`` or ``"parquet"``.
        images: images folded in.
        failed: images that could not be read.
        k: examples kept per channel and ranking.
        engine: ``"local"`` or ``"ray"``.
        input_size: ``(H, W)`` every image was prepared to.
        class_names: the labels' names, when the data had labels.
        notes: the dataset run's notes.
        layers: the folder's layers, in its order.
        ranked_by_dead: layer names, most dead channels first.
        has_stats: ``channels.json`` was there and read.
    """

    root: Path
    data_root: str | None
    model: str
    data: str
    kind: str
    images: int
    failed: int
    k: int
    engine: str
    input_size: tuple[int, int] | None
    class_names: list[str] | None
    notes: list[str]
    layers: list[DatasetLayer]
    ranked_by_dead: list[str]
    has_stats: bool


def _pair(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    a, b = value
    return int(a), int(b)


def read_dataset_folder(path: str | os.PathLike[str]) -> DatasetFolder:
    """Read ``index.json`` (and ``channels.json`` when present) of a ``convlens dataset`` folder.

    Through :func:`convlens.dataset.folder.read_folder`, the reader of
    :meth:`DatasetResult.load <convlens.dataset.result.DatasetResult.load>`:
    nothing is unpickled, JSON only. Pictures are read later, one by one
    (:func:`read_picture`).

    Raises:
        BadArgument: the folder is missing, has no ``index.json``, or its
            files are not ones ``convlens dataset`` writes in this format
            version (one line, says how to make one).
    """
    files = read_folder(path, need_channels=False)
    root, index = files.root, files.index
    index_file = root / INDEX
    make = f"make one with: convlens dataset MODEL DATA --layers SEL --out {root}"
    try:
        layers = [DatasetLayer(
            index=int(entry["index"]), name=str(entry["name"]), type=str(entry.get("type") or ""),
            channels=int(entry["channels"]), map_hw=_pair(entry.get("map_hw")),
            rf_size=_pair(entry.get("rf_size")), rf_jump=_pair(entry.get("rf_jump")),
            dead=int(entry.get("dead") or 0), constant=int(entry.get("constant") or 0),
            nonfinite=int(entry.get("nonfinite") or 0),
            atlas=str(entry["atlas"]) if entry.get("atlas") else None,
            channels_info={int(c["channel"]): c for c in entry.get("channels_info") or []},
        ) for entry in index["layers"]]
        names = index.get("class_names")
        folder = DatasetFolder(
            root=root, data_root=str(index["root"]) if index.get("root") else None,
            model=str(index.get("model") or "?"), data=str(index.get("data") or "?"),
            kind=str(index.get("kind") or "?"), images=int(index.get("images") or 0),
            failed=len(index.get("failed") or []), k=int(index.get("k") or 0),
            engine=str(index.get("engine") or "?"), input_size=_pair(index.get("input_size")),
            class_names=[str(n) for n in names] if names else None,
            notes=[str(n) for n in index.get("notes") or []], layers=layers,
            ranked_by_dead=[str(r["name"]) for r in index.get("ranked_by_dead") or []],
            has_stats=files.channels is not None)
        if files.channels is not None:
            _fill_stats(files.channels, {layer.name: layer for layer in layers})
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise BadArgument(f"{index_file} or {CHANNELS_JSON} is damaged ({type(e).__name__}: {e}); {make}") from None
    return folder


#: The per-channel statistics the section shows, from ``channels.json``'s layers.
_STATS = ("mean", "std", "min", "max", "zero_fraction", "dead", "constant", "nonfinite")


def _fill_stats(channels: Mapping[str, Any], layers: Mapping[str, DatasetLayer]) -> None:
    """Fill each layer's ``stats`` from ``channels.json`` (``LayerStats.as_dict()`` per layer)."""
    for entry in channels.get("layers") or []:
        layer = layers.get(str(entry.get("name")))
        if layer is None:
            continue
        columns = {key: list(entry.get(key) or []) for key in _STATS}
        for c in range(layer.channels):
            layer.stats[c] = {key: values[c] if c < len(values) else None for key, values in columns.items()}


def read_picture(root: Path, relative: Any) -> bytes | None:
    """A PNG of the folder by its relative path, or ``None`` (missing, outside the folder, not a PNG, too big).

    The path comes from a user's ``index.json``: it must resolve inside the
    folder, so a crafted index cannot pull another file into the page.
    """
    if not isinstance(relative, str) or not relative:
        return None
    base = root.resolve()
    target = (base / relative).resolve()
    if base not in target.parents or not target.is_file():
        return None
    try:
        if target.stat().st_size > MAX_PICTURE:
            return None
        data = target.read_bytes()
    except OSError:
        return None
    return data if data.startswith(_PNG) else None


# ---------------------------------------------------------------- the pass's consumer


class DatasetMaps(SectionConsumer):
    """Keeps, for the dataset folder's layers, what the section shows of the report's images.

    Per layer and image: every channel's maximum (the ranking, all images) and,
    for the first :data:`MAX_IMAGES` images, the output averaged down to
    :data:`_MAP_SIDE` pixels (``(h, w, C)``, ``(L, C)`` or ``(C,)``).

    Attributes:
        folder: the dataset folder.
        matched: dataset layer name -> the model's layer with that name (same type and channels).
        problems: dataset layer name -> why it is not shown (missing or different in this model).
        maxima: layer index -> per image ``(C,)`` float64 channel maxima.
        maps: layer index -> image number -> the kept output.
    """

    def __init__(self, folder: DatasetFolder, model_layers: Sequence[LayerInfo]) -> None:
        table = {layer.name: layer for layer in model_layers}
        self.folder = folder
        self.matched: dict[str, LayerInfo] = {}
        self.problems: dict[str, str] = {}
        for d in folder.layers:
            info = table.get(d.name)
            last = info.output_shape[-1] if info is not None and info.output_shape else None
            channels = int(last) if last is not None else None
            if info is None:
                self.problems[d.name] = "not a layer of this model"
            elif channels != d.channels:
                self.problems[d.name] = (f"{d.channels} channels in the dataset, {channels} in this model: "
                                         "not the same layer")
            else:
                self.matched[d.name] = info
        super().__init__(list(self.matched.values()))
        self.maxima: dict[int, dict[int, np.ndarray]] = {i.index: {} for i in self.layers}
        self.maps: dict[int, dict[int, np.ndarray]] = {i.index: {} for i in self.layers}
        self._lock = threading.Lock()

    def on_layer(self, batch: Batch, layer: LayerInfo, array: np.ndarray) -> None:
        for j, image in enumerate(batch.images):
            x = np.asarray(array[j], np.float32)
            flat = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)
            with np.errstate(invalid="ignore"):
                finite = np.where(np.isfinite(flat), flat, -np.inf)
            top = finite.max(axis=0).astype(np.float64)
            kept = None
            if image < MAX_IMAGES:
                kept = downsample(x, _MAP_SIDE, channels_last=True) if x.ndim == 3 else x.copy()
            with self._lock:
                self.maxima[layer.index][image] = top
                if kept is not None:
                    self.maps[layer.index][image] = kept

    def ranking(self, info: LayerInfo) -> np.ndarray:
        """The layer's channels, highest maximum over the report's images first (ties: lower number)."""
        per_image = list(self.maxima[info.index].values())
        best = np.max(np.stack(per_image), axis=0) if per_image else np.zeros(0)
        return np.lexsort((np.arange(best.size), -np.nan_to_num(best, nan=-np.inf, neginf=-np.inf)))


def _consumer(model: Model, chosen: Sequence[LayerInfo], options: Mapping[str, Any]) -> DatasetMaps:
    """The section's consumer: reads and checks the folder before the report's pass."""
    _check_options(options)
    if options.get("dir") is None:
        raise BadArgument("the dataset section shows a folder written by convlens dataset: pass it with "
                          "--dataset DIR (Lens.report(..., dataset=DIR))")
    return DatasetMaps(read_dataset_folder(options["dir"]), model.layers())


def _check_options(options: Mapping[str, Any]) -> int | None:
    """The ``channels`` option as a count (``None``: all); unknown options are refused."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise BadArgument(f"unknown dataset option {', '.join(map(repr, unknown))}; the section takes "
                          f"{', '.join(OPTIONS)}")
    channels = options.get("channels", REPORT_CHANNELS)
    if isinstance(channels, str) and channels.strip().lower() == "all":
        return None
    try:
        n = int(channels)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or isinstance(channels, bool):
        raise BadArgument(f"dataset channels must be a positive number or 'all', not {channels!r}")
    return n


# ---------------------------------------------------------------- the section


@register_section("dataset", "Dataset examples", order=57, default=False, consumer=_consumer)
def dataset_section(ctx: ReportContext) -> Markup:
    """Per dataset layer: the shown channels' maps beside their crops and statistics; the health table."""
    shown = _check_options(ctx.section_options.get("dataset", {}))
    maps = cast(DatasetMaps, ctx.consumers["dataset"])  # made by _consumer, before the pass
    folder = maps.folder
    names = [im.name for im in ctx.images][:MAX_IMAGES]
    warnings = _warnings(ctx, maps)
    lut = colormap_lut(ctx.options.cmap)
    budget = [MAX_BYTES]
    layers = []
    for d in folder.layers:
        info = maps.matched.get(d.name)
        if info is None:
            continue
        if len(maps.maxima[info.index]) < len(ctx.images):  # an adapter that skipped the layer
            warnings.append(f"Layer {d.name} is not shown: the model gave no output for it.")
            continue
        order = maps.ranking(info)
        picked = order if shown is None else order[:shown]
        channels = [_channel(ctx, folder, d, info, maps, int(c), names, lut, budget) for c in picked]
        atlas_bytes = read_picture(folder.root, d.atlas) if d.atlas else None
        atlas = None
        if atlas_bytes is not None and _spend(budget, len(atlas_bytes)):
            atlas = lazy_img(atlas_bytes, f"{d.name}: every channel's strongest crop", cls="cl-ds-atlas")
        over = names[0] if len(ctx.images) == 1 else f"the {len(ctx.images)} report images"
        how = (f"{'all' if len(picked) == d.channels else len(picked)} of {count(d.channels, 'channel', 'channels')}"
               f", the most active for {over} first (by their maximum)")
        if len(picked) < d.channels:
            how += "; --dataset-channels N|all shows more"
        layers.append({"name": d.name, "meta": _layer_meta(d, info), "how": how, "channels": channels,
                       "atlas": atlas})
    checked, differs = _check_scores(ctx, maps)
    if differs:
        warnings.insert(0, checked)
    if budget[0] <= 0:
        warnings.append(f"Pictures from the dataset folder stop at {MAX_BYTES / 1e6:.0f} MB to keep the page "
                        "small: the last channels show no crops; a smaller --dataset-channels shows them all.")
    stats_note = "" if folder.has_stats else "channels.json is missing from the folder: no per-channel statistics."
    return render("sections/dataset.html", summary=_summary(folder), warnings=warnings,
                  checked="" if differs else checked, notes=folder.notes, layers=layers,
                  health=_health(folder, maps), images=names, more=max(len(ctx.images) - len(names), 0),
                  cmap=ctx.options.cmap, stats_note=stats_note)


def _spend(budget: list[int], n: int) -> bool:
    if budget[0] - n < 0:
        budget[0] = 0
        return False
    budget[0] -= n
    return True


def _warnings(ctx: ReportContext, maps: DatasetMaps) -> list[str]:
    folder = maps.folder
    out = []
    if not _same_model(folder.model, ctx.model):
        out.append(f"This folder was made with the model {folder.model}, not {ctx.model.name}: its crops and "
                   f"statistics describe that model's channels; layers are matched by name and channel count.")
    for name, why in maps.problems.items():
        out.append(f"Layer {name} of the dataset folder is not shown: {why}.")
    if not maps.matched:
        out.append(f"None of the folder's layers is in {ctx.model.name}: nothing to show beside the images.")
    return out


def _check_scores(ctx: ReportContext, maps: DatasetMaps) -> tuple[str, bool]:
    """Run one dataset image again and compare its scores with the folder's: ``(what the page says, differ)``.

    A model's name does not say which weights it had (random weights differ
    on every run): the strongest example of the first shown channel is read
    from the data again, prepared as the dataset command prepares it, and run
    once; wherever the folder lists that image among a channel's top examples,
    the score must be the same (to 1e-3, for batch and backend rounding).
    Costs one forward pass of one image; skipped (and said) when the data are
    not where the folder says.
    """
    folder = maps.folder
    first = next((maps.matched[d.name] for d in folder.layers if d.name in maps.matched), None)
    if first is None or folder.input_size is None or folder.kind == "parquet" or not folder.data_root:
        return "", False
    by_name = {d.name: d for d in folder.layers}
    channel = int(maps.ranking(first)[0])
    top = by_name[first.name].channels_info.get(channel, {}).get("top") or []
    if not top or not isinstance(top[0], dict) or "id" not in top[0]:
        return "", False
    image_id, name = top[0]["id"], str(top[0].get("name", ""))
    base = Path(folder.data_root).resolve()
    path = (base / name).resolve()
    if base not in path.parents or not path.is_file():  # only the data's own files are read
        return f"The folder's scores were not checked against this model: {name} is not in {folder.data_root}.", False
    try:
        channels = ctx.model.adapter.input_shape[2]
        x, _ = prepare(load_image(path), size=folder.input_size, channels=int(channels) if channels else 3,
                       preprocess=ctx.preprocess)
        got: dict[int, np.ndarray] = {}
        layers = list(maps.matched.values())
        call_model(ctx.model, x[None], [i.index for i in layers], got.__setitem__)
    except ConvlensError as e:
        return f"The folder's scores were not checked against this model: {name}: {e}", False
    compared = 0
    for info in layers:
        if info.index not in got:
            continue
        a = np.asarray(got[info.index][0], np.float64)
        peaks = (a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(1, -1)).max(axis=0)
        for c, entry in by_name[info.name].channels_info.items():
            for t in entry.get("top") or []:
                recorded = _float(t.get("score")) if isinstance(t, dict) and t.get("id") == image_id else None
                if recorded is None or not 0 <= c < peaks.size:
                    continue
                compared += 1
                if not math.isclose(float(peaks[c]), recorded, rel_tol=1e-3, abs_tol=1e-5):
                    return (f"The folder's scores do not match this model: {name} scores {number(recorded)} "
                            f"on channel {c} of {info.name} in the folder and {number(float(peaks[c]))} here. "
                            "The folder was made with other weights or other preprocessing (random weights, "
                            "--weights none, differ on every run): its crops do not describe these channels."), True
    if not compared:
        return "", False
    return (f"Checked: {name}, read again and run through this model, gives the scores the folder recorded "
            f"({count(compared, 'channel', 'channels')})."), False


def _same_model(recorded: str, model: Model) -> bool:
    """Whether the folder's ``model`` names this lens's model (its name, or a file or spec named so)."""
    stem = Path(recorded.split(":")[-1]).stem
    return model.name in (recorded, stem)


def _summary(folder: DatasetFolder) -> str:
    parts = [folder.data]
    if f"{folder.images:,} images" not in folder.data:  # the data's description may say it already
        parts.append(f"{folder.images:,} images")
    if folder.failed:
        parts.append(f"{folder.failed:,} unreadable")
    parts.append(f"top {folder.k} per channel")
    if folder.input_size:
        parts.append(f"prepared at {folder.input_size[0]}×{folder.input_size[1]} px")
    parts.append(f"{folder.engine} engine")
    parts.append(f"model {folder.model}")
    return " · ".join(parts)


def _layer_meta(d: DatasetLayer, info: LayerInfo) -> str:
    parts = [f"layer {info.index}", d.type or info.type, f"output {shape_text(info.output_shape, times=True)}"]
    if d.rf_size:
        parts.append(f"receptive field {pair_text(d.rf_size, times='×')}")
    return " · ".join(parts)


def _map_picture(x: np.ndarray, channel: int, lut: np.ndarray) -> bytes | None:
    """The channel's kept map as a colour picture (min-max stretched), or ``None`` for a vector."""
    if x.ndim == 3:
        plane = x[..., channel]
    elif x.ndim == 2:  # a signal: a strip, a few pixels high so it reads as a band
        plane = np.repeat(x[:, channel][None], max(1, x.shape[0] // 8), axis=0)
    else:
        return None
    indices, _ = normalize_channels(plane[..., None], "minmax")
    return encode_png(apply_lut(indices[..., 0], lut))


def _channel(ctx: ReportContext, folder: DatasetFolder, d: DatasetLayer, info: LayerInfo,
             maps: DatasetMaps, channel: int, names: list[str], lut: np.ndarray,
             budget: list[int]) -> dict[str, Any]:
    """One channel's card: its maps for the report's images, its crops, its numbers, its top images."""
    peaks = [(name, float(maps.maxima[info.index][k][channel])) for k, name in enumerate(names)]
    pictures = []
    for k, name in enumerate(names):
        picture = _map_picture(maps.maps[info.index][k], channel, lut) if k in maps.maps[info.index] else None
        if picture is not None:
            pictures.append((lazy_img(picture, f"{d.name} channel {channel} for {name}",
                                      cls="cl-pixelated cl-ds-map"), f"{name}: max {number(peaks[k][1])}"))
    vis = ctx.shared.get("visualize")
    liked = None
    if vis is not None and vis.layer is not None and vis.layer.index == info.index and channel in vis.channels:
        liked = lazy_img(encode_png(vis.picture(vis.channels.index(channel))),
                         f"{d.name} channel {channel}: the image it likes most", cls="cl-pixelated cl-ds-map")
    entry = d.channels_info.get(channel, {})
    mosaic = None
    data = read_picture(folder.root, entry.get("mosaic"))
    if data is not None and _spend(budget, len(data)):
        mosaic = lazy_img(data, f"{d.name} channel {channel}: its top {folder.k} dataset crops",
                          cls="cl-ds-mosaic")
    top = [t for t in entry.get("top") or [] if isinstance(t, dict)]
    row = d.stats.get(channel)
    return {"channel": channel, "maps": pictures, "liked": liked, "mosaic": mosaic,
            "facts": _facts(folder, entry, row, top, peaks),
            "examples": [f"{t.get('name', '?')} · {number(_float(t.get('score')))}" for t in top],
            "flagged": row is not None and _true(row.get("dead")),
            "no_mosaic": "no crops in the folder for this channel" if mosaic is None else ""}


def _facts(folder: DatasetFolder, entry: Mapping[str, Any], row: Mapping[str, Any] | None,
           top: list[dict[str, Any]], peaks: list[tuple[str, float]]) -> list[str]:
    """A channel's numbers as short phrases: here, best in the dataset, dataset statistics, best class."""
    if len(peaks) == 1:
        facts = [f"max here {number(peaks[0][1])}"]
    else:
        facts = ["max here " + ", ".join(f"{number(v)} on {name}" for name, v in peaks)]
    best = _float(top[0].get("score")) if top else None
    if best is not None:
        share = ""
        if best > 0 and len(peaks) == 1:  # how close the image comes to the channel's best example
            share = f" (this image reaches {percent(peaks[0][1] / best)} of it)"
        facts.append(f"best in the dataset {number(best)}{share}")
    if row is not None:
        zero = _float(row.get("zero_fraction"))
        facts.append(f"dataset mean {number(_float(row.get('mean')))}, std {number(_float(row.get('std')))}, "
                     f"max {number(_float(row.get('max')))}, "
                     f"zeros {percent(zero if zero is not None else math.nan)}")
        flags = [("NaN/inf" if w == "nonfinite" else w) for w in ("dead", "constant", "nonfinite")
                 if _true(row.get(w))]
        if flags:
            facts.append(" and ".join(flags))
    label = entry.get("best_class")
    if isinstance(label, int) and not isinstance(label, bool):
        names = folder.class_names
        text = names[label] if names and 0 <= label < len(names) else f"class {label}"
        if isinstance(entry.get("best_class_name"), str):
            text = entry["best_class_name"]
        sel = _float(entry.get("selectivity"))
        facts.append(f"best class {text}" + (f" (selectivity {sel:.2f})" if sel is not None else ""))
    return facts


def _true(value: Any) -> bool:
    """A flag: ``True`` (``"true"``/``"1"`` as text too)."""
    return str(value).strip().lower() in ("1", "true")


def _float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


_HEAD = ["rank", "layer", "type", "channels", "dead", "dead share", "constant", "NaN/inf", "in this report"]
_NUMERIC = [True, False, False, True, True, True, True, True, False]


def _health(folder: DatasetFolder, maps: DatasetMaps) -> Markup:
    """Every layer of the folder, most dead channels first (the folder's own ranking when it has one)."""
    by_name = {d.name: d for d in folder.layers}
    order = [by_name[n] for n in folder.ranked_by_dead if n in by_name]
    order += sorted((d for d in folder.layers if d not in order), key=lambda d: (-d.dead, d.index))
    rows = []
    attrs = []
    for rank, d in enumerate(order, 1):
        share = d.dead / d.channels if d.channels else math.nan
        status = "shown" if d.name in maps.matched else maps.problems.get(d.name, "")
        rows.append([rank, d.name, d.type, d.channels, d.dead, (percent(share), sort_key(share)), d.constant,
                     d.nonfinite, status])
        attrs.append({"class": "cl-flagged"} if d.dead or d.nonfinite else None)
    return table(_HEAD, rows, numeric=_NUMERIC, row_attrs=attrs, id="cl-ds-health")
