"""The cost of a detector's box-target Grad-CAM against its forward pass (YOLOv8n, PyTorch).

YOLOv8n built from its YAML with random weights (ultralytics; nothing is
downloaded), one 640x640 image, in one process, interleaved, after a warm-up:

* forward: the module on the image under ``torch.inference_mode`` (what a
  detector costs to run);
* box Grad-CAM, output given: :meth:`convlens.methods.GradCAM.compute` with
  ``Objective(box=...)`` and the model's output already known (what
  ``heatmaps()`` does: it has run the model to draw the detections): one
  gradient pass from the default layer (the neck's ``model.15``), for the
  best detection (with random weights a stride-32 anchor) and for the best
  stride-8 one (the worst case: its gradient goes back through the largest
  head, at 80x80);
* box Grad-CAM, alone: the same without the output (one forward to find the
  detection, then the gradient pass).

Each row gives the median and the best wall time, and the median CPU time of
the process (all threads): on a machine shared with other work the wall
times swing, the CPU times much less. ``--threads N`` sets torch's threads
(default torch's own), ``--repeat N`` the rounds (default 7).

The issue's target: the first within 1.3x of the forward pass. Run:

    make benchmark-heatmaps   # or: .venv/bin/python benchmarks/bench_detector.py [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

SIZE = 640


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--repeat", type=int, default=7, help="interleaved rounds (default 7)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from ultralytics import YOLO

    from convlens.adapters import open_model
    from convlens.methods import create, default_layer
    from convlens.methods.targets import Objective

    torch.manual_seed(0)
    model = YOLO("yolov8n.yaml").model.eval()
    adapter = open_model(model, input_shape=(SIZE, SIZE, 3))
    layer = default_layer(adapter.layers())
    x = np.random.default_rng(0).random((1, SIZE, SIZE, 3), dtype=np.float32)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    out = adapter.run(x, [], lambda i, a: None)
    dense = out[0]

    def box_of(a: int) -> tuple[int, tuple[float, ...]]:
        cx, cy, w, h = dense[a, :4]
        return int(np.argmax(dense[a, 4:])), (float(cx - w / 2), float(cy - h / 2), float(cx + w / 2),
                                              float(cy + h / 2))

    best = dense[:, 4:].max(axis=1)
    top = int(np.argmax(best))
    fine = int(np.argmax(best[:(SIZE // 8) ** 2]))  # the stride-8 anchors come first
    cls, box = box_of(top)
    fine_cls, fine_box = box_of(fine)
    gradcam = create("gradcam")
    objective, fine_objective = Objective(box=box), Objective(box=fine_box)

    def forward() -> None:
        with torch.inference_mode():
            model(xt)

    def given() -> None:
        gradcam.compute(adapter, x, target=cls, objective=objective, output=out)

    def given_fine() -> None:
        gradcam.compute(adapter, x, target=fine_cls, objective=fine_objective, output=out)

    def alone() -> None:
        gradcam.compute(adapter, x, target=cls, objective=objective)

    stride = 8 if top < (SIZE // 8) ** 2 else 16 if top < (SIZE // 8) ** 2 + (SIZE // 16) ** 2 else 32
    cases = {"forward": forward, f"box Grad-CAM, output given (best, stride {stride})": given,
             "box Grad-CAM, output given (best stride 8)": given_fine, "box Grad-CAM, alone": alone}
    for fn in cases.values():
        fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for _ in range(args.repeat):
        for name, fn in cases.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - t, time.process_time() - c))
    wall = {k: statistics.median(w for w, _ in ts) for k, ts in times.items()}
    least = {k: min(w for w, _ in ts) for k, ts in times.items()}
    cpu = {k: statistics.median(c for _, c in ts) for k, ts in times.items()}
    print(f"YOLOv8n (random weights), {SIZE}x{SIZE}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"CAM layer {layer.name} {layer.output_shape}; {args.repeat} rounds; load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"  {'':44s} {'median wall':>18s} {'best wall':>18s} {'median CPU':>18s}")
    for name in times:
        print(f"  {name:44s}" + "".join(f" {d[name] * 1000:8.1f} ms {d[name] / d['forward']:5.2f}x"
                                        for d in (wall, least, cpu)))

if __name__ == "__main__":
    main()
