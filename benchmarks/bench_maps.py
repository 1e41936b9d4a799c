"""Feature maps of every conv and pool layer of VGG16 (random weights, 224x224): three ways, side by side.

(a) floor: the bare forward pass of one multi-output model over every conv and
    pool layer (the network has to run anyway);
(b) convlens: ``Lens.save_maps`` writing every conv and pool layer's grid to PNG
    (forward pass, normalisation, tiling, colormap, PNG encoding, index);
(c) the tutorials' way: seed 003's loop per layer (standardise each channel in
    Python, tile 16 per row, ``plt.imshow``, ``savefig``), after the same
    multi-output forward pass.

Each case runs in its own process so that peak memory (max RSS) is its own.
Prints the times, the ratios b/a and c/b, and peak memory. Run:

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/bench_maps.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def case_floor(repeats: int) -> dict:
    keras, model, image = _model_and_image()
    base = _rss_mb()
    _, multi = _multi_output(keras, model)
    x = image[None].astype("float32") / 255.0
    multi.predict_on_batch(x)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        outs = multi.predict_on_batch(x)
        times.append(time.perf_counter() - t)
        del outs
    return {"seconds": statistics.median(times), "times": times, "base_rss_mb": base, "peak_rss_mb": _rss_mb()}


def case_convlens(repeats: int) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from convlens import Lens

    keras, model, image = _model_and_image()
    base = _rss_mb()
    lens = Lens(model, preprocess="unit")
    lens.layers()
    with tempfile.TemporaryDirectory() as tmp:
        lens.save_maps(image, Path(tmp) / "warm", layers="conv,pool")  # warm-up
        times = []
        for i in range(repeats):
            t = time.perf_counter()
            index = lens.save_maps(image, Path(tmp) / f"run{i}", layers="conv,pool")
            times.append(time.perf_counter() - t)
        files = len(index["maps"])
        size = sum(p.stat().st_size for p in (Path(tmp) / "run0").rglob("*.png"))
    return {"seconds": statistics.median(times), "times": times, "files": files,
            "png_mb": size / 1e6, "base_rss_mb": base, "peak_rss_mb": _rss_mb()}


def case_tutorial(repeats: int) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keras, model, image = _model_and_image()
    base = _rss_mb()
    layers, multi = _multi_output(keras, model)
    layer_names = [layer.name for layer in layers]
    x = image[None].astype("float32") / 255.0
    multi.predict_on_batch(x)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            t = time.perf_counter()
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
                plt.savefig(Path(tmp) / f"{rep}_{layer_name}.png")
                plt.close()
            times.append(time.perf_counter() - t)
    return {"seconds": statistics.median(times), "times": times, "base_rss_mb": base, "peak_rss_mb": _rss_mb()}


CASES = {"floor": case_floor, "convlens": case_convlens, "tutorial": case_tutorial}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(CASES[args.case](args.repeats)))
        return
    results = {}
    for name in CASES:
        proc = subprocess.run([sys.executable, __file__, "--case", name, "--repeats", str(args.repeats)],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"case {name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    a, b, c = (results[k]["seconds"] for k in ("floor", "convlens", "tutorial"))
    print(f"VGG16, random weights, one {SIZE}x{SIZE} image, every conv and pool layer "
          f"({results['convlens']['files']} grids, {results['convlens']['png_mb']:.1f} MB of PNG); "
          f"median of {args.repeats} after a warm-up; Keras backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}")
    print(f"{'case':<34}{'seconds':>9}{'peak RSS MB':>13}{'above model MB':>16}")
    labels = {"floor": "(a) forward pass, multi-output", "convlens": "(b) convlens save_maps -> PNG",
              "tutorial": "(c) tutorial loop + savefig"}
    for key, label in labels.items():
        r = results[key]
        print(f"{label:<34}{r['seconds']:>9.3f}{r['peak_rss_mb']:>13.0f}{r['peak_rss_mb'] - r['base_rss_mb']:>16.0f}")
    print(f"b/a = {b / a:.2f}  (target <= 2)")
    print(f"c/b = {c / b:.1f}  (target >= 30)")


if __name__ == "__main__":
    main()
