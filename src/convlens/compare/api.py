"""``convlens.compare(a, b, images)``: where two networks part ways, layer by layer."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._errors import BadArgument, ConvlensError
from ..core.cka import MIN_BATCH
from ..core.layers import LayerInfo
from ..model import Model, as_model
from . import charts
from .heat import heatmap_differences
from .pairing import Pair, Pairing, no_pairs_error, pair_layers, pairs_from_names, read_pairs
from .result import CKAMatrix, Comparison, PairResult
from .run import Side, Streamed, stream
from .topk import common_layers, load_datasets, top_k_kept

__all__ = ["METRICS", "compare"]

#: Divergence metrics: figure of :class:`PairResult`, whether larger is worse, default tolerance.
METRICS: dict[str, tuple[str, bool, float]] = {
    "rel": ("rel_error", True, 1e-3),
    "max_abs": ("max_abs", True, 1e-3),
    "cosine": ("cosine", False, 0.9999),
    "sqnr": ("sqnr_db", False, 40.0),
    "cka": ("cka", False, 0.99),
}

#: Below this share of the smaller network's layers paired, two networks are different architectures.
SAME_NETWORK_SHARE = 0.5
#: Above this relative weight change in some layer, two networks of one architecture are two checkpoints.
CHECKPOINT_CHANGE = 1e-2
#: Bytes of A's paired outputs one batch may hold (the default batch size follows from it).
MEMORY_BUDGET = 512 * 2**20


def _open(model: Any, *, weights: str | None, preprocess: str | None) -> Model:
    if weights is None and preprocess is None:
        return as_model(model)
    if isinstance(model, Model) or isinstance(getattr(model, "model", None), Model):
        return as_model(model)
    return Model.open(model, weights=weights, preprocess=preprocess)


def _per_side(value: Any, what: str) -> tuple[Any, Any]:
    if isinstance(value, tuple) and len(value) == 2 and not all(isinstance(v, int) for v in value):
        return value
    if isinstance(value, list) and len(value) == 2 and what != "size":
        return value[0], value[1]
    return value, value


def _bytes_per_image(layers: Sequence[LayerInfo], input_shape: tuple[int, ...]) -> int:
    """About how many bytes the outputs of ``layers`` take per image (free dimensions: the input's size)."""
    total = 0
    for layer in layers:
        shape = layer.output_shape or ()
        known = int(np.prod([int(d) for d in shape if d is not None] or [1]))
        free = sum(d is None for d in shape)
        total += known * (int(np.prod(input_shape[:2])) if free else 1)
    return 4 * total


def _kernel_change(ma: Model, mb: Model, pair: Pair) -> float | None:
    a, b = pair.a, pair.b
    if not (a.kernel_shape and b.kernel_shape and tuple(a.kernel_shape) == tuple(b.kernel_shape)):
        return None
    try:
        ka = np.asarray(ma.adapter.kernels(a.index), np.float64)
        kb = np.asarray(mb.adapter.kernels(b.index), np.float64)
    except (ConvlensError, NotImplementedError):
        return None
    if ka.shape != kb.shape:
        return None
    norm = float(np.linalg.norm(ka))
    diff = float(np.linalg.norm(kb - ka))
    return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)


def _may_fold_norm(pair: Pair) -> bool:
    """Whether one side of ``pair`` may have a BatchNorm folded into its kernel (a norm layer in its chain)."""
    return any(x.kind == "norm" or y.kind == "norm" for x, y in pair.candidates)


def _diverges(value: float | None, larger_worse: bool, tolerance: float) -> bool:
    if value is None:
        return False
    return value > tolerance if larger_worse else value < tolerance


def compare(a: Any, b: Any, images: Any, *, layers: str | Sequence[str] | None = None,
            pairs: str | os.PathLike[str] | Sequence[tuple[str, str]] | None = None,
            size: int | Sequence[int] | tuple[Any, Any] | None = None,
            preprocess: str | tuple[str | None, str | None] | None = None,
            weights: str | tuple[str | None, str | None] | None = None,
            metric: str = "rel", tolerance: float | None = None, batch_size: int | None = None,
            cka: bool | None = None, labels: Sequence[str] | None = None,
            datasets: tuple[Any, Any] | None = None, heatmaps: bool | None = None) -> Comparison:
    """Compare two networks layer by layer over the same images.

    It recognises three cases:

    * **the same network in two forms** (PyTorch and its ONNX export, Keras
      and its TFLite conversion, float and int8): layers are paired by name,
      else by position, kind, width and kernel; per pair the maximum absolute
      error, the relative error, the cosine and the SQNR (dB), the worst
      channels; the first pair beyond ``tolerance``; side-by-side maps; top-1 flips.
    * **two checkpoints of one architecture**: the same, plus the relative
      change of each conv kernel, the CKA drift per layer and the channels
      whose role changed most (the correlation of their spatial mean across
      the images). Only kernels are compared: the adapters expose conv
      kernels, not dense or normalisation weights, whose change is ``None``.
      With ``datasets``, how much of each channel's top-k image set B kept;
      and Grad-CAM of A and B on the first 8 images (A's top-1 class in both):
      the Spearman correlation of the two maps, both top-1 classes and
      A | B | |A - B| overlays (gradient-capable models only: on TFLite a
      note says they were not computed).
    * **two different architectures** (less than half of the smaller network's
      layers pair): the linear CKA between every selected layer of A and of B
      (Kornblith et al. 2019) with the unbiased minibatch estimator of Nguyen
      et al. 2021, so any number of images streams in bounded memory.

    Args:
        a, b: anything :meth:`Model.open` accepts (a model object, a file, a
            name), a :class:`~convlens.Model` or a ``Lens``. A is the reference.
        images: one image or a list (paths, arrays, PIL images); paths are
            loaded batch by batch.
        layers: layer selection (:mod:`convlens.selection`) of A's pairs to
            keep, and of both sides' layers for the CKA matrix (default: every
            pair; ``conv`` for the matrix).
        pairs: a CSV file of ``a,b`` layer names, or a list of name pairs:
            replaces the automatic pairing.
        size: ``H``/``(H, W)`` for free-size models, or ``(size_a, size_b)``.
        preprocess: a preset for both, or ``(preset_a, preset_b)``.
        weights: zoo models' weights for both, or ``(weights_a, weights_b)``.
        metric: the figure that decides divergence: ``rel`` (relative error,
            default), ``max_abs``, ``cosine``, ``sqnr`` (dB) or ``cka``.
        tolerance: the threshold of ``metric``; defaults 1e-3, 1e-3, 0.9999, 40 dB, 0.99.
        batch_size: images per forward pass (default: what 512 MB of A's paired
            outputs allow, 4 to 32; at least 4 for CKA).
        cka: compute the CKA of every pair; default: for two checkpoints, two
            architectures and ``metric="cka"``, not for two forms of one
            network of one input size (their CKA is 1 to many digits, and a
            Gram matrix per layer and batch is a tenth of the time on VGG16).
        labels: class names for the top-1 flips (default the models' own).
        datasets: ``(folder_a, folder_b)``: two folders written by ``convlens
            dataset`` (or :class:`~convlens.DatasetResult`), A's and B's runs
            over the same data; per paired layer in both and channel, the share
            ``|top_k(A) ∩ top_k(B)| / k`` of its top-k images B kept (images
            matched by name), each layer's mean and the channels that kept least.
        heatmaps: compare Grad-CAM maps per image; default only for two checkpoints.

    Returns:
        A :class:`Comparison`.

    Raises:
        BadArgument: an unknown metric, a bad tolerance or batch size, no image; ``datasets``
            that are not two dataset folders, or that hold no paired layer.
        LayerNotFound: a ``pairs`` row names a layer its model lacks.
        UnsupportedModel: no layer could be paired and there are too few images for CKA.
    """
    if metric not in METRICS:
        raise BadArgument(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    figure, larger_worse, default_tol = METRICS[metric]
    tol = float(default_tol if tolerance is None else tolerance)
    if not math.isfinite(tol) or (larger_worse and tol < 0):
        raise BadArgument(f"tolerance {tolerance!r} must be a finite number (at least 0 for {metric})")
    if batch_size is not None and int(batch_size) < 1:
        raise BadArgument(f"batch_size must be at least 1, got {batch_size}")
    weights_a, weights_b = _per_side(weights, "weights")
    pre_a, pre_b = _per_side(preprocess, "preprocess")
    size_a, size_b = (size if isinstance(size, tuple) and len(size) == 2 and not all(isinstance(s, int)
                      for s in size) else (size, size))
    model_a = _open(a, weights=weights_a, preprocess=pre_a)
    model_b = _open(b, weights=weights_b, preprocess=pre_b)
    batch_array = isinstance(images, np.ndarray) and images.ndim == 4  # (n, H, W, C)
    image_list = list(images) if isinstance(images, (list, tuple)) or batch_array else [images]
    if not image_list:
        raise BadArgument("no image to compare on; give at least one image (4 or more for CKA)")

    table_a, table_b = model_a.layers(), model_b.layers()
    if pairs is not None:
        pairing = pairs_from_names(table_a, table_b, read_pairs(pairs), (model_a.name, model_b.name))
    else:
        pairing = pair_layers(table_a, table_b)
    smaller = min(sum(x.kind != "input" for x in table_a), sum(y.kind != "input" for y in table_b))
    different = pairs is None and len(pairing.pairs) < SAME_NETWORK_SHARE * max(smaller, 1)
    if not pairing.pairs and len(image_list) < MIN_BATCH:
        raise no_pairs_error(model_a.name, model_b.name)
    if layers is not None and pairing.pairs:
        keep = {x.index for x in model_a.select(layers)}
        pairing = Pairing([p for p in pairing.pairs if p.a.index in keep], pairing.unpaired_a,
                          pairing.unpaired_b, pairing.how)
    kept_from = load_datasets(datasets) if datasets is not None else None
    if kept_from is not None:
        names = [(x.name, y.name) for p in pairing.pairs for x, y in (p.candidates or [(p.a, p.b)])]
        if not common_layers(*kept_from, names):
            shown = ", ".join(ex.layer.name for ex in kept_from[0].layers[:6]) or "none"
            raise BadArgument(f"no paired layer is in both dataset folders (A's holds {shown}); run `convlens "
                              "dataset` with each model on the same data and the same --layers")
    matrix_layers = None
    if different:
        matrix_layers = (model_a.select(layers or "conv"), model_b.select(layers or "conv"))

    compared: list[tuple[LayerInfo, LayerInfo]] = []
    for p in pairing.pairs:
        compared.extend(p.candidates or [(p.a, p.b)])
    changes = [_kernel_change(model_a, model_b, p) for p in pairing.pairs]
    # a kernel with a BatchNorm folded into it differs by design: it does not make two checkpoints
    known = [c for c, p in zip(changes, pairing.pairs) if c is not None and not _may_fold_norm(p)]
    case = ("architectures" if different else
            "checkpoints" if known and max(known) > CHECKPOINT_CHANGE else "forms")
    sizes_differ = (model_a.input_shape[:2] != model_b.input_shape[:2] and None not in model_a.input_shape[:2]
                    and None not in model_b.input_shape[:2]) or size_a != size_b
    # layers of different sizes can only be compared by CKA
    with_cka = bool(cka) if cka is not None else (case != "forms" or metric == "cka" or sizes_differ)
    if batch_size is None:
        per_image = _bytes_per_image([x for x, _ in compared], tuple(int(d or 224) for d in model_a.input_shape))
        batch_size = int(min(32, max(MIN_BATCH, MEMORY_BUDGET // max(per_image, 1))))

    streamed = stream(Side(model_a, size_a, pre_a), Side(model_b, size_b, pre_b), image_list, compared,
                      matrix_layers=matrix_layers, pair_cka=with_cka, batch_size=int(batch_size))
    result = _result(model_a, model_b, pairing, streamed, case, changes, metric, figure, larger_worse, tol,
                     labels, matrix_layers)
    if not with_cka and pairing.pairs:
        result.notes.append("the CKA of each pair was not computed for two forms of one network (cka=True, "
                            "--cka computes it)")
    if kept_from is not None:
        result.topk, notes = top_k_kept(*kept_from, [(p.a, p.b) for p in result.pairs])
        result.notes.extend(notes)
    if heatmaps if heatmaps is not None else case == "checkpoints":
        diffs, pictures, notes = heatmap_differences(model_a, model_b, image_list, size_a=size_a, size_b=size_b,
                                                     preprocess_a=pre_a, preprocess_b=pre_b, labels=labels)
        result.heatmaps = diffs
        result.pictures.update(pictures)
        result.notes.extend(notes)
    return result


def _result(ma: Model, mb: Model, pairing: Pairing, s: Streamed, case: str, changes: Sequence[float | None],
            metric: str, figure: str, larger_worse: bool, tol: float, labels: Sequence[str] | None,
            matrix_layers: tuple[Sequence[LayerInfo], Sequence[LayerInfo]] | None) -> Comparison:
    cka = s.pair_cka.matrix() if s.pair_cka is not None and s.pair_cka.batches else None
    pair_rows_a, pair_rows_b = s.pair_rows
    results: list[PairResult] = []
    chosen: list[tuple[int, int]] = []
    for p, change in zip(pairing.pairs, changes):
        options = list(p.candidates or [(p.a, p.b)])
        scored = [(s.stats[(x.index, y.index)].figures()["rel_error"], k) for k, (x, y) in enumerate(options)
                  if (x.index, y.index) in s.stats]
        k = min(scored)[1] if scored else 0
        x, y = options[k]
        key = (x.index, y.index)
        chosen.append(key)
        r = PairResult(x.name, y.name, x.kind, p.how)
        if k > 0:
            fused_side = "B" if x.index != p.a.index else "A"
            r.fused = (f"{y.name} computes {p.a.name} to {x.name} in one operation" if fused_side == "B"
                       else f"{x.name} computes {p.b.name} to {y.name} in one operation")
            if any(u.kind == "norm" or v.kind == "norm" for u, v in options[1:k + 1]):
                r.fused += "; its kernel has the BatchNorm folded in"
                change = None  # the kernels differ by the folding, not by training
        stats = s.stats.get(key)
        if stats is not None:
            f = stats.figures()
            r.max_abs, r.rel_error, r.cosine, r.sqnr_db = f["max_abs"], f["rel_error"], f["cosine"], f["sqnr_db"]
            r.worst_channels = f["worst_channels"]
            corr = stats.channel_correlation()
            order = [int(c) for c in np.argsort(np.nan_to_num(corr, nan=2.0))[:5] if np.isfinite(corr[c])]
            r.role_change = [{"channel": c, "correlation": float(corr[c])} for c in order]
            if f["nonfinite"]:
                r.note = f"{f['nonfinite']} non-finite values ignored"
        else:
            r.note = s.shape_notes.get(key, "no output in this pass")
        if cka is not None and x.index in pair_rows_a and y.index in pair_rows_b:
            v = cka[pair_rows_a.index(x.index), pair_rows_b.index(y.index)] if cka.size else math.nan
            r.cka = float(v) if math.isfinite(v) else None
        r.weight_change = change  # the kernels of the pair as found, fused or not
        results.append(r)

    first = None
    for i, r in enumerate(results):
        if _diverges(getattr(r, figure), larger_worse, tol):
            first = i
            break
    sq = [(r.sqnr_db, i) for i, r in enumerate(results) if r.sqnr_db is not None and not math.isnan(r.sqnr_db)]
    worst = min(sq)[1] if sq and min(sq)[0] != math.inf else None

    output = None
    if s.output is not None:
        f = s.output.figures()
        output = {k: f[k] for k in ("max_abs", "rel_error", "cosine", "sqnr_db")}
    names = list(labels) if labels is not None else ma.adapter.class_names
    flips = []
    for i, (ta, tb) in enumerate(s.top1):
        if ta != tb:
            flips.append({"image": i, "a": names[ta] if names and ta < len(names) else ta,
                          "b": names[tb] if names and tb < len(names) else tb})
    agreement = 1.0 - len(flips) / len(s.top1) if s.top1 else None

    matrix = None
    if s.matrix_cka is not None and matrix_layers is not None:
        m = s.matrix_cka.matrix()
        matrix = CKAMatrix([x.name for x in matrix_layers[0]], [y.name for y in matrix_layers[1]],
                           [[float(v) if math.isfinite(v) else None for v in row] for row in m])
    notes = list(s.notes)
    for model in (ma, mb):
        note = model.preprocess_note()
        if note and f"{model.name}: {note}" not in notes:  # Model.prepare noted it already
            notes.append(f"{model.name}: {note}")
    result = Comparison(
        a=ma.name, b=mb.name, frameworks=(ma.framework, mb.framework), case=case, images=s.images,
        metric=metric, tolerance=tol, pairing=pairing.how, pairs=results,
        unpaired_a=_unpaired(pairing, chosen, 0), unpaired_b=_unpaired(pairing, chosen, 1),
        first_divergence=first, worst=worst, output=output, output_note=s.output_note, flips=flips,
        top1_agreement=agreement, cka_matrix=matrix, notes=notes)
    result.pictures = _pictures(result, s, chosen)
    return result


def _unpaired(pairing: Pairing, chosen: Sequence[tuple[int, int]], side: int) -> list[str]:
    """The names of one side's layers left without a partner once fused candidates were decided."""
    used = {key[side] for key in chosen}
    seen: dict[int, LayerInfo] = {x.index: x for x in (pairing.unpaired_a if side == 0 else pairing.unpaired_b)}
    for p in pairing.pairs:
        for option in p.candidates or [(p.a, p.b)]:
            seen[option[side].index] = option[side]
    return [seen[i].name for i in sorted(seen) if i not in used]


def _pictures(r: Comparison, s: Streamed, chosen: Sequence[tuple[int, int]]) -> dict[str, bytes]:
    pics: dict[str, bytes] = {}
    if r.pairs and any(p.rel_error is not None for p in r.pairs):
        pics["errors.png"] = charts.error_chart(
            [p.label for p in r.pairs], [p.rel_error for p in r.pairs],
            tolerance=r.tolerance if r.metric == "rel" else None, first=r.first_divergence, worst=r.worst,
            title=f"{r.a} vs {r.b}: relative error per layer ({r.images} images)")
    for name, index in (("maps_first_divergence.png", r.first_divergence), ("maps_worst.png", r.worst)):
        if index is None or chosen[index] not in s.pictures:
            continue
        if name == "maps_worst.png" and index == r.first_divergence:
            continue
        pic, p = s.pictures[chosen[index]], r.pairs[index]
        pics[name] = charts.maps_picture(pic.a, pic.b, pic.diff, title=f"{p.label}, image 0",
                                         labels=(f"A channel {pic.channel}", f"B channel {pic.channel}",
                                                 "|A - B| mean over channels"))
    if s.output_picture is not None:
        pic = s.output_picture
        pics["maps_output.png"] = charts.maps_picture(pic.a, pic.b, pic.diff, title="output, image 0",
                                                      labels=("A", "B", "|A - B|"))
    if r.cka_matrix is not None:
        m = np.array([[np.nan if v is None else v for v in row] for row in r.cka_matrix.values], np.float64)
        if m.size:
            pics["cka.png"] = charts.cka_picture(m, r.cka_matrix.layers_a, r.cka_matrix.layers_b,
                                                 title=f"linear CKA: {r.a} (rows) vs {r.b} (columns)")
    return pics
