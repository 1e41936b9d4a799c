"""What a comparison found: :class:`Comparison`, with its terminal summary, index.json, pictures and page."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .heat import HeatmapDiff
    from .topk import KeptLayer

__all__ = ["CASES", "CKAMatrix", "Comparison", "PairResult"]

#: The three situations a comparison recognises (see :func:`convlens.compare`).
CASES = {
    "forms": "the same network in two forms (an export, a conversion, a quantisation)",
    "checkpoints": "two checkpoints of one architecture",
    "architectures": "two different architectures",
}


@dataclass
class PairResult:
    """The figures of one pair of layers (A is the reference).

    Attributes:
        a, b: the layers' names in A and in B.
        kind: the layers' kind (conv, act, pool, dense, ...).
        how: how they were paired: ``"name"``, ``"structure"`` or ``"file"``.
        fused: when B's layer stands for a chain A computes in several
            operations (a fused ReLU or BatchNorm), which one it was found to
            match, in words; else ``None``.
        max_abs: ``max |a - b|`` over all images and values.
        rel_error: ``||a - b|| / ||a||``.
        cosine: ``<a, b> / (||a|| ||b||)``.
        sqnr_db: ``10 log10(sum a^2 / sum (a - b)^2)``; ``inf`` when equal.
        cka: linear CKA of the two layers over the images (minibatch estimator),
            ``None`` with fewer than 4 images.
        weight_change: ``||W_b - W_a|| / ||W_a||`` of the layers' kernels, when both have one
            of the same shape (conv layers; see :func:`convlens.compare`).
        worst_channels: the channels with the largest relative error, worst first.
        role_change: the channels whose spatial mean correlates least across the images
            between A and B, lowest first (``{"channel", "correlation"}``).
        note: why some figure is missing.
    """

    a: str
    b: str
    kind: str
    how: str
    fused: str | None = None
    max_abs: float | None = None
    rel_error: float | None = None
    cosine: float | None = None
    sqnr_db: float | None = None
    cka: float | None = None
    weight_change: float | None = None
    worst_channels: list[dict[str, Any]] = field(default_factory=list)
    role_change: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None

    @property
    def label(self) -> str:
        return self.a if self.a == self.b else f"{self.a} ~ {self.b}"


@dataclass
class CKAMatrix:
    """Linear CKA between every selected layer of A (rows) and of B (columns).

    Attributes:
        layers_a, layers_b: the layers' names.
        values: ``values[i][j]``, CKA of A's layer i and B's layer j (``None`` where undefined).
    """

    layers_a: list[str]
    layers_b: list[str]
    values: list[list[float | None]]

    def best_match(self) -> list[tuple[str, str | None, float | None]]:
        """For each layer of A, the layer of B most similar to it and their CKA."""
        out: list[tuple[str, str | None, float | None]] = []
        for name, row in zip(self.layers_a, self.values):
            known = [(v, j) for j, v in enumerate(row) if v is not None]
            if not known:
                out.append((name, None, None))
                continue
            v, j = max(known)
            out.append((name, self.layers_b[j], v))
        return out


def _num(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}g}"


@dataclass
class Comparison:
    """Where two networks part ways, layer by layer (see :func:`convlens.compare`).

    Attributes:
        a, b: the two models' names (A is the reference).
        frameworks: the two frameworks.
        case: a key of :data:`CASES`.
        images: the number of images compared.
        metric: the figure the divergence is judged by (``rel``, ``max_abs``, ``cosine``, ``sqnr``, ``cka``).
        tolerance: the threshold of that figure beyond which a pair diverges.
        pairing: ``"automatic"`` or ``"file"``.
        pairs: per pair of layers, in A's execution order.
        unpaired_a, unpaired_b: layers with no partner.
        first_divergence: index into ``pairs`` of the first pair beyond the tolerance, else ``None``.
        worst: index into ``pairs`` of the pair with the lowest SQNR, else ``None``.
        output: the figures of the two models' outputs (keys as in :class:`PairResult`), or ``None``.
        output_note: why the outputs were not compared, if they were not.
        flips: per image whose top-1 class differs: ``{"image", "a", "b"}`` (class indexes, names when known).
        top1_agreement: the fraction of images with the same top-1 class, or ``None``.
        cka_matrix: the different-architectures CKA matrix, or ``None``.
        notes: what the reader should know (preparation, guesses, missing figures).
        pictures: file name -> PNG bytes (error growth, maps, the CKA matrix, heatmaps).
        topk: with two dataset folders, per paired layer in both, how much of each
            channel's top-k image set B kept (:class:`~convlens.compare.topk.KeptLayer`).
        heatmaps: per image, Grad-CAM of A and B compared
            (:class:`~convlens.compare.heat.HeatmapDiff`); two checkpoints by default.
    """

    a: str
    b: str
    frameworks: tuple[str, str]
    case: str
    images: int
    metric: str
    tolerance: float
    pairing: str
    pairs: list[PairResult]
    unpaired_a: list[str]
    unpaired_b: list[str]
    first_divergence: int | None
    worst: int | None
    output: dict[str, Any] | None
    output_note: str | None
    flips: list[dict[str, Any]]
    top1_agreement: float | None
    cka_matrix: CKAMatrix | None
    notes: list[str]
    pictures: dict[str, bytes] = field(default_factory=dict, repr=False)
    topk: list[KeptLayer] = field(default_factory=list)
    heatmaps: list[HeatmapDiff] = field(default_factory=list)

    # ------------------------------------------------------------------ reading

    @property
    def case_text(self) -> str:
        """The case in words."""
        return CASES[self.case]

    @property
    def divergent(self) -> PairResult | None:
        """The first pair beyond the tolerance, or ``None``."""
        return self.pairs[self.first_divergence] if self.first_divergence is not None else None

    def pair(self, name: str) -> PairResult:
        """The pair whose A (or B) layer is named ``name``.

        Raises:
            KeyError: no pair holds that layer.
        """
        for p in self.pairs:
            if name in (p.a, p.b):
                return p
        raise KeyError(name)

    def summary(self) -> str:
        """The terminal summary: the case, the pairs, the first divergence, the top-1 flips."""
        lines = [f"compare {self.a} ({self.frameworks[0]}) with {self.b} ({self.frameworks[1]}) "
                 f"over {self.images} image{'s' if self.images != 1 else ''}: {CASES[self.case]}"]
        lines.append(f"pairs: {len(self.pairs)} ({self.pairing}); unpaired: {_listed(self.unpaired_a)} in A, "
                     f"{_listed(self.unpaired_b)} in B")
        if self.pairs:
            width = min(max(len(p.label) for p in self.pairs), 48)
            lines.append(f"  {'layer':<{width}}  {'max abs':>9}  {'rel err':>9}  {'cosine':>8}  {'SQNR dB':>8}"
                         f"  {'CKA':>6}  {'dW':>8}")
            for i, p in enumerate(self.pairs):
                mark = " <- first divergence" if i == self.first_divergence else (
                    " <- worst" if i == self.worst and self.case != "architectures" else "")
                lines.append(f"  {p.label[:width]:<{width}}  {_num(p.max_abs):>9}  {_num(p.rel_error):>9}  "
                             f"{_num(p.cosine, 6):>8}  {_num(p.sqnr_db):>8}  {_num(p.cka):>6}  "
                             f"{_num(p.weight_change):>8}{mark}")
        if self.first_divergence is not None:
            p = self.pairs[self.first_divergence]
            lines.append(f"first divergence: {p.label} ({self.metric} beyond {self.tolerance:g}: "
                         f"relative error {_num(p.rel_error)}, SQNR {_num(p.sqnr_db)} dB)")
        elif self.pairs and self.case != "architectures":
            lines.append(f"no divergence: every pair within {self.metric} {self.tolerance:g}")
        if self.worst is not None and self.case != "architectures":
            p = self.pairs[self.worst]
            lines.append(f"worst layer: {p.label} (SQNR {_num(p.sqnr_db)} dB)")
        if self.output is not None:
            lines.append(f"outputs: max abs {_num(self.output['max_abs'])}, relative error "
                         f"{_num(self.output['rel_error'])}, SQNR {_num(self.output['sqnr_db'])} dB")
        if self.output_note:
            lines.append(f"note: {self.output_note}")
        if self.top1_agreement is not None:
            lines.append(f"top-1 flips: {len(self.flips)} of {self.images} images"
                         + (": " + ", ".join(f"image {f['image']} {f['a']} -> {f['b']}" for f in self.flips[:8])
                            if self.flips else ""))
        if self.topk:
            lines.append(f"top-k images kept (dataset folders, k={self.topk[0].k}): layer mean; channels that "
                         "kept least")
            for t in self.topk:
                least = ", ".join(f"{c['channel']} ({_num(c['kept'], 2)})" for c in t.least)
                lines.append(f"  {t.a if t.a == t.b else t.a + ' ~ ' + t.b}: {_num(t.mean, 3)}; {least or '-'}")
        if self.heatmaps:
            lines.append("Grad-CAM of A's top-1 class in A and in B (Spearman of the two maps; top-1 of A -> B):")
            for h in self.heatmaps:
                lines.append(f"  image {h.name}: {_num(h.spearman, 3)}; {h.top1_a} -> {h.top1_b}")
        if self.cka_matrix is not None:
            lines.append("CKA best match per layer of A:")
            for name, other, v in self.cka_matrix.best_match():
                lines.append(f"  {name} -> {other if other is not None else '-'} ({_num(v)})")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------------ writing

    def to_json(self) -> dict[str, Any]:
        """Everything but the pictures, JSON-ready (infinities and nan become ``None``)."""
        return {
            "kind": "compare",
            "convlens": __version__,
            "a": {"model": self.a, "framework": self.frameworks[0]},
            "b": {"model": self.b, "framework": self.frameworks[1]},
            "case": self.case,
            "case_text": CASES[self.case],
            "images": self.images,
            "metric": self.metric,
            "tolerance": self.tolerance,
            "pairing": self.pairing,
            "pairs": [_clean(asdict(p)) for p in self.pairs],
            "unpaired": {"a": list(self.unpaired_a), "b": list(self.unpaired_b)},
            "first_divergence": self.divergent.a if self.divergent is not None else None,
            "first_divergence_b": self.divergent.b if self.divergent is not None else None,
            "worst": self.pairs[self.worst].a if self.worst is not None else None,
            "output": _clean(self.output),
            "output_note": self.output_note,
            "top1_agreement": self.top1_agreement,
            "flips": _clean(self.flips),
            "cka_matrix": _clean(asdict(self.cka_matrix)) if self.cka_matrix is not None else None,
            "topk_kept": [_clean(asdict(t)) for t in self.topk],
            "heatmaps": [_clean(asdict(h)) for h in self.heatmaps],
            "notes": list(self.notes),
            "pictures": sorted(self.pictures),
        }

    def html(self) -> str:
        """The self-contained ``compare.html`` page."""
        from .page import render_page

        return render_page(self)

    def save(self, out: str | os.PathLike[str]) -> Path:
        """Write ``index.json``, ``compare.html`` and the PNG pictures into the folder ``out``, atomically.

        Returns:
            The path of the ``index.json`` written.

        Raises:
            OutputError: the folder cannot be written (nothing is then).
        """
        from ..output import OutputDir, dumps_json

        page = self.html().encode("utf-8")
        with OutputDir(out) as folder:
            for name, png in self.pictures.items():
                folder.write_bytes(name, png)
            folder.write_bytes("compare.html", page)
            folder.write_bytes("index.json", (dumps_json(self.to_json()) + "\n").encode("utf-8"))
        return folder.path / "index.json"

    def _repr_html_(self) -> str:
        from ..output import png_figure_html, pre_html

        name = "errors.png" if "errors.png" in self.pictures else "cka.png"
        pic = self.pictures.get(name)
        caption = "relative error per layer pair" if name == "errors.png" else "CKA between the layers of A and B"
        return "<div>" + pre_html(self.summary()) + (png_figure_html(pic, caption) if pic else "") + "</div>"


def _listed(names: list[str], most: int = 6) -> str:
    """``3 (a, b, c)``; ``0``; the first ``most`` names, then ``...``."""
    if not names:
        return "0"
    shown = ", ".join(names[:most]) + (", ..." if len(names) > most else "")
    return f"{len(names)} ({shown})"


def _clean(value: Any) -> Any:
    """Non-finite floats as ``None`` (JSON has no infinity), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
