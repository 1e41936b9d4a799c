"""A recorded training run as a result: :class:`Timeline` (its index, its page, a notebook view).

``Timeline.load(run_dir)`` reads a run written by :class:`convlens.keras.LensCallback`
or :class:`convlens.torch.LensRecorder`; :meth:`Timeline.save` writes its
one-page timeline (what ``convlens timeline`` does).
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..output import png_figure_html
from .page import MAX_CHECKPOINTS, read_run, save_timeline

__all__ = ["Timeline"]

_PNG = b"\x89PNG\r\n\x1a\n"
#: Pictures of the last checkpoint shown in the notebook view.
_HTML_PICTURES = 6


@dataclass
class Timeline:
    """A run recorded during training.

    Attributes:
        folder: the run folder (``out=`` of the callback or recorder).
        index: its ``index.json``: model, layers, images, and one summary per checkpoint.
    """

    folder: Path
    index: dict[str, Any] = field(repr=False)

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> Timeline:
        """Read a recorded run.

        Raises:
            BadArgument: the folder does not hold a run recorded by convlens.
        """
        return cls(Path(run_dir), read_run(run_dir))

    @property
    def model(self) -> str:
        return str(self.index.get("model", ""))

    @property
    def checkpoints(self) -> list[dict[str, Any]]:
        """One summary per checkpoint (step, epoch, label, folder, dead channels...), in order."""
        return [c for c in self.index.get("checkpoints", []) if isinstance(c, dict)]

    def save(self, out: str | os.PathLike[str], *, max_checkpoints: int = MAX_CHECKPOINTS) -> Path:
        """Write the timeline page (one self-contained HTML file) atomically.

        Args:
            out: the HTML file to write, e.g. ``timeline.html``.
            max_checkpoints: checkpoints whose pictures go into the page, evenly spread.

        Returns:
            The path of the page.

        Raises:
            OutputError: ``out`` is a folder or cannot be written.
        """
        return save_timeline(self.folder, out, max_checkpoints=max_checkpoints)

    def to_json(self) -> dict[str, Any]:
        """The run's index as recorded (JSON data: it was read from ``index.json``)."""
        return dict(self.index)

    def _pictures(self) -> list[tuple[bytes, str]]:
        """The last checkpoint's pictures (filters, then maps) that lie inside the run and are PNGs."""
        if not self.checkpoints:
            return []
        last = self.checkpoints[-1]
        root = self.folder.resolve()
        folder = (root / str(last.get("folder", ""))).resolve()
        try:
            entry = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        out: list[tuple[bytes, str]] = []
        for kind in ("filters", "maps"):
            for item in entry.get(kind, []) if isinstance(entry, dict) else []:
                if not isinstance(item, dict) or len(out) >= _HTML_PICTURES:
                    continue
                path = (folder / str(item.get("file", ""))).resolve()
                if not path.is_relative_to(root) or not path.is_file():
                    continue  # a crafted index cannot show files outside the run
                data = path.read_bytes()
                if data.startswith(_PNG):
                    out.append((data, f"{kind[:-1] if kind == 'filters' else 'maps'} of "
                                      f"{item.get('layer', '')}" + (f", {item['image']}" if "image" in item else "")))
        return out

    def _repr_html_(self) -> str:
        steps = [c.get("step") for c in self.checkpoints]
        head = (f"{self.model}: {len(steps)} checkpoint{'s' if len(steps) != 1 else ''}"
                + (f", steps {steps[0]} to {steps[-1]}" if steps else "") + f" in {self.folder}")
        parts = [f"<div style='font:13px sans-serif'><b>{html.escape(head)}</b></div>"]
        if self.index.get("error"):
            parts.append(f"<div>recording stopped early: {html.escape(str(self.index['error']))}</div>")
        for data, caption in self._pictures():
            parts.append(png_figure_html(data, f"last checkpoint: {caption}"))
        parts.append("<div style='font:12px sans-serif'>timeline.save('timeline.html') writes the whole "
                     "page</div>")
        return "".join(parts)

