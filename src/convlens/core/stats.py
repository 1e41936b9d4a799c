"""Channel health: per-channel statistics of a layer's activations, streamed over images.

A layer's output in the canonical layout (``(N, H, W, C)``, ``(N, L, C)`` or
``(N, C)``) is viewed as ``(values, C)`` and reduced along the first axis: one
numpy reduction per statistic, vectorised over channels, never a Python loop
over them. Images (or any batches) are folded in one at a time with Chan's
parallel merge of (count, mean, M2), in float64 and in chunks of about a
million values, so memory stays O(C) plus one chunk, and a channel of a
million values near 1e4 with a spread of 1e-2 keeps its standard deviation
(the naive ``E[x^2] - E[x]^2`` in float32 would return noise).

Non-finite values (NaN, +-inf) are left out of every statistic and flag their
channel; a channel with no finite value at all has NaN statistics (``null`` in
JSON). The dead and constant flags are those of
:class:`convlens.core.normalize.ChannelFlags`, computed by the same code.

Reference: Chan, Golub and LeVeque, "Algorithms for computing the sample
variance" (1983), https://doi.org/10.1080/00031305.1983.10483115
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import BadArgument
from .normalize import ChannelFlags, normalize_channels
from .reduce import reduce_channels
from .text import plural

__all__ = ["STATS_REDUCTIONS", "LayerStats", "StatsAccumulator", "channel_flags", "channel_stats"]

#: The per-image reductions (:mod:`convlens.core.reduce`) that :meth:`StatsAccumulator.add_reduced` folds.
STATS_REDUCTIONS = ("count", "sum", "m2", "min", "max", "zeros", "nonfinite")


def channel_flags(count: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  nonfinite: np.ndarray) -> ChannelFlags:
    """The flags of channels known only by their finite extremes.

    The flags depend on nothing but each channel's finite minimum and maximum
    (and whether it has any finite value) and whether it held NaN/inf, so the
    definitions are not written twice: :func:`normalize_channels` derives them
    from a three-value stand-in per channel, ``[lo, hi, NaN if nonfinite]``.

    Args:
        count: ``(C,)`` number of finite values per channel.
        lo, hi: ``(C,)`` finite minimum and maximum (ignored where ``count`` is 0).
        nonfinite: ``(C,)`` bool, the channel held NaN or +-inf.

    Returns:
        :class:`ChannelFlags` with ``(C,)`` bool arrays.
    """
    has = np.asarray(count) > 0
    stand_in = np.empty((len(has), 1, 3), np.float64)
    stand_in[:, 0, 0] = np.where(has, lo, np.nan)
    stand_in[:, 0, 1] = np.where(has, hi, np.nan)
    stand_in[:, 0, 2] = np.where(np.asarray(nonfinite, bool), np.nan, stand_in[:, 0, 0])
    _, flags = normalize_channels(stand_in, "minmax")
    # A channel without any value at all (zero-length maps) is not non-finite.
    return ChannelFlags(flags.dead, flags.constant, np.array(nonfinite, dtype=bool))


@dataclass(frozen=True, eq=False)
class LayerStats:
    """Per-channel statistics of one layer over every image folded in.

    Attributes:
        index: the layer's position in the model (see ``Lens.layers()``).
        name: the layer's name.
        type: the layer's class name, e.g. ``Conv2D`` (may be empty).
        images: how many images (batch rows) were folded in.
        channels: C, the number of channels (units, for vectors).
        mean, std, min, max: ``(C,)`` float64 over the finite values of all
            images; ``std`` is the population standard deviation (ddof 0);
            NaN for a channel without any finite value.
        zero_fraction: ``(C,)`` float64 in [0, 1], exact zeros / finite values
            (NaN when there is no finite value).
        dead: ``(C,)`` bool, every finite value is 0 (and there is one).
        constant: ``(C,)`` bool, all finite values are equal (and there is
            one); dead channels are constant too.
        nonfinite: ``(C,)`` bool, NaN or +-inf was seen.
        count: ``(C,)`` int64, finite values per channel.
        values_per_channel: values per channel per image (H*W, L or 1).
    """

    index: int
    name: str
    type: str
    images: int
    channels: int
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    zero_fraction: np.ndarray
    dead: np.ndarray
    constant: np.ndarray
    nonfinite: np.ndarray
    count: np.ndarray
    values_per_channel: int = 0

    @property
    def flags(self) -> ChannelFlags:
        """The dead/constant/non-finite flags as a :class:`ChannelFlags`."""
        return ChannelFlags(self.dead, self.constant, self.nonfinite)

    @property
    def notable(self) -> ChannelFlags:
        """The flags worth telling people: dead; constant at a value other than 0, among
        channels with more than one value (a vector's unit seen in one image is constant by
        definition); non-finite. Tables, summaries and the report count these."""
        return ChannelFlags(self.dead, self.constant & ~self.dead & (self.count > 1), self.nonfinite)

    @property
    def flagged(self) -> int:
        """How many channels carry at least one :attr:`notable` flag."""
        return int(self.notable.any().sum())

    def _over_layer(self, per_channel: np.ndarray) -> float:
        """A per-channel average pooled over the layer, each channel weighted by its finite values."""
        n = self.count.sum()
        if n == 0:
            return float("nan")
        has = self.count > 0
        return float(np.sum(per_channel[has] * self.count[has]) / n)

    def layer_mean(self) -> float:
        """Mean of every finite value of the layer (NaN if there is none)."""
        return self._over_layer(self.mean)

    def layer_std(self) -> float:
        """Standard deviation of every finite value of the layer, pooled exactly from the channels."""
        n = self.count.sum()
        if n == 0:
            return float("nan")
        has = self.count > 0
        m = self.layer_mean()
        m2 = self.std[has] ** 2 * self.count[has] + self.count[has] * (self.mean[has] - m) ** 2
        return float(np.sqrt(m2.sum() / n))

    def layer_min(self) -> float:
        """Smallest finite value of the layer (NaN if there is none)."""
        has = self.count > 0
        return float(self.min[has].min()) if has.any() else float("nan")

    def layer_max(self) -> float:
        """Largest finite value of the layer (NaN if there is none)."""
        has = self.count > 0
        return float(self.max[has].max()) if has.any() else float("nan")

    def mean_zero_fraction(self) -> float:
        """Fraction of the layer's finite values that are exactly 0 (NaN if there is none)."""
        return self._over_layer(self.zero_fraction)

    def summary(self) -> str:
        """One line for people, e.g. ``block5_conv3: 37 of 512 channels are zero for this image``.

        Constant channels that are not zero and channels holding NaN/inf are
        counted after it when there are any (the :attr:`notable` flags).
        """
        c = self.channels
        dead = int(self.dead.sum())
        constant = int(self.notable.constant.sum())
        nonfinite = int(self.nonfinite.sum())
        these = "this image" if self.images == 1 else f"these {self.images} images"
        text = (f"{self.name}: {dead} of {c} {plural(c, 'channel', 'channels')} "
                f"{'is' if dead == 1 or c == 1 else 'are'} zero for {these}")
        if constant:
            text += f"; {constant} more {plural(constant, 'is', 'are')} constant"
        if nonfinite:
            text += f"; {nonfinite} {plural(nonfinite, 'holds', 'hold')} NaN or inf"
        return text

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the layer's totals and every per-channel list (NaN becomes ``None``)."""

        def floats(a: np.ndarray) -> list[float | None]:
            return [v if v == v else None for v in a.astype(float).tolist()]

        def num(v: float) -> float | None:
            return v if v == v else None

        return {
            "index": int(self.index), "name": self.name, "type": self.type,
            "images": int(self.images), "channels": int(self.channels),
            "values_per_channel": int(self.values_per_channel),
            "summary": self.summary(),
            "counts": {"dead": int(self.dead.sum()), "constant": int(self.constant.sum()),
                       "nonfinite": int(self.nonfinite.sum()), "flagged": self.flagged},
            "flags": self.flags.indices(),
            "layer": {"mean": num(self.layer_mean()), "std": num(self.layer_std()),
                      "min": num(self.layer_min()), "max": num(self.layer_max()),
                      "zero_fraction": num(self.mean_zero_fraction())},
            "mean": floats(self.mean), "std": floats(self.std), "min": floats(self.min),
            "max": floats(self.max), "zero_fraction": floats(self.zero_fraction),
            "count": self.count.astype(int).tolist(),
            "dead": self.dead.tolist(), "constant": self.constant.tolist(),
            "nonfinite": self.nonfinite.tolist(),
        }


def _as_rows(batch: np.ndarray) -> np.ndarray:
    """A canonical layer output as ``(values, C)``, a view when possible."""
    a = np.asarray(batch)
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32)
    elif not np.issubdtype(a.dtype, np.floating):
        raise BadArgument(f"channel statistics need real numbers, got dtype {a.dtype}")
    if a.ndim == 1:  # one value per image, e.g. a scalar output: one channel
        return a.reshape(-1, 1)
    if a.ndim not in (2, 3, 4):
        raise BadArgument(f"channel statistics need a layer output (N, H, W, C), (N, L, C) or "
                          f"(N, C), got shape {a.shape}")
    return a.reshape(-1, a.shape[-1])


class StatsAccumulator:
    """Folds batches of one layer's output into per-channel statistics, in O(C) memory.

    Args:
        index: the layer's index (carried into the result).
        name: the layer's name.
        type: the layer's class name.

    Example:
        >>> acc = StatsAccumulator(3, "conv2", "Conv2D")
        >>> for image_output in outputs:      # each (1, H, W, C)
        ...     acc.add(image_output)
        >>> acc.result().summary()
    """

    def __init__(self, index: int, name: str, type: str = "") -> None:
        self.index, self.name, self.type = index, name, type
        self.images = 0
        self.values_per_channel = 0
        self._c: int | None = None

    def _start(self, c: int) -> None:
        self._c = c
        self._n = np.zeros(c, np.int64)
        self._mean = np.zeros(c, np.float64)
        self._m2 = np.zeros(c, np.float64)
        self._lo = np.full(c, np.inf)
        self._hi = np.full(c, -np.inf)
        self._zeros = np.zeros(c, np.int64)
        self._bad = np.zeros(c, bool)

    def add(self, batch: np.ndarray) -> None:
        """Fold in one output of the layer.

        Args:
            batch: ``(N, H, W, C)``, ``(N, L, C)`` or ``(N, C)`` real values
                (``(N,)`` counts as one channel); N images at once.

        Raises:
            BadArgument: not real numbers, an unknown shape, or a channel
                count other than the one seen before.
        """
        a = np.asarray(batch)
        rows = _as_rows(a)
        n_img = int(a.shape[0]) if a.ndim else 1
        # every image's values as one row: the chunked two-pass moments of core.reduce, then Chan's update
        self._fold(reduce_channels(rows[None], STATS_REDUCTIONS), n_img, rows.shape[0] // max(n_img, 1))

    def add_reduced(self, reduced: Mapping[str, np.ndarray]) -> None:
        """Fold in the per-image reductions of one batch of the layer (:mod:`convlens.core.reduce`).

        The pass engine hands these to consumers that declare
        :data:`STATS_REDUCTIONS`; the result equals :meth:`add` of the same
        batch up to float64 rounding (each image is merged with Chan's update).

        Args:
            reduced: ``{op: (n, C)}`` for every op of :data:`STATS_REDUCTIONS`.

        Raises:
            BadArgument: an op is missing, or a channel count other than the one seen before.
        """
        missing = [op for op in STATS_REDUCTIONS if op not in reduced]
        if missing:
            raise BadArgument(f"the reductions of layer {self.name!r} lack {', '.join(missing)}; "
                              "declare STATS_REDUCTIONS")
        n_img, c = np.shape(reduced["count"])
        per_image = int(reduced["count"][0, 0] + reduced["nonfinite"][0, 0]) if n_img and c else 0
        for j in range(n_img):
            self._fold({op: np.asarray(reduced[op])[j:j + 1] for op in STATS_REDUCTIONS}, 1, per_image)

    def _fold(self, r: Mapping[str, np.ndarray], n_img: int, per_image: int) -> None:
        """Merge one row of reductions (``(1, C)`` each) covering ``n_img`` images into the totals."""
        c = int(np.shape(r["count"])[1])
        if self._c is None:
            self._start(c)
        elif c != self._c:
            raise BadArgument(f"layer {self.name!r} gave {c} channels after {self._c}; fold only "
                              "outputs of the same layer into one accumulator")
        self.images += n_img
        if n_img:
            self.values_per_channel = per_image
        n = np.asarray(r["count"][0], np.int64)
        with np.errstate(all="ignore"):
            mean = np.divide(r["sum"][0], n, out=np.zeros(c), where=n > 0)
            self._bad |= r["nonfinite"][0] > 0
            self._zeros += r["zeros"][0]
            self._lo = np.minimum(self._lo, r["min"][0])
            self._hi = np.maximum(self._hi, r["max"][0])
            # Chan et al.: combine (n_a, mean_a, M2_a) with (n_b, mean_b, M2_b).
            total = self._n + n
            safe = np.maximum(total, 1)
            delta = mean - self._mean
            self._mean = self._mean + delta * (n / safe)
            self._m2 = self._m2 + r["m2"][0] + delta * delta * (self._n * (n / safe))
        self._n = total

    def merge(self, other: StatsAccumulator) -> None:
        """Fold in another accumulator of the same layer (Chan's merge: exact up to rounding).

        The order of merges changes the result only by float64 rounding
        (about 1e-15 relative); counts, extremes, zeros and flags exactly.

        Raises:
            BadArgument: the other accumulator saw another channel count.
        """
        if other._c is None:
            return
        if self._c is None:
            self._start(other._c)
        elif other._c != self._c:
            raise BadArgument(f"cannot merge statistics of {other._c} channels into {self._c} "
                              f"channels of layer {self.name!r}")
        self.images += other.images
        self.values_per_channel = self.values_per_channel or other.values_per_channel
        total = self._n + other._n
        safe = np.maximum(total, 1)
        delta = other._mean - self._mean
        with np.errstate(all="ignore"):
            self._mean = self._mean + delta * (other._n / safe)
            self._m2 = self._m2 + other._m2 + delta * delta * (self._n * (other._n / safe))
        self._n = total
        self._lo = np.minimum(self._lo, other._lo)
        self._hi = np.maximum(self._hi, other._hi)
        self._zeros = self._zeros + other._zeros
        self._bad = self._bad | other._bad

    def state(self) -> dict[str, np.ndarray]:
        """Plain arrays only, for ``np.savez`` (loadable with ``allow_pickle=False``).

        ``channels`` is -1 while nothing was added.
        """
        meta = np.array([self.images, self.values_per_channel,
                         -1 if self._c is None else self._c], np.int64)
        if self._c is None:
            return {"meta": meta}
        return {"meta": meta, "n": self._n.copy(), "mean": self._mean.copy(),
                "m2": self._m2.copy(), "lo": self._lo.copy(), "hi": self._hi.copy(),
                "zeros": self._zeros.copy(), "bad": self._bad.copy()}

    @classmethod
    def from_state(cls, index: int, name: str, type: str,
                   state: Mapping[str, np.ndarray]) -> StatsAccumulator:
        """The accumulator :meth:`state` saved, for layer ``(index, name, type)``.

        Raises:
            BadArgument: missing arrays or shapes that do not agree.
        """
        acc = cls(index, name, type)
        try:
            images, per_channel, c = (int(v) for v in np.asarray(state["meta"]).reshape(3))
            acc.images, acc.values_per_channel = images, per_channel
            if c < 0:
                return acc
            acc._start(c)
            arrays = {key: np.asarray(state[key]) for key in
                      ("n", "mean", "m2", "lo", "hi", "zeros", "bad")}
        except (KeyError, ValueError) as e:
            raise BadArgument(f"the statistics state of layer {name!r} is damaged ({e}); delete "
                              "the checkpoint and run again") from None
        if any(a.shape != (c,) for a in arrays.values()):
            raise BadArgument(f"the statistics state of layer {name!r} has shapes that disagree; "
                              "delete the checkpoint and run again")
        acc._n = arrays["n"].astype(np.int64)
        acc._mean = arrays["mean"].astype(np.float64)
        acc._m2 = arrays["m2"].astype(np.float64)
        acc._lo = arrays["lo"].astype(np.float64)
        acc._hi = arrays["hi"].astype(np.float64)
        acc._zeros = arrays["zeros"].astype(np.int64)
        acc._bad = arrays["bad"].astype(bool)
        return acc

    def result(self) -> LayerStats:
        """The statistics of everything added so far.

        Raises:
            BadArgument: nothing was added yet.
        """
        if self._c is None:
            raise BadArgument(f"no output of layer {self.name!r} was added; call add() with the "
                              "layer's output before result()")
        n = self._n
        has = n > 0
        nan = np.full(self._c, np.nan)
        denom = np.maximum(n, 1)
        flags = channel_flags(n, self._lo, self._hi, self._bad)
        # A constant channel's mean is its value and its spread 0, exactly; the
        # running sums can be off by an ulp (0.1 * 3 / 3 != 0.1).
        mean = np.where(flags.constant, self._lo, self._mean)
        std = np.where(flags.constant, 0.0, np.sqrt(np.maximum(self._m2, 0.0) / denom))
        return LayerStats(
            index=self.index, name=self.name, type=self.type, images=self.images, channels=self._c,
            mean=np.where(has, mean, nan), std=np.where(has, std, nan),
            min=np.where(has, self._lo, nan), max=np.where(has, self._hi, nan),
            zero_fraction=np.where(has, self._zeros / denom, nan),
            dead=flags.dead, constant=flags.constant, nonfinite=flags.nonfinite,
            count=n.copy(), values_per_channel=self.values_per_channel,
        )


def channel_stats(batch: np.ndarray, *, index: int = 0, name: str = "", type: str = "") -> LayerStats:
    """Per-channel statistics of one layer output, every image of the batch together.

    Args:
        batch: ``(N, H, W, C)``, ``(N, L, C)`` or ``(N, C)`` real values.
        index, name, type: the layer's identity, carried into the result.

    Returns:
        :class:`LayerStats` over all N images.
    """
    acc = StatsAccumulator(index, name, type)
    acc.add(batch)
    return acc.result()
