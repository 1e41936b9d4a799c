"""``convlens compare``: time against the two bare forward passes, and peak memory against the image count.

1. **Time** (VGG16, random weights, PyTorch against its ONNX export, 16 images
   of 224x224): the two bare forward passes (``adapter.run`` of each model
   over the same batches, no layer captured) against ``convlens.compare`` of
   the two (every layer paired and compared, pictures; two forms of one
   network get no CKA by default), in one process, interleaved, medians of
   ``--repeat`` runs. Target: <= 1.3x. Also timed: the same passes capturing
   every layer with nothing done to the outputs (what the adapters cost).
2. **Memory** (ResNet-18, random weights, against a copy of itself, CKA on):
   each image count runs in a fresh process; images are PNG files read batch
   by batch; after a 4-image warm-up the peak (``VmHWM``) is reset and
   ``compare`` runs over N images. Target: the peak at the larger count
   within 10% of the peak at the smaller.

The machine may be shared: read the ratios, taken in one process, more than
the seconds. Run:

    make benchmark-compare   # or: .venv/bin/python benchmarks/bench_compare.py [--images 16]
                             #     [--counts 100,1000] [--memory-size 224] [--only time|memory]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) * 1024
    return out


def _images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def time_case(n_images: int, repeat: int) -> dict[str, float]:
    import torch
    import torchvision

    from convlens import Model, compare
    from convlens.compare.run import batches

    torch.manual_seed(0)
    net = torchvision.models.vgg16(weights=None).eval()
    tmp = Path(tempfile.mkdtemp(prefix="convlens-compare-bench-"))
    atexit.register(shutil.rmtree, tmp, True)
    onnx_path = tmp / "vgg16.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 224, 224),), str(onnx_path), input_names=["image"],
                      output_names=["logits"], dynamo=False)
    a, b = Model.open(net, preprocess="torch"), Model.open(onnx_path, preprocess="torch")
    images = _images(n_images, 224)
    batch_size = 8

    def bare() -> None:
        for chunk in batches(len(images), batch_size):
            for m in (a, b):
                x = np.stack(m.prepare([images[i] for i in chunk]).arrays)
                m.adapter.run(x, [], lambda i, arr: None)

    rows_a = [x.index for x in a.layers() if x.kind != "input"]
    rows_b = [y.index for y in b.layers() if y.kind != "input"]

    def capture() -> None:  # what the adapters cost to hand over every layer's output, no work on them
        for chunk in batches(len(images), batch_size):
            for m, rows in ((a, rows_a), (b, rows_b)):
                x = np.stack(m.prepare([images[i] for i in chunk]).arrays)
                m.adapter.run(x, rows, lambda i, arr: None)

    def full() -> None:
        compare(a, b, images, batch_size=batch_size)

    bare()  # warm-up: sessions, allocators
    capture()
    full()
    times: dict[str, list[float]] = {"bare": [], "capture": [], "compare": []}
    for _ in range(repeat):
        for name, fn in (("bare", bare), ("capture", capture), ("compare", full)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    r = compare(a, b, images, batch_size=batch_size)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"bare_s": med["bare"], "capture_s": med["capture"], "compare_s": med["compare"],
            "ratio": med["compare"] / med["bare"], "capture_ratio": med["capture"] / med["bare"],
            "pairs": len(r.pairs), "max_rel_error": max(p.rel_error or 0.0 for p in r.pairs)}


def memory_case(n_images: int, size: int, folder: str) -> dict[str, float]:
    import copy

    import torch
    import torchvision

    from convlens import compare

    torch.manual_seed(0)
    a = torchvision.models.resnet18(weights=None).eval()
    b = copy.deepcopy(a)
    paths = sorted(str(p) for p in Path(folder).glob("*.png"))[:n_images]
    assert len(paths) == n_images, (len(paths), n_images)
    compare(a, b, paths[:4], preprocess="torch", batch_size=16, cka=True)  # warm-up
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
    base = _status()["VmRSS"]
    t0 = time.perf_counter()
    r = compare(a, b, paths, preprocess="torch", batch_size=16, cka=True)
    seconds = time.perf_counter() - t0
    st = _status()
    return {"images": n_images, "baseline_mb": base / 2**20, "peak_mb": st["VmHWM"] / 2**20,
            "growth_mb": (st["VmHWM"] - base) / 2**20, "seconds": seconds,
            "cka_min": min(p.cka for p in r.pairs if p.cka is not None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="images of the time case (default 16)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--counts", default="100,1000", help="image counts of the memory case (default 100,1000)")
    parser.add_argument("--memory-size", type=int, default=224, help="image side of the memory case (default 224)")
    parser.add_argument("--only", choices=("time", "memory"))
    parser.add_argument("--case", help=argparse.SUPPRESS)  # a child process: memory:N:SIZE:FOLDER
    args = parser.parse_args()
    if args.case:
        _, n, size, folder = args.case.split(":", 3)
        print(json.dumps(memory_case(int(n), int(size), folder)))
        return
    print(f"load: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} CPUs")
    if args.only in (None, "time"):
        t = time_case(args.images, args.repeat)
        print(f"time: VGG16 PyTorch vs ONNX, {args.images} images 224x224, {t['pairs']} pairs "
              f"(max relative error {t['max_rel_error']:.1e})")
        print(f"  two bare forward passes {t['bare_s']:.2f} s; compare {t['compare_s']:.2f} s; "
              f"ratio {t['ratio']:.2f}x (target <= 1.3x)")
        print(f"  of which the adapters handing over every layer's output (no work on it): "
              f"{t['capture_s']:.2f} s, {t['capture_ratio']:.2f}x")
    if args.only in (None, "memory"):
        counts = [int(c) for c in args.counts.split(",")]
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="convlens-compare-bench-") as tmp:
            folder = Path(tmp)
            for i, pixels in enumerate(_images(max(counts), args.memory_size, seed=1)):
                Image.fromarray(pixels).save(folder / f"{i:05d}.png")
            results = []
            for n in counts:
                out = subprocess.run([sys.executable, __file__, "--case", f"memory:{n}:{args.memory_size}:{folder}"],
                                     capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"the {n}-image case failed:\n{out.stderr[-3000:]}")
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"memory: ResNet-18 vs a copy, CKA on, {args.memory_size}x{args.memory_size} images, fresh process each")
        for r in results:
            print(f"  {r['images']:>5} images: peak {r['peak_mb']:.0f} MB (baseline {r['baseline_mb']:.0f} MB, "
                  f"growth {r['growth_mb']:.0f} MB), {r['seconds']:.1f} s")
        lo, hi = results[0]["peak_mb"], results[-1]["peak_mb"]
        print(f"  peak at {results[-1]['images']} vs {results[0]['images']} images: {hi / lo:.3f}x "
              f"(target within 10%)")


if __name__ == "__main__":
    main()
