"""``convlens evaluate`` on ResNet-18: what each metric costs, and the whole run against Quantus 0.6.

ResNet-18 (torchvision, random weights, seed 0), natural photos from
scikit-image cropped to the input size, 5 gradient methods, every metric
(cascading randomisation over every weighted layer, random logit, deletion
and insertion with their random-map and edge-map baselines, pointing with a
centre box, max-sensitivity). Three figures:

* a deletion or insertion curve of S steps against S + 1 batched forward
  passes of the same frames (target: <= 1.2x): the curve's own work
  (ordering, masking, replacing) on top of the model;
* the randomisation test per step against the method's own cost for the
  same images (target: <= 1.2x): the model copy and re-draw on top of the maps;
* the total against Quantus doing the same metrics on the same maps (the
  explain function is convlens's method): MPRT, RandomLogit, PixelFlipping,
  MaxSensitivity, PointingGame. Quantus has no insertion metric and no
  baselines, so it does less work than convlens here (target: no slower).

Run (the defaults are the issue's sizes; pass smaller ones on a busy machine):

    make benchmark-evaluate
    .venv/bin/python benchmarks/bench_evaluate.py --images 4 --size 112 --steps 10 --samples 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from convlens import Model, methods  # noqa: E402
from convlens.evaluate import evaluate  # noqa: E402
from convlens.evaluate.api import method_maps  # noqa: E402
from convlens.passes import call_model  # noqa: E402


def photos(n: int, size: int) -> list[np.ndarray]:
    """``n`` crops of scikit-image's photos, ``(size, size, 3)`` uint8."""
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        side = min(src.shape[:2])
        y = int(rng.integers(0, src.shape[0] - side + 1))
        x = int(rng.integers(0, src.shape[1] - side + 1))
        crop = Image.fromarray(src[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
        out.append(np.asarray(crop))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--methods", default="gradcam,gradcam++,xgradcam,layercam,saliency")
    parser.add_argument("--steps", type=int, default=20, help="deletion/insertion steps")
    parser.add_argument("--samples", type=int, default=4, help="max-sensitivity samples")
    parser.add_argument("--skip-quantus", action="store_true")
    parser.add_argument("--quantus-only", action="store_true",
                        help="time only Quantus (the maps are computed first, untimed); compare with a run before")
    parser.add_argument("--ours-seconds", type=float, default=float("nan"),
                        help="with --quantus-only: convlens's total from that run")
    args = parser.parse_args()
    import torch
    import torchvision

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    model = Model.open(net, input_shape=(args.size, args.size, 3), preprocess="torch")
    images = photos(args.images, args.size)
    masks = []
    for _ in images:
        m = np.zeros((args.size, args.size), bool)
        q = args.size // 4
        m[q:3 * q, q:3 * q] = True
        masks.append(m)
    names = args.methods.split(",")
    print(f"ResNet-18 (random weights), {args.images} images at {args.size} px, methods {', '.join(names)}, "
          f"{args.steps} deletion steps, {args.samples} stability samples; torch threads {torch.get_num_threads()}")

    if args.quantus_only:
        ev = evaluate(model, images, names, metrics="deletion", steps=2)  # the maps and classes only
        ours = args.ours_seconds
    else:
        t0 = time.perf_counter()
        ev = evaluate(model, images, names, masks=masks, steps=args.steps, samples=args.samples)
        ours = time.perf_counter() - t0
    print(ev.summary())
    print(f"\nconvlens evaluate, all metrics: {ours:.1f} s")

    x = ev.inputs
    if args.quantus_only:
        return quantus_run(args, net, model, ev, x, names, masks, ours)
    # deletion/insertion: a curve of S steps against S + 1 batched forward passes of the same frames
    frames = np.repeat(x, args.steps + 1, axis=0)
    call_model(model.adapter, frames[:8])  # warm-up
    t0 = time.perf_counter()
    for lo in range(0, len(frames), 64):
        call_model(model.adapter, frames[lo:lo + 64])
    forward = time.perf_counter() - t0
    print(f"\n{len(frames)} frames forward in batches of 64: {forward:.2f} s")
    print(f"{'method':<14} {'deletion / fwd':>15} {'insertion / fwd':>16} {'rand. per step / method':>24}")
    layers = len(ev.randomised_layers)
    for s in ev.scores.values():
        d = s.curve_seconds.get("deletion", float("nan")) / forward
        i = s.curve_seconds.get("insertion", float("nan")) / forward
        per_step = s.rand_seconds / layers / (s.cost * len(images))
        print(f"{s.title:<14} {d:>14.2f}x {i:>15.2f}x {per_step:>23.2f}x")
    print(f"(targets: <= 1.2x; randomisation over {layers} weighted layers)")
    if not args.skip_quantus:
        quantus_run(args, net, model, ev, x, names, masks, ours)


def quantus_run(args, net, model, ev, x, names, masks, ours) -> None:
    import quantus

    warnings.simplefilter("ignore")
    xc = x.transpose(0, 3, 1, 2).copy()
    y = ev.classes
    adapter = model.adapter

    def explain_for(name: str):
        method = methods.create(name)

        def explain(model, inputs, targets, **kwargs):
            from convlens.adapters import open_model

            a = adapter if model is net else open_model(model, input_shape=(args.size, args.size, 3))
            batch = np.asarray(inputs, np.float32).transpose(0, 2, 3, 1)
            maps = method_maps(a, method, batch, np.asarray(targets, int), layer=None, preprocess="torch")
            # Quantus refuses a map that is all zero (a Grad-CAM of a randomised network often is;
            # convlens scores it as sharing no ranking): a tiny ramp lets it go on
            flat = ~maps.reshape(len(maps), -1).any(axis=1)
            maps[flat] = np.linspace(0, 1e-9, maps[0].size, dtype=np.float32).reshape(maps.shape[1:])
            return maps[:, None]
        return explain

    per_step = args.size * args.size // args.steps  # Quantus counts the positions of one channel here
    t0 = time.perf_counter()
    for name in names:
        explain = explain_for(name)
        a = ev.scores[name].maps[:, None]
        kw = {"model": net, "x_batch": xc, "y_batch": y, "a_batch": a, "device": "cpu"}
        quantus.MPRT(layer_order="top_down", abs=False, normalise=False, disable_warnings=True)(
            **kw, explain_func=explain)
        quantus.RandomLogit(num_classes=1000, abs=False, normalise=False, disable_warnings=True)(
            **kw, explain_func=explain)
        quantus.PixelFlipping(features_in_step=per_step, perturb_baseline="mean", abs=False, normalise=False,
                              disable_warnings=True)(**kw, softmax=True)
        quantus.MaxSensitivity(nr_samples=args.samples, abs=False, normalise=False, disable_warnings=True)(
            **kw, explain_func=explain)
        quantus.PointingGame(abs=False, normalise=False, disable_warnings=True)(
            **kw, s_batch=np.stack(masks)[:, None].astype(float))
    theirs = time.perf_counter() - t0
    print(f"\nQuantus 0.6, the same metrics on the same maps (no insertion, no baselines): {theirs:.1f} s")
    print(f"convlens / Quantus: {ours / theirs:.2f}x (target: <= 1.0x)")


if __name__ == "__main__":
    main()
