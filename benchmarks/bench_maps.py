"""Feature maps of every conv and pool layer of VGG16 (random weights, 224x224): three ways, side by side.

(a) floor: the bare forward pass of one multi-output model over every conv and
    pool layer (the network has to run anyway);
(b) convlens: ``Lens.save_maps`` writing every conv and pool layer's grid to PNG
    (forward pass, normalisation, tiling, colormap, PNG encoding, index);
(c) the tutorials' way: seed 003's loop per layer (standardise each channel in
    Python, tile 16 per row, ``plt.imshow``, ``savefig``), after the same
    multi-output forward pass.

Times are measured in one process, the three cases interleaved so that noise
from the machine hits each alike; peak memory (max RSS above the built model)
is measured with each case in a fresh process of its own. Prints the times,
the ratios b/a and c/b, and peak memory. Run:

    make benchmark-maps   # or: KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/bench_maps.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
SIZE = 224


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _model_and_image():
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None, include_top=True, input_shape=(SIZE, SIZE, 3))
    image = (np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype("uint8")
    return keras, model, image


def _multi_output(keras, model):
    layers = [layer for layer in model.layers if "conv" in layer.name or "pool" in layer.name]
    return layers, keras.Model(model.inputs, [layer.output for layer in layers])


def setup_floor():
    keras, model, image = _model_and_image()
    _, multi = _multi_output(keras, model)
    x = image[None].astype("float32") / 255.0
    return lambda: multi.predict_on_batch(x)


def setup_convlens():
    sys.path.insert(0, str(ROOT / "src"))
    from convlens import Lens

    keras, model, image = _model_and_image()
    lens = Lens(model, preprocess="unit")
    tmp = Path(tempfile.mkdtemp(prefix="bench-convlens-"))
    count = iter(range(10**6))
    return lambda: lens.save_maps(image, tmp / f"run{next(count)}", layers="conv,pool")


def setup_tutorial():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keras, model, image = _model_and_image()
    layers, multi = _multi_output(keras, model)
    layer_names = [layer.name for layer in layers]
    x = image[None].astype("float32") / 255.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-tutorial-"))
    count = iter(range(10**6))

    def run() -> None:
        rep = next(count)
        activations = multi.predict_on_batch(x)
        images_per_row = 16
        # seed 003's loop, verbatim but for savefig/close (it only showed the figures)
        for layer_name, layer_activation in zip(layer_names, activations):
            n_features = layer_activation.shape[-1]
            size = layer_activation.shape[1]
            n_cols = n_features // images_per_row
            display_grid = np.zeros((size * n_cols, images_per_row * size))
            for col in range(n_cols):
                for row in range(images_per_row):
                    channel_image = layer_activation[0, :, :, col * images_per_row + row].copy()
                    channel_image -= channel_image.mean()
                    channel_image /= channel_image.std() + 1e-8  # the seed divides by 0 here
                    channel_image *= 64
                    channel_image += 128
                    channel_image = np.clip(channel_image, 0, 255).astype("uint8")
                    display_grid[col * size: (col + 1) * size, row * size: (row + 1) * size] = channel_image
            scale = 1.0 / size
            plt.figure(figsize=(scale * display_grid.shape[1], scale * display_grid.shape[0]))
            plt.title(layer_name)
            plt.grid(False)
            plt.imshow(display_grid, aspect="auto", cmap="viridis")
            plt.savefig(tmp / f"{rep}_{layer_name}.png")
            plt.close()

    return run


SETUPS = {"floor": setup_floor, "convlens": setup_convlens, "tutorial": setup_tutorial}


def peak_memory(name: str) -> dict:
    """Run one case twice in this (fresh) process; its peak RSS above the built model."""
    base = _rss_mb()
    run = SETUPS[name]()
    built = _rss_mb()
    run()
    run()
    return {"before_model_mb": base, "model_mb": built, "peak_rss_mb": _rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory-case", choices=SETUPS, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of (a) and (b); (c) runs 3 times")
    args = parser.parse_args()
    if args.memory_case:
        print(json.dumps(peak_memory(args.memory_case)))
        return
    memory = {}
    for name in SETUPS:  # each in its own process, so each peak is its own
        proc = subprocess.run([sys.executable, __file__, "--memory-case", name],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"case {name} failed:\n{proc.stderr[-3000:]}")
        memory[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    runners = {name: setup() for name, setup in SETUPS.items()}
    for run in runners.values():
        run()  # warm-up: graph tracing, first allocations
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(args.repeats):  # interleaved, so that machine noise hits every case alike
        for name, run in runners.items():
            if name == "tutorial" and i >= 3:
                continue
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    a, b, c = med["floor"], med["convlens"], med["tutorial"]
    grids = sorted(Path(tempfile.gettempdir()).glob("bench-convlens-*/run0"))[-1]
    png_mb = sum(p.stat().st_size for p in grids.rglob("*.png")) / 1e6
    print(f"VGG16, random weights, one {SIZE}x{SIZE} image, every conv and pool layer "
          f"({len(list(grids.rglob('*.png')))} grids, {png_mb:.1f} MB of PNG); Keras backend "
          f"{os.environ.get('KERAS_BACKEND', 'tensorflow')}; medians of interleaved runs after a warm-up")
    print(f"{'case':<34}{'median s':>9}{'min s':>8}{'runs':>6}{'peak RSS MB':>13}{'above model MB':>16}")
    labels = {"floor": "(a) forward pass, multi-output", "convlens": "(b) convlens save_maps -> PNG",
              "tutorial": "(c) tutorial loop + savefig"}
    for key, label in labels.items():
        m = memory[key]
        print(f"{label:<34}{med[key]:>9.3f}{min(times[key]):>8.3f}{len(times[key]):>6}"
              f"{m['peak_rss_mb']:>13.0f}{m['peak_rss_mb'] - m['model_mb']:>16.0f}")
    print(f"b/a = {b / a:.2f}  (target <= 2)")
    print(f"c/b = {c / b:.1f}  (target >= 30)")
    for folder in Path(tempfile.gettempdir()).glob("bench-*-*"):
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
