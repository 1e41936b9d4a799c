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

The model enters as a plain function from a batch to class scores, so this
module never imports a framework.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .._errors import BadArgument

__all__ = ["curve_auc", "perturbation_curve", "perturbation_curves", "ranks", "spearman"]

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
                        seed: int = 0, batch: int = 256) -> np.ndarray:
    """:func:`perturbation_curve` for many images, their frames sent to ``predict`` together.

    Args:
        images: ``(N, H, W, C)``.
        heats: ``(N, H, W)``.
        targets: ``N`` classes.
        baseline: a number, or ``(N, H, W, C)``.
        batch: frames per call of ``predict``.

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
    if steps < 1 or batch < 1:
        raise BadArgument("steps and batch must be at least 1")
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
