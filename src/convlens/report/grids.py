"""The report's consumer of the streaming pass: each layer's grid and per-image statistics.

Fed by :func:`convlens.passes.run_pass` beside a
:class:`~convlens.passes.StatsConsumer`, so that ONE batched forward pass
gives the feature-map grids (the same grids ``convlens maps`` draws, kept in
memory as base64 PNG) and the channel statistics.
"""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.layers import LayerInfo
from ..core.stats import LayerStats, StatsAccumulator, channel_stats
from ..images import Image
from ..passes import Batch, MapConsumer
from ..render.maps import RenderOptions, reduce_map, render_map
from .context import DrawnLayer

__all__ = ["ReportGrids", "color_scale", "sig"]


class ReportGrids(MapConsumer):
    """Draws every selected layer of every image for the page, and measures the drawn channels.

    Attributes:
        drawn: by layer index, per image the :class:`DrawnLayer`.
        per_image: by layer index, per image the statistics of the channels
            drawn (several images only: with one image the layer's own
            statistics serve, see :meth:`per_image_stats`).
    """

    def __init__(self, options: RenderOptions, layers: Sequence[LayerInfo], images: Sequence[Image]) -> None:
        super().__init__(options)
        n = len(images)
        self._images = list(images)
        self._layers = list(layers)
        self.drawn: dict[int, list[DrawnLayer | None]] = {layer.index: [None] * n for layer in layers}
        self.per_image: dict[int, list[LayerStats | None]] = {layer.index: [None] * n for layer in layers}

    def on_layer(self, batch: Batch, layer: LayerInfo, array: np.ndarray) -> None:
        if len(self._images) > 1:  # the viewer's per-image ranges: only the drawn channels are needed
            opts = self.options
            cap = array.shape[-1] if opts.max_channels is None or array.ndim < 3 else opts.max_channels
            for j, image in enumerate(batch.images):
                acc = StatsAccumulator(layer.index, layer.name, layer.type)
                acc.add(array[j:j + 1, ..., :cap])
                self.per_image[layer.index][image] = acc.result()
        super().on_layer(batch, layer, array)

    def draw(self, image: int, layer: LayerInfo, x: np.ndarray, total: int, shape: tuple[int, ...],
             value_range: tuple[float, float] | None) -> None:
        opts = self.options
        r = x if value_range is not None else reduce_map(x, opts)
        rendered = render_map(r, opts, channels_total=total, value_range=value_range, reduced=True)
        # The colour bar describes the maps as drawn: averaged down, their spread and extremes
        # are not the layer's own (those stay in the viewer's value rows).
        scale = None
        if r.ndim == 3:
            scale = color_scale(channel_stats(np.moveaxis(r, 0, -1)[None]), opts.norm, value_range)
        self.drawn[layer.index][image] = DrawnLayer(
            b64=b64encode(rendered.png()).decode("ascii"), layout=rendered.layout, shape=shape,
            reduced=tuple(r.shape), grid=rendered.pixels.shape[:2], flags=rendered.flags.indices(),
            scale=scale)

    def drawn_layers(self) -> dict[int, list[DrawnLayer]]:
        """``drawn`` after the pass, for the layers the model produced (a batch gives a layer for
        all its images or none; the pass's ``missing`` lists the others, which the report leaves out)."""
        return {i: [d for d in per_image if d is not None] for i, per_image in self.drawn.items()
                if any(d is not None for d in per_image)}

    def per_image_stats(self, stats: Sequence[LayerStats]) -> dict[int, list[LayerStats]]:
        """``per_image`` filled in: with one image, each layer's statistics over all images."""
        if len(self._images) == 1:
            for s in stats:
                self.per_image[s.index][0] = s
        return {i: [s for s in per_image if s is not None] for i, per_image in self.per_image.items()}

def sig(a: np.ndarray | float) -> Any:
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


def color_scale(ps: LayerStats, norm: str, vr: tuple[float, float] | None) -> tuple[Any, Any]:
    """Per drawn channel, the values that the colormap's two ends stand for."""
    if norm == "standardize":  # (x - mean) / std * 64 + 128: index 0 at -2 std, 255 at +2 std
        return sig(ps.mean - 2 * ps.std), sig(ps.mean + 2 * ps.std)
    if norm == "minmax":
        return sig(ps.min), sig(ps.max)
    lo, hi = (ps.layer_min(), ps.layer_max()) if norm == "layer" else (vr or (np.nan, np.nan))
    return sig(np.full(ps.channels, lo)), sig(np.full(ps.channels, hi))
