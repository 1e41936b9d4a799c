"""convlens on a GPU, against the same work on the CPU: ResNet-50 (random weights) at 224 px.

One script, under five minutes on one GPU (H100/H200). For each device (``cuda``, then ``cpu``):

* **placement**: the module's parameters are on the device after every step;
* **maps**: ``Lens.feature_maps`` of the block outputs of a batch of images;
* **Grad-CAM** and **saliency**: the methods on a prepared batch, timed against the bare
  batched forward pass of the same batch (target on the GPU: Grad-CAM within 1.2x of it);
* **visualisation**: 64 channels of ``layer4.2.conv3`` optimised together;
* **dataset view**: ``Lens.dataset`` over 2,000 JPEGs (the CPU runs fewer, and says how many),
  end to end (decoding included) and its model pass alone (batches decoded ahead), against the
  bare batched forward pass over the same images (target on the GPU: >= 80%);
* **agreement**: maps, Grad-CAM, saliency and the dataset view's channel means on ``cuda``
  agree with the CPU's within 1e-3 (of each array's largest magnitude).

Everything runs with TF32 and cuDNN autotuning off (:func:`convlens.adapters.exact_kernels`),
as the dataset view and the exactness checks do, so the GPU's float32 is float32. On a machine
without CUDA the script runs the CPU rows only and says so in its first line.

Needs numpy, pillow, jinja2, torch and torchvision (no TensorFlow). Run:

    PYTHONPATH=src python3 benchmarks/bench_device.py                  # the full run
    PYTHONPATH=src python3 benchmarks/bench_device.py --quick --images 64 --size 96   # a smoke test
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from convlens import Lens  # noqa: E402
from convlens.adapters import exact_kernels  # noqa: E402
from convlens.dataset.engine import BatchRunner  # noqa: E402
from convlens.dataset.sources import open_source  # noqa: E402
from convlens.methods import create  # noqa: E402

try:  # the feature visualisation's transforms build scipy.sparse warps; the rest needs no scipy
    import scipy.sparse  # noqa: F401

    HAVE_SCIPY = True
except ImportError:
    HAVE_SCIPY = False
LAYERS = "blocks"
VIS_LAYER = "layer4.2.conv3"
TOLERANCE = 1e-3


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn, repeats: int = 3) -> tuple[float, object]:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after one warm-up, and its last result."""
    out = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def pictures(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random pictures (low-resolution noise enlarged): JPEG-friendly, decoded fast."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (12, 12, 3)).astype(np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC)))
    return out


def write_jpegs(folder: Path, n: int, size: int) -> None:
    from PIL import Image

    for i, a in enumerate(pictures(n, size, seed=1)):
        sub = folder / f"class{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(sub / f"{i:05d}.jpg", quality=90)


def check_placement(lens: Lens, device: str, where: str) -> None:
    kinds = {str(p.device) for p in lens.adapter.module.parameters()}
    want = torch.device(device)
    ok = all(torch.device(k).type == want.type for k in kinds)
    if not ok:
        raise SystemExit(f"FAIL: after {where} the parameters are on {sorted(kinds)}, not {device}")


def bare_forward(module: torch.nn.Module, batch: np.ndarray, device: str, batch_size: int) -> None:
    """The module alone over ``batch`` in batches: host -> device -> forward, under inference_mode."""
    x_host = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
    with torch.inference_mode():
        for s in range(0, len(x_host), batch_size):
            module(x_host[s:s + batch_size].to(device))


def section(device: str, module: torch.nn.Module, args: argparse.Namespace, data: Path, n_data: int,
            results: dict) -> None:
    print(f"\n== {device} ==", flush=True)
    lens = Lens(module, input_shape=(args.size, args.size, 3), preprocess="torch", device=device)
    check_placement(lens, device, "opening")
    adapter = lens.adapter
    imgs = pictures(args.batch, args.size)
    prepared = lens.model.prepare(imgs).arrays
    batch = np.stack(prepared).astype(np.float32)
    row: dict = {"device": device}

    t_fwd, _ = timed(device, lambda: bare_forward(module, batch, device, len(batch)))
    row["forward"] = t_fwd
    t_run, _ = timed(device, lambda: adapter.run(batch, [], lambda i, a: None))
    row["run"] = t_run
    t_maps, maps = timed(device, lambda: lens.feature_maps(imgs, layers=LAYERS))
    row["maps"] = t_maps
    check_placement(lens, device, "feature maps")
    gradcam, saliency = create("gradcam"), create("saliency")
    t_cam, cam = timed(device, lambda: gradcam.compute(adapter, batch, target=0))
    row["gradcam"] = t_cam
    t_sal, sal = timed(device, lambda: saliency.compute(adapter, batch, target=0))
    row["saliency"] = t_sal
    check_placement(lens, device, "Grad-CAM and saliency")
    row["vis_steps"] = args.steps if device != "cpu" else args.cpu_steps
    if HAVE_SCIPY:
        t0 = time.perf_counter()
        vis = lens.visualize(VIS_LAYER, channels=f"0-{args.channels - 1}", steps=row["vis_steps"],
                             size=args.vis_size, batch_size=args.channels)
        sync(device)
        row["visualize"] = time.perf_counter() - t0
        row["vis_finite"] = bool(np.isfinite(vis.images).all())
        check_placement(lens, device, "visualisation")

    # the dataset view: end to end, then its model pass alone over batches decoded ahead
    t0 = time.perf_counter()
    ds = lens.dataset(data, LAYERS, k=9, batch_size=args.batch_size)
    sync(device)
    row["dataset"] = time.perf_counter() - t0
    row["dataset_images"] = ds.images
    source = open_source(data)
    runner = BatchRunner(adapter, lens.select(LAYERS), source, size=None, preprocess="torch", k=9,
                         classes=len(source.class_names or ()))
    loaded = [runner.load(source.records[s:s + args.batch_size])
              for s in range(0, len(source.records), args.batch_size)]
    with exact_kernels():
        runner.forward(loaded[0])  # warm-up (cuDNN picks its algorithms)
        sync(device)
        t0 = time.perf_counter()
        for b in loaded:
            runner.forward(b)
        sync(device)
        row["dataset_pass"] = time.perf_counter() - t0
        all_inputs = np.concatenate([b.inputs for b in loaded])
        row["dataset_bare"], _ = timed(device, lambda: bare_forward(module, all_inputs, device, args.batch_size),
                                       repeats=1)
    check_placement(lens, device, "the dataset view")
    row["n_data"] = n_data
    results[device] = row
    results[device + "_arrays"] = {"maps": {k: np.stack(v) for k, v in maps.arrays.items()}, "cam": cam.maps,
                                   "saliency": sal.maps,
                                   "ds_means": {ex.layer.name: ex.stats.mean for ex in ds.layers}}
    n = len(batch)
    print(f"bare forward      {n / t_fwd:9.1f} images/s  (batch of {n})")
    print(f"convlens run      {n / t_run:9.1f} images/s  ({t_run / t_fwd:.2f}x the bare forward)")
    print(f"feature maps      {n / t_maps:9.1f} images/s  ({LAYERS}: {len(maps.arrays)} layers, "
          "decoding and copies to the host included)")
    print(f"Grad-CAM          {n / t_cam:9.1f} images/s  ({t_cam / t_fwd:.2f}x the bare forward; target <= 1.2x "
          "on a GPU)")
    print(f"saliency          {n / t_sal:9.1f} images/s  ({t_sal / t_fwd:.2f}x the bare forward)")
    if HAVE_SCIPY:
        print(f"visualisation     {args.channels} channels of {VIS_LAYER}, {row['vis_steps']} steps at "
              f"{args.vis_size} px: {row['visualize']:.1f} s "
              f"({args.channels * row['vis_steps'] / row['visualize']:.1f} image-steps/s), finite: {row['vis_finite']}")
    else:
        print("visualisation     skipped: scipy is not installed (the visualisation's image transforms need it)")
    rate_end = ds.images / row["dataset"]
    rate_pass = ds.images / row["dataset_pass"]
    rate_bare = ds.images / row["dataset_bare"]
    print(f"dataset view      {rate_end:9.1f} images/s end to end over {ds.images} JPEGs "
          f"(batch {args.batch_size}, decoding on the CPU included)")
    print(f"  its model pass  {rate_pass:9.1f} images/s = {rate_pass / rate_bare:.0%} of the bare batched forward "
          f"({rate_bare:.1f} images/s; target >= 80% on a GPU)")
    print(f"parameters stayed on {device} through every step: yes", flush=True)


def agreement(results: dict) -> bool:
    a, b = results.get("cuda_arrays"), results.get("cpu_arrays")
    if a is None or b is None:
        return True
    ok = True

    def rel(x: np.ndarray, y: np.ndarray) -> float:
        scale = max(float(np.abs(y).max()), 1e-12)
        return float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max()) / scale

    print("\n== cuda vs cpu (largest difference / largest magnitude; allowed 1e-3) ==")
    pairs = [(f"map {name}", a["maps"][name], b["maps"][name]) for name in b["maps"]]
    pairs += [("Grad-CAM", a["cam"], b["cam"]), ("saliency", a["saliency"], b["saliency"])]
    pairs += [(f"dataset means {name}", a["ds_means"][name], b["ds_means"][name]) for name in b["ds_means"]
              if name in a["ds_means"]]
    for what, x, y in pairs:
        r = rel(x, y)
        ok &= r <= TOLERANCE
        print(f"{what:32s} {r:.2e}  {'ok' if r <= TOLERANCE else 'FAIL'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000, help="dataset view images on the GPU (default 2000)")
    p.add_argument("--cpu-images", type=int, default=64, help="dataset view images on the CPU (default 64)")
    p.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--batch", type=int, default=16, help="images of the maps/Grad-CAM/saliency batch (default 16)")
    p.add_argument("--batch-size", type=int, default=64, help="dataset view batch (default 64)")
    p.add_argument("--channels", type=int, default=64, help="channels visualised (default 64)")
    p.add_argument("--steps", type=int, default=64, help="visualisation steps on the GPU (default 64)")
    p.add_argument("--cpu-steps", type=int, default=4, help="visualisation steps on the CPU (default 4)")
    p.add_argument("--vis-size", type=int, default=128, help="visualisation image side (default 128)")
    p.add_argument("--quick", action="store_true", help="a smoke test: small everything")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.cpu_images = min(args.images, 64), min(args.cpu_images, 16)
        args.batch, args.batch_size, args.channels = min(args.batch, 4), min(args.batch_size, 16), 8
        args.steps, args.cpu_steps, args.vis_size = 4, 2, 64
    t_start = time.perf_counter()
    import torchvision

    cuda = torch.cuda.is_available()
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, "
              f"torchvision {torchvision.__version__}; "
              f"cpu rows on {os.cpu_count()} cores with {args.cpu_images} dataset images "
              f"(the GPU's: {args.images}) and {args.cpu_steps} visualisation steps (the GPU's: {args.steps})")
    else:
        print(f"no CUDA GPU here: the CPU rows only ({args.cpu_images} dataset images, {args.cpu_steps} "
              f"visualisation steps); torch {torch.__version__}, {os.cpu_count()} cores")
    print(f"ResNet-50, random weights (seed 0), {args.size} px; TF32 and cuDNN autotuning off throughout")
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None).eval()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="convlens-bench-device-") as tmp, exact_kernels():
        gpu_data, cpu_data = Path(tmp) / "gpu", Path(tmp) / "cpu"
        write_jpegs(gpu_data, args.images if cuda else 0, args.size)
        write_jpegs(cpu_data, args.cpu_images, args.size)
        if cuda:
            # the GPU's dataset also runs over the CPU's images first, for the agreement of its means
            section("cuda", copy.deepcopy(reference), args, gpu_data, args.images, results)
            cpu_subset = Lens(copy.deepcopy(reference), input_shape=(args.size, args.size, 3), preprocess="torch",
                              device="cuda").dataset(cpu_data, LAYERS, k=9, batch_size=args.batch_size)
            results["cuda_arrays"]["ds_means"] = {ex.layer.name: ex.stats.mean for ex in cpu_subset.layers}
        section("cpu", copy.deepcopy(reference), args, cpu_data, args.cpu_images, results)
    ok = agreement(results)
    if cuda:
        g = results["cuda"]
        cam_ratio = g["gradcam"] / g["forward"]
        ds_ratio = g["dataset_bare"] / g["dataset_pass"]
        print("\n== targets on the GPU ==")
        print(f"Grad-CAM / bare forward: {cam_ratio:.2f}x (target <= 1.2x): {'met' if cam_ratio <= 1.2 else 'MISSED'}")
        print(f"dataset model pass / bare forward: {ds_ratio:.0%} (target >= 80%): "
              f"{'met' if ds_ratio >= 0.8 else 'MISSED'}")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; agreement {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
