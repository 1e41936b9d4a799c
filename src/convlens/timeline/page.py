"""The timeline page: one self-contained HTML file of a run recorded during training.

A slider walks through the checkpoints, showing each one's filters, feature
maps and channel health; charts of the dead-channel share, the relative
weight change and the weight norm of every layer over the steps sit above
it, with a cursor at the shown checkpoint. The charts are inline SVG drawn
here (:mod:`convlens.render.chart`); the pictures are ``data:`` URIs set by
the page's script when their checkpoint is shown. The HTML is Jinja2
templates (``timeline/templates/``: ``timeline.html``, ``body.html``,
``checkpoint.html``, ``picture.html``) in convlens's one autoescaping
environment (:mod:`convlens.output.templates`): every name and number from
the run's files is escaped. As the report, the page loads nothing from the
network: its Content-Security-Policy allows only its own style and script
(by hash) and ``data:`` pictures.

Only files named by the run's own index, inside the run folder, and
starting with the PNG signature are embedded: a crafted ``index.json``
cannot pull other files into the page.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

from .._errors import BadArgument, OutputError
from ..output import Markup, asset, atomic_write_bytes, render
from ..render.chart import line_chart
from ..render.html import csp, data_uri, json_for_script

__all__ = ["build_timeline", "read_run", "save_timeline"]

_RUN_KIND = "convlens-timeline"
_PNG = b"\x89PNG\r\n\x1a\n"
#: Checkpoints drawn in the page by default; the charts always show every one.
MAX_CHECKPOINTS = 100
#: Chart size: two side by side on a 1280-pixel screen.
_WIDTH, _HEIGHT, _LEGEND = 600, 260, 130


def read_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The index of a recorded run.

    Raises:
        BadArgument: the folder does not hold a run recorded by convlens.
    """
    run = Path(run_dir)
    hint = ("give the out= folder of LensCallback or LensRecorder (it holds index.json and "
            "checkpoint-NNNN folders)")
    if not run.is_dir():
        raise BadArgument(f"{run} is not a folder; {hint}")
    try:
        index = json.loads((run / "index.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadArgument(f"{run} holds no index.json, so it is not a recorded run; {hint}") from None
    except (OSError, ValueError) as e:
        raise BadArgument(f"cannot read {run / 'index.json'}: {e}; {hint}") from None
    if not isinstance(index, dict) or index.get("kind") != _RUN_KIND:
        raise BadArgument(f"{run / 'index.json'} was not written by a training recorder; {hint}")
    if not isinstance(index.get("checkpoints"), list):
        raise BadArgument(f"{run / 'index.json'} lists no checkpoints; {hint}")
    return index


def _inside(run: Path, rel: Any) -> Path | None:
    """``run / rel`` when ``rel`` is a plain relative path that stays inside ``run``; else ``None``."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return None
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts:
        return None
    path = run.joinpath(*p.parts)
    try:
        path.resolve().relative_to(run.resolve())
    except (OSError, ValueError):
        return None
    return path


def _png(run: Path, rel: Any) -> bytes | None:
    path = _inside(run, rel)
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(_PNG) else None


def _sample(n: int, limit: int) -> list[int]:
    """``limit`` indexes out of ``range(n)``, evenly spread, the first and the last always in."""
    if n <= limit:
        return list(range(n))
    if limit == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})


def _fmt(v: Any, percent: bool = False) -> str:
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "–"
    if percent:
        return f"{100 * v:.0f}%"
    a = abs(v)
    if a != 0 and (a >= 1e5 or a < 1e-3):
        return f"{v:.2e}"
    return f"{v:.4g}"


def _picture(data: bytes, alt: str, caption: str, cls: str = "tl-pic") -> dict[str, str]:
    """What ``timeline/picture.html`` draws: the PNG as a ``data:`` URI the script sets when shown."""
    return {"cls": cls, "alt": alt, "caption": caption, "src": data_uri(data)}


def _series(checkpoints: list[dict[str, Any]], key: str) -> dict[str, list[float | None]]:
    names: list[str] = []
    for c in checkpoints:
        for name in (c.get(key) or {}):
            if name not in names:
                names.append(name)
    out: dict[str, list[float | None]] = {}
    for name in names:
        vals = []
        for c in checkpoints:
            v = (c.get(key) or {}).get(name)
            vals.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
        out[str(name)] = vals
    return out


def _checkpoint_section(run: Path, k: int, summary: dict[str, Any], index: dict[str, Any],
                        threshold: float, notes: list[str]) -> Markup:
    folder = _inside(run, summary.get("folder"))
    entry: dict[str, Any] = {}
    if folder is not None:
        try:
            loaded = json.loads((folder / "index.json").read_text(encoding="utf-8"))
            entry = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            notes.append(f"checkpoint {summary.get('checkpoint')}: its index.json is missing or unreadable")
    label = str(summary.get("label") or f"checkpoint {k + 1}")
    weights = {str(w.get("layer")): w for w in entry.get("weights", []) if isinstance(w, dict)}
    health = [h for h in entry.get("health", []) if isinstance(h, dict)]
    rows: list[dict[str, Any]] = []
    for h in health:
        w = weights.get(str(h.get("layer")), {})
        rows.append({"weights_only": False,
                     "bad": isinstance(h.get("dead_fraction"), (int, float)) and h["dead_fraction"] > threshold,
                     "index": h.get("index", ""), "layer": h.get("layer", ""), "type": h.get("type", ""),
                     "channels": h.get("channels", ""), "dead": h.get("dead", ""),
                     "dead_share": _fmt(h.get("dead_fraction"), True), "zeros": _fmt(h.get("zero_fraction"), True),
                     "norm": _fmt(w.get("norm")), "change": _fmt(w.get("change"))})
    shown = {str(h.get("layer")) for h in health}
    for name, w in weights.items():  # weighted layers outside the selection (dense layers)
        if name not in shown:
            rows.append({"weights_only": True, "layer": name, "norm": _fmt(w.get("norm")),
                         "change": _fmt(w.get("change"))})
    filters = [f for f in entry.get("filters", []) if isinstance(f, dict)]
    pictures = []
    for f in filters:
        data = _png(folder, f.get("file")) if folder is not None else None
        if data is not None:
            what = "each filter as one picture" if f.get("kind") == "composite" else "filters × inputs"
            pictures.append(_picture(data, f"{f.get('layer')}: {what}", f"{f.get('layer')}: {what}"))
    by_layer: dict[str, list[dict[str, Any]]] = {}
    for m in entry.get("maps", []):
        if isinstance(m, dict):
            by_layer.setdefault(str(m.get("layer")), []).append(m)
    layers = []
    for layer, items in by_layer.items():
        shown_maps = []
        for m in items:
            data = _png(folder, m.get("file")) if folder is not None else None
            if data is not None:
                caption = f"{m.get('image')}"
                shown_maps.append(_picture(data, f"{layer} · {caption} · {label}", caption))
        layers.append({"name": layer, "pictures": shown_maps})
    return render("timeline/checkpoint.html", k=k, number=summary.get("checkpoint", k + 1), label=label,
                  rows=rows, has_filters=bool(filters), filters=pictures, layers=layers)


def build_timeline(run_dir: str | os.PathLike[str], *, max_checkpoints: int = MAX_CHECKPOINTS) -> str:
    """The timeline page of a recorded run, as one HTML string.

    Args:
        run_dir: the run folder (``out=`` of the callback or recorder).
        max_checkpoints: checkpoints whose pictures go into the page, evenly
            spread, the first and the last always in; the charts show all.

    Raises:
        BadArgument: not a run folder, or no checkpoint recorded yet.
    """
    if int(max_checkpoints) < 1:
        raise BadArgument(f"max_checkpoints must be at least 1, not {max_checkpoints}")
    run = Path(run_dir)
    index = read_run(run)
    checkpoints = [c for c in index["checkpoints"] if isinstance(c, dict)]
    if not checkpoints:
        raise BadArgument(f"{run} holds no checkpoint yet; record at least one (recorder.record(step), "
                          "or train with the callback) before drawing the timeline")
    threshold = index.get("dead_threshold")
    threshold = float(threshold) if isinstance(threshold, (int, float)) else 0.5
    steps = [float(c["step"]) if isinstance(c.get("step"), (int, float)) else float(i)
             for i, c in enumerate(checkpoints)]
    dead = line_chart(steps, _series(checkpoints, "dead_fraction"), title="dead channels (zero for every fixed image)",
                      y_label="share of channels", y_range=(0.0, 1.0), threshold=threshold, percent=True,
                      width=_WIDTH, height=_HEIGHT, legend_width=_LEGEND)
    change = line_chart(steps, _series(checkpoints, "weight_change"),
                        title="relative weight change since the previous checkpoint",
                        y_label="||ΔW|| / ||W|| (log)", log=True, width=_WIDTH, height=_HEIGHT, legend_width=_LEGEND)
    norm = line_chart(steps, _series(checkpoints, "weight_norm"), title="weight norm ||W||", y_label="||W||",
                      width=_WIDTH, height=_HEIGHT, legend_width=_LEGEND)
    chosen = _sample(len(checkpoints), int(max_checkpoints))
    notes: list[str] = []
    if len(chosen) < len(checkpoints):
        notes.append(f"pictures of {len(chosen)} of the {len(checkpoints)} checkpoints (evenly spread); "
                     "the charts show every one (convlens timeline --max-checkpoints N)")
    sections = [_checkpoint_section(run, k, checkpoints[i], index, threshold, notes) for k, i in enumerate(chosen)]

    images = [im for im in index.get("images", []) if isinstance(im, dict)]
    thumbs = []
    for im in images:
        data = _png(run, im.get("file"))
        if data is not None:
            thumbs.append(_picture(data, str(im.get("name")), str(im.get("name")), "tl-input"))
    warnings = [{"layer": w.get("layer"), "dead": w.get("dead"), "channels": w.get("channels"),
                 "share": _fmt(w.get("dead_fraction"), True), "step": w.get("step"), "epoch": w.get("epoch")}
                for w in index.get("warnings", []) if isinstance(w, dict)]
    error = index.get("error")
    body = render(
        "timeline/body.html", model=index.get("model", ""), framework=index.get("framework", ""),
        checkpoints=len(checkpoints), images=len(images),
        layers=", ".join(str(x.get("name")) for x in index.get("layers", []) if isinstance(x, dict)),
        error=error or "", recording=str(index.get("status", "")) == "recording", notes=notes,
        last=len(chosen) - 1, charts=[Markup(dead.svg), Markup(change.svg), Markup(norm.svg)],
        warnings=warnings, thumbs=thumbs, sections=sections)
    payload = {
        "checkpoints": [{"label": str(checkpoints[i].get("label", "")), "step": checkpoints[i].get("step"),
                         "epoch": checkpoints[i].get("epoch"), "number": checkpoints[i].get("checkpoint"),
                         "x": dead.x_pixels[i]} for i in chosen],
        "total": len(checkpoints),
    }
    return _page(f"convlens timeline: {index.get('model', '')}", body, payload)


def _page(title: str, body: Markup, data: Any) -> str:
    style = asset("timeline/timeline.css")
    script = asset("timeline/timeline.js")
    if "</script" in script.lower() or "</style" in style.lower():  # pragma: no cover - our own files
        raise BadArgument("timeline templates must not close their own element")
    return str(render("timeline/timeline.html", title=title, csp=csp(style, script), style=Markup(style),
                      script=Markup(script), body=body, data=Markup(json_for_script(data))))


def save_timeline(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], *,
                  max_checkpoints: int = MAX_CHECKPOINTS) -> Path:
    """Write the timeline page of a run atomically; returns its path.

    Raises:
        BadArgument: not a run folder (see :func:`build_timeline`).
        OutputError: ``out`` cannot be written.
    """
    target = Path(out)
    if target.is_dir():
        raise OutputError(f"{target} is a folder; give the page a file name such as {target / 'timeline.html'}")
    page = build_timeline(run_dir, max_checkpoints=max_checkpoints)
    atomic_write_bytes(target, page.encode("utf-8"))
    return target
