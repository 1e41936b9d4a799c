"""The result of a feature visualisation: pictures, an atlas, files and a notebook view."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.layers import LayerInfo
from ..output import OutputDir, png_figure_html, safe_name, write_index
from ..render.grid import add_title, grid_shape, tile_rgb

__all__ = ["Visualization"]


@dataclass
class Visualization:
    """Images that maximise (or minimise) channels, neurons or classes of one model.

    Attributes:
        model: the model's name.
        framework: the adapter's framework.
        layer: the layer visualised; ``None`` for class scores (the model's output).
        objective: ``"channel"``, ``"neuron"`` or ``"class"``.
        negative: the images minimise the objective.
        channels: ``(M,)`` the channel (or class) of each image.
        copies: images per channel (``M = len(set(channels)) * copies``).
        images: ``(M, h, w, C)`` float32 pixels in ``[0, 1]``, ``C`` 1 or 3.
        activations: ``(M,)`` float64, each channel's mean (channel), centre
            unit (neuron) or logit (class) reached by its image, as the model
            sees the final image without transforms.
        history: ``(steps, M)`` the objective (sign included) at each step.
        settings: steps, size, seed, learning rate, batch, parameterisation...
        labels: class names for class objectives, else ``None``.
        dead: per image, its channel is exactly zero on every probe photo
            (:mod:`convlens.visualize.probe`); ``None``: not probed (class objectives).
            The atlas crosses those tiles out; a flat tile of a live channel is not dead.
        probe_images: the probe photos' names, when probed.
    """

    model: str
    framework: str
    layer: LayerInfo | None
    objective: str
    negative: bool
    channels: list[int]
    copies: int
    images: np.ndarray
    activations: np.ndarray
    history: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | None = None
    dead: list[bool] | None = None
    probe_images: list[str] | None = None

    @property
    def layer_name(self) -> str:
        return self.layer.name if self.layer is not None else "output"

    def __len__(self) -> int:
        return len(self.channels)

    def picture(self, i: int) -> np.ndarray:
        """Image ``i`` as ``(h, w, 3)`` uint8 RGB (a gray model's image repeated into RGB)."""
        x = np.clip(np.round(self.images[i] * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x

    def title(self) -> str:
        what = {"channel": "channel mean", "neuron": "centre neuron", "class": "class logit"}[self.objective]
        sign = "minimised" if self.negative else "maximised"
        where = f"{self.layer.index} {self.layer_name}" if self.layer is not None else "output"
        s = self.settings
        return (f"{self.model}  ·  {where}  ·  {what} {sign}  ·  {s.get('steps')} steps, "
                f"{s.get('size')} px, seed {s.get('seed')}")

    def atlas(self, *, columns: int | None = None, numbers: bool = True, title: bool = True,
              min_tile: int = 64) -> np.ndarray:
        """Every image as one grid, numbered by channel, as ``(H, W, 3)`` uint8 RGB.

        Copies of one channel sit side by side; a dead channel's tiles are
        crossed out (:attr:`dead`). Tiles under ``min_tile``
        pixels (28-pixel MNIST images) are enlarged, nearest neighbour.
        """
        if columns is None and self.copies > 1:
            columns = self.copies * grid_shape(len(self) // self.copies)[1]
        pictures = np.stack([self.picture(i) for i in range(len(self))])
        labels = [str(c) for c in self.channels] if numbers else None
        grid = tile_rgb(pictures, columns=columns, labels=labels, min_tile=min_tile, crossed=self.dead)
        return add_title(grid, self.title()) if title else grid

    def entries(self) -> list[dict[str, Any]]:
        """One record per image: channel, copy, file name, activation reached."""
        out: list[dict[str, Any]] = []
        seen: dict[int, int] = {}
        for i, c in enumerate(self.channels):
            copy = seen[c] = seen.get(c, -1) + 1
            name = f"channel_{c:04d}" + (f"_{copy}" if self.copies > 1 else "") + ".png"
            entry: dict[str, Any] = {"channel": int(c), "copy": copy, "file": name,
                                     "activation": round(float(self.activations[i]), 6)}
            if self.labels is not None and 0 <= c < len(self.labels):
                entry["label"] = self.labels[c]
            if self.dead is not None:
                entry["dead_on_probe_images"] = bool(self.dead[i])
            out.append(entry)
        return out

    def dead_note(self) -> str | None:
        """One sentence naming the dead channels and the photos that say so, else ``None``."""
        if self.dead is None or not any(self.dead):
            return None
        dead = sorted({int(c) for c, d in zip(self.channels, self.dead) if d})
        shown = ", ".join(str(c) for c in dead[:12]) + (", ..." if len(dead) > 12 else "")
        photos = ", ".join(self.probe_images or [])
        return f"crossed out: {len(dead)} channel(s) dead (zero on the probe photos {photos}): {shown}"

    def folder(self) -> str:
        """Relative folder of this run's pictures inside an output folder."""
        index = f"{self.layer.index:03d}_" if self.layer is not None else ""
        return f"visualize/{index}{safe_name(self.layer_name)}_{self.objective}{'_neg' if self.negative else ''}"

    def save(self, out: str | os.PathLike[str]) -> Path:
        """Write the atlas, one PNG per image and ``index.json``, atomically.

        Files go to ``out/visualize/<layer>_<objective>/``: ``atlas.png`` and
        ``channel_0007.png`` per image. ``out/index.json`` gains (or replaces)
        this run under ``"visualize"``; other commands' entries stay.

        Returns:
            The path of ``out/index.json``; this run's pictures are in ``out / self.folder()``.
        """
        out_path = Path(out)
        folder = self.folder()
        entries = self.entries()
        run = self.to_json()
        with OutputDir(out_path) as staging:
            staging.write_png(f"{folder}/atlas.png", self.atlas())
            for i, e in enumerate(entries):
                staging.write_png(f"{folder}/{e['file']}", self.picture(i))
            # one record per run, keyed by its atlas: the same run again replaces itself
            write_index(staging, "visualize", [run], {"model": self.model, "framework": self.framework})
        return out_path / "index.json"

    def to_json(self) -> dict[str, Any]:
        """This run's record, JSON-ready, as ``index.json`` lists it: model, layer, objective,
        settings, and per image its channel, copy, file (relative to the output folder) and activation."""
        folder = self.folder()
        return {
            "model": self.model, "framework": self.framework,
            "layer": self.layer.name if self.layer is not None else None,
            "layer_index": self.layer.index if self.layer is not None else None,
            "objective": self.objective, "negative": self.negative, "copies": self.copies,
            "folder": folder, "file": f"{folder}/atlas.png",
            "settings": self.settings,
            "probe_images": self.probe_images,
            "dead_channels": (sorted({int(c) for c, d in zip(self.channels, self.dead) if d})
                              if self.dead is not None else None),
            "images": [{**e, "file": f"{folder}/{e['file']}"} for e in self.entries()],
        }

    def _repr_html_(self) -> str:
        best = int(np.argmax(self.activations * (-1 if self.negative else 1)))
        caption = (f"{len(self)} images; activation reached {float(self.activations.min()):.3g} to "
                   f"{float(self.activations.max()):.3g} (best: {self.channels[best]})")
        note = self.dead_note()
        if note:
            caption += f"; {note}"
        return png_figure_html(self.atlas(), caption)

