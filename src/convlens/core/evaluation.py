"""Checks that an attribution map means something; numpy only.

* :func:`spearman`: rank correlation of two maps, the measure of the model
  parameter randomisation test ("Sanity Checks for Saliency Maps", Adebayo et
  al. 2018, https://arxiv.org/abs/1810.03292): a map that still looks the same
  once the weights are random explains the image, not the model.
* :func:`perturbation_curve` and :func:`curve_auc`: the deletion and insertion
  metrics of RISE (Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421):
  remove (or insert) pixels in the order the map ranks them and follow the
  class probability. A faithful map makes it fall fast (low deletion area)
  and rise fast (high insertion area).

* :func:`ssim`: the structural similarity of two maps (Wang et al. 2004), the
  second measure of the randomisation test and of the random-logit check
  ("Correlation analysis between the logits", Sixt et al. 2020,
  https://arxiv.org/abs/1912.09818).
* :func:`pointing_hit` and :func:`energy_pointing`: the pointing game (Zhang
  et al. 2016) and its energy-based form (Score-CAM, Wang et al. 2020).
* :func:`max_sensitivity`: the largest relative change of a map under small
  input noise (Yeh et al. 2019, https://arxiv.org/abs/1901.09392).
* :func:`glorot_kernel`: the weights a randomised layer gets, drawn in the
  canonical layout so that every framework draws the same numbers.

The model enters as a plain function from a batch to class scores, so this
module never imports a framework.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._errors import BadArgument, UnsupportedModel

__all__ = ["blurred", "curve_auc", "draw_native", "energy_pointing", "glorot_kernel", "layer_ranks",
           "max_sensitivity", "perturbation_curve", "perturbation_curves", "pointing_hit",
           "random_other_class", "ranks", "sobel_map", "spearman", "ssim", "weighted_rows"]

#: A batch ``(N, H, W, C)`` float32 in, ``(N, K)`` class probabilities (or scores) out.
Predict = Callable[[np.ndarray], np.ndarray]


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the flattened values, ties sharing their average rank (float64)."""
    v = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    # Runs of equal values: each gets the mean of the positions it spans.
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], v.size]
    mean_rank = (starts + ends + 1) / 2.0
    out = np.empty(v.size, np.float64)
    out[order] = np.repeat(mean_rank, ends - starts)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps of the same size, in [-1, 1].

    Ties get average ranks (the usual definition, as ``scipy.stats.spearmanr``).
    A constant map (a CAM that a randomised network zeroes everywhere) shares
    no ranking with anything: the result is then 0, not NaN, so that a curve
    of correlations stays plottable.
    """
    x, y = np.asarray(a), np.asarray(b)
    if x.size != y.size or x.size < 2:
        raise BadArgument(f"spearman needs two maps of the same size (>= 2 values), got {x.shape} and {y.shape}")
    rx, ry = ranks(np.nan_to_num(x)), ranks(np.nan_to_num(y))
    rx -= rx.mean()
    ry -= ry.mean()
    den = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else 0.0


def perturbation_curve(predict: Predict, image: np.ndarray, heat: np.ndarray, target: int, *,
                       mode: str = "deletion", baseline: float | np.ndarray = 0.0, steps: int = 28,
                       seed: int = 0, batch: int = 32) -> np.ndarray:
    """The class score as pixels are deleted (or inserted) most important first.

    Args:
        predict: batch ``(N, H, W, C)`` -> ``(N, K)`` scores (probabilities, as RISE uses).
        image: ``(H, W, C)`` float32, preprocessed as ``predict`` expects.
        heat: ``(H, W)`` map at the image's resolution; higher means more important.
        target: the class whose score is followed.
        mode: ``"deletion"`` (start from the image, set pixels to the baseline)
            or ``"insertion"`` (start from the baseline, restore pixels).
        baseline: the value of a removed pixel: a number, or ``(H, W, C)``
            (a blurred copy of the image).
        steps: the curve has ``steps + 1`` points, at 0, 1/steps, ..., 1 of the pixels.
        seed: ties in the map (flat regions of a coarse CAM) are broken in a
            fixed random order, so that the row-major order of the pixels does
            not decide them.
        batch: perturbed images per call of ``predict`` (bounds memory).

    Returns:
        ``(steps + 1,)`` float64: the target's score at each fraction.
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 3:
        raise BadArgument(f"need an (H, W, C) image and an (H, W) map, got {x.shape} and {np.shape(heat)}")
    base = np.asarray(baseline, dtype=np.float32)
    return perturbation_curves(predict, x[None], np.asarray(heat)[None], [target], mode=mode,
                               baseline=base[None] if base.ndim == 3 else base, steps=steps, seed=seed,
                               batch=batch)[0]


def perturbation_curves(predict: Predict, images: np.ndarray, heats: np.ndarray, targets: Sequence[int], *,
                        mode: str = "deletion", baseline: float | np.ndarray = 0.0, steps: int = 28,
                        seed: int = 0, batch: int = 256, patch: int = 1) -> np.ndarray:
    """:func:`perturbation_curve` for many images, their frames sent to ``predict`` together.

    Args:
        images: ``(N, H, W, C)``.
        heats: ``(N, H, W)``.
        targets: ``N`` classes.
        baseline: a number, or ``(N, H, W, C)``.
        batch: frames per call of ``predict``.
        patch: ``p > 1`` removes square superpixels of ``p x p`` pixels (ranked by
            the map's mean over each; edge patches may be smaller) instead of
            single pixels: for large images, where one pixel changes nothing.

    Returns:
        ``(N, steps + 1)`` float64.
    """
    x = np.asarray(images, dtype=np.float32)
    h = np.asarray(heats, dtype=np.float64)
    if x.ndim != 4 or h.shape != x.shape[:3]:
        raise BadArgument(f"need an (H, W, C) image and an (H, W) map each, got {x.shape[1:]} and "
                          f"{h.shape[1:]}")
    if mode not in ("deletion", "insertion"):
        raise BadArgument(f"mode={mode!r}: use deletion or insertion")
    if steps < 1 or batch < 1 or patch < 1:
        raise BadArgument("steps, batch and patch must be at least 1")
    if patch > 1:
        h = _patch_means(h, patch)
    n_img, n = len(x), int(np.prod(h.shape[1:]))
    cls = np.asarray(targets, np.int64)
    if cls.shape != (n_img,):
        raise BadArgument(f"{len(cls)} targets for {n_img} images")
    base = np.broadcast_to(np.asarray(baseline, dtype=np.float32), x.shape)
    tie_break = np.random.default_rng(seed).permutation(n)
    flat_ranks = np.empty((n_img, n), np.int64)
    for i in range(n_img):
        # Most important first: sort by -value, then by the random key among equals.
        order = np.lexsort((tie_break, -np.nan_to_num(h[i].ravel(), nan=-np.inf)))
        flat_ranks[i, order] = np.arange(n)
    rank_grid = flat_ranks.reshape(h.shape)
    if patch > 1:
        rank_grid = np.repeat(np.repeat(rank_grid, patch, axis=1), patch, axis=2)[:, :x.shape[1], :x.shape[2]]
    counts = np.rint(np.linspace(0, n, steps + 1)).astype(np.int64)
    start, swap_in = (x, base) if mode == "deletion" else (base, x)
    # Frame f is image f // (steps + 1) with its first counts[f % (steps + 1)] pixels swapped.
    frame_img = np.repeat(np.arange(n_img), steps + 1)
    frame_k = np.tile(counts, n_img)
    scores = np.empty(n_img * (steps + 1), np.float64)
    for lo in range(0, len(frame_img), batch):
        im, ks = frame_img[lo:lo + batch], frame_k[lo:lo + batch]
        changed = rank_grid[im] < ks[:, None, None]  # (B, H, W): the first k pixels of the order
        frames = np.where(changed[..., None], swap_in[im], start[im]).astype(np.float32)
        out = np.asarray(predict(frames), dtype=np.float64)
        if out.ndim != 2 or out.shape[0] != len(im) or not (0 <= cls[im]).all() or (cls[im] >= out.shape[1]).any():
            raise BadArgument(f"predict returned shape {out.shape} for {len(im)} images and classes "
                              f"{sorted(set(cls[im].tolist()))}")
        scores[lo:lo + len(im)] = out[np.arange(len(im)), cls[im]]
    return scores.reshape(n_img, steps + 1)


def curve_auc(curve: np.ndarray) -> float:
    """Area under a curve sampled evenly on [0, 1] (trapezoids)."""
    c = np.asarray(curve, dtype=np.float64)
    if c.ndim != 1 or c.size < 2:
        raise BadArgument(f"a curve needs at least two points, got shape {c.shape}")
    return float((c[:-1] + c[1:]).sum() / (2 * (c.size - 1)))


def _patch_means(h: np.ndarray, patch: int) -> np.ndarray:
    """``(N, H, W)`` -> ``(N, ceil(H/p), ceil(W/p))``: the mean of each ``p x p`` patch (edges smaller)."""
    n, hh, ww = h.shape
    gh, gw = -(-hh // patch), -(-ww // patch)
    sums = np.zeros((n, gh, gw), np.float64)
    counts = np.zeros((gh, gw), np.float64)
    rows, cols = np.arange(hh) // patch, np.arange(ww) // patch
    np.add.at(sums, (slice(None), rows[:, None], cols[None, :]), np.nan_to_num(h))  # type: ignore[arg-type]
    np.add.at(counts, (rows[:, None], cols[None, :]), 1.0)
    return sums / counts


def blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    """``(N, H, W, C)`` images blurred by a Gaussian of ``sigma`` pixels (edges reflected), float32.

    The replacement of a deleted pixel that removes its detail, not its colour
    (RISE's deletion baseline is a blurred copy for insertion).
    """
    x = np.asarray(images, np.float32)
    if sigma <= 0:
        return x.copy()
    radius = max(1, int(round(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    out = x.astype(np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * np.take(padded, np.arange(i, i + out.shape[axis]), axis=axis)
        out = acc
    return out.astype(np.float32)


def sobel_map(image: np.ndarray) -> np.ndarray:
    """The edge map of an ``(H, W, C)`` image: Sobel gradient magnitude summed over channels, ``(H, W)``.

    The baseline "explanation" that knows nothing about the model: a map that
    does no better than the edges of the image explains the image.
    """
    x = np.asarray(image, np.float64)
    if x.ndim != 3:
        raise BadArgument(f"need an (H, W, C) image, got shape {x.shape}")
    p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return np.sqrt(gx * gx + gy * gy).sum(axis=-1).astype(np.float32)


def _box_means(a: np.ndarray, win: int) -> np.ndarray:
    """The mean of every ``win``-wide window along every axis ('valid' positions only), float64."""
    out = np.asarray(a, np.float64)
    for axis in range(out.ndim):
        c = np.cumsum(out, axis=axis)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
        n = out.shape[axis]
        out = (np.take(c, np.arange(win, n + 1), axis=axis) - np.take(c, np.arange(0, n - win + 1), axis=axis)) / win
    return out


def ssim(a: np.ndarray, b: np.ndarray, *, win_size: int = 7, data_range: float | None = None) -> float:
    """The mean structural similarity of two maps (Wang et al. 2004), in [-1, 1].

    The definition of ``skimage.metrics.structural_similarity`` with its
    defaults (a uniform window of ``win_size`` along each axis, sample
    covariances, K1 = 0.01, K2 = 0.03, the mean over the positions where the
    window fits), for arrays of any number of axes: 2-D maps here; Quantus
    flattens maps to 1-D before calling it. ``data_range`` defaults to the
    range of both maps together, as Quantus's ``ssim`` does. Sides shorter
    than the window shrink it to the largest odd size that fits.
    """
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape or x.size < 2:
        raise BadArgument(f"ssim needs two maps of the same shape, got {x.shape} and {y.shape}")
    win = min(win_size, *x.shape)
    win = win if win % 2 else win - 1
    if win < 1:
        raise BadArgument(f"maps of shape {x.shape} are too small for ssim")
    rng = float(np.ptp(np.concatenate([x.ravel(), y.ravel()]))) if data_range is None else float(data_range)
    if rng == 0:
        return 1.0
    np_ = win ** x.ndim
    cov = np_ / (np_ - 1) if np_ > 1 else 1.0
    ux, uy = _box_means(x, win), _box_means(y, win)
    vx = cov * (_box_means(x * x, win) - ux * ux)
    vy = cov * (_box_means(y * y, win) - uy * uy)
    vxy = cov * (_box_means(x * y, win) - ux * uy)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def pointing_hit(heat: np.ndarray, mask: np.ndarray) -> bool | None:
    """The pointing game (Zhang et al. 2016): the map's maximum lies in the object.

    As Quantus's ``PointingGame``: a hit when any position holding the map's
    largest value is inside ``mask``; ``None`` for an empty mask.

    Args:
        heat: ``(H, W)`` map.
        mask: ``(H, W)`` bool, the object (a box's pixels or a segment).
    """
    h, m = np.nan_to_num(np.asarray(heat, np.float64)), np.asarray(mask, bool)
    if h.shape != m.shape:
        raise BadArgument(f"map {h.shape} and mask {m.shape} differ in shape")
    if not m.any():
        return None
    return bool(np.any(m & (h == h.max())))


def energy_pointing(heat: np.ndarray, mask: np.ndarray) -> float | None:
    """Energy-based pointing (Score-CAM, Wang et al. 2020): the share of the map's mass inside the object.

    ``sum(heat * mask) / sum(heat)`` over the map's positive part, in [0, 1];
    ``None`` when the mask is empty or the map has no positive mass.
    """
    h, m = np.clip(np.nan_to_num(np.asarray(heat, np.float64)), 0, None), np.asarray(mask, bool)
    if h.shape != m.shape:
        raise BadArgument(f"map {h.shape} and mask {m.shape} differ in shape")
    total = float(h.sum())
    if not m.any() or total <= 0:
        return None
    return float(h[m].sum() / total)


def max_sensitivity(heat: np.ndarray, noisy: np.ndarray) -> float:
    """Max-sensitivity (Yeh et al. 2019): ``max_i ||heat - noisy_i|| / ||heat||`` (Frobenius norms).

    As Quantus's ``MaxSensitivity`` with its default difference and norms.

    Args:
        heat: ``(H, W)`` the map of the image.
        noisy: ``(S, H, W)`` the maps of ``S`` noisy copies of the image.

    Returns:
        >= 0; 0 when noise does not change the map. ``inf`` when the map is all zero
        and a noisy one is not.
    """
    a = np.asarray(heat, np.float64).ravel()
    b = np.asarray(noisy, np.float64).reshape(len(noisy), -1)
    if b.shape[1] != a.size or len(b) < 1:
        raise BadArgument(f"need (S, H, W) noisy maps for an (H, W) map, got {np.shape(noisy)} and {np.shape(heat)}")
    num = np.sqrt(((b - a) ** 2).sum(axis=1))
    den = float(np.sqrt((a * a).sum()))
    if den == 0:
        return float("inf") if num.max() > 0 else 0.0
    return float(num.max() / den)


def random_other_class(target: int, classes: int, rng: np.random.Generator) -> int:
    """A class drawn uniformly from the ``classes - 1`` others than ``target`` (the random-logit check)."""
    if classes < 2:
        raise BadArgument("the random-logit check needs a model with at least 2 classes")
    k = int(rng.integers(0, classes - 1))
    return k if k < target else k + 1


def glorot_kernel(shape: tuple[int, ...], seed: int, layer_rank: int) -> np.ndarray:
    """A re-drawn kernel in the canonical layout, Glorot-uniform, as Keras initialises before training.

    ``U(-l, l)`` with ``l = sqrt(6 / (fan_in + fan_out))``, ``fan_in = I * kh * kw``
    and ``fan_out = O * kh * kw`` of the canonical ``(O, I, kh, kw)`` (or ``(O, I)``
    for a dense layer). Drawn from ``(seed, layer_rank)``, the rank of the
    layer among the weighted layers counted from the output, so that every
    framework holding the same network draws the same numbers, and a cascade
    that randomises one more layer keeps the draws of the ones before.

    Returns:
        float32 of ``shape``.
    """
    shape = tuple(int(d) for d in shape)
    o, i = (shape[0], shape[1]) if len(shape) >= 2 else (shape[0], 1)
    field = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    limit = float(np.sqrt(6.0 / max(1, (i + o) * field)))
    rng = np.random.default_rng([int(seed), int(layer_rank)])
    return rng.uniform(-limit, limit, shape).astype(np.float32)


def draw_native(native_shape: tuple[int, ...], to_canonical: Callable[[np.ndarray], np.ndarray] | None,
                seed: int, layer_rank: int) -> np.ndarray:
    """:func:`glorot_kernel` drawn in the canonical layout and laid out as the framework stores the kernel.

    Args:
        native_shape: the framework's kernel shape (Keras ``(kh, kw, I, O)``, TFLite ``(O, kh, kw, I)``...).
        to_canonical: the adapter's own layout change, a permutation of the
            values (transposes, reshapes); ``None``: the native layout is canonical.
        seed, layer_rank: see :func:`glorot_kernel`.

    Returns:
        float32 of ``native_shape``: the same numbers in every framework.
    """
    native_shape = tuple(int(d) for d in native_shape)
    if to_canonical is None:
        return glorot_kernel(native_shape, seed, layer_rank)
    n = int(np.prod(native_shape))
    if n >= 2 ** 24:  # float32 indices would round: the layout change is read from a float64 copy
        idx = to_canonical(np.arange(n, dtype=np.float64).reshape(native_shape))
    else:
        idx = to_canonical(np.arange(n, dtype=np.float32).reshape(native_shape))
    canon = np.rint(np.asarray(idx, np.float64)).astype(np.int64)
    values = glorot_kernel(canon.shape, seed, layer_rank)
    out = np.empty(n, np.float32)
    out[canon.ravel()] = values.ravel()
    return out.reshape(native_shape)


def weighted_rows(table: Sequence[Any]) -> list[int]:
    """The rows of a layer table that hold weights, in execution order (the input excluded).

    A module called several times (``name``, ``name#2``) counts once, at its first call.
    """
    seen: set[str] = set()
    out = []
    for layer in table:
        if layer.kind == "input" or not layer.params:
            continue
        base = str(layer.name).split("#")[0]
        if base in seen:
            continue
        seen.add(base)
        out.append(int(layer.index))
    return out


def layer_ranks(table: Sequence[Any], asked: Sequence[int] = ()) -> dict[int, int]:
    """Each weighted row's rank counted from the output (0: the layer nearest the output).

    Raises:
        UnsupportedModel: a row of ``asked`` (rows to randomise) holds no weights.
    """
    rows = weighted_rows(table)
    ranks = {r: len(rows) - 1 - k for k, r in enumerate(rows)}
    for r in asked:
        if r not in ranks:
            raise UnsupportedModel(f"row {r} ({table[r].name if 0 <= r < len(table) else '?'}) holds no "
                                   "weights to randomise")
    return ranks
