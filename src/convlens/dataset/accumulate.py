"""Everything the dataset view keeps while images stream past, in memory that does not grow.

Per selected layer: a :class:`~convlens.core.stats.StatsAccumulator` (channel
health), three :class:`~convlens.core.topk.TopK` rankings and, when the data
has labels, :class:`~convlens.core.selectivity.ClassMeans`. Each batch of
layer output is reduced once over its map, vectorised over images and
channels: one contiguous ``(N, C, H*W)`` copy, one max/argmax, one min/argmin
and one mean, then one top-k fold per ranking.

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

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import BadArgument
from ..core.layers import LayerInfo
from ..core.selectivity import ClassMeans
from ..core.stats import StatsAccumulator
from ..core.topk import TopK

if TYPE_CHECKING:
    from .result import LayerExamples

__all__ = ["RANKINGS", "DatasetAccumulator", "reduce_maps"]

#: The rankings every layer keeps, in this order.
RANKINGS = ("top", "bottom", "negative")


def reduce_maps(array: np.ndarray) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray,
                                             tuple[int, int] | None]:
    """One batch of a layer's output reduced over its map, for every ranking.

    Args:
        array: ``(N, H, W, C)``, ``(N, L, C)`` or ``(N, C)`` real values.

    Returns:
        ``(rankings, means, map_hw)``: per ranking name, ``(scores (N, C)
        float, positions (N, C, 2) int32)``; ``means`` ``(N, C)`` float64
        per-image channel means; ``map_hw`` ``(H, W)``, ``(1, L)`` or ``None``
        for vectors.

    Raises:
        BadArgument: a shape that is not a layer output.
    """
    a = np.asarray(array)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise BadArgument(f"the dataset view needs real layer outputs, got dtype {a.dtype}")
    if a.ndim == 2:
        n, c = a.shape
        zeros = np.zeros((n, c, 2), np.int32)
        v = a.astype(np.float64)
        return {"top": (v, zeros), "bottom": (-v, zeros), "negative": (-v, zeros)}, v, None
    if a.ndim == 4:
        n, h, w, c = a.shape
    elif a.ndim == 3:
        n, w, c = a.shape
        h = 1
    else:
        raise BadArgument(f"the dataset view needs a layer output (N, H, W, C), (N, L, C) or "
                          f"(N, C), got shape {a.shape}")
    if h * w == 0:
        raise BadArgument(f"a layer output of shape {a.shape} has an empty map")
    # One contiguous copy with the map last: the arg-reductions then run along memory.
    t = np.ascontiguousarray(a.reshape(n, h * w, c).transpose(0, 2, 1))
    hi_at = t.argmax(axis=2)
    lo_at = t.argmin(axis=2)
    hi = np.take_along_axis(t, hi_at[..., None], axis=2)[..., 0].astype(np.float64)
    lo = np.take_along_axis(t, lo_at[..., None], axis=2)[..., 0].astype(np.float64)
    means = t.sum(axis=2, dtype=np.float64) / (h * w)

    def yx(at: np.ndarray) -> np.ndarray:
        return np.stack(np.divmod(at, w), axis=-1).astype(np.int32)

    lo_pos = yx(lo_at)
    rankings = {"top": (hi, yx(hi_at)), "bottom": (-means, lo_pos), "negative": (-lo, lo_pos)}
    return rankings, means, (h, w)


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
        self._seen: list[np.ndarray] = []
        self._failed_ids: list[int] = []
        self._failed_names: list[str] = []
        self._failed_reasons: list[str] = []

    # -- folding in ----------------------------------------------------------------------------

    def _layer(self, layer: LayerInfo, channels: int, map_hw: tuple[int, int] | None) -> _Layer:
        got = self._by_name.get(layer.name)
        if got is None:
            if layer.name not in {info.name for info in self.layers}:
                raise BadArgument(f"layer {layer.name!r} is not among the accumulator's layers")
            got = self._by_name[layer.name] = _Layer(layer, channels, self.k, self.classes, map_hw)
        elif got.channels != channels or got.map_hw != map_hw:
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
        rankings, means, map_hw = reduce_maps(a)
        state = self._layer(layer, int(a.shape[-1]), map_hw)
        state.stats.add(a)
        for name, (scores, positions) in rankings.items():
            state.rankings[name].add(scores, i, positions)
        if state.classes is not None and labels is not None:
            state.classes.add(means, np.asarray(labels, np.int64).reshape(-1))

    def add_images(self, ids: np.ndarray) -> None:
        """Count N images whose every layer was added with :meth:`add`."""
        i = np.asarray(ids, np.int64).reshape(-1)
        self.images += int(i.shape[0])
        if i.size:
            self._seen.append(i.copy())

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
            again = np.isin(theirs, self.seen_ids())
            if again.all():
                return
            if again.any():
                raise BadArgument(f"cannot merge: {int(again.sum())} of {theirs.size} images were "
                                  "folded in already; merge whole batches once each")
        for part in other._by_name.values():
            mine = self._layer(part.info, part.channels, part.map_hw)
            mine.stats.merge(part.stats)
            for key, ranking in part.rankings.items():
                mine.rankings[key].merge(ranking)
            if mine.classes is not None and part.classes is not None:
                mine.classes.merge(part.classes)
        self.images += other.images
        self._seen += [s.copy() for s in other._seen]
        self._failed_ids += other._failed_ids
        self._failed_names += other._failed_names
        self._failed_reasons += other._failed_reasons

    # -- reading -------------------------------------------------------------------------------

    def seen_ids(self) -> np.ndarray:
        """Every id folded in or failed, sorted, int64 (to resume, and to drop retried batches)."""
        parts = [*self._seen, np.asarray(self._failed_ids, np.int64)]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

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

    def results(self) -> list[LayerExamples]:
        """Per selected layer, its statistics, rankings and class selectivity.

        Raises:
            BadArgument: no image was folded in.
        """
        from .result import LayerExamples, Ranking

        out = []
        for layer in self.layers:
            stats, rankings, classes = self.layer_parts(layer.name)
            ranks = {key: Ranking(*ranking.result()) for key, ranking in rankings.items()}
            out.append(LayerExamples(
                layer=layer, map_hw=self._by_name[layer.name].map_hw, stats=stats.result(),
                top=ranks["top"], bottom=ranks["bottom"], negative=ranks["negative"],
                selectivity=classes.result() if classes is not None else None))
        return out

    # -- state ---------------------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        """A flat dict of plain arrays (``np.savez``; ``np.load(allow_pickle=False)`` reads it).

        Keys: ``meta``, ``seen``, ``failed.ids|names|reasons`` and per layer
        position ``p`` (in ``layers``) ``L<p>.map``, ``L<p>.stats.*``,
        ``L<p>.<ranking>.*``, ``L<p>.classes.*``.
        """
        out: dict[str, np.ndarray] = {
            "meta": np.array([self.k, self.classes, self.images, len(self.layers)], np.int64),
            "seen": np.concatenate(self._seen) if self._seen else np.zeros(0, np.int64),
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
            seen = np.asarray(state["seen"], np.int64)
            if seen.size:
                acc._seen = [seen.copy()]
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
