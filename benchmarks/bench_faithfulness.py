"""Faithfulness of every heatmap method: deletion and insertion curves on held-out digits.

RISE's metrics (Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421): remove
the pixels in the order a map ranks them, most important first, and follow the
probability of the class the model predicted; a faithful map makes it fall
fast (a LOW area under the deletion curve). Insertion starts from a black
image and puts the pixels back in that order (a HIGH area is good).

Model: the trained demo CNN (src/convlens/data/demo_cnn.keras). Digits: 20 of
each class (200) from its held-out split (scripts/train_demo_model.py: per
class 400 train / 100 test after numpy default_rng(0)), never trained on.
A removed pixel becomes 0 (black, MNIST's background); 28 steps of 28 pixels;
ties in a map are broken in one fixed random order. Every method explains the
class the model predicts. Two maps that know nothing of the model are the
yardsticks: a random map (uniform noise, fixed seed) and an edge map (the
Sobel gradient magnitude of the digit, a strong one here: it ranks the stroke
pixels first). Prints mean AUCs with their standard errors and whether each
method beats both yardsticks on both curves. Run:

    make benchmark-heatmaps    # or: .venv/bin/python benchmarks/bench_faithfulness.py [--per-class 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from convlens import Lens, methods  # noqa: E402
from convlens.core.evaluation import curve_auc, perturbation_curves  # noqa: E402

STEPS = 28


def held_out_digits(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` held-out digits of each class, preprocessed as the demo model expects (x / 255)."""
    spec = importlib.util.spec_from_file_location("train_demo_model", ROOT / "scripts" / "train_demo_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, _, x_test, y_test, _ = module.load_split()
    idx = np.concatenate([np.flatnonzero(y_test == d)[:per_class] for d in range(10)])
    return (x_test[idx].astype(np.float32) / 255.0)[..., None], y_test[idx]


def method_maps(lens: Lens, name: str, x: np.ndarray, top: np.ndarray) -> np.ndarray:
    """``(N, 28, 28)``: each digit's map for its predicted class (one call per class)."""
    out = np.empty(x.shape[:3], np.float32)
    method = methods.create(name)
    for c in np.unique(top):
        mine = np.flatnonzero(top == c)
        out[mine] = method.compute(lens.adapter, x[mine], target=int(c)).maps
    return out


def sobel_maps(x: np.ndarray) -> np.ndarray:
    """The Sobel gradient magnitude of each digit: an edge detector that knows nothing of the model."""
    from scipy import ndimage

    return np.stack([np.hypot(ndimage.sobel(im[..., 0], 0), ndimage.sobel(im[..., 0], 1)) for im in x])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=20, help="held-out digits per class (default 20)")
    args = parser.parse_args()
    x, labels = held_out_digits(args.per_class)
    lens = Lens("demo")

    def predict(batch: np.ndarray) -> np.ndarray:
        return lens.adapter.run(batch, [], lambda i, a: None)  # the demo ends in a softmax

    top = predict(x).argmax(axis=1)
    maps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name in methods.names():
        t = time.perf_counter()
        maps[name] = method_maps(lens, name, x, top)
        seconds[name] = time.perf_counter() - t
    maps["random map"] = np.random.default_rng(0).random(x.shape[:3])
    maps["edges (Sobel)"] = sobel_maps(x)
    rows = {}
    for name, m in maps.items():
        # signed attributions (IG, occlusion): the positive evidence for the class comes first
        curves = {mode: perturbation_curves(predict, x, m, top, mode=mode, steps=STEPS, batch=1024)
                  for mode in ("deletion", "insertion")}
        rows[name] = {mode: np.array([curve_auc(c) for c in cs]) for mode, cs in curves.items()}
    print(f"Faithfulness on the demo CNN: {len(x)} held-out digits ({args.per_class} per class, accuracy "
          f"{(top == labels).mean():.3f}), pixels removed or inserted most important first, "
          f"{STEPS} steps, baseline black")
    print("deletion AUC: lower is better; insertion AUC: higher is better; +- one standard error")
    rand, edge = rows["random map"], rows["edges (Sobel)"]
    print(f"{'map':<16}{'deletion AUC':>16}{'insertion AUC':>17}   beats random    beats edges     {'maps s':>6}")
    print(f"{'':<16}{'':>16}{'':>17}   deletion insert deletion insert")

    def se(a: np.ndarray) -> float:
        return float(a.std(ddof=1) / np.sqrt(len(a)))

    def mark(ok: bool) -> str:
        return "yes" if ok else "NO"

    failing = []
    for name, r in rows.items():
        d, i = r["deletion"], r["insertion"]
        line = f"{name:<16}{d.mean():>9.3f} ±{se(d):.3f}{i.mean():>10.3f} ±{se(i):.3f}"
        if name not in ("random map", "edges (Sobel)"):
            wins = [d.mean() < y["deletion"].mean() for y in (rand, edge)]
            wins_i = [i.mean() > y["insertion"].mean() for y in (rand, edge)]
            line += (f"   {mark(wins[0]):<9}{mark(wins_i[0]):<7}{mark(wins[1]):<9}{mark(wins_i[1]):<7}"
                     f"{seconds[name]:>6.1f}")
            if not all(wins + wins_i):
                failing.append(name)
        print(line)
    print("target: every method beats the random map and the edge map on both curves; "
          + (f"not met by {', '.join(failing)}" if failing else "met by every method"))

if __name__ == "__main__":
    main()
