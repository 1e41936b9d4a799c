"""The dataset view's result: rankings and health per channel, its files, and its notebook view.

A :class:`DatasetResult` holds, per selected layer, each channel's top-k
images (by the channel's maximum), bottom-k (by its mean) and top-k of the
negative (by minus its minimum), each with the position of the unit that
scored; the layer's statistics over every image; and, with labels, class
selectivity. Nothing about pixels is kept while streaming: crops are cut at
:meth:`DatasetResult.save` (or :meth:`DatasetResult.crops`) from the original
files, each needed image read once.

Files written by :meth:`DatasetResult.save` (paths relative to the folder)::

    index.json                    the run, every layer and channel, every ranked
                                  image with its box in ORIGINAL image pixels
    channels.csv                  one row per channel: statistics and selectivity
    channels.json                 per layer LayerStats.as_dict() + "selectivity"
    layers/<safe>/c<NNNN>.png     per channel: its top-k crops, then its bottom-k as whole
                                  images (or, for a channel that goes negative, the crops
                                  of its most negative k); scores stamped, class names under
    layers/<safe>/atlas.png       per layer: every channel's strongest crop (dead ones faded)

``<safe>`` is ``<layer index:03d>_<name with unsafe characters replaced>``. A
receptive field smaller than a quarter of the input is shown inside that
quarter, outlined in amber (:func:`~convlens.dataset.crops.widen`); boxes in
``index.json`` are always the field itself, in original-image pixels.

:meth:`DatasetResult.load` reads ``index.json`` and ``channels.json`` back
(plain JSON, never pickle) through :func:`convlens.dataset.folder.read_folder`,
the reader the report's dataset section uses too; :data:`FORMAT_VERSION` is
:mod:`convlens.dataset.folder`'s.
"""

from __future__ import annotations

import csv
import functools
import html
import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import BadArgument, BadImage, LayerNotFound
from .._progress import NullProgress, Progress
from ..core.layers import LayerInfo
from ..core.stats import LayerStats
from ..output import OutputDir, png_figure_html, safe_name
from ..render.grid import add_title, draw_texts, text_width, tile_rgb
from ..render.png import encode_png
from .crops import Box, cut, draw_field, original_box, widen
from .folder import FORMAT_VERSION, read_folder, write_folder
from .sources import Record, Source, read_batch

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from ..core.selectivity import ClassSelectivity

__all__ = ["FORMAT_VERSION", "RANKINGS", "DatasetResult", "LayerExamples", "Ranking"]

#: The three rankings, and what orders each.
RANKINGS = {
    "top": "highest maximum over the channel's map",
    "bottom": "lowest mean over the channel's map",
    "negative": "lowest minimum over the channel's map (the most negative)",
}

_EMPTY_TILE = (235, 235, 235)  # render.grid's empty-cell colour: a slot with no image
# Images decoded at once while cutting crops: a 12-megapixel photo is 144 MB as float32
# pixels, so a few at a time; parquet row groups are cached by sources, not re-read per call.
_READ_BATCH = 4
_CROP_BUDGET = 256 << 20       # bytes of crops held at once while saving
_ATLAS_FULL = 256              # channels an atlas shows at full crop size (more: half size)


@dataclass
class Ranking:
    """One ranking of one layer: per channel, the k best images.

    Attributes:
        scores: ``(C, k)`` float64, best first; ``-inf`` where fewer than k
            images were seen. For ``bottom`` the score is minus the mean, for
            ``negative`` minus the minimum, so higher is always "more so".
        ids: ``(C, k)`` int64 record ids (:attr:`Record.id`), ``-1`` = none.
        positions: ``(C, k, 2)`` int32 ``(y, x)`` of the scoring unit in the
            layer's map (``(0, l)`` for 1-D maps, ``(0, 0)`` for vectors).
    """

    scores: np.ndarray
    ids: np.ndarray
    positions: np.ndarray

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, np.float64)
        self.ids = np.asarray(self.ids, np.int64)
        self.positions = np.asarray(self.positions, np.int32)
        c, k = self.ids.shape if self.ids.ndim == 2 else (-1, -1)
        if (self.ids.ndim != 2 or self.scores.shape != (c, k)
                or self.positions.shape != (c, k, 2)):
            raise BadArgument(f"a Ranking needs scores and ids (C, k) and positions (C, k, 2), got "
                              f"{self.scores.shape}, {self.ids.shape} and {self.positions.shape}")

    @property
    def channels(self) -> int:
        return int(self.ids.shape[0])

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])


@dataclass
class LayerExamples:
    """Everything the dataset view found for one layer.

    Attributes:
        layer: the layer's table row (receptive field in ``rf_size``/``rf_jump``).
        map_hw: the layer's spatial size at the run's input size (``(1, L)``
            for 1-D maps), or ``None`` for a vector layer (no spatial map: its
            crops are whole images).
        stats: per-channel statistics over every image.
        top, bottom, negative: the three :data:`RANKINGS`.
        selectivity: per-class means and selectivity, or ``None`` without labels.
    """

    layer: LayerInfo
    map_hw: tuple[int, int] | None
    stats: LayerStats
    top: Ranking
    bottom: Ranking
    negative: Ranking
    selectivity: ClassSelectivity | None = None

    @property
    def channels(self) -> int:
        return self.top.channels

    def ranking(self, which: str) -> Ranking:
        """``"top"``, ``"bottom"`` or ``"negative"``."""
        if which not in RANKINGS:
            raise BadArgument(f"unknown ranking {which!r}; choose one of {', '.join(RANKINGS)}")
        return getattr(self, which)  # type: ignore[no-any-return]

    def second_row(self, channel: int) -> str:
        """The ranking shown under a channel's top one: ``negative`` if it went below 0, else ``bottom``.

        A channel after a ReLU has its minimum at 0 on almost every image, so its
        "most negative" images are ties; its lowest means say more. A channel
        with negative values (before an activation, tanh) is better described
        by what drives it down.
        """
        lo = float(self.stats.min[channel])
        return "negative" if lo == lo and lo < 0 else "bottom"


@dataclass
class DatasetResult:
    """The dataset view of a model over a data set (see the module docstring).

    Attributes:
        model: the model's name.
        source: the data (for a loaded result: only the records its rankings name).
        input_size: ``(H, W)`` every image was prepared to.
        k: images kept per channel and ranking.
        engine: ``"local"`` or ``"ray"``.
        layers: per selected layer, its :class:`LayerExamples`.
        images: images folded in (read successfully).
        failures: ``(record name, reason)`` of every image that could not be read.
        seconds: wall time of the run.
        notes: sentences for people (input size chosen, labels, skipped files...).
    """

    model: str
    source: Source
    input_size: tuple[int, int]
    k: int
    engine: str
    layers: list[LayerExamples]
    images: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: the folder this result was saved to or loaded from (its atlases feed the notebook view)
    folder: str | None = field(default=None, compare=False, repr=False)

    # ------------------------------------------------------------------ lookups

    def layer(self, name: str | int) -> LayerExamples:
        """A layer's examples by name (or short name after the last ``/``) or table index.

        Raises:
            LayerNotFound: no selected layer has that name or index.
        """
        for ex in self.layers:
            if ex.layer.name == name or (isinstance(name, int) and ex.layer.index == name):
                return ex
        short = [ex for ex in self.layers if isinstance(name, str) and ex.layer.name.rsplit("/", 1)[-1] == name]
        if len(short) == 1:
            return short[0]
        names = ", ".join(ex.layer.name for ex in self.layers) or "none"
        raise LayerNotFound(f"{name!r} is not among this result's layers ({names}); "
                            "run the dataset view with that layer in --layers")

    def _records(self) -> dict[int, Record]:
        return {r.id: r for r in self.source.records}

    def crops(self, layer: str | int, channel: int, which: str = "top", size: int = 64, *,
              context: bool = False) -> list[np.ndarray]:
        """The receptive-field crops of one channel's ranked images, read from the original files.

        ``bottom`` images are whole images (ranked by the mean over the whole map).

        Args:
            layer: the layer's name or table index.
            channel: the channel, ``0 <= channel < C``.
            which: ``"top"``, ``"bottom"`` or ``"negative"``.
            size: side of each square crop in pixels.
            context: widen fields smaller than a quarter of the input to that
                quarter and outline the field (:data:`~convlens.dataset.crops.FIELD_COLOR`),
                as the saved mosaics and atlases do.

        Returns:
            ``(size, size, 3)`` uint8 crops, best first, one per ranked image;
            an image that cannot be read any more gives a plain grey crop.

        Raises:
            LayerNotFound, BadArgument: unknown layer, channel or ranking.
        """
        ex = self.layer(layer)
        ranking = ex.ranking(which)
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) \
                or not 0 <= channel < ex.channels:
            raise BadArgument(f"channel must be 0..{ex.channels - 1} for layer {ex.layer.name!r}, "
                              f"not {channel!r}")
        records = self._records()
        wanted = [(int(i), (int(p[0]), int(p[1])))
                  for i, p in zip(ranking.ids[channel], ranking.positions[channel]) if i >= 0]
        out = []
        for start in range(0, len(wanted), _READ_BATCH):  # a few decoded images at a time
            chunk = wanted[start:start + _READ_BATCH]
            found = [records.get(i) for i, _ in chunk]
            readable = [r for r in found if r is not None]
            images = dict(zip([r.id for r in readable], read_batch(self.source, readable)))
            for (i, position) in chunk:
                image = images.get(i)
                if image is None or isinstance(image, BadImage):
                    out.append(np.full((size, size, 3), _EMPTY_TILE, np.uint8))
                    continue
                out.append(_crop(ex, which, position, self.input_size, image.pixels, size, context))
        return out

    # ------------------------------------------------------------------ saving

    def save(self, out: str | os.PathLike[str], *, progress: Progress | None = None,
             crop_size: int = 64, crop_budget: int = _CROP_BUDGET) -> Path:
        """Write the files of the dataset view into ``out``, all at once or not at all.

        Crops are cut here: the images the shown rankings name are read once
        each (in id order, :data:`_READ_BATCH` at a time), every crop cut from
        them, then dropped. The crops of at most ``crop_budget`` bytes are
        held at once; a larger result is cut in several passes over its
        channels (an image needed by several passes is read once per pass).

        Args:
            out: the output folder (created; other files in it are kept).
            progress: told about the images read.
            crop_size: side of each crop in the mosaics and atlases, in pixels.
            crop_budget: bytes of crops held in memory at once.

        Returns:
            The path of ``out/index.json`` (:meth:`load` reads the folder back).

        Raises:
            OutputError: the folder cannot be written (nothing is written).
            BadArgument: ``crop_size`` is not a positive integer.
        """
        if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) or crop_size < 8:
            raise BadArgument(f"crop_size must be an integer of at least 8 pixels, not {crop_size!r}")
        progress = progress or NullProgress()
        folders = _folder_names([ex.layer for ex in self.layers])
        cutter = _Cutter(self, int(crop_size), progress)
        with OutputDir(out) as staging:
            atlases = cutter.run(folders, staging, max(int(crop_budget), 1))
            for ex, folder in zip(self.layers, folders):
                atlas = _atlas(ex, atlases[ex.layer.name], self.images, self.input_size)
                staging.write_png(f"{folder}/atlas.png", atlas)
            write_folder(staging, self._index(folders, cutter.sizes, cutter.notes),
                         self._channels_json(), self._channels_csv())
        self.folder = str(out)
        return Path(out) / "index.json"

    def to_json(self) -> dict[str, Any]:
        """What ``index.json`` holds, JSON-ready, without the crop boxes (known once :meth:`save` read the
        images); ``"channels"`` adds ``channels.json``'s per-layer health and selectivity."""
        index = self._index(_folder_names([ex.layer for ex in self.layers]), {})
        return {**index, "channels": self._channels_json()["layers"]}

    def _index(self, folders: Sequence[str], sizes: dict[int, tuple[int, int]],
               notes: Sequence[str] = ()) -> dict[str, Any]:
        records = self._records()
        names = self.source.class_names
        layers: list[dict[str, Any]] = []
        for ex, folder in zip(self.layers, folders):
            info = ex.layer
            channels = []
            sel = ex.selectivity
            for c in range(ex.channels):
                entry: dict[str, Any] = {"channel": c, "mosaic": f"{folder}/c{c:04d}.png",
                                         "second_row": ex.second_row(c)}
                for which in RANKINGS:
                    entry[which] = self._entries(ex, which, c, records, sizes)
                best = _best_class(sel, c)
                entry["best_class"] = best
                entry["best_class_name"] = names[best] if best is not None and names and best < len(names) else None
                entry["selectivity"] = _num(sel.index[c]) if sel is not None else None
                channels.append(entry)
            stats = ex.stats
            layers.append({
                "index": info.index, "name": info.name, "type": info.type, "kind": info.kind,
                "output_shape": list(info.output_shape) if info.output_shape is not None else None,
                "channels": ex.channels,
                "map_hw": list(ex.map_hw) if ex.map_hw is not None else None,
                "rf_size": list(info.rf_size) if info.rf_size is not None else None,
                "rf_jump": list(info.rf_jump) if info.rf_jump is not None else None,
                "rf_offset": list(info.rf_offset) if info.rf_offset is not None else None,
                "global_rf": info.global_rf,
                "atlas": f"{folder}/atlas.png",
                # the most common second row of the layer's mosaics; each channel's own is in channels_info
                "second_row": _layer_second_row(ex),
                "dead": int(stats.dead.sum()), "constant": int(stats.notable.constant.sum()),
                "nonfinite": int(stats.nonfinite.sum()),
                "channels_info": channels,
            })
        # Most dead channels first; ties: the larger dead share, then the model's order.
        ranked = sorted(layers, key=lambda e: (-e["dead"], -e["dead"] / max(e["channels"], 1), e["index"]))
        return {
            "model": self.model, "data": self.source.description, "kind": self.source.kind,
            "root": self.source.root,
            "image_column": self.source.image_column, "label_column": self.source.label_column,
            "images": int(self.images), "k": int(self.k), "engine": self.engine,
            "input_size": [int(v) for v in self.input_size], "seconds": round(float(self.seconds), 3),
            "class_names": list(names) if names is not None else None,
            "failed": [{"name": n, "reason": r} for n, r in self.failures],
            "notes": [*self.notes, *notes],
            "layers": layers,
            "ranked_by_dead": [{"name": e["name"], "dead": e["dead"], "channels": e["channels"]} for e in ranked],
        }

    def _entries(self, ex: LayerExamples, which: str, c: int, records: dict[int, Record],
                 sizes: dict[int, tuple[int, int]]) -> list[dict[str, Any]]:
        ranking = ex.ranking(which)
        out = []
        for slot in range(ranking.k):
            i = int(ranking.ids[c, slot])
            if i < 0:
                break
            position = (int(ranking.positions[c, slot, 0]), int(ranking.positions[c, slot, 1]))
            record = records.get(i)
            size = sizes.get(i)
            box = _box(ex, which, position, self.input_size, size) if size is not None else None
            out.append({"id": i, "name": record.name if record is not None else str(i),
                        "score": _num(_shown_score(which, float(ranking.scores[c, slot]))),
                        "position": list(position),
                        "box": [round(v, 2) for v in box] if box is not None else None,
                        "label": record.label if record is not None and record.label >= 0 else None})
        return out

    def _channels_json(self) -> dict[str, Any]:
        layers = []
        for ex in self.layers:
            entry = ex.stats.as_dict()
            sel = ex.selectivity
            entry["selectivity"] = None if sel is None else {
                "means": [[_num(v) for v in row] for row in np.asarray(sel.means, np.float64).tolist()],
                "counts": [int(v) for v in np.asarray(sel.counts)],
                "best": [int(v) for v in np.asarray(sel.best)],
                "index": [_num(v) for v in np.asarray(sel.index, np.float64).tolist()],
            }
            layers.append(entry)
        names = self.source.class_names
        return {"images": int(self.images),
                "class_names": list(names) if names is not None else None, "layers": layers}

    def _channels_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["layer", "channel", "mean", "std", "min", "max", "zero_fraction", "dead", "constant",
                         "nonfinite", "best_class", "best_class_name", "selectivity"])
        names = self.source.class_names
        for ex in self.layers:
            s, sel = ex.stats, ex.selectivity
            for c in range(ex.channels):
                best = _best_class(sel, c)
                index = float(sel.index[c]) if sel is not None else None
                writer.writerow([
                    ex.layer.name, c, _csv_float(s.mean[c]), _csv_float(s.std[c]), _csv_float(s.min[c]),
                    _csv_float(s.max[c]), _csv_float(s.zero_fraction[c]), _csv_bool(s.dead[c]),
                    _csv_bool(s.constant[c]), _csv_bool(s.nonfinite[c]),
                    "" if best is None else best,
                    names[best] if best is not None and names and best < len(names) else "",
                    _csv_float(index),
                ])
        return buf.getvalue()

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, out: str | os.PathLike[str]) -> DatasetResult:
        """Read a saved result back from ``index.json`` and ``channels.json`` (plain JSON).

        The loaded :attr:`source` holds the records the rankings name (ids as
        saved, paths under the saved data root), so :meth:`crops` works while
        the data is where it was.

        Raises:
            BadArgument: the folder holds no dataset view, or its files are damaged.
        """
        files = read_folder(out)
        folder, index, channels = files.root, files.index, files.channels or {}
        try:
            return _from_files(index, channels, folder)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise BadArgument(f"{folder}/index.json or channels.json is damaged ({type(e).__name__}: {e}); "
                              "run the dataset view again") from None

    # ------------------------------------------------------------------ notebook

    def summary(self) -> str:
        """One line for people: model, data, images, failures, layers."""
        failed = f", {len(self.failures):,} unreadable" if self.failures else ""
        return (f"{self.model} over {self.source.description}: {self.images:,} images{failed}, "
                f"{len(self.layers)} layer{'s' if len(self.layers) != 1 else ''}, top {self.k} per channel, "
                f"{self.engine} engine, {self.seconds:.1f} s")

    def _repr_html_(self) -> str:
        e = html.escape
        rows = []
        for ex in self.layers:
            info, s = ex.layer, ex.stats
            rf = "whole image" if ex.map_hw is None or info.rf_size is None else "x".join(map(str, info.rf_size))
            rows.append("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in (
                info.index, info.name, info.type, ex.channels,
                "vector" if ex.map_hw is None else "x".join(map(str, ex.map_hw)), rf,
                int(s.dead.sum()), int(s.notable.constant.sum()), int(s.nonfinite.sum()),
                _top_selective(ex, self.source.class_names))) + "</tr>")
        head = "".join(f"<th>{e(h)}</th>" for h in ("#", "layer", "type", "channels", "map", "receptive field",
                                                     "dead", "constant", "NaN/inf", "most selective"))
        parts = [f"<div style='font:13px sans-serif'><b>{e(self.summary())}</b></div>"]
        if self.notes:
            parts.append("<ul style='font:12px sans-serif'>" + "".join(f"<li>{e(n)}</li>" for n in self.notes)
                         + "</ul>")
        if self.failures:
            shown = ", ".join(f"{n} ({r})" for n, r in self.failures[:5])
            more = f" and {len(self.failures) - 5:,} more" if len(self.failures) > 5 else ""
            parts.append(f"<div style='font:12px sans-serif'>Unreadable: {e(shown)}{e(more)}</div>")
        parts.append(f"<table style='font:12px monospace'><tr>{head}</tr>{''.join(rows)}</table>")
        for ex in self.layers[:4]:
            parts.append(self._atlas_html(ex))
        if len(self.layers) > 4:
            parts.append(f"<div style='font:12px sans-serif'>{e(str(len(self.layers) - 4))} more layers: "
                         "see result.crops(layer, channel) or save()</div>")
        return "".join(parts)

    def _atlas_html(self, ex: LayerExamples) -> str:
        png: bytes | None = None
        if self.folder is not None:
            folders = dict(zip([x.layer.name for x in self.layers], _folder_names([x.layer for x in self.layers])))
            saved = Path(self.folder) / folders[ex.layer.name] / "atlas.png"
            if saved.is_file():
                png = saved.read_bytes()
        caption = f"{ex.layer.name}: each channel's strongest crop"
        if png is None:
            limit = 32  # cut live: a notebook should not read thousands of files to draw
            channels = list(range(min(ex.channels, limit)))
            tiles = np.stack([self.crops(ex.layer.name, c, "top", 48, context=True)[0] if ex.top.ids[c, 0] >= 0
                              else np.full((48, 48, 3), _EMPTY_TILE, np.uint8) for c in channels])
            if ex.channels > limit:
                caption += f" (channels 0-{limit - 1} of {ex.channels}; save() draws them all)"
            png = encode_png(tile_rgb(tiles, labels=[str(c) for c in channels]))
        return png_figure_html(png, caption)


# --------------------------------------------------------------------------- cutting crops


class _Cutter:
    """Cuts every crop the files need, reading each image once per pass (see :meth:`DatasetResult.save`)."""

    def __init__(self, result: DatasetResult, size: int, progress: Progress) -> None:
        self.result = result
        self.size = size
        self.progress = progress
        self.records = result._records()
        #: original (H, W) of every image read, for the boxes in index.json
        self.sizes: dict[int, tuple[int, int]] = {}
        self.unreadable: dict[int, str] = {}
        #: sentences for index.json's notes (images that could not be read again)
        self.notes: list[str] = []

    def run(self, folders: Sequence[str], staging: OutputDir, budget: int) -> dict[str, np.ndarray]:
        """Write every channel's mosaic; returns each layer's top-1 crops ``(C, S, S, 3)`` for its atlas."""
        s, k = self.size, self.result.k
        per_channel = 2 * max(k, 1) * s * s * 3
        passes = _passes([ex.channels for ex in self.result.layers], max(1, budget // per_channel))
        atlases = {ex.layer.name: np.full((ex.channels, s, s, 3), _EMPTY_TILE, np.uint8)
                   for ex in self.result.layers}
        # Sizes for the boxes of every ranked image, shown or not; the shown ones are read anyway.
        every = {int(i) for ex in self.result.layers for which in RANKINGS for i in ex.ranking(which).ids.ravel()
                 if i >= 0}
        shown = [self._shown_ids(part) for part in passes]
        # Images read: each pass's shown ones, then those only named (for their boxes' sizes).
        self.progress.start(sum(map(len, shown)) + len(every - set().union(*shown)), "cutting crops")
        try:
            for part in passes:
                crops = self._cut(part)
                for li, start, stop in part:
                    ex, folder = self.result.layers[li], folders[li]
                    block = crops[li]
                    atlases[ex.layer.name][start:stop] = block[:, 0, 0]
                    for c in range(start, stop):
                        staging.write_png(f"{folder}/c{c:04d}.png", _mosaic(ex, c, block[c - start], self.result,
                                                                                self.records))
                del crops
            rest = sorted(every - set(self.sizes) - set(self.unreadable))
            self._read(rest, lambda record, image: None)
        finally:
            self.progress.finish()
        if self.unreadable:
            names = [self.records[i].name for i in sorted(self.unreadable)[:3] if i in self.records]
            self.notes.append(
                f"{len(self.unreadable):,} ranked image{'s' if len(self.unreadable) != 1 else ''} could not be "
                f"read again to cut crops ({', '.join(names)}...); their crops are grey and boxes null")
        return atlases

    def _shown_ids(self, part: Sequence[tuple[int, int, int]]) -> set[int]:
        ids: set[int] = set()
        for li, start, stop in part:
            ex = self.result.layers[li]
            for c in range(start, stop):
                for which in ("top", ex.second_row(c)):
                    ids.update(int(i) for i in ex.ranking(which).ids[c] if i >= 0)
        return ids

    def _cut(self, part: Sequence[tuple[int, int, int]]) -> dict[int, np.ndarray]:
        """Crops ``(channels, 2 rows, k, S, S, 3)`` per layer of this pass, reading each image once."""
        s, k = self.size, self.result.k
        crops = {li: np.full((stop - start, 2, k, s, s, 3), _EMPTY_TILE, np.uint8) for li, start, stop in part}
        wanted: dict[int, list[tuple[int, int, int, int, str, tuple[int, int]]]] = {}
        for li, start, stop in part:
            ex = self.result.layers[li]
            for c in range(start, stop):
                for row, which in enumerate(("top", ex.second_row(c))):
                    ranking = ex.ranking(which)
                    for slot in range(min(k, ranking.k)):
                        i = int(ranking.ids[c, slot])
                        if i >= 0:
                            p = ranking.positions[c, slot]
                            wanted.setdefault(i, []).append((li, c - start, row, slot, which,
                                                             (int(p[0]), int(p[1]))))

        def place(record: Record, image: Any) -> None:
            pixels = _uint8(image.pixels)  # once per image, not once per crop
            done: dict[tuple[int, str, tuple[int, int]], np.ndarray] = {}  # whole images recur across channels
            for li, c, row, slot, which, position in wanted[record.id]:
                ex = self.result.layers[li]
                key = (li, which, position) if ex.map_hw is not None and which != "bottom" else (-1, "", (0, 0))
                crop = done.get(key)
                if crop is None:
                    crop = done[key] = _crop(ex, which, position, self.result.input_size, pixels, s, True)
                crops[li][c, row, slot] = crop

        self._read(sorted(wanted), place)
        return crops

    def _read(self, ids: Sequence[int], use: Any) -> None:
        for start in range(0, len(ids), _READ_BATCH):
            chunk = [i for i in ids[start:start + _READ_BATCH]]
            records = [self.records[i] for i in chunk if i in self.records]
            for i in chunk:
                if i not in self.records:
                    self.unreadable[i] = "not in the data any more"
            for record, image in zip(records, read_batch(self.result.source, records)):
                if isinstance(image, BadImage):
                    self.unreadable[record.id] = str(image)
                else:
                    self.sizes[record.id] = (image.height, image.width)
                    use(record, image)
            self.progress.advance(len(chunk))


def _uint8(pixels: np.ndarray) -> np.ndarray:
    """Loaded pixels (float32 0..255) rounded to uint8, as :func:`~convlens.dataset.crops.cut` would."""
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _passes(channels: Sequence[int], per_pass: int) -> list[list[tuple[int, int, int]]]:
    """Split every layer's channels into passes of at most ``per_pass`` channels: ``(layer, start, stop)``."""
    passes: list[list[tuple[int, int, int]]] = [[]]
    room = per_pass
    for li, count in enumerate(channels):
        start = 0
        while start < count:
            if room == 0:
                passes.append([])
                room = per_pass
            stop = min(count, start + room)
            passes[-1].append((li, start, stop))
            room -= stop - start
            start = stop
    return [p for p in passes if p]


# --------------------------------------------------------------------------- pictures


def _label(score: float) -> str:
    """A score as a tile label: digits and ``-+. e`` only (the tiles' stamp font)."""
    if not math.isfinite(score):
        return ""
    return f"{score:.3g}".replace("inf", "")


def _mosaic(ex: LayerExamples, c: int, crops: np.ndarray, result: DatasetResult,
            records: dict[int, Record]) -> np.ndarray:
    """One channel: its top-k crops, then its second row, each under a title; scores stamped in the
    tiles and, with labels, each image's class under it."""
    k = crops.shape[1]
    names = result.source.class_names
    second = ex.second_row(c)
    parts = []
    for row, which in enumerate(("top", second)):
        ranking = ex.ranking(which)
        count = int((ranking.ids[c] >= 0).sum())
        labels = [_label(_shown_score(which, float(v))) if i >= 0 else ""
                  for v, i in zip(ranking.scores[c], ranking.ids[c])]
        grid = tile_rgb(crops[row], columns=k, labels=labels)
        what = {"top": f"top {count} by maximum", "bottom": f"lowest {count} by mean (whole images)",
                "negative": f"most negative {count} by minimum"}[which]
        parts += [_title_bar(grid.shape[1], what), grid]
        if names is not None:
            parts.append(_class_strip(grid.shape[1], crops.shape[3], [
                names[records[int(i)].label] if i >= 0 and int(i) in records
                and 0 <= records[int(i)].label < len(names) else "" for i in ranking.ids[c]]))
    body = _stack(parts)
    rf = _field_text(ex, result.input_size)
    dead = " · dead (0 on every image)" if bool(ex.stats.dead[c]) else ""
    return add_title(body, f"{ex.layer.name} · channel {c} · {rf} · {result.images:,} images{dead}")


def _class_strip(width: int, tile: int, labels: Sequence[str]) -> np.ndarray:
    """A white strip with each tile's class name under it (cut to the tile's width)."""
    strip = np.full((14, width, 3), 255, np.uint8)
    for col, text in enumerate(labels):
        if text:
            x = 1 + col * (tile + 1)
            strip[:, x:x + tile] = _class_label(text, tile)
    return strip


@functools.lru_cache(maxsize=1024)
def _class_label(text: str, tile: int) -> np.ndarray:
    """One class name drawn in a ``(14, tile)`` cell; drawn once per name (PIL text costs ~1 ms)."""
    while text and text_width(text, 10) > tile - 4:
        text = text[:-2] + "…" if len(text) > 2 else ""
    cell = draw_texts(np.full((14, tile, 3), 255, np.uint8), [(2, 7, text)], size=10)
    cell.setflags(write=False)
    return cell


@functools.lru_cache(maxsize=64)
def _title_bar(width: int, text: str) -> np.ndarray:
    """:func:`~convlens.render.grid.add_title`'s bar alone; the rows' titles repeat across channels."""
    bar = add_title(np.zeros((1, width, 3), np.uint8), text)[:-1]
    bar.setflags(write=False)
    return bar


def _field_text(ex: LayerExamples, input_size: tuple[int, int]) -> str:
    if ex.map_hw is None or ex.layer.rf_size is None:
        return "whole images"
    return (f"receptive field {ex.layer.rf_size[0]}x{ex.layer.rf_size[1]} px of the "
            f"{input_size[0]}x{input_size[1]} input")


def _atlas(ex: LayerExamples, tiles: np.ndarray, images: int, input_size: tuple[int, int]) -> np.ndarray:
    """Every channel's strongest crop in one grid, channel numbers stamped; dead channels faded."""
    faded = tiles.copy()
    if len(tiles) > _ATLAS_FULL and tiles.shape[1] >= 32:
        # Half-size tiles (2x2 means) past 256 channels: 2,048 channels at 64 px would be 3,000 px wide.
        half = tiles.shape[1] // 2
        faded = tiles[:, :2 * half, :2 * half].reshape(len(tiles), half, 2, half, 2, 3).mean(
            axis=(2, 4)).round().astype(np.uint8)
    dead = np.asarray(ex.stats.dead, bool)
    if dead.any():
        faded[dead] = (faded[dead].astype(np.uint16) + 3 * 255) // 4  # 75% white: nothing to see
    grid = tile_rgb(faded, labels=[str(c) for c in range(ex.channels)])
    rf = _field_text(ex, input_size)
    note = f" · {int(dead.sum())} dead (faded)" if dead.any() else ""
    return add_title(grid, f"{ex.layer.name} · strongest crop of each of {ex.channels} channels · {rf} · "
                           f"{images:,} images{note}")


def _stack(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Pictures one above the other, narrower ones padded on the right with white."""
    width = max(p.shape[1] for p in parts)
    out = np.full((sum(p.shape[0] for p in parts), width, 3), 255, np.uint8)
    y = 0
    for p in parts:
        out[y:y + p.shape[0], :p.shape[1]] = p
        y += p.shape[0]
    return out


def _crop(ex: LayerExamples, which: str, position: tuple[int, int], input_hw: tuple[int, int],
          pixels: np.ndarray, size: int, context: bool) -> np.ndarray:
    """One ranked image's crop; with ``context``, a small field is shown inside a quarter of the input."""
    original_hw = (int(pixels.shape[0]), int(pixels.shape[1]))
    field = _box(ex, which, position, input_hw, original_hw)
    if not context or which == "bottom" or ex.map_hw is None:
        return cut(pixels, field, size)
    # At least a quarter of the input's shorter side, in original pixels along each axis.
    side = math.ceil(min(input_hw) / 4)
    view = widen(field, (side * original_hw[0] / input_hw[0], side * original_hw[1] / input_hw[1]))
    crop = cut(pixels, view, size)
    return draw_field(crop, field, view) if view != field else crop


def _box(ex: LayerExamples, which: str, position: tuple[int, int], input_hw: tuple[int, int],
         original_hw: tuple[int, int]) -> Box:
    """The box of a ranked image in original pixels: the unit's field, or the whole image for ``bottom``.

    A ``bottom`` image is ranked by the mean over the whole map, so no one unit
    is responsible: the whole image is what gave the low mean.
    """
    if which == "bottom":
        return (0.0, 0.0, float(original_hw[0]), float(original_hw[1]))
    return original_box(ex.layer, position, ex.map_hw, input_hw, original_hw)


def _shown_score(which: str, score: float) -> float:
    """The value people read: the maximum, the mean, the minimum (rankings store minus the last two)."""
    return score if which == "top" else -score


def _folder_names(layers: Sequence[LayerInfo]) -> list[str]:
    """``layers/<index>_<safe name>``: unique even where two names make the same safe name."""
    return [f"layers/{info.index:03d}_{safe_name(info.name)}" for info in layers]


def _layer_second_row(ex: LayerExamples) -> str:
    rows = [ex.second_row(c) for c in range(ex.channels)]
    return "negative" if rows.count("negative") > rows.count("bottom") else "bottom"


def _best_class(sel: ClassSelectivity | None, c: int) -> int | None:
    """The class with the highest mean for channel ``c``; ``None`` without labels or class means."""
    if sel is None or not np.isfinite(np.asarray(sel.means, np.float64)[:, c]).any():
        return None
    return int(sel.best[c])


def _top_selective(ex: LayerExamples, names: Sequence[str] | None) -> str:
    sel = ex.selectivity
    if sel is None:
        return "no labels"
    index = np.asarray(sel.index, np.float64)
    if not np.isfinite(index).any():
        return "none"
    c = int(np.nanargmax(index))
    best = int(sel.best[c])
    label = names[best] if names and best < len(names) else str(best)
    return f"channel {c}: class {label} ({index[c]:.2f})"


# --------------------------------------------------------------------------- numbers and JSON


def _num(v: Any) -> float | None:
    f = float(v)
    return f if math.isfinite(f) else None


def _csv_float(v: Any) -> str:
    if v is None:
        return ""
    f = float(v)
    return repr(f) if math.isfinite(f) else ""


def _csv_bool(v: Any) -> str:
    return "true" if bool(v) else "false"


def _floats(values: Iterable[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], np.float64)


def _stats_from(entry: dict[str, Any]) -> LayerStats:
    return LayerStats(
        index=int(entry["index"]), name=str(entry["name"]), type=str(entry.get("type", "")),
        images=int(entry["images"]), channels=int(entry["channels"]),
        mean=_floats(entry["mean"]), std=_floats(entry["std"]), min=_floats(entry["min"]),
        max=_floats(entry["max"]), zero_fraction=_floats(entry["zero_fraction"]),
        dead=np.array(entry["dead"], bool), constant=np.array(entry["constant"], bool),
        nonfinite=np.array(entry["nonfinite"], bool), count=np.array(entry["count"], np.int64),
        values_per_channel=int(entry.get("values_per_channel", 0)),
    )


def _selectivity_from(entry: dict[str, Any] | None) -> ClassSelectivity | None:
    if entry is None:
        return None
    from ..core.selectivity import ClassSelectivity

    means = np.array([[np.nan if v is None else float(v) for v in row] for row in entry["means"]], np.float64)
    return ClassSelectivity(means=means, counts=np.array(entry["counts"], np.int64),
                            best=np.array(entry["best"], np.int64), index=_floats(entry["index"]))


def _ranking_from(channels: Sequence[dict[str, Any]], which: str, k: int) -> Ranking:
    c = len(channels)
    scores = np.full((c, k), -np.inf)
    ids = np.full((c, k), -1, np.int64)
    positions = np.full((c, k, 2), -1, np.int32)
    for ci, info in enumerate(channels):
        for slot, item in enumerate(info[which][:k]):
            shown = item["score"]
            scores[ci, slot] = np.nan if shown is None else _shown_score(which, float(shown))
            ids[ci, slot] = int(item["id"])
            positions[ci, slot] = [int(v) for v in item["position"]]
    return Ranking(scores, ids, positions)


def _from_files(index: dict[str, Any], channels_json: dict[str, Any], folder: Path) -> DatasetResult:
    k = int(index["k"])
    stats_by_name = {entry["name"]: entry for entry in channels_json["layers"]}
    root = Path(str(index["root"]))
    kind = str(index["kind"])
    records: dict[int, Record] = {}
    layers = []
    for entry in index["layers"]:
        shape = entry.get("output_shape")
        info = LayerInfo(
            index=int(entry["index"]), name=str(entry["name"]), type=str(entry["type"]),
            kind=str(entry.get("kind", "other")),
            output_shape=tuple(shape) if shape is not None else None,
            rf_size=tuple(entry["rf_size"]) if entry.get("rf_size") else None,  # type: ignore[arg-type]
            rf_jump=tuple(entry["rf_jump"]) if entry.get("rf_jump") else None,  # type: ignore[arg-type]
            rf_offset=tuple(entry["rf_offset"]) if entry.get("rf_offset") else None,  # type: ignore[arg-type]
            global_rf=bool(entry.get("global_rf", False)),
        )
        infos = entry["channels_info"]
        for ch in infos:
            for which in RANKINGS:
                for item in ch[which]:
                    i = int(item["id"])
                    if i not in records:
                        records[i] = _record(i, str(item["name"]), root, kind, item.get("label"))
        stats_entry = stats_by_name[info.name]
        map_hw = entry.get("map_hw")
        layers.append(LayerExamples(
            layer=info, map_hw=(int(map_hw[0]), int(map_hw[1])) if map_hw is not None else None,
            stats=_stats_from(stats_entry),
            top=_ranking_from(infos, "top", k), bottom=_ranking_from(infos, "bottom", k),
            negative=_ranking_from(infos, "negative", k),
            selectivity=_selectivity_from(stats_entry.get("selectivity")),
        ))
    names = index.get("class_names")
    source = Source(
        description=str(index["data"]), kind=kind, root=str(root),
        records=tuple(records[i] for i in sorted(records)),
        class_names=tuple(str(n) for n in names) if names is not None else None,
        image_column=index.get("image_column"), label_column=index.get("label_column"),
    )
    size = index["input_size"]
    return DatasetResult(
        model=str(index["model"]), source=source, input_size=(int(size[0]), int(size[1])), k=k,
        engine=str(index["engine"]), layers=layers, images=int(index["images"]),
        failures=[(str(f["name"]), str(f["reason"])) for f in index.get("failed", [])],
        seconds=float(index.get("seconds", 0.0)), notes=[str(n) for n in index.get("notes", [])],
        folder=str(folder),
    )


def _record(i: int, name: str, root: Path, kind: str, label: Any) -> Record:
    """A record named in a saved index, its path rebuilt from the data root."""
    lab = int(label) if label is not None else -1
    if kind == "parquet":
        file, _, row = name.rpartition("#")
        return Record(id=i, name=name, path=str(root / file), row=int(row), label=lab)
    return Record(id=i, name=name, path=str(root / name), label=lab)
