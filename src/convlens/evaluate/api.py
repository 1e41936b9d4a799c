"""``evaluate()``: which heatmap method can be trusted for this model on these images.

For each method and image, the metrics of :mod:`convlens.core.evaluation`:

* ``randomisation``: the cascading model parameter randomisation test
  (Adebayo et al. 2018, https://arxiv.org/abs/1810.03292). The weighted layers
  are re-drawn from the output down (:meth:`Adapter.randomized`, one copy of
  the model at a time, every method run on each copy); at each step the map
  is compared with the trained model's by Spearman's rank correlation and by
  SSIM. A method passes when the rank correlation has fallen below
  ``threshold`` once every layer down to the first is random.
* ``random-logit``: the map for the explained class against the map for a
  random other class (Sixt et al. 2020, https://arxiv.org/abs/1912.09818);
  a method passes when their SSIM is below ``threshold``.
* ``deletion`` and ``insertion``: the class probability as pixels (superpixels
  for large images) are removed or inserted in the map's order (Petsiuk et al.
  2018), beside the same curves for a random map and a Sobel edge map; a
  method fails when it does no better than the random order.
* ``pointing``: the pointing game and energy-based pointing, with boxes or masks.
* ``stability``: max-sensitivity over ``samples`` noisy copies (Yeh et al. 2019).

The cost of each method's map, in seconds per image, is always measured.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import BadArgument, UnsupportedModel
from .._progress import NullProgress, Progress
from ..core.evaluation import (
    blurred,
    energy_pointing,
    max_sensitivity,
    perturbation_curves,
    pointing_hit,
    random_other_class,
    sobel_map,
    spearman,
    ssim,
    weighted_rows,
)
from ..core.predictions import to_probabilities
from ..images import PreparedBatch, check_not_constant, prepare_batch
from ..methods import Method, gradients_problem
from ..methods.targets import TargetSpec, parse_classes
from ..passes import call_model
from .result import Evaluation, MethodScores

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["DEFAULT_METHODS", "METRICS", "evaluate", "parse_metrics", "read_boxes"]

#: Every metric, in the order of the table.
METRICS = ("randomisation", "random-logit", "deletion", "insertion", "pointing", "stability")
#: What ``evaluate()`` compares when no method is named.
DEFAULT_METHODS = "gradcam,gradcam++,layercam,scorecam,saliency,smoothgrad,ig"
_ALIASES = {"randomization": "randomisation", "mprt": "randomisation", "cascade": "randomisation",
            "random_logit": "random-logit", "randomlogit": "random-logit", "logit": "random-logit",
            "faithfulness": "deletion", "pointing-game": "pointing", "energy": "pointing",
            "max-sensitivity": "stability", "sensitivity": "stability", "cost": "cost"}
#: A method passes the randomisation test and the random-logit check below this similarity.
DEFAULT_THRESHOLD = 0.5


def parse_metrics(metrics: str | Sequence[str] | None) -> tuple[list[str], bool]:
    """Metric names from ``"deletion,insertion"`` or a list; ``None`` or ``"all"``: every metric.

    Returns:
        ``(names, explicit)``: ``explicit`` is false for the default (every metric
        that applies), when a metric that cannot run is skipped with a note
        rather than refused.

    Raises:
        BadArgument: an unknown name (the message lists the known ones).
    """
    if metrics is None:
        return list(METRICS), False
    items = metrics.split(",") if isinstance(metrics, str) else [str(m) for m in metrics]
    items = [m.strip().lower() for m in items if m.strip()]
    if not items or items == ["all"]:
        return list(METRICS), False
    out: list[str] = []
    for m in items:
        name = _ALIASES.get(m, m)
        if name == "cost":
            continue  # always measured
        if name not in METRICS:
            raise BadArgument(f"unknown metric {m!r}; choose from {', '.join(METRICS)} (or all)")
        if name not in out:
            out.append(name)
    if not out:
        raise BadArgument(f"no metric to compute: cost is always measured; add one of {', '.join(METRICS)}")
    return out, True


def read_boxes(boxes: str | os.PathLike[str] | Mapping[str, Any], names: Sequence[str],
               sizes: Sequence[tuple[int, int]]) -> list[np.ndarray | None]:
    """Object masks per image from boxes: a COCO-style JSON file or a mapping.

    Accepted shapes: ``{"image name": [[x, y, w, h], ...]}`` (boxes in pixels of
    the image as given, COCO's ``bbox`` order), the same with
    ``{"bbox": [x, y, w, h]}`` items, or a COCO file (``images`` with
    ``file_name``/``id`` and ``annotations`` with ``image_id``/``bbox``).
    Image names match the images' names or file names (with or without extension).

    Returns:
        Per image, ``(H, W)`` bool (the union of its boxes, in the image's own
        pixels) or ``None`` when it has no box.

    Raises:
        BadArgument: an unreadable file, a box for an image that was not
            given, or a box outside its image.
    """
    if isinstance(boxes, Mapping):
        data: Any = dict(boxes)
        where = "the boxes"
    else:
        path = Path(os.fspath(boxes))
        where = str(path)
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadArgument(f"cannot read boxes {path}: {type(exc).__name__}: {str(exc)[:200]}; give a JSON "
                              "file of {\"image\": [[x, y, w, h], ...]} or COCO annotations") from None
    per: dict[str, list[Any]] = {}
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        ids = {img.get("id"): str(img.get("file_name")) for img in data.get("images", []) if isinstance(img, dict)}
        for ann in data.get("annotations", []):
            if not isinstance(ann, dict) or ann.get("image_id") not in ids:
                named = ann.get("image_id") if isinstance(ann, dict) else ann
                raise BadArgument(f"{where}: an annotation names image_id {named!r}, which is not in its images list")
            per.setdefault(ids[ann["image_id"]], []).append(ann.get("bbox"))
    elif isinstance(data, dict):
        for key, items in data.items():
            if not isinstance(items, list):
                raise BadArgument(f"{where}: image {key!r} needs a list of boxes [x, y, w, h], got {items!r:.80}")
            per[str(key)] = [b.get("bbox") if isinstance(b, dict) else b for b in items]
    else:
        raise BadArgument(f"{where}: expected a JSON object of boxes per image, got {type(data).__name__}")
    lookup: dict[str, int] = {}
    for i, n in enumerate(names):
        lookup[n] = i
        lookup.setdefault(Path(n).name, i)
        lookup.setdefault(Path(n).stem, i)
    masks: list[np.ndarray | None] = [None] * len(names)
    for key, items in per.items():
        found = lookup.get(key, lookup.get(Path(key).name, lookup.get(Path(key).stem)))
        if found is None:
            raise BadArgument(f"{where} has boxes for {key!r}, which is not among the images given "
                              f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
        i = found
        h, w = sizes[i]
        old = masks[i]
        mask = old if old is not None else np.zeros((h, w), bool)
        for b in items:
            if (not isinstance(b, (list, tuple)) or len(b) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)):
                raise BadArgument(f"{where}: box {b!r:.80} of {key!r} is not [x, y, width, height]")
            x, y, bw, bh = (float(v) for v in b)
            if bw <= 0 or bh <= 0 or x < 0 or y < 0 or x + bw > w + 1e-6 or y + bh > h + 1e-6:
                raise BadArgument(f"{where}: box [x={x:g}, y={y:g}, w={bw:g}, h={bh:g}] of {key!r} lies outside "
                                  f"the image ({w}x{h} pixels) or is empty; boxes are in the image's own pixels")
            mask[int(np.floor(y)):int(np.ceil(y + bh)), int(np.floor(x)):int(np.ceil(x + bw))] = True
        masks[i] = mask
    return masks


def _resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A mask of the image as given, at the network input's resolution (nearest neighbour)."""
    h, w = mask.shape
    rows = np.minimum((np.arange(hw[0]) + 0.5) * h / hw[0], h - 1).astype(int)
    cols = np.minimum((np.arange(hw[1]) + 0.5) * w / hw[1], w - 1).astype(int)
    return mask[rows][:, cols]


def method_maps(adapter: Any, method: Method, batch: np.ndarray, classes: Sequence[int] | np.ndarray, *,
                layer: str | int | None, preprocess: str, progress: Progress | None = None) -> np.ndarray:
    """``(N, H, W)`` float32: each image's map for its own class (one call per class, as batches share a target).

    Signed methods (Integrated Gradients, occlusion) keep their sign.
    """
    out = np.zeros(batch.shape[:3], np.float32)
    cls = np.asarray(classes, int)
    for c in np.unique(cls):
        mine = np.flatnonzero(cls == c)
        res = method.compute(adapter, batch[mine], target=int(c), layer=layer, preprocess=preprocess,
                             progress=progress or NullProgress())
        out[mine] = res.maps
    return out


def _tick(progress: Progress) -> None:
    progress.advance()


def _probabilities(adapter: Any) -> Callable[[np.ndarray], np.ndarray]:
    step = getattr(adapter, "output_quant_step", None)

    def predict(frames: np.ndarray) -> np.ndarray:
        out = np.asarray(call_model(adapter, frames), np.float64)
        return to_probabilities(out, adapter.final_activation, step)[0]
    return predict


def _patch_for(hw: tuple[int, int], patch: int | None) -> int:
    """Pixels for small inputs; square superpixels that leave about 56 per side for large ones."""
    if patch is not None:
        if patch < 1:
            raise BadArgument(f"patch must be at least 1 pixel, not {patch}")
        return int(patch)
    side = max(hw)
    return 1 if side <= 64 else max(1, int(round(side / 56)))


def evaluate(model: Model, images: Any, method: str | Sequence[str] | None = None, *,
             metrics: str | Sequence[str] | None = None, layer: str | int | None = None,
             target: TargetSpec = None, boxes: str | os.PathLike[str] | Mapping[str, Any] | None = None,
             masks: Sequence[np.ndarray | None] | None = None, steps: int = 20, replace: str = "blur",
             blur_sigma: float | None = None, patch: int | None = None, threshold: float = DEFAULT_THRESHOLD,
             samples: int = 8, noise: float = 0.05, seed: int = 0, size: Any = None,
             preprocess: str | None = None, labels: str | os.PathLike[str] | Sequence[str] | None = None,
             batch_size: int = 64, method_options: Mapping[str, Any] | None = None,
             progress: Progress | None = None) -> Evaluation:
    """Evaluate heatmap methods on ``images``: which maps can be trusted for this model.

    Args:
        model: the model.
        images: at least two images (paths, PIL images or arrays), or a
            :class:`~convlens.images.PreparedBatch` already prepared for the model.
        method: names as :func:`convlens.heatmaps` takes them; default
            :data:`DEFAULT_METHODS` (the gradient ones dropped, with a note, on a
            forward-only model).
        metrics: names from :data:`METRICS` (comma-separated or a list); default
            every metric that applies (``pointing`` only with boxes or masks).
        layer: CAM methods' layer (default the last conv layer's output).
        target: ``None``: each image's top class; or one class (index or name) for all.
        boxes: the objects' boxes per image (a COCO-style JSON file or a mapping, see
            :func:`read_boxes`), for the pointing game.
        masks: per image, ``(H, W)`` bool object masks of the image as given (or ``None``).
        steps: points of the deletion and insertion curves (``steps + 1`` with 0).
        replace: ``"blur"`` (a removed pixel becomes the blurred image's) or
            ``"mean"`` (the image's mean colour).
        blur_sigma: the blur's sigma in pixels; default 1/20 of the input's side (>= 1).
        patch: deletion superpixel side in pixels; default 1 up to 64 px inputs, else side / 56.
        threshold: the similarity below which the randomisation test and the
            random-logit check pass.
        samples: noisy copies for the stability metric.
        noise: the noise's half-width, as a fraction of the input's value range
            (uniform noise, as Quantus's max-sensitivity).
        seed: the seed of every random draw (weights, random maps, classes, noise).
        size, preprocess, labels: as :func:`convlens.heatmaps`.
        batch_size: perturbed images per forward pass of the deletion and insertion curves.
        method_options: the methods' own options (see :func:`convlens.heatmaps`).
        progress: receives the progress.

    Returns:
        An :class:`Evaluation`.

    Raises:
        BadArgument: fewer than 2 images, an unknown method or metric, boxes for
            images not given or outside them, a metric asked for by name that
            no method can run (the message says why).
        UnsupportedModel: no method can run on this model (a forward-only model
            and gradient methods only); the randomisation asked for by name on
            a model whose weights cannot be copied.
    """
    from ..heatmaps import create_methods, parse_methods

    progress = progress or NullProgress()
    wanted, explicit = parse_metrics(metrics)
    names = parse_methods(method if method is not None else DEFAULT_METHODS)
    made = create_methods(names, method_options or {})
    if replace not in ("blur", "mean"):
        raise BadArgument(f"replace={replace!r}: a removed pixel becomes the blurred image's (blur) or the "
                          "image's mean colour (mean)")
    if steps < 2 or samples < 1 or not 0 < threshold <= 1 or noise < 0:
        raise BadArgument("steps must be at least 2, samples at least 1, threshold in (0, 1] and noise >= 0")
    adapter = model.adapter
    notes: list[str] = list(model.input_notes)
    skipped: dict[str, dict[str, str]] = {}  # method -> metric -> why
    runnable: list[Method] = []
    for m in made:
        problem = gradients_problem(adapter, m.title, alternatives=False) if m.needs_gradients else None
        if problem is not None and (method is not None and len(made) == 1):
            raise UnsupportedModel(problem)
        if problem is not None:
            skipped[m.name] = {k: problem for k in wanted}
            continue
        runnable.append(m)
    if not runnable:
        raise UnsupportedModel(f"none of the methods asked for can run on {model.name}: "
                               f"{next(iter(skipped.values()))[wanted[0]]}")
    if method is None and skipped:
        notes.append(f"{', '.join(skipped)} need gradients, which {model.name} ({adapter.framework}) does not "
                     "give: not evaluated")
        skipped = {}
    class_names, _ = model.class_names(labels)
    classes_n = model.output_classes()
    prepared = images if isinstance(images, PreparedBatch) else prepare_batch(
        images, model.input_shape, size=size, preprocess=preprocess or model.preprocess, model_name=model.name)
    loaded, arrays = prepared.images, prepared.arrays
    if len(arrays) < 2:
        raise BadArgument(f"evaluate ranks methods by their means over images with standard errors, which needs "
                          f"at least 2 images; {len(arrays)} was given (add images)")
    if len({a.shape for a in arrays}) != 1:
        raise BadArgument("evaluate needs images of one size after preparation; pass size= (--size) to resize "
                          "them all")
    for im, a in zip(loaded, arrays):
        check_not_constant(a, im.name)
    x = np.stack(arrays).astype(np.float32)
    n, hw = len(x), (int(x.shape[1]), int(x.shape[2]))
    object_masks: list[np.ndarray | None] | None = None
    if boxes is not None:
        object_masks = read_boxes(boxes, [im.name for im in loaded], [(im.height, im.width) for im in loaded])
    if masks is not None:
        if len(masks) != n:
            raise BadArgument(f"{len(masks)} masks for {n} images; give one per image (None for none)")
        given = [None if g is None else np.asarray(g, bool) for g in masks]
        for im, g in zip(loaded, given):
            if g is not None and g.shape != (im.height, im.width):
                raise BadArgument(f"the mask of {im.name} is {g.shape}, the image {im.height}x{im.width}")
        object_masks = [g if g is not None else (object_masks[j] if object_masks else None)
                        for j, g in enumerate(given)]
    net_masks = ([None if g is None else _resize_mask(g, hw) for g in object_masks]
                 if object_masks is not None else None)
    # which metrics can run at all, decided before any work
    why_not: dict[str, str] = {}
    if net_masks is None or not any(m is not None for m in net_masks):
        why_not["pointing"] = "the pointing game needs the objects' boxes (--boxes FILE) or masks"
    if not classes_n:
        why_not["random-logit"] = (f"the random-logit check needs a classifier's output (K scores, K >= 2); "
                                   f"{model.name} gives {model.output_shape()}")
        for k in ("deletion", "insertion"):
            why_not[k] = f"deletion and insertion follow a class probability; {model.name} is not a classifier"
    order: list[int] = []
    twin_problem: str | None = None
    if "randomisation" in wanted:
        order = weighted_rows(adapter.layers())[::-1]
        if not hasattr(adapter, "randomized"):
            twin_problem = f"the {adapter.framework} adapter cannot randomise weights"
        elif not order:
            twin_problem = f"{model.name} has no layer with weights to randomise"
        else:
            try:  # the weights must copy: find out before any work
                adapter.randomized(order[:1], seed)
            except UnsupportedModel as exc:
                twin_problem = str(exc)
        if twin_problem is not None:
            why_not["randomisation"] = twin_problem
    for k, why in why_not.items():
        if k not in wanted:
            continue
        if explicit:
            if len(wanted) == 1:
                raise (UnsupportedModel if k == "randomisation" else BadArgument)(f"cannot compute {k}: {why}")
            for m in runnable:
                skipped.setdefault(m.name, {})[k] = why
        elif k != "pointing":
            notes.append(f"{k} not computed: {why}")
    todo = [k for k in wanted if k not in why_not]
    # the classes
    out0 = np.asarray(call_model(adapter, x))
    probs0 = to_probabilities(out0.astype(np.float64), adapter.final_activation,
                              getattr(adapter, "output_quant_step", None))[0] if classes_n else None
    chosen = parse_classes(target, classes_n, class_names) if target is not None else None
    if chosen is not None and len(chosen) != 1:
        raise BadArgument("evaluate explains one class per image: name one class (--class C), or none for "
                          "each image's top class")
    cls = (np.full(n, int(chosen[0])) if chosen is not None
           else np.argmax(out0.reshape(n, -1), axis=1) if classes_n else np.zeros(n, int))
    pre = preprocess or model.preprocess
    rng = np.random.default_rng(seed)
    progress.start(len(runnable) * (1 + sum(k in todo for k in ("random-logit", "stability")))
                   + sum(k in todo for k in ("deletion", "insertion")) + len(order) * ("randomisation" in todo),
                   "evaluate")
    scores: dict[str, MethodScores] = {}
    for m in runnable:
        _tick(progress)
        t0 = time.perf_counter()
        maps = method_maps(adapter, m, x, cls, layer=layer, preprocess=pre)
        cost = (time.perf_counter() - t0) / n
        scores[m.name] = MethodScores(method=m.name, title=m.title, maps=maps, cost=cost,
                                      signed=bool(np.any(maps < 0)))
    # deletion and insertion: the method maps, a random map and the Sobel edge map, one batch of frames
    curves_meta: dict[str, Any] = {}
    if "deletion" in todo or "insertion" in todo:
        sigma = blur_sigma if blur_sigma is not None else max(1.0, max(hw) / 20)
        if replace == "blur":
            base = blurred(x, sigma)
        else:
            base = np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).astype(np.float32)
        p = _patch_for(hw, patch)
        predict = _probabilities(adapter)
        refs = {"random": np.random.default_rng([seed, 1]).random((n, *hw)),
                "edges": np.stack([sobel_map(a) for a in x])}
        curves_meta = {"steps": steps, "replace": replace, "blur_sigma": sigma if replace == "blur" else None,
                       "patch": p, "baselines": {}}
        for mode in ("deletion", "insertion"):
            if mode not in todo:
                continue
            _tick(progress)
            for ref, hmap in refs.items():
                c = perturbation_curves(predict, x, hmap, cls.tolist(), mode=mode, baseline=base, steps=steps,
                                        seed=seed, batch=batch_size, patch=p)
                curves_meta["baselines"].setdefault(ref, {})[mode] = c
            for m in runnable:
                s = scores[m.name]
                t0 = time.perf_counter()
                c = perturbation_curves(predict, x, s.maps, cls.tolist(), mode=mode, baseline=base, steps=steps,
                                        seed=seed, batch=batch_size, patch=p)
                s.curves[mode] = c
                s.curve_seconds[mode] = time.perf_counter() - t0
    if "random-logit" in todo:
        n_classes = int(classes_n or 2)
        other = np.array([random_other_class(int(c), n_classes, rng) for c in cls])
        for m in runnable:
            _tick(progress)
            s = scores[m.name]
            alt = method_maps(adapter, m, x, other, layer=layer, preprocess=pre)
            s.logit_classes = other
            s.logit_spearman = np.array([spearman(a, b) for a, b in zip(s.maps, alt)])
            s.logit_ssim = np.array([ssim(a, b) for a, b in zip(s.maps, alt)])
            s.logit_map0 = alt[0]
    if "pointing" in todo and net_masks is not None:
        for m in runnable:
            s = scores[m.name]
            s.pointing = [pointing_hit(np.abs(mp), mk) if mk is not None else None
                          for mp, mk in zip(s.maps, net_masks)]
            s.energy = [energy_pointing(np.abs(mp), mk) if mk is not None else None
                        for mp, mk in zip(s.maps, net_masks)]
    if "stability" in todo:
        span = float(x.max() - x.min()) or 1.0
        noise_rng = np.random.default_rng([seed, 2])
        for m in runnable:
            _tick(progress)
            s = scores[m.name]
            noisy_maps = np.empty((samples, *x.shape[:3]), np.float32)
            for j in range(samples):
                eps = noise_rng.uniform(-noise * span, noise * span, x.shape).astype(np.float32)
                t0 = time.perf_counter()
                noisy_maps[j] = method_maps(adapter, m, x + eps, cls, layer=layer, preprocess=pre)
                # the same batches again: the first call paid for tracing (tf.function) and caches
                s.cost = min(s.cost, (time.perf_counter() - t0) / n)
            s.sensitivity = np.array([max_sensitivity(s.maps[i], noisy_maps[:, i]) for i in range(n)])
    steps_meta: list[str] = []
    if "randomisation" in todo:
        table = adapter.layers()
        steps_meta = [table[r].name for r in order]
        rho, sim, strips = ({m.name: np.zeros((len(order), n)) for m in runnable},
                            {m.name: np.zeros((len(order), n)) for m in runnable},
                            {m.name: np.zeros((len(order), *hw), np.float32) for m in runnable})
        twin: Any = adapter
        for step in range(1, len(order) + 1):
            _tick(progress)
            t0 = time.perf_counter()
            # the previous copy with one more layer re-drawn: the draws depend on (seed, the layer's
            # rank) only, so this is the original with the top ``step`` layers re-drawn, at one
            # layer's cost per step
            twin = twin.randomized([order[step - 1]], seed)
            copy_s = time.perf_counter() - t0
            for m in runnable:
                s = scores[m.name]
                t0 = time.perf_counter()
                maps = method_maps(twin, m, x, cls, layer=layer, preprocess=pre)
                s.rand_seconds += time.perf_counter() - t0 + copy_s / len(runnable)
                rho[m.name][step - 1] = [spearman(a, b) for a, b in zip(s.maps, maps)]
                sim[m.name][step - 1] = [ssim(a, b) for a, b in zip(s.maps, maps)]
                strips[m.name][step - 1] = maps[0]
        for m in runnable:
            scores[m.name].rand_spearman, scores[m.name].rand_ssim = rho[m.name], sim[m.name]
            scores[m.name].strip = strips[m.name]
    progress.finish()
    return Evaluation(model=model.name, framework=adapter.framework, images=loaded, inputs=x, classes=cls,
                      probabilities=probs0[np.arange(n), cls] if probs0 is not None else None,
                      class_names=class_names, metrics=todo, scores=scores, skipped=skipped, notes=notes,
                      threshold=threshold, randomised_layers=steps_meta, curves=curves_meta,
                      options={"steps": steps, "replace": replace, "samples": samples, "noise": noise,
                               "seed": seed, "threshold": threshold, "layer": layer,
                               "methods": [m.name for m in made]},
                      preprocess_note=model.preprocess_note(preprocess))
