"""The cost of a detector's box-target Grad-CAM against its forward pass (YOLOv8n, PyTorch).

YOLOv8n built from its YAML with random weights (ultralytics; nothing is
downloaded), one 640x640 image, in one process, interleaved, medians of 5
after a warm-up:

* forward: the module on the image under ``torch.inference_mode`` (what a
  detector costs to run);
* box Grad-CAM, output given: :meth:`convlens.methods.GradCAM.compute` with
  ``Objective(box=...)`` and the model's output already known (what
  ``heatmaps()`` does: it has run the model to draw the detections): one
  gradient pass from the default layer (the neck's ``model.15``);
* box Grad-CAM, alone: the same without the output (one forward to find the
  detection, then the gradient pass).

The issue's target: the first within 1.3x of the forward pass. Run:

    make benchmark-heatmaps   # or: .venv/bin/python benchmarks/bench_detector.py
"""

from __future__ import annotations

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
REPEAT = 5


def main() -> None:
    import torch
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
    a = int(np.argmax(dense[:, 4:].max(axis=1)))
    cx, cy, w, h = dense[a, :4]
    box = (float(cx - w / 2), float(cy - h / 2), float(cx + w / 2), float(cy + h / 2))
    cls = int(np.argmax(dense[a, 4:]))
    gradcam = create("gradcam")
    objective = Objective(box=box)

    def forward() -> None:
        with torch.inference_mode():
            model(xt)

    def given() -> None:
        gradcam.compute(adapter, x, target=cls, objective=objective, output=out)

    def alone() -> None:
        gradcam.compute(adapter, x, target=cls, objective=objective)

    cases = {"forward": forward, "box Grad-CAM, output given": given, "box Grad-CAM, alone": alone}
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(REPEAT):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["forward"])
    print(f"YOLOv8n (random weights), {SIZE}x{SIZE}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"CAM layer {layer.name} {layer.output_shape}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:28s} {med * 1000:8.1f} ms  {med / base:5.2f}x forward")


if __name__ == "__main__":
    main()
