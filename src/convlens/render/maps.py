"""One layer's output for one image, drawn as a picture.

Inputs are canonical arrays for ONE image: ``(H, W, C)`` maps, ``(L, C)``
signals or ``(C,)`` vectors (see :mod:`convlens.adapters.base`). Pure numpy in,
RGB ``uint8`` out; nothing here touches disk (:mod:`convlens.output` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._errors import BadArgument, MissingDependency
from ..core.normalize import NORMS, ChannelFlags, normalize_channels
from .colormap import lut as colormap_lut
from .grid import add_title, add_title_indexed, downsample, palette, signals, strip, tile_indexed
from .png import encode_png

__all__ = ["RenderOptions", "Rendered", "channels_first", "reduce_map", "render_map"]


@dataclass(frozen=True)
class RenderOptions:
    """How feature maps are drawn.

    Attributes:
        norm: ``standardize`` (the tutorials' per-channel (x-mean)/std*64+128),
            ``minmax`` (per channel), ``layer`` (one scale per layer, so channels
            compare) or ``global`` (one scale over every selected layer).
        cmap: any matplotlib colormap name, or ``gray``.
        max_channels: channels drawn per layer (the first ones); ``None`` for all.
        columns: grid columns; ``None`` for a near-square grid.
        numbers: stamp channel numbers on tiles.
        tile_size: tiles larger than this many pixels are block-averaged down,
            which bounds the memory and size of grids for big images.
        title: draw a header with the layer's name, type and shape.
    """

    norm: str = "standardize"
    cmap: str = "viridis"
    max_channels: int | None = 64
    columns: int | None = None
    numbers: bool = False
    tile_size: int = 256
    title: bool = True

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise BadArgument(f"unknown normalisation {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.max_channels is not None and self.max_channels < 1:
            raise BadArgument("max_channels must be at least 1 (or 'all')")
        if self.columns is not None and self.columns < 1:
            raise BadArgument("columns must be at least 1")
        if self.tile_size < 4:
            raise BadArgument("tile_size must be at least 4 pixels")
        try:
            colormap_lut(self.cmap)  # fail early on an unknown colormap
        except MissingDependency:
            pass  # no matplotlib: said when a map is drawn, so arrays (and `import convlens`) work without it


@dataclass
class Rendered:
    """A drawn layer.

    Grids are kept as palette indices (one byte a pixel, a third of the bytes
    to encode); :attr:`rgb` expands them on demand.

    Attributes:
        pixels: ``(H, W)`` uint8 indices into ``palette``, or ``(H, W, 3)`` RGB.
        palette: ``(256, 3)`` uint8 for indexed pixels, else ``None``.
        channels_total: channels the layer has.
        channels_shown: channels drawn (the first ones).
        flags: flags of the drawn channels.
        layout: ``"grid"``, ``"signals"`` or ``"strip"``.
    """

    pixels: np.ndarray
    palette: np.ndarray | None
    channels_total: int
    channels_shown: int
    flags: ChannelFlags
    layout: str

    @property
    def rgb(self) -> np.ndarray:
        """The picture as ``(H, W, 3)`` uint8 RGB."""
        return self.pixels if self.palette is None else np.take(self.palette, self.pixels, axis=0)

    def png(self) -> bytes:
        """The picture as PNG bytes (indexed when it has a palette)."""
        return encode_png(self.pixels, palette=self.palette)


def reduce_map(x: np.ndarray, opts: RenderOptions) -> np.ndarray:
    """Cap channels and shrink big maps, before anything is normalised.

    Args:
        x: one image's output, ``(H, W, C)``, ``(L, C)`` or ``(C,)``.

    Returns:
        ``(c, h, w)`` float32 for maps, ``(c, L)`` for signals, ``(C,)`` for vectors.
    """
    x = np.asarray(x)
    if x.ndim == 1:
        return x.astype(np.float32, copy=False)
    if x.ndim == 2:
        cap = x.shape[-1] if opts.max_channels is None else opts.max_channels
        return np.ascontiguousarray(x[:, :cap].T, dtype=np.float32)
    if x.ndim == 3:
        # shrunk before the channels move first: a big map is never copied whole
        return channels_first(_shown_maps(x, opts))
    raise BadArgument(f"cannot draw an output of shape {x.shape}; convlens draws (H, W, C) maps, "
                      "(L, C) signals and (C,) vectors")


def _shown_maps(x: np.ndarray, opts: RenderOptions) -> np.ndarray:
    """The ``(h, w, c)`` maps drawn of an ``(H, W, C)`` output: the first channels, shrunk; a view when it can."""
    cap = x.shape[-1] if opts.max_channels is None else opts.max_channels
    return downsample(x[..., :cap], opts.tile_size, channels_last=True)


def channels_first(x: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` as a contiguous ``(C, H, W)`` float32 copy, transposed in cache-sized blocks.

    numpy's one-shot transposing copy walks the source with a stride of ``C``
    values and is several times slower than copying blocks of rows that fit
    the cache (about 100 ms against 15 ms for VGG16's 224x224x64 maps).
    """
    h, w, c = x.shape
    rows = x.reshape(h * w, c)
    out = np.empty((c, h * w), np.float32)
    step = 512
    for start in range(0, h * w, step):
        out[:, start:start + step] = rows[start:start + step].T
    return out.reshape(c, h, w)


def render_map(x: np.ndarray, opts: RenderOptions, *, title: str | None = None,
               channels_total: int | None = None, value_range: tuple[float, float] | None = None,
               reduced: bool = False) -> Rendered:
    """Draw one layer's output for one image.

    Args:
        x: the output, canonical layout, or already :func:`reduce_map`-ed when
            ``reduced`` is true.
        opts: drawing options.
        title: header text; ``None`` for no header.
        channels_total: the layer's channel count when ``x`` is reduced.
        value_range: the ``(lo, hi)`` scale for ``norm="global"``.
    """
    total = channels_total if channels_total is not None else (int(np.asarray(x).shape[-1]) if np.ndim(x) else 1)
    a = np.asarray(x)
    if not reduced and a.ndim == 3:
        # Maps are normalised in their own (H, W, C) layout: no channels-first copy of the layer.
        r = _shown_maps(a, opts)
        channels_last = True
    else:
        r = a if reduced else reduce_map(a, opts)
        channels_last = False
    lut = colormap_lut(opts.cmap)
    pal: np.ndarray | None = None
    if r.ndim == 1:
        pixels = strip(r, lut)
        flags = _vector_flags(r)
        layout, shown = "strip", r.shape[0]
    elif r.ndim == 2:
        pixels = signals(r.T, lut)
        flags = normalize_channels(r[:, None, :], "minmax")[1]
        layout, shown = "signals", r.shape[0]
    else:
        vr = value_range if opts.norm == "global" else None
        indices, flags = normalize_channels(r, opts.norm, value_range=vr, channels_last=channels_last)
        pixels = tile_indexed(indices, columns=opts.columns, flags=flags.any(), numbers=opts.numbers)
        pal = palette(lut)
        layout, shown = "grid", indices.shape[0]
    if title is not None and opts.title:
        suffix = f"  ·  channels 0-{shown - 1} of {total}" if shown < total else ""
        text = title + suffix
        pixels = add_title(pixels, text) if pal is None else add_title_indexed(pixels, text)
    return Rendered(pixels=pixels, palette=pal, channels_total=total, channels_shown=shown, flags=flags,
                    layout=layout)


def _vector_flags(v: np.ndarray) -> ChannelFlags:
    # One value per unit: "dead" means exactly zero; a single value is never "constant".
    finite = np.isfinite(v)
    return ChannelFlags(dead=finite & (v == 0), constant=np.zeros(v.shape, bool), nonfinite=~finite)
