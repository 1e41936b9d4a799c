"""Cost of a gradient pass against a plain forward pass, per framework, on VGG16 (random weights).

Three cases run interleaved in one process per framework, on one 224x224 image:

(forward)  ``adapter.run(x, [], ...)``: the adapter's own plain forward pass;
(gradcam)  ``adapter.gradients(x, Target(class), layers=[last conv])``: what
           Grad-CAM needs, the class score's gradient at the last conv layer
           (issue 8 target: within 1.2x of the forward pass);
(saliency) ``adapter.gradients(x, Target(class), wrt_input=True)``: the
           gradient at the input (target: within 2.2x).

Networks: keras.applications ``VGG16(weights=None)`` (Keras on TensorFlow, and
on torch with ``--only keras-torch``), torchvision ``vgg16(weights=None)``, and
that torchvision network exported to ONNX (gradients through onnx2torch). The
full networks with their classifiers, so the class score is real (Keras's ends
in a softmax: the gradient is taken at the logit before it). Prints medians
and ratios. The machine may be shared: read ratios, not absolute times. Run:

    .venv/bin/python benchmarks/bench_gradients.py [--only keras,keras-torch,torch,onnx] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
SIZE = 224
CLASS = 7

import numpy as np

CASES = ("keras", "keras-torch", "torch", "onnx")


def _image() -> np.ndarray:
    return np.random.default_rng(0).random((1, SIZE, SIZE, 3), dtype=np.float32)


def _adapter(name: str, tmp: Path):
    from convlens.adapters import open_model

    if name.startswith("keras"):
        import keras

        keras.utils.set_random_seed(0)
        return open_model(keras.applications.VGG16(weights=None), preprocess="raw")
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    if name == "torch":
        return open_model(model, input_shape=(SIZE, SIZE, 3), preprocess="raw")
    path = tmp / "vgg16.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=["image"], dynamo=False)
    return open_model(path, preprocess="raw")


def measure(name: str, repeats: int) -> dict:
    from convlens.adapters.base import Target

    with tempfile.TemporaryDirectory(prefix="bench-gradients-") as tmp:
        adapter = _adapter(name, Path(tmp))
        x = _image()
        last_conv = [t.index for t in adapter.layers() if t.kind == "conv"][-1]
        target = Target(channels=(CLASS,))
        runs: dict[str, Callable[[], object]] = {
            "forward": lambda: adapter.run(x, [], lambda i, a: None),
            "gradcam": lambda: adapter.gradients(x, target, [last_conv]),
            "saliency": lambda: adapter.gradients(x, target, wrt_input=True),
        }
        for _ in range(2):  # warm-up: tracing, conversion, allocations
            for run in runs.values():
                run()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeats):  # interleaved, so machine noise hits every case alike
            for key, run in runs.items():
                t = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated frameworks")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each case")
    parser.add_argument("--one", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeats)))
        return
    rows = []
    for name in args.only.split(","):
        # one process per framework (and Keras backend): each keeps its own thread pools
        env = {**os.environ, "KERAS_BACKEND": "torch" if name == "keras-torch" else "tensorflow"}
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--repeats", str(args.repeats)],
                              capture_output=True, text=True, check=False, env=env)
        if proc.returncode:
            sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        rows.append((name, json.loads(proc.stdout.strip().splitlines()[-1])))
    print(f"VGG16 with its classifier (random weights), one {SIZE}x{SIZE} image, class {CLASS}; medians of "
          f"{args.repeats} interleaved runs after 2 warm-ups, one process per framework")
    print(f"{'framework':<12}{'forward s':>10}{'gradcam s':>11}{'saliency s':>12}{'gradcam/fwd':>13}"
          f"{'saliency/fwd':>14}")
    for name, r in rows:
        print(f"{name:<12}{r['forward']:>10.3f}{r['gradcam']:>11.3f}{r['saliency']:>12.3f}"
              f"{r['gradcam'] / r['forward']:>13.2f}{r['saliency'] / r['forward']:>14.2f}")
    print("targets: gradcam/fwd <= 1.2, saliency/fwd <= 2.2")


if __name__ == "__main__":
    main()
