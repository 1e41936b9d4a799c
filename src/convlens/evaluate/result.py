"""What ``evaluate()`` returns: every number per method and image, the ranking, pictures and files."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.evaluation import curve_auc
from ..images import Image
from ..output import OutputDir, jsonable, write_index
from .charts import curve_chart, strip_picture

__all__ = ["Evaluation", "MethodScores"]

#: metric -> (label in the table, True when higher is better)
COLUMNS = {
    "randomisation": ("rand. rho (lower)", False),
    "random-logit": ("logit SSIM (lower)", False),
    "deletion": ("deletion AUC (lower)", False),
    "insertion": ("insertion AUC (higher)", True),
    "pointing": ("pointing (higher)", True),
    "energy": ("energy (higher)", True),
    "stability": ("max-sens. (lower)", False),
}


@dataclass
class MethodScores:
    """Every number of one method (arrays per image unless said otherwise).

    Attributes:
        maps: ``(N, H, W)`` the method's maps of the trained model.
        cost: seconds per image for one map: the fastest of the first call and the
            stability metric's calls on the same batches (a first call may pay for tracing).
        curves: ``"deletion"``/``"insertion"`` -> ``(N, steps + 1)`` class probabilities.
        curve_seconds: seconds spent on each kind of curve (all images).
        rand_spearman, rand_ssim: ``(S, N)`` similarity to the trained map after
            randomising the top 1..S weighted layers.
        rand_seconds: seconds of the randomisation test (model copies included).
        strip: ``(S, H, W)`` the first image's map at each randomisation step.
        logit_classes: the random other class of each image; ``logit_spearman``,
            ``logit_ssim``: the similarity of its map to the explained class's.
        pointing: per image a hit (bool) or ``None`` (no object); ``energy``: the
            share of the map's mass inside the object.
        sensitivity: max-sensitivity per image.
    """

    method: str
    title: str
    maps: np.ndarray = field(repr=False)
    cost: float
    signed: bool = False
    curves: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    curve_seconds: dict[str, float] = field(default_factory=dict)
    rand_spearman: np.ndarray | None = field(default=None, repr=False)
    rand_ssim: np.ndarray | None = field(default=None, repr=False)
    rand_seconds: float = 0.0
    strip: np.ndarray | None = field(default=None, repr=False)
    logit_classes: np.ndarray | None = field(default=None, repr=False)
    logit_spearman: np.ndarray | None = field(default=None, repr=False)
    logit_ssim: np.ndarray | None = field(default=None, repr=False)
    logit_map0: np.ndarray | None = field(default=None, repr=False)
    pointing: list[bool | None] | None = None
    energy: list[float | None] | None = None
    sensitivity: np.ndarray | None = field(default=None, repr=False)

    def aucs(self, mode: str) -> np.ndarray | None:
        """Per image, the area under the ``mode`` curve."""
        c = self.curves.get(mode)
        return None if c is None else np.array([curve_auc(row) for row in c])


def _mean_se(v: Any) -> tuple[float | None, float | None]:
    a = np.asarray([x for x in (v if v is not None else []) if x is not None], np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return None, None
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else None


def _fmt(v: float | None, se: float | None = None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" + (f"±{se:.3f}" if se is not None else "")


class Evaluation:
    """Which heatmap method can be trusted for a model on some images: every number, ranked.

    Attributes:
        model, framework: the model's name and framework.
        images: the images as loaded.
        inputs: ``(N, H, W, C)`` what the network saw.
        classes: ``(N,)`` the class explained per image.
        probabilities: ``(N,)`` its probability, for a classifier.
        metrics: the metrics computed.
        scores: method name -> :class:`MethodScores`.
        skipped: method name -> metric -> why it did not run.
        notes: what else the user should know.
        threshold: the similarity below which randomisation and random-logit pass.
        randomised_layers: the weighted layers in the order they were randomised (output first).
        curves: the deletion/insertion settings and the baselines' curves.
    """

    def __init__(self, *, model: str, framework: str, images: list[Image], inputs: np.ndarray, classes: np.ndarray,
                 probabilities: np.ndarray | None, class_names: list[str] | None, metrics: list[str],
                 scores: dict[str, MethodScores], skipped: dict[str, dict[str, str]], notes: list[str],
                 threshold: float, randomised_layers: list[str], curves: dict[str, Any], options: dict[str, Any],
                 preprocess_note: str | None = None) -> None:
        self.model, self.framework, self.images, self.inputs = model, framework, images, inputs
        self.classes, self.probabilities, self.class_names = classes, probabilities, class_names
        self.metrics, self.scores, self.skipped, self.notes = metrics, scores, skipped, list(notes)
        self.threshold, self.randomised_layers, self.curves, self.options = (threshold, randomised_layers, curves,
                                                                              options)
        if preprocess_note:
            self.notes.append(preprocess_note)
        self._pictures: dict[str, bytes] | None = None

    def __repr__(self) -> str:
        return (f"Evaluation({self.model!r}: {len(self.scores)} methods x {len(self.images)} images, "
                f"{', '.join(self.metrics)})")

    # ------------------------------------------------------------------ numbers

    def summary_of(self, name: str) -> dict[str, Any]:
        """One method's means (and standard errors) over the images, its verdicts and reasons."""
        s = self.scores[name]
        out: dict[str, Any] = {"method": name, "title": s.title, "cost_s": s.cost}
        fails: list[str] = []
        if s.rand_spearman is not None and len(s.rand_spearman):
            curve = s.rand_spearman.mean(axis=1)
            final, se = _mean_se(s.rand_spearman[-1])
            below = [i for i, v in enumerate(curve) if v < self.threshold]
            out["randomisation"] = {"spearman_final": final, "spearman_final_se": se,
                                    "ssim_final": float(s.rand_ssim[-1].mean()) if s.rand_ssim is not None else None,
                                    "spearman_curve": curve.tolist(),
                                    "ssim_curve": s.rand_ssim.mean(axis=1).tolist() if s.rand_ssim is not None else [],
                                    "below_threshold_at": self.randomised_layers[below[0]] if below else None,
                                    "passed": bool(final is not None and final < self.threshold),
                                    "seconds": s.rand_seconds}
            if not out["randomisation"]["passed"]:
                fails.append(f"its map barely changes when the network's weights are randomised (Spearman "
                             f"{final:.2f} with every layer random, threshold {self.threshold:g}), so it reflects "
                             "the image more than the model")
        if s.logit_ssim is not None:
            m, se = _mean_se(s.logit_ssim)
            ms, _ = _mean_se(s.logit_spearman)
            out["random-logit"] = {"ssim": m, "ssim_se": se, "spearman": ms,
                                   "passed": bool(m is not None and m < self.threshold)}
            if not out["random-logit"]["passed"]:
                fails.append(f"its map for a random other class is nearly the same (SSIM {m:.2f}), so it does "
                             "not show why the model chose this class")
        for mode in ("deletion", "insertion"):
            a = s.aucs(mode)
            if a is None:
                continue
            m, se = _mean_se(a)
            base = self.curves.get("baselines", {})
            rand = _mean_se([curve_auc(c) for c in base.get("random", {}).get(mode, [])])[0]
            edge = _mean_se([curve_auc(c) for c in base.get("edges", {}).get(mode, [])])[0]
            better = (m is not None and rand is not None and (m < rand if mode == "deletion" else m > rand))
            out[mode] = {"auc": m, "auc_se": se, "random_auc": rand, "edges_auc": edge,
                         "beats_random": bool(better),
                         "beats_edges": bool(m is not None and edge is not None
                                             and (m < edge if mode == "deletion" else m > edge)),
                         "curve": s.curves[mode].mean(axis=0).tolist(), "seconds": s.curve_seconds.get(mode)}
            if not better:
                verb = "lowers the score no faster" if mode == "deletion" else "raises the score no faster"
                fails.append(f"{'deleting' if mode == 'deletion' else 'inserting'} pixels in its order {verb} than "
                             f"a random order (AUC {m:.3f} vs {rand:.3f})")
        if s.pointing is not None:
            hits = [h for h in s.pointing if h is not None]
            out["pointing"] = {"accuracy": float(np.mean(hits)) if hits else None, "images": len(hits),
                               "energy": _mean_se(s.energy)[0]}
        if s.sensitivity is not None:
            m, se = _mean_se(s.sensitivity)
            out["stability"] = {"max_sensitivity": m, "max_sensitivity_se": se}
        out["fails"] = fails
        out["skipped"] = dict(self.skipped.get(name, {}))
        return out

    def _value(self, summary: dict[str, Any], metric: str) -> float | None:
        key = {"randomisation": ("randomisation", "spearman_final"), "random-logit": ("random-logit", "ssim"),
               "deletion": ("deletion", "auc"), "insertion": ("insertion", "auc"),
               "pointing": ("pointing", "accuracy"), "energy": ("pointing", "energy"),
               "stability": ("stability", "max_sensitivity")}[metric]
        v = summary.get(key[0], {}).get(key[1])
        return None if v is None or not np.isfinite(v) else float(v)

    def ranking(self) -> list[dict[str, Any]]:
        """The methods, best first: fewest failed checks, then the best mean rank over the metrics."""
        summaries = {name: self.summary_of(name) for name in self.scores}
        ranks: dict[str, list[float]] = {name: [] for name in summaries}
        for metric, (_, higher) in COLUMNS.items():
            vals = {n: self._value(s, metric) for n, s in summaries.items()}
            have = {n: v for n, v in vals.items() if v is not None}
            if len(have) < 2:
                continue
            ordered = sorted(have.values(), reverse=higher)
            for n, v in have.items():
                pos = [i for i, o in enumerate(ordered) if o == v]
                ranks[n].append(1 + float(np.mean(pos)))
        rows = []
        for n, s in summaries.items():
            s["mean_rank"] = float(np.mean(ranks[n])) if ranks[n] else None
            rows.append(s)
        rows.sort(key=lambda r: (len(r["fails"]), r["mean_rank"] if r["mean_rank"] is not None else 1e9))
        for i, r in enumerate(rows, start=1):
            r["rank"] = i
        return rows

    def table(self, rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[str]]]:
        """The table's column labels (metrics computed) and each method's cells, by method name."""
        shown = [m for m in COLUMNS if any(self._value(r, m) is not None for r in rows)]
        cells = {}
        for r in rows:
            vals = [self._value(r, m) for m in shown]
            cells[r["method"]] = ["-" if v is None else f"{v:.3f}" for v in vals]
        return [COLUMNS[m][0] for m in shown], cells

    def summary(self) -> str:
        """The terminal table: methods ranked, the best and the failing ones named and why."""
        rows = self.ranking()
        shown = [m for m in COLUMNS if any(self._value(r, m) is not None for r in rows)]
        head = ["#", "method", *[COLUMNS[m][0] for m in shown], "s/image", "verdict"]
        body = []
        for r in rows:
            cells = [str(r["rank"]), r["title"]]
            for m in shown:
                v = self._value(r, m)
                se = {"randomisation": r.get("randomisation", {}).get("spearman_final_se"),
                      "random-logit": r.get("random-logit", {}).get("ssim_se"),
                      "deletion": r.get("deletion", {}).get("auc_se"),
                      "insertion": r.get("insertion", {}).get("auc_se"),
                      "stability": r.get("stability", {}).get("max_sensitivity_se")}.get(m)
                cells.append(_fmt(v, se))
            cells.append(f"{r['cost_s']:.3g}")
            cells.append("fails " + str(len(r["fails"])) if r["fails"] else "passes")
            body.append(cells)
        widths = [max(len(str(row[i])) for row in [head, *body]) for i in range(len(head))]
        lines = [f"{self.model} ({self.framework}): {len(self.images)} images, "
                 f"{len(rows)} methods, threshold {self.threshold:g}"]
        base = self.curves.get("baselines", {})
        if base:
            parts = []
            for mode in ("deletion", "insertion"):
                if mode in base.get("random", {}):
                    r_auc = np.mean([curve_auc(c) for c in base["random"][mode]])
                    e_auc = np.mean([curve_auc(c) for c in base["edges"][mode]])
                    parts.append(f"{mode} AUC random map {r_auc:.3f}, edge map {e_auc:.3f}")
            lines.append("baselines: " + "; ".join(parts) + f" (replacement {self.curves['replace']}, "
                         f"{self.curves['steps']} steps, superpixels {self.curves['patch']} px)")
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
        good = [r for r in rows if not r["fails"]]
        if good:
            rank = good[0]["mean_rank"]
            lines.append(f"best: {good[0]['title']} (passes every check"
                         + (f"; mean rank {rank:.1f})" if rank is not None else ")"))
        else:
            lines.append(f"best: none passes every check; the fewest failures: {rows[0]['title']}")
        for r in rows:
            for why in r["fails"]:
                lines.append(f"{r['title']}: {why}.")
        for name, items in self.skipped.items():
            for metric, why in items.items():
                lines.append(f"not run: {metric} for {name}: {why}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Every number, JSON-ready: the settings, per method its summary and per-image values."""
        rows = self.ranking()
        for r in rows:
            s = self.scores[r["method"]]
            per = []
            for i, im in enumerate(self.images):
                rec: dict[str, Any] = {"image": im.name, "class": int(self.classes[i])}
                if s.rand_spearman is not None:
                    rec["randomisation_spearman"] = s.rand_spearman[:, i].tolist()
                    rec["randomisation_ssim"] = s.rand_ssim[:, i].tolist() if s.rand_ssim is not None else None
                if s.logit_ssim is not None and s.logit_classes is not None and s.logit_spearman is not None:
                    rec["random_logit"] = {"class": int(s.logit_classes[i]), "ssim": float(s.logit_ssim[i]),
                                           "spearman": float(s.logit_spearman[i])}
                for mode in ("deletion", "insertion"):
                    if mode in s.curves:
                        rec[mode] = {"auc": curve_auc(s.curves[mode][i]), "curve": s.curves[mode][i].tolist()}
                if s.pointing is not None and s.energy is not None:
                    rec["pointing"] = {"hit": s.pointing[i], "energy": s.energy[i]}
                if s.sensitivity is not None:
                    rec["max_sensitivity"] = float(s.sensitivity[i])
                per.append(rec)
            r["images"] = per
        base = {k: {m: np.asarray(v).tolist() for m, v in modes.items()}
                for k, modes in self.curves.get("baselines", {}).items()}
        return jsonable({"model": self.model, "framework": self.framework, "metrics": self.metrics,
                         "threshold": self.threshold, "options": self.options,
                         "images": [im.record() for im in self.images],
                         "classes": self.classes.tolist(),
                         "probabilities": None if self.probabilities is None else self.probabilities.tolist(),
                         "randomised_layers": self.randomised_layers,
                         "curves": {k: v for k, v in self.curves.items() if k != "baselines"},
                         "baselines": base, "ranking": rows, "skipped": self.skipped, "notes": self.notes})

    # ------------------------------------------------------------------ pictures and files

    def pictures(self) -> dict[str, bytes]:
        """PNG bytes by file name: ``randomisation_strips.png``, ``randomisation.png``,
        ``deletion.png``, ``insertion.png`` (those whose metric was computed)."""
        if self._pictures is not None:
            return self._pictures
        pics: dict[str, bytes] = {}
        with_strip = {n: s for n, s in self.scores.items() if s.strip is not None and s.rand_spearman is not None}
        if with_strip and self.randomised_layers:
            rows = {s.title: np.concatenate([s.maps[:1], s.strip]) for s in with_strip.values()}
            marks = {}
            for s in with_strip.values():
                below = np.flatnonzero(s.rand_spearman[:, 0] < self.threshold)  # type: ignore[index]
                marks[s.title] = int(below[0]) + 1 if below.size else None
            pics["randomisation_strips.png"] = strip_picture(rows, ["trained", *self.randomised_layers],
                                                             marks=marks, image=self.inputs[0])
            series = {s.title: s.rand_spearman.mean(axis=1) for s in with_strip.values()}  # type: ignore[union-attr]
            pics["randomisation.png"] = curve_chart(
                list(range(1, len(self.randomised_layers) + 1)), series, threshold=self.threshold,
                title="Cascading randomisation: Spearman with the trained model's map (mean over images)",
                x_label="layers randomised, from the output down", y_label="Spearman", y_range=(-0.2, 1.0))
        base = self.curves.get("baselines", {})
        for mode in ("deletion", "insertion"):
            have = {s.title: s.curves[mode].mean(axis=0) for s in self.scores.values() if mode in s.curves}
            if not have:
                continue
            have["random map"] = np.asarray(base["random"][mode]).mean(axis=0)
            have["edge map (Sobel)"] = np.asarray(base["edges"][mode]).mean(axis=0)
            steps = int(self.curves["steps"])
            pics[f"{mode}.png"] = curve_chart(
                [k / steps for k in range(steps + 1)], have, y_range=(0.0, 1.0),
                title=f"{mode.capitalize()}: class probability (mean over images)",
                x_label=f"fraction of pixels {'removed' if mode == 'deletion' else 'inserted'}",
                y_label="probability")
        self._pictures = pics
        return pics

    def html(self) -> str:
        """The self-contained page (``evaluate.html``)."""
        from .page import render_page

        return render_page(self)

    def save(self, out: str | os.PathLike[str]) -> Path:
        """Write ``index.json`` (every number, key ``evaluate``), ``evaluate.html`` and the PNG curves.

        Files: ``evaluate/*.png`` and ``evaluate.html`` in ``out``; written atomically.

        Returns:
            The path of ``out/index.json``.
        """
        out_path = Path(out)
        data = self.to_json()
        with OutputDir(out_path) as staging:
            for name, png in self.pictures().items():
                staging.write_bytes(f"evaluate/{name}", png)
            staging.write_text("evaluate.html", self.html())
            meta = {k: v for k, v in data.items() if k != "ranking"}
            meta["files"] = {"page": "evaluate.html", **{n: f"evaluate/{n}" for n in self.pictures()}}
            rows = [{**r, "file": "evaluate.html"} for r in data["ranking"]]
            write_index(staging, "evaluate", rows, {"evaluation": meta})
        return out_path / "index.json"

    def _repr_html_(self) -> str:
        from ..output import png_figure_html, pre_html

        parts = [pre_html(self.summary())]
        for name, png in self.pictures().items():
            parts.append(png_figure_html(png, name, pixelated=False, inline=True))
        return "<div>" + "".join(parts) + "</div>"
