"""convlens's heatmap methods against pytorch-grad-cam and captum, side by side in one process.

torchvision ResNet-18 (random weights, seed 0, eval), one image (``--size``,
default 224), an explicit class (so no method pays for a top-1 forward pass).
Each case runs ``--repeats`` times, interleaved with the others; medians and
ratios are printed:

* the plain forward pass (``torch.no_grad``), the unit of every ratio;
* each convlens CAM method next to pytorch-grad-cam's class of the same name
  (target layer ``layer4``); Score-CAM is the slow one (one forward pass per
  channel: convlens batches them under its memory budget and scores all
  constant channels with one pass; pytorch-grad-cam runs batches of 16);
* saliency, Integrated Gradients (``--steps``), SmoothGrad (``--steps``
  samples) and occlusion (16x16 windows, stride 8) next to captum's.

The machine may be shared: read the ratios, not the absolute times. Run:

    .venv/bin/python benchmarks/bench_methods.py [--size 224] [--repeats 3] [--steps 16]
        [--only gradcam,scorecam,...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # after the sys.path line, as in the other benchmarks

CLASS = 7


def _cases(
    size: int, steps: int
) -> dict[str, tuple[Callable[[], object], Callable[[], object] | None]]:
    """By name: (convlens, the reference or None)."""
    import pytorch_grad_cam as pgc
    import torch
    import torchvision
    from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from convlens import methods
    from convlens.adapters import open_model

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    adapter = open_model(model)
    x = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype(np.float32)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    target = [ClassifierOutputTarget(CLASS)]

    def ours(name: str, **options: object) -> Callable[[], object]:
        method = methods.create(name, **options)
        return lambda: method.compute(adapter, x, target=CLASS)

    def cam(cls: type) -> Callable[[], object]:
        def run() -> object:
            with cls(model, [model.layer4]) as c:
                return c(t, targets=target)

        return run

    def forward() -> object:
        with torch.no_grad():
            return model(t)

    stdev = 0.15 * float(x.max() - x.min())
    return {
        "forward": (forward, None),
        "gradcam": (ours("gradcam"), cam(pgc.GradCAM)),
        "gradcam++": (ours("gradcam++"), cam(pgc.GradCAMPlusPlus)),
        "xgradcam": (ours("xgradcam"), cam(pgc.XGradCAM)),
        "layercam": (ours("layercam"), cam(pgc.LayerCAM)),
        "hirescam": (ours("hirescam"), cam(pgc.HiResCAM)),
        "eigencam": (ours("eigencam"), cam(pgc.EigenCAM)),
        "scorecam": (ours("scorecam"), cam(pgc.ScoreCAM)),
        "saliency": (
            ours("saliency"),
            lambda: Saliency(model).attribute(t.clone().requires_grad_(), target=CLASS, abs=True),
        ),
        "ig": (
            ours("ig", steps=steps),
            lambda: IntegratedGradients(model).attribute(t, target=CLASS, n_steps=steps),
        ),
        "smoothgrad": (
            ours("smoothgrad", samples=steps),
            lambda: NoiseTunnel(Saliency(model)).attribute(
                t.clone().requires_grad_(),
                nt_type="smoothgrad",
                nt_samples=steps,
                stdevs=stdev,
                target=CLASS,
            ),
        ),
        "occlusion": (
            ours("occlusion", window=16, stride=8),
            lambda: Occlusion(model).attribute(
                t,
                sliding_window_shapes=(3, 16, 16),
                strides=(3, 8, 8),
                target=CLASS,
                perturbations_per_eval=16,
            ),
        ),
    }


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16, help="IG steps and SmoothGrad samples")
    parser.add_argument(
        "--only", default="", help="comma-separated case names (forward always runs)"
    )
    args = parser.parse_args(argv)
    cases = _cases(args.size, args.steps)
    if args.only:
        keep = {"forward", *args.only.split(",")}
        cases = {k: v for k, v in cases.items() if k in keep}
    times: dict[str, list[float]] = {}
    for mine, ref in cases.values():  # warm-up, once each
        mine()
        if ref is not None:
            ref()
    for _ in range(args.repeats):
        for name, (mine, ref) in cases.items():
            times.setdefault(name, []).append(_time(mine))
            if ref is not None:
                times.setdefault(name + " (reference)", []).append(_time(ref))
    unit = statistics.median(times["forward"])
    print(
        f"ResNet-18, one {args.size}x{args.size} image, class {CLASS}, medians of {args.repeats}; "
        "ratios to the plain forward pass"
    )
    print(
        f"{'case':<12} {'convlens':>10} {'x fwd':>7} {'reference':>10} {'x fwd':>7} {'ours/ref':>9}"
    )
    for name in cases:
        mine = statistics.median(times[name])
        row = f"{name:<12} {mine:>9.3f}s {mine / unit:>6.2f}x"
        if name + " (reference)" in times:
            ref = statistics.median(times[name + " (reference)"])
            row += f" {ref:>9.3f}s {ref / unit:>6.2f}x {mine / ref:>8.2f}x"
        print(row)
    print("reference: pytorch-grad-cam 1.5.7 for the CAMs, captum 0.9.0 for the rest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
