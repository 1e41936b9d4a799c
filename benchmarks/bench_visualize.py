"""Feature visualisation: quality against naive pixel ascent, speed against Lucent.

Part 1, quality (the trained demo model, MNIST, its last conv layer ``conv3``,
all 64 channels, the same number of steps for both):

* ours: Lucid's method (Fourier 1/f image, sigmoid, pad/jitter/scale/rotate,
  Adam 0.05) as ``convlens visualize`` runs it;
* naive: gradient ascent on the pixels themselves, each step the gradient
  divided by its RMS times 0.03, clipped to 0..1 (the Keras tutorial's
  method), no transforms.

Printed per method: the mean activation reached on the final image, the same
averaged over 8 random jitters/rotations of it (robustness), and the share of
spectral energy above half the Nyquist frequency (high-frequency noise).

Part 2, speed (torchvision ResNet-50, random weights, channels of ``layer3``
and ``layer4``; the same parameterisation, transforms, 128-pixel image and
224-pixel network input for both, in one process): torch-lucent 0.1.8's
``render_vis`` with its defaults, one channel per call as it works, against
``convlens.visualize`` with a batch of channels, the forward pass stopping at
the target layer and no parameter gradients. Lucent's ``layer3`` is the output
of the block's last module call, ``layer3.5.relu#3`` in convlens's table.
512 steps are too long on a small CPU: after a warm-up, a fixed number of
steps is timed for both and scaled to 512 (the cost per step is constant).
Timings on a shared machine are noisy; the ratio is taken side by side.

    make benchmark-visualize   # or: .venv/bin/python benchmarks/bench_visualize.py [--steps 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from convlens import Lens  # noqa: E402
from convlens.visualize import visualize  # noqa: E402
from convlens.visualize.objectives import Objective, batch_target  # noqa: E402
from convlens.visualize.optimize import high_frequency_share, pixel_ascent, render  # noqa: E402
from convlens.visualize.param import PresetMap  # noqa: E402
from convlens.visualize.transform import compose, standard_transforms  # noqa: E402


def quality(steps: int) -> None:
    lens = Lens("demo")
    adapter = lens.adapter
    layer = next(row for row in lens.layers() if row.name == "conv3")
    objectives = [Objective("channel", layer.index, c) for c in range(layer.output_shape[-1])]
    preset = PresetMap("unit", 1)
    t0 = time.perf_counter()
    ours = render(adapter, objectives, preset=preset, size=28, steps=steps, batch=64, input_size=(28, 28))
    t1 = time.perf_counter()
    naive = pixel_ascent(adapter, objectives, preset=preset, size=28, steps=steps, batch=64,
                         step_size=0.03, input_size=(28, 28))
    t2 = time.perf_counter()
    target = batch_target(objectives)

    def robust(images: np.ndarray) -> np.ndarray:
        rng, total = np.random.default_rng(123), 0.0
        for _ in range(8):
            warp = compose(standard_transforms(28), rng, (28, 28), out_size=(28, 28))
            total = total + adapter.gradients(preset.forward(warp.forward(images.astype(np.float64))), target,
                                              need_output=False).score
        return np.asarray(total) / 8

    live = ours.scores > 0  # dead channels (zero for every input) stay gray in both methods
    print(f"quality: demo model (MNIST), layer conv3, {int(live.sum())} live of {len(objectives)} channels, "
          f"{steps} steps each")
    print(f"  {'method':8s} {'activation':>10s} {'under jitter':>12s} {'high-freq share':>15s} {'seconds':>8s}")
    for name, r, sec in (("ours", ours, t1 - t0), ("naive", naive, t2 - t1)):
        print(f"  {name:8s} {r.scores[live].mean():10.3f} {robust(r.images)[live].mean():12.3f} "
              f"{high_frequency_share(r.images)[live].mean():15.3f} {sec:8.1f}")
    hf_ours, hf_naive = high_frequency_share(ours.images)[live], high_frequency_share(naive.images)[live]
    print(f"  high-frequency share ours/naive: {hf_ours.mean() / hf_naive.mean():.2f} "
          f"(ours lower on {int((hf_ours < hf_naive).sum())} of {int(live.sum())} channels); "
          f"activation ours/naive: {ours.scores[live].mean() / naive.scores[live].mean():.2f} "
          f"(ours higher on {int((ours.scores > naive.scores)[live].sum())})")


def speed(steps: int, batch: int, layers: list[str]) -> None:
    import torch
    import torchvision
    from lucent.optvis import render as lucent_render

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    lens = Lens(model, input_shape=(None, None, 3), preprocess="torch")
    ours_names = {"layer3": "layer3.5.relu#3", "layer4": "layer4.2.relu#3"}

    def lucent(layer: str, channel: int, n: int) -> float:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lucent_render.render_vis(model, f"{layer}:{channel}", thresholds=(n,), progress=False,
                                     show_image=False)
        return time.perf_counter() - t

    def ours(layer: str, n: int, channels: int) -> float:
        t = time.perf_counter()
        visualize(lens.adapter, ours_names[layer], f"0-{channels - 1}", steps=n, batch=channels, size=128,
                  input_size=(224, 224), preprocess="torch")
        return time.perf_counter() - t

    print(f"\nspeed: torchvision ResNet-50 (random weights), 128-px image, network input 224 px, "
          f"{torch.get_num_threads()} torch threads; {steps} steps timed after a 2-step warm-up and "
          "scaled to 512 steps (512 steps per channel take too long on this CPU)")
    print(f"  {'layer':7s} {'method':26s} {'s/step':>8s} {'s/channel@512':>14s}")
    for layer in layers:
        lucent(layer, 0, 2)
        ours(layer, 2, 2)
        t_ours = ours(layer, steps, batch)
        t_lucent = lucent(layer, 1, steps)
        per_channel_ours = t_ours / batch / steps * 512
        per_channel_lucent = t_lucent / steps * 512
        print(f"  {layer:7s} {'lucent (1 channel a call)':26s} {t_lucent / steps:8.2f} {per_channel_lucent:14.1f}")
        print(f"  {layer:7s} {f'convlens ({batch} per batch)':26s} {t_ours / steps:8.2f} {per_channel_ours:14.1f}")
        print(f"  {layer:7s} convlens is {per_channel_lucent / per_channel_ours:.1f}x faster per channel "
              f"(target: >= 2x on layer3, >= 1x on layer4)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="timed steps per method (default 16)")
    parser.add_argument("--batch", type=int, default=16, help="channels per convlens batch (default 16)")
    parser.add_argument("--quality-steps", type=int, default=128, help="steps of the quality part (default 128)")
    parser.add_argument("--only", choices=("quality", "speed"), help="run one part")
    parser.add_argument("--layers", default="layer3,layer4", help="ResNet-50 stages timed")
    args = parser.parse_args()
    if args.only != "speed":
        quality(args.quality_steps)
    if args.only != "quality":
        speed(args.steps, args.batch, [s.strip() for s in args.layers.split(",") if s.strip()])


if __name__ == "__main__":
    main()
