"""The HTML report of VGG16 (random weights) on one 224x224 photo, every conv and pool layer.

Three cases, interleaved in one process so that noise from the machine hits
each alike, on the same model, image and layers:

(a) floor: the bare forward pass of one multi-output Keras model over every
    conv and pool layer (the network has to run anyway);
(b) ``Lens.save_maps``: every layer's grid as a PNG file (default options);
(c) ``Lens.report(out=...)``: the whole self-contained page (one pass feeding
    the grids and the channel statistics, the layer table, inputs, top-5,
    filter atlases), written atomically.

Prints the medians and their ratios, the report's size in MB with what takes
the room, and, when Playwright and Chromium are there, how long the page takes
to open from file:// (load event, then the first grid decoded). Run:

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/bench_report.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _breakdown(page: str) -> list[tuple[str, int]]:
    """Bytes of the page by what they hold."""
    data = re.search(r'<script type="application/json" id="cl-data">(.*?)</script>', page, re.DOTALL)
    blob = json.loads(data.group(1)) if data else {}
    grids = sum(len(g) for layer in blob.get("layers", []) for g in layer["grids"])
    stats = len(json.dumps(blob.get("stats", []), separators=(",", ":")))
    lazy = sum(len(m) for m in re.findall(r'data-src="([^"]*)"', page))
    eager = sum(len(m) for m in re.findall(r' src="(data:[^"]*)"', page))
    total = len(page.encode("utf-8"))
    parts = [("feature-map grids (base64 PNG)", grids), ("filter atlases (base64 PNG, lazy)", lazy),
             ("input pictures (base64)", eager), ("channel statistics (JSON)", stats)]
    parts.append(("everything else (tables, viewer data, CSS, JS)", total - sum(n for _, n in parts)))
    return parts


def _open_time(path: Path, runs: int = 3) -> float | None:
    """Median seconds from navigation to the load event plus the first grid decoded, or None."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not Path(CHROMIUM).exists():
        return None
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(runs):
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            t0 = time.perf_counter()
            page.goto(path.as_uri(), wait_until="load")
            while not page.evaluate("() => document.getElementById('cl-map-img').naturalWidth > 0"):
                time.sleep(0.005)
            times.append(time.perf_counter() - t0)
            page.close()
        browser.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each case (default 7)")
    parser.add_argument("--no-browser", action="store_true", help="skip the page-opening time")
    args = parser.parse_args()

    import keras

    from convlens import SAMPLE_PHOTO, Lens
    from convlens.images import load_image, prepare

    keras.utils.set_random_seed(0)
    lens = Lens("vgg16", weights="none")
    chosen = lens.select("conv,pool")
    model = lens.adapter.model
    multi = keras.Model(model.inputs, [model.get_layer(info.name).output for info in chosen])
    x, _ = prepare(load_image(SAMPLE_PHOTO), size=(224, 224), channels=3, preprocess=lens.preprocess)
    batch = x[None]
    tmp = Path(tempfile.mkdtemp(prefix="bench-report-"))
    count = iter(range(10**6))
    report_path = tmp / "report.html"

    cases = {
        "(a) forward pass, multi-output": lambda: multi.predict_on_batch(batch),
        "(b) save_maps -> PNG files": lambda: lens.save_maps(SAMPLE_PHOTO, tmp / f"maps{next(count)}",
                                                              layers="conv,pool"),
        "(c) report -> one HTML file": lambda: lens.report(SAMPLE_PHOTO, "conv,pool", out=report_path),
    }
    try:
        for fn in cases.values():  # warm-up: graph tracing, caches, first-call costs
            fn()
            fn()
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.runs):
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        page = report_path.read_text(encoding="utf-8")
        size = report_path.stat().st_size
        opened = None if args.no_browser else _open_time(report_path)
    finally:
        keep = tmp / "report.html"
        saved = Path(tempfile.gettempdir()) / "convlens-bench-report.html"
        if keep.exists():
            shutil.copyfile(keep, saved)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"VGG16 (random weights), {SAMPLE_PHOTO.name} at 224x224, {len(chosen)} conv and pool layers; "
          f"Keras {keras.__version__} on {keras.backend.backend()}, {os.cpu_count()} CPUs")
    print(f"{'case':36s} {'median s':>9s} {'min s':>7s} {'runs':>5s}")
    med = {}
    for name, ts in times.items():
        med[name] = statistics.median(ts)
        print(f"{name:36s} {med[name]:9.3f} {min(ts):7.3f} {len(ts):5d}")
    a, b, c = med.values()
    print(f"c/a = {c / a:.2f}   c/b = {c / b:.2f}   b/a = {b / a:.2f}")
    print(f"report size: {size / 1e6:.2f} MB ({size:,} bytes)")
    for what, n in _breakdown(page):
        print(f"  {what:48s} {n / 1e6:6.2f} MB")
    if opened is not None:
        print(f"opens from file:// in Chromium (load + first grid decoded): {opened:.2f} s (median of 3)")
    print(f"the last report is kept in {saved}")


if __name__ == "__main__":
    main()
