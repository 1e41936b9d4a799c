"""What ``Lens.channel_stats`` returns: every selected layer's channel health, as text, JSON or HTML.

The numbers come from :mod:`convlens.core.stats`; this module only lays them out.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import LayerNotFound
from ._version import __version__
from .core.stats import LayerStats
from .core.text import number, percent
from .output import OutputDir, merge_index

__all__ = ["ChannelStats", "LayerStats", "format_channel_rows", "format_stats_table"]

LEGEND = ("dead: zero everywhere for these inputs; constant: one value other than 0 everywhere "
          "(a unit with a single value is not counted); non-finite: NaN or inf seen; "
          "zeros: share of values that are exactly 0; "
          "mean, std, min, max: over every finite value of the layer.")


def _channel_flags(s: LayerStats, c: int) -> str:
    words = ["dead"] if s.dead[c] else ["constant"] if s.constant[c] else []
    if s.nonfinite[c]:
        words.append("nan/inf")
    return ",".join(words)


def _align(rows: list[tuple[str, ...]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


_LAYER_HEAD = ("#", "name", "type", "channels", "dead", "constant", "non-finite", "zeros", "mean", "std",
               "min", "max")
_CHANNEL_HEAD = ("channel", "mean", "std", "min", "max", "zeros", "flags")
#: Channel rows per layer in the notebook view: a row for each of ResNet-50's 94,000 channels
#: made 26 MB of HTML in the notebook file.
_HTML_CHANNELS = 64


def _layer_row(s: LayerStats) -> tuple[str, ...]:
    return (str(s.index), s.name, s.type or "-", str(s.channels), str(int(s.dead.sum())),
            str(int(s.notable.constant.sum())), str(int(s.nonfinite.sum())), percent(s.mean_zero_fraction()),
            number(s.layer_mean()), number(s.layer_std()), number(s.layer_min()), number(s.layer_max()))


def _channel_rows(s: LayerStats, channels: Iterable[int] | None = None) -> list[tuple[str, ...]]:
    return [(str(c), number(float(s.mean[c])), number(float(s.std[c])), number(float(s.min[c])),
             number(float(s.max[c])), percent(float(s.zero_fraction[c])), _channel_flags(s, c))
            for c in (range(s.channels) if channels is None else channels)]


def _html_channels(s: LayerStats) -> list[int]:
    """At most :data:`_HTML_CHANNELS` channels of a layer: its flagged ones first, then the first ones."""
    if s.channels <= _HTML_CHANNELS:
        return list(range(s.channels))
    flagged = np.flatnonzero(s.notable.any())[:_HTML_CHANNELS]
    rest = np.setdiff1d(np.arange(s.channels), flagged)[:_HTML_CHANNELS - len(flagged)]
    return sorted(int(c) for c in np.concatenate([flagged, rest]))


def format_stats_table(layers: Sequence[LayerStats]) -> str:
    """One row per layer: channel counts per flag, share of zeros, the layer's mean/std/min/max."""
    return "\n".join(_align([_LAYER_HEAD, *(_layer_row(s) for s in layers)], set(range(3, 12)) | {0}))


def format_channel_rows(s: LayerStats) -> str:
    """One row per channel of one layer, under a heading naming the layer."""
    head = f"{s.index} {s.name} ({s.type or '-'}): {s.channels} channels"
    return "\n".join([head, *_align([_CHANNEL_HEAD, *_channel_rows(s)], {0, 1, 2, 3, 4, 5})])


class ChannelStats(list):
    """Channel health of the selected layers: a list of :class:`LayerStats` in execution order.

    Prints as a table (``str``), shows as HTML in Jupyter and exports every
    number with :meth:`to_json`.

    Attributes:
        model: the model's name.
        images: the names of the images folded in.
        notes: what was done to the inputs (resizing, channel changes).
    """

    def __init__(self, layers: Iterable[LayerStats] = (), *, model: str = "",
                 images: Sequence[str] = (), notes: Sequence[str] = ()) -> None:
        super().__init__(layers)
        self.model = model
        self.images = list(images)
        self.notes = list(notes)

    def layer(self, name: str) -> LayerStats:
        """The statistics of one layer by full or (unique) short name."""
        for s in self:
            if s.name == name:
                return s
        short = [s for s in self if s.name.rsplit("/", 1)[-1] == name]
        if len(short) == 1:
            return short[0]
        raise LayerNotFound(f"{name!r} is not among these statistics ({', '.join(s.name for s in self)}); "
                            "select it with layers=... (--layers)")

    def flagged(self) -> list[LayerStats]:
        """The layers with at least one dead, constant or non-finite channel."""
        return [s for s in self if s.flagged]

    def summaries(self) -> list[str]:
        """The summary line of every layer with flagged channels."""
        return [s.summary() for s in self.flagged()]

    def _head(self) -> str:
        n = len(self.images)
        which = f"{n} image{'s' if n != 1 else ''}" + (f" ({', '.join(self.images)})" if self.images else "")
        return f"channel statistics of {self.model or 'the model'} over {which}"

    def table(self, channels: bool = False) -> str:
        """The per-layer table; with ``channels=True`` every channel's row follows it."""
        parts = [self._head(), format_stats_table(self), LEGEND]
        if channels:
            parts.extend("\n" + format_channel_rows(s) for s in self)
        return "\n".join(parts)

    def text(self, channels: bool = False) -> str:
        """The table (and per-channel rows), then the summary line of each flagged layer."""
        flagged = self.summaries() or [f"no dead, constant or non-finite channel in these {len(self)} layers"]
        return "\n".join([self.table(channels), "", *flagged])

    def __str__(self) -> str:
        return self.text()

    def to_json(self) -> dict[str, Any]:
        """Every number, JSON-ready (NaN as ``null``): model, images, notes and one record per layer."""
        return {"convlens": __version__, "model": self.model, "images": self.images, "notes": self.notes,
                "layers": [s.as_dict() for s in self]}

    def save(self, out: str | os.PathLike[str]) -> Path:
        """Write ``stats.json`` (:meth:`to_json`) and ``stats.txt`` (:meth:`text` with every channel's row)
        into ``out``, and list them in ``index.json`` under ``"stats"`` (other commands' entries stay).

        Returns:
            The path of ``out/index.json``.
        """
        out_path = Path(out)
        entries = [{"file": "stats.json", "format": "json", "layers": len(self), "images": self.images},
                   {"file": "stats.txt", "format": "text", "layers": len(self), "images": self.images}]
        with OutputDir(out_path) as staging:
            staging.write_json("stats.json", self.to_json())
            staging.write_text("stats.txt", self.text(channels=True) + "\n")
            staging.write_json_on_commit("index.json", lambda: merge_index(
                out_path, "stats", entries, {"model": self.model, "notes": self.notes}))
        return out_path / "index.json"

    def _repr_html_(self) -> str:
        e = html.escape
        right = "style='text-align:right'"

        def row(cells: Sequence[str], tag: str = "td") -> str:
            return "<tr>" + "".join(
                f"<{tag} {right if tag == 'td' and i not in (1, 2) else ''}>{e(c)}</{tag}>"
                for i, c in enumerate(cells)) + "</tr>"

        parts = [f"<div style='font:12px monospace'><b>{e(self._head())}</b>",
                 "<table>", row(_LAYER_HEAD, "th"), *(row(_layer_row(s)) for s in self), "</table>",
                 f"<p>{e(LEGEND)}</p>"]
        parts.extend(f"<div>{e(line)}</div>" for line in self.summaries())
        for s in self:
            shown = _html_channels(s)
            body = "".join("<tr>" + "".join(f"<td {right}>{e(c)}</td>" for c in r) + "</tr>"
                           for r in _channel_rows(s, shown))
            more = "" if len(shown) == s.channels else (
                f"<p>{len(shown)} of {s.channels} channels (the flagged ones first); "
                ".table(channels=True) and .to_json() have every one</p>")
            parts.append(f"<details><summary>{e(str(s.index))} {e(s.name)}: {e(str(s.channels))} channels"
                         f"</summary><table><tr>{''.join(f'<th>{e(h)}</th>' for h in _CHANNEL_HEAD)}</tr>"
                         f"{body}</table>{more}</details>")
        parts.append("</div>")
        return "".join(parts)

