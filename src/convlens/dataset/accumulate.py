"""Everything the dataset view keeps while images stream past, in memory that does not grow.

Per selected layer: a :class:`~convlens.core.stats.StatsAccumulator` (channel
health), three :class:`~convlens.core.topk.TopK` rankings and, when the data
has labels, :class:`~convlens.core.selectivity.ClassMeans`. Each batch of
layer output is reduced once over its map, vectorised over images and
channels: one contiguous ``(N, C, H*W)`` copy, one argmax, one argmin and one
mean, then one top-k fold for the three rankings together
(:meth:`~convlens.core.topk.TopK.add_together`).

The rankings (scores are ranking keys: higher is ranked first):

- ``top``: the channel's maximum over the map; position of the maximum.
- ``bottom``: minus the channel's mean over the map, so the images with the
  lowest mean come first (show ``-score`` as the mean); position of the minimum.
- ``negative``: minus the channel's minimum; position of the minimum.

A map holding NaN or inf gives a non-finite key for its channel, which the
rankings skip (the statistics flag the channel). Vector layers (``(N, C)``)
rank by the value itself with position ``(0, 0)``; 1-D maps ``(N, L, C)`` use
``(0, l)``.

Everything merges exactly (rankings, counts, extremes) or up to float64
rounding (means and spreads), and :meth:`DatasetAccumulator.state` is a flat
dict of plain arrays for ``np.savez`` and ``np.load(allow_pickle=False)``:
checkpoints and Ray batches never pickle.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import BadArgument, UnsupportedModel
from ..core.layers import LayerInfo
from ..core.selectivity import ClassMeans
from ..core.stats import StatsAccumulator
from ..core.topk import TopK

if TYPE_CHECKING:
    from .result import LayerExamples

__all__ = ["DATASET_REDUCTIONS", "RANKINGS", "DatasetAccumulator", "IdSet", "Reduced", "reduce_maps",
           "reduced_from_channels"]

#: The rankings every layer keeps, in this order.
RANKINGS = ("top", "bottom", "negative")
#: The per-channel reductions (:mod:`convlens.core.reduce`) a batch is folded from when the model
#: reduces its maps where it runs (a GPU): :func:`reduced_from_channels`.
DATASET_REDUCTIONS = ("count", "sum", "m2", "min", "max", "argmax", "argmin", "zeros", "nonfinite", "shape")


@dataclass
class Reduced:
    """One batch of one layer's output reduced over its map (see :func:`reduce_maps`).

    Attributes:
        rankings: per ranking name, ``(scores (N, C) float64, positions (N, C, 2) int32)``.
        means: ``(N, C)`` float64 per-image channel means.
        map_hw: ``(H, W)``, ``(1, L)`` for 1-D maps, ``None`` for vectors.
        moments: the batch's channel statistics as a ``StatsAccumulator`` state.
    """

    rankings: dict[str, tuple[np.ndarray, np.ndarray]]
    means: np.ndarray
    map_hw: tuple[int, int] | None
    moments: dict[str, np.ndarray]


def reduce_maps(array: np.ndarray) -> Reduced:
    """One batch of a layer's output reduced over its map, for every ranking and the statistics.

    The output is copied once into ``(N, C, H*W)`` order, so every reduction
    (per image over the map, then per channel over the batch) runs along memory,
    in float32 with numpy's pairwise summation (relative error about 1e-7).
    The batch's statistics are those of
    :class:`~convlens.core.stats.StatsAccumulator` (finite values only; NaN
    and inf flag the channel): the spread by the two-pass formula on
    deviations from a shift near the mean, ``M2 = sum(d^2) - sum(d)^2 / n``,
    which stays accurate for values far from 0 (1e4 +- 1e-2).

    Args:
        array: ``(N, H, W, C)``, ``(N, L, C)`` or ``(N, C)`` real values.

    Raises:
        BadArgument: a shape that is not a layer output.
    """
    a = np.asarray(array)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise BadArgument(f"the dataset view needs real layer outputs, got dtype {a.dtype}")
    map_hw: tuple[int, int] | None
    if a.ndim == 4:
        n, h, w, c = a.shape
        map_hw = (h, w)
    elif a.ndim == 3:
        n, w, c = a.shape
        h, map_hw = 1, (1, w)
    elif a.ndim == 2:
        n, c = a.shape
        h, w, map_hw = 1, 1, None
    else:
        raise BadArgument(f"the dataset view needs a layer output (N, H, W, C), (N, L, C) or "
                          f"(N, C), got shape {a.shape}")
    s = h * w
    if s == 0:
        raise BadArgument(f"a layer output of shape {a.shape} has an empty map")
    # (N, C, S): each image's map transposed on its own, which keeps the copy in cache (a
    # (C, N, S) copy is several times slower for wide layers); every reduction then runs along S.
    t = np.ascontiguousarray(a.reshape(n, s, c).transpose(0, 2, 1), dtype=np.float32)
    hi_at, lo_at = t.argmax(axis=2), t.argmin(axis=2)                                   # (N, C)
    rows = t.reshape(n * c, s)
    every = np.arange(n * c)
    hi = rows[every, hi_at.reshape(-1)].reshape(n, c)       # the values at the positions: NaN wins
    lo = rows[every, lo_at.reshape(-1)].reshape(n, c)
    finite = bool(np.isfinite(hi).all() and np.isfinite(lo).all())  # NaN wins argmax and argmin
    m = n * s
    if finite:
        sums = t.sum(axis=2).astype(np.float64)                                         # (N, C)
        count = np.full(c, m, np.int64)
        # Deviations from a shift near the mean are small, so their float32 pairwise sums are
        # accurate; the shift's rounding is taken back out exactly (the sum of deviations).
        shift = (sums.sum(axis=0) / m).astype(np.float32)
        d = t - shift[None, :, None]
        dev = d.sum(axis=2).astype(np.float64).sum(axis=0)
        np.square(d, out=d)
        mean = shift.astype(np.float64) + dev / m
        m2 = d.sum(axis=2).astype(np.float64).sum(axis=0) - dev * dev / m
        ch_lo, ch_hi = lo.min(axis=0, initial=np.inf), hi.max(axis=0, initial=-np.inf)
        bad = np.zeros(c, bool)
        means = sums / s
    else:
        ok = np.isfinite(t)
        sums = np.where(ok, t, 0).sum(axis=2, dtype=np.float64)
        count = ok.sum(axis=(0, 2))
        bad = count < m
        mean = np.divide(sums.sum(axis=0), count, out=np.zeros(c), where=count > 0)
        d64 = np.where(ok, t - mean[None, :, None], 0.0)
        m2 = np.einsum("ncs,ncs->c", d64, d64)
        ch_lo = t.min(axis=(0, 2), where=ok, initial=np.inf)
        ch_hi = t.max(axis=(0, 2), where=ok, initial=-np.inf)
        # a map holding NaN or inf has no usable mean: the rankings skip it
        means = np.where(ok.all(axis=2), sums / s, np.nan)
    # Exact zeros: one compare, summed as bytes along memory into 16-bit counts while a map has
    # fewer than 65,536 positions (twice as fast as count_nonzero over two axes), then per channel.
    small = np.uint16 if s < 1 << 16 else np.int64
    zeros = np.add.reduce(np.equal(t, 0).view(np.uint8), axis=2, dtype=small).sum(axis=0, dtype=np.int64)
    moments = {"meta": np.array([n, s, c], np.int64), "n": count.astype(np.int64), "mean": mean,
               "m2": np.maximum(m2, 0.0), "lo": ch_lo.astype(np.float64),
               "hi": ch_hi.astype(np.float64), "zeros": zeros.astype(np.int64),
               "bad": bad}

    def yx(at: np.ndarray) -> np.ndarray:
        return np.stack(np.divmod(at, w), axis=-1).astype(np.int32)                   # (N, C, 2)

    lo_pos = yx(lo_at)
    rankings = {"top": (hi.astype(np.float64), yx(hi_at)), "bottom": (-means, lo_pos),
                "negative": (-lo.astype(np.float64), lo_pos)}
    return Reduced(rankings, means, map_hw, moments)


def reduced_from_channels(r: Mapping[str, np.ndarray]) -> Reduced:
    """:func:`reduce_maps`'s result from per-image channel reductions made elsewhere (on a GPU).

    Args:
        r: ``{op: (N, C)}`` for every op of :data:`DATASET_REDUCTIONS` (``shape``:
            one image's canonical shape), as :mod:`convlens.core.reduce` defines them.

    The statistics merge the images' moments with Chan's update (float64); a map
    holding any non-finite value gives NaN keys to all three rankings (they skip
    it), as the module says. Sums are float64 of the float32 values, where
    :func:`reduce_maps` sums in float32 pairwise: the two agree to about 1e-7
    relative, not bit for bit, so one run uses one of them throughout.

    Raises:
        BadArgument: an op is missing, or a shape that is not a layer output.
    """
    missing = [op for op in DATASET_REDUCTIONS if op not in r]
    if missing:
        raise BadArgument(f"the dataset reductions lack {', '.join(missing)}")
    shape = [int(d) for d in np.asarray(r["shape"]).reshape(-1)]
    map_hw: tuple[int, int] | None
    if len(shape) == 3:
        h, w, c = shape
        map_hw = (h, w)
    elif len(shape) == 2:
        h, (w, c) = 1, shape
        map_hw = (1, w)
    elif len(shape) == 1:
        h, w, c, map_hw = 1, 1, shape[0], None
    else:
        raise BadArgument(f"the dataset view needs a layer output (N, H, W, C), (N, L, C) or (N, C), got {shape}")
    s = h * w
    if s == 0:
        raise BadArgument(f"a layer output of shape {shape} has an empty map")
    count = np.asarray(r["count"], np.int64)
    n = count.shape[0]
    sums = np.asarray(r["sum"], np.float64)
    clean = np.asarray(r["nonfinite"]) == 0                                              # (N, C)
    with np.errstate(all="ignore"):
        per_mean = np.divide(sums, count, out=np.zeros(sums.shape), where=count > 0)
        total = count.sum(axis=0)
        mean = np.divide(sums.sum(axis=0), total, out=np.zeros(c), where=total > 0)
        d = per_mean - mean[None, :]
        m2 = (np.asarray(r["m2"], np.float64) + count * d * d).sum(axis=0)
        means = np.where(clean, sums / s, np.nan)
    lo = np.asarray(r["min"], np.float64)
    hi = np.asarray(r["max"], np.float64)
    moments = {"meta": np.array([n, s, c], np.int64), "n": total.astype(np.int64), "mean": mean,
               "m2": np.maximum(m2, 0.0), "lo": lo.min(axis=0, initial=np.inf),
               "hi": hi.max(axis=0, initial=-np.inf), "zeros": np.asarray(r["zeros"], np.int64).sum(axis=0),
               "bad": total < n * s}

    def yx(at: np.ndarray) -> np.ndarray:
        return np.stack(np.divmod(np.maximum(np.asarray(at, np.int64), 0), w), axis=-1).astype(np.int32)

    lo_pos = yx(r["argmin"])
    rankings = {"top": (np.where(clean, hi, np.nan), yx(r["argmax"])), "bottom": (-means, lo_pos),
                "negative": (np.where(clean, -lo, np.nan), lo_pos)}
    return Reduced(rankings, means, map_hw, moments)


class IdSet:
    """A set of image ids kept as sorted disjoint ranges ``[start, end)``.

    Engines read records in order and in batches, so the ids seen form a few
    long runs: memory and every query grow with the number of runs, not of
    images (a million images read in order are one range).
    """

    def __init__(self) -> None:
        self.starts = np.zeros(0, np.int64)
        self.ends = np.zeros(0, np.int64)

    @staticmethod
    def _runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = np.unique(np.asarray(ids, np.int64))
        if not u.size:
            return u, u
        cut = np.flatnonzero(np.diff(u) != 1) + 1
        return u[np.r_[0, cut]], u[np.r_[cut - 1, u.size - 1]] + 1

    def add(self, ids: np.ndarray) -> None:
        """Add ids (any order, repeats allowed)."""
        s, e = self._runs(ids)
        self.add_ranges(s, e)

    def add_ranges(self, starts: np.ndarray, ends: np.ndarray) -> None:
        """Add ranges ``[starts[i], ends[i])`` and coalesce touching or overlapping ones."""
        if not len(starts):
            return
        s = np.concatenate([self.starts, np.asarray(starts, np.int64)])
        e = np.concatenate([self.ends, np.asarray(ends, np.int64)])
        order = np.argsort(s, kind="stable")
        s, e = s[order], np.maximum.accumulate(e[order])
        new = np.r_[True, s[1:] > e[:-1]]
        self.starts = s[new]
        self.ends = np.r_[e[np.flatnonzero(new)[1:] - 1], e[-1]]

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: each id is in the set."""
        x = np.asarray(ids, np.int64).reshape(-1)
        at = np.searchsorted(self.starts, x, side="right") - 1
        return (at >= 0) & (x < self.ends[np.maximum(at, 0)]) if self.starts.size else np.zeros(
            x.shape, bool)

    def __len__(self) -> int:
        return int((self.ends - self.starts).sum())

    def array(self) -> np.ndarray:
        """Every id, sorted, int64."""
        if not self.starts.size:
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(s, e) for s, e in zip(self.starts, self.ends)])


class _Layer:
    """The per-layer part of the accumulator (created at the layer's first batch)."""

    def __init__(self, info: LayerInfo, channels: int, k: int, classes: int,
                 map_hw: tuple[int, int] | None) -> None:
        self.info = info
        self.channels = channels
        self.map_hw = map_hw
        self.stats = StatsAccumulator(info.index, info.name, info.type)
        self.rankings = {name: TopK(channels, k) for name in RANKINGS}
        self.classes = ClassMeans(channels, classes) if classes else None


class DatasetAccumulator:
    """Everything the dataset view keeps while streaming, for the selected layers.

    Per layer a StatsAccumulator, three TopK rankings (see the module) and,
    with labels, ClassMeans: O(layers x channels x k) memory, plus 8 bytes per
    image id seen (to resume and to drop a retried batch).

    Args:
        layers: the selected layers.
        k: examples kept per channel and ranking (>= 1).
        classes: number of classes of the labels (0: no labels, no selectivity).
    """

    def __init__(self, layers: Sequence[LayerInfo], k: int, classes: int = 0) -> None:
        if int(k) < 1:
            raise BadArgument(f"k must be at least 1, got {k}")
        self.layers = list(layers)
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise BadArgument("the dataset view got the same layer twice; select each layer once")
        self.k, self.classes = int(k), int(classes)
        self.images = 0
        self._by_name: dict[str, _Layer] = {}
        self._lock = threading.Lock()
        self._seen = IdSet()
        self._failed_ids: list[int] = []
        self._failed_names: list[str] = []
        self._failed_reasons: list[str] = []

    # -- folding in ----------------------------------------------------------------------------

    def _layer(self, layer: LayerInfo, channels: int, map_hw: tuple[int, int] | None) -> _Layer:
        with self._lock:  # adds of different layers may run in different threads
            got = self._by_name.get(layer.name)
            if got is None:
                if layer.name not in {info.name for info in self.layers}:
                    raise BadArgument(f"layer {layer.name!r} is not among the accumulator's layers")
                got = _Layer(layer, channels, self.k, self.classes, map_hw)
                self._by_name[layer.name] = got
                return got
        if got.channels != channels or got.map_hw != map_hw:
            raise BadArgument(f"layer {layer.name!r} gave {channels} channels of map {map_hw} "
                              f"after {got.channels} of {got.map_hw}; prepare every image to "
                              "one input size")
        return got

    def add(self, layer: LayerInfo, array: np.ndarray, ids: np.ndarray,
            labels: np.ndarray | None) -> None:
        """Fold in one layer's output for N images.

        Call it once per selected layer for a batch, then :meth:`add_images`
        with the batch's ids (the engines do both through :meth:`add_batch`).

        Args:
            layer: one of the accumulator's layers.
            array: ``(N, H, W, C)``, ``(N, L, C)`` or ``(N, C)`` float32.
            ids: ``(N,)`` int64 image ids.
            labels: ``(N,)`` int class indices (-1 unlabelled) or None.
        """
        a = np.asarray(array)
        i = np.asarray(ids, np.int64).reshape(-1)
        if a.ndim < 2 or a.shape[0] != i.shape[0]:
            raise BadArgument(f"layer {layer.name!r}: {i.shape[0]} ids for an output of shape "
                              f"{a.shape}")
        self._fold(layer, reduce_maps(a), int(a.shape[-1]), i, labels)

    def add_reduced(self, layer: LayerInfo, reduced: Mapping[str, np.ndarray], ids: np.ndarray,
                    labels: np.ndarray | None) -> None:
        """:meth:`add` from the layer's per-image channel reductions (:func:`reduced_from_channels`)
        instead of its output: what a model on a GPU hands over."""
        i = np.asarray(ids, np.int64).reshape(-1)
        if np.shape(reduced["count"])[0] != i.shape[0]:
            raise BadArgument(f"layer {layer.name!r}: {i.shape[0]} ids for reductions of "
                              f"{np.shape(reduced['count'])[0]} images")
        self._fold(layer, reduced_from_channels(reduced), int(np.shape(reduced["count"])[1]), i, labels)

    def _fold(self, layer: LayerInfo, red: Reduced, channels: int, i: np.ndarray, labels: np.ndarray | None) -> None:
        state = self._layer(layer, channels, red.map_hw)
        state.stats.merge(StatsAccumulator.from_state(layer.index, layer.name, layer.type,
                                                      red.moments))
        TopK.add_together([state.rankings[name] for name in RANKINGS],
                          [red.rankings[name][0] for name in RANKINGS], i,
                          [red.rankings[name][1] for name in RANKINGS])
        if state.classes is not None and labels is not None:
            state.classes.add(red.means, np.asarray(labels, np.int64).reshape(-1))

    def add_images(self, ids: np.ndarray) -> None:
        """Count N images whose every layer was added with :meth:`add`."""
        i = np.asarray(ids, np.int64).reshape(-1)
        self.images += int(i.shape[0])
        self._seen.add(i)

    def add_batch(self, outputs: Mapping[str, np.ndarray], ids: np.ndarray,
                  labels: np.ndarray | None) -> None:
        """Fold in one batch: every selected layer's output (by name), then count the images."""
        for layer in self.layers:
            self.add(layer, outputs[layer.name], ids, labels)
        self.add_images(ids)

    def add_failures(self, ids: np.ndarray, names: Sequence[str], reasons: Sequence[str]) -> None:
        """Record images that could not be read (never fatal; listed in the result)."""
        i = [int(v) for v in np.asarray(ids, np.int64).reshape(-1)]
        if not len(i) == len(names) == len(reasons):
            raise BadArgument("add_failures needs as many ids, names and reasons")
        self._failed_ids += i
        self._seen.add(np.asarray(i, np.int64))
        self._failed_names += [str(n) for n in names]
        self._failed_reasons += [str(r) for r in reasons]

    def merge(self, other: DatasetAccumulator) -> None:
        """Fold in another accumulator of the same layers, k and classes.

        An accumulator whose every id was seen already (a retried batch) is
        dropped whole; one that overlaps only in part cannot be folded exactly
        (statistics cannot take an image back out) and raises.

        Raises:
            BadArgument: other layers, k or classes; a partial overlap.
        """
        if ([layer.name for layer in other.layers] != [layer.name for layer in self.layers]
                or other.k != self.k or other.classes != self.classes):
            raise BadArgument("cannot merge dataset accumulators of other layers, k or classes")
        theirs = other.seen_ids()
        if theirs.size:
            again = self._seen.contains(theirs)
            if again.all():
                return
            if again.any():
                raise BadArgument(f"cannot merge: {int(again.sum())} of {theirs.size} images were "
                                  "folded in already; merge whole batches once each")
        for part in other._by_name.values():
            mine = self._layer(part.info, part.channels, part.map_hw)
            mine.stats.merge(part.stats)
            TopK.merge_together([mine.rankings[key] for key in RANKINGS],
                                [part.rankings[key] for key in RANKINGS])
            if mine.classes is not None and part.classes is not None:
                mine.classes.merge(part.classes)
        self.images += other.images
        self._seen.add_ranges(other._seen.starts, other._seen.ends)
        self._failed_ids += other._failed_ids
        self._failed_names += other._failed_names
        self._failed_reasons += other._failed_reasons

    # -- reading -------------------------------------------------------------------------------

    def seen_ids(self) -> np.ndarray:
        """Every id folded in or failed, sorted, int64 (to resume, and to drop retried batches)."""
        return self._seen.array()

    def seen(self, ids: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: each id was folded in or failed already (without listing every id)."""
        return self._seen.contains(ids)

    @property
    def failures(self) -> list[tuple[int, str, str]]:
        """``(id, name, reason)`` of every unreadable image, sorted by id."""
        return sorted(zip(self._failed_ids, self._failed_names, self._failed_reasons))

    def map_hw(self, layer: str) -> tuple[int, int] | None:
        """The layer's map size ``(H, W)`` (``(1, L)`` for 1-D, None for vectors)."""
        return self._by_name[layer].map_hw

    def layer_parts(self, layer: str) -> tuple[StatsAccumulator, dict[str, TopK], ClassMeans | None]:
        """The live accumulators of one layer (stats, rankings by name, class means or None).

        Raises:
            BadArgument: nothing was added for that layer.
        """
        part = self._by_name.get(layer)
        if part is None:
            raise BadArgument(f"no output of layer {layer!r} was folded in; no image was read")
        return part.stats, part.rankings, part.classes

    def missing(self) -> list[LayerInfo]:
        """The selected layers of which nothing was folded in although images were (the model
        never produced them: the view leaves them out with :func:`convlens.passes.missing_note`)."""
        if not self.images:
            return []
        return [layer for layer in self.layers if layer.name not in self._by_name]

    def results(self) -> list[LayerExamples]:
        """Per selected layer the model produced, its statistics, rankings and class selectivity.

        Layers in :meth:`missing` are left out.

        Raises:
            BadArgument: no image was folded in.
            UnsupportedModel: no layer was produced, or a layer for only some of the images.
        """
        from .result import LayerExamples, Ranking

        missing = {layer.name for layer in self.missing()}
        if missing and len(missing) == len(self.layers):
            raise UnsupportedModel(f"the model produced none of the selected layers "
                                   f"({', '.join(sorted(missing))}); select other layers")
        out = []
        for layer in self.layers:
            if layer.name in missing:
                continue
            stats, rankings, classes = self.layer_parts(layer.name)
            if stats.images != self.images:
                raise UnsupportedModel(f"the model produced layer {layer.name!r} for {stats.images} of "
                                       f"{self.images} images; select layers on the model's fixed path")
            ranks = {key: Ranking(*ranking.result()) for key, ranking in rankings.items()}
            out.append(LayerExamples(
                layer=layer, map_hw=self._by_name[layer.name].map_hw, stats=stats.result(),
                top=ranks["top"], bottom=ranks["bottom"], negative=ranks["negative"],
                selectivity=classes.result() if classes is not None else None))
        return out

    # -- state ---------------------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        """A flat dict of plain arrays (``np.savez``; ``np.load(allow_pickle=False)`` reads it).

        Keys: ``meta``, ``seen.starts|ends`` (id ranges), ``failed.ids|names|reasons`` and per layer
        position ``p`` (in ``layers``) ``L<p>.map``, ``L<p>.stats.*``,
        ``L<p>.<ranking>.*``, ``L<p>.classes.*``.
        """
        out: dict[str, np.ndarray] = {
            "meta": np.array([self.k, self.classes, self.images, len(self.layers)], np.int64),
            "seen.starts": self._seen.starts.copy(), "seen.ends": self._seen.ends.copy(),
            "failed.ids": np.asarray(self._failed_ids, np.int64),
            "failed.names": np.asarray(self._failed_names, dtype=np.str_),
            "failed.reasons": np.asarray(self._failed_reasons, dtype=np.str_),
        }
        for p, layer in enumerate(self.layers):
            part = self._by_name.get(layer.name)
            if part is None:
                continue
            out[f"L{p}.map"] = np.array([part.channels, *(part.map_hw or (-1, -1))], np.int64)
            parts: dict[str, Any] = {"stats": part.stats.state(),
                                     **{k: r.state() for k, r in part.rankings.items()}}
            if part.classes is not None:
                parts["classes"] = part.classes.state()
            for group, arrays in parts.items():
                for key, value in arrays.items():
                    out[f"L{p}.{group}.{key}"] = value
        return out

    @classmethod
    def from_state(cls, layers: Sequence[LayerInfo],
                   state: Mapping[str, np.ndarray]) -> DatasetAccumulator:
        """The accumulator :meth:`state` saved, for the same layers.

        Raises:
            BadArgument: a damaged state or one for another number of layers.
        """
        def damaged(why: str) -> BadArgument:
            return BadArgument(f"the saved dataset state is damaged ({why}); delete the "
                               "checkpoint and run again")

        try:
            k, classes, images, n_layers = (int(v) for v in np.asarray(state["meta"]).reshape(4))
            acc = cls(layers, k, classes)
            if n_layers != len(acc.layers):
                raise damaged(f"{n_layers} layers saved, {len(acc.layers)} given")
            acc.images = images
            acc._seen.add_ranges(np.asarray(state["seen.starts"], np.int64),
                                 np.asarray(state["seen.ends"], np.int64))
            acc._failed_ids = [int(v) for v in np.asarray(state["failed.ids"])]
            acc._failed_names = [str(v) for v in np.asarray(state["failed.names"])]
            acc._failed_reasons = [str(v) for v in np.asarray(state["failed.reasons"])]
            for p, layer in enumerate(acc.layers):
                if f"L{p}.map" not in state:
                    continue
                c, h, w = (int(v) for v in np.asarray(state[f"L{p}.map"]).reshape(3))
                part = _Layer(layer, c, k, classes, None if h < 0 else (h, w))

                def group(name: str, p: int = p) -> dict[str, np.ndarray]:
                    prefix = f"L{p}.{name}."
                    return {key[len(prefix):]: state[key] for key in state if key.startswith(prefix)}

                part.stats = StatsAccumulator.from_state(layer.index, layer.name, layer.type,
                                                         group("stats"))
                part.rankings = {name: TopK.from_state(group(name)) for name in RANKINGS}
                if classes:
                    part.classes = ClassMeans.from_state(group("classes"))
                acc._by_name[layer.name] = part
        except KeyError as e:
            raise damaged(f"no {e.args[0]!r}") from None
        except ValueError as e:
            if isinstance(e, BadArgument):
                raise
            raise damaged(str(e)) from None
        return acc
