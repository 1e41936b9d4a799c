"""The sanity check's whole curve: cascading randomisation (Adebayo et al. 2018) on the demo CNN.

https://arxiv.org/abs/1810.03292. The trained demo CNN's layers with weights
are re-initialised as Keras initialises them before training (kernels
Glorot-uniform, biases zero; one fixed seed), from the top layer down, one
more layer at each step. At each step every gradient method's map of held-out
digits (the class the TRAINED model predicts) is compared with the trained
model's map by Spearman's rank correlation (maps as each method gives them:
Integrated Gradients signed, the others non-negative), averaged over the
digits. A method passes when the last step (every layer random) is below the
threshold that tests/methods/test_sanity_check.py asserts (0.5). The last row,
"random vs random", is the floor a method can reach here: its maps from two
independently randomised networks, compared with each other. Run:

    make benchmark-heatmaps    # or: .venv/bin/python benchmarks/bench_sanity.py [--per-class 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from convlens import DEMO_MODEL, Lens, methods  # noqa: E402
from convlens.core.evaluation import spearman  # noqa: E402

THRESHOLD = 0.5


def held_out_digits(per_class: int) -> np.ndarray:
    spec = importlib.util.spec_from_file_location("train_demo_model", ROOT / "scripts" / "train_demo_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, _, x_test, y_test, _ = module.load_split()
    idx = np.concatenate([np.flatnonzero(y_test == d)[:per_class] for d in range(10)])
    return (x_test[idx].astype(np.float32) / 255.0)[..., None]


def randomised(keras, model, layers: int, seed: int = 0):
    """A copy of ``model`` whose top ``layers`` layers with weights are re-initialised.

    As Keras initialises Conv2D and Dense layers before training: kernels
    Glorot-uniform (``U(-l, l)``, ``l = sqrt(6 / (fan_in + fan_out))``), biases
    zero; drawn with numpy from ``seed``, so that the copy is reproducible.
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    rng = np.random.default_rng(seed)
    for layer in [layer for layer in copy.layers if layer.weights][::-1][:layers]:
        kernel, *rest = layer.get_weights()
        field = int(np.prod(kernel.shape[:-2])) if kernel.ndim > 2 else 1
        limit = np.sqrt(6.0 / (kernel.shape[-2] * field + kernel.shape[-1] * field))
        fresh = rng.uniform(-limit, limit, kernel.shape).astype(np.float32)
        layer.set_weights([fresh, *(np.zeros_like(w) for w in rest)])
    return copy


def maps(lens: Lens, name: str, x: np.ndarray, top: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape[:3], np.float32)
    method = methods.create(name)
    for c in np.unique(top):
        mine = np.flatnonzero(top == c)
        out[mine] = method.compute(lens.adapter, x[mine], target=int(c)).maps
    return out


def main() -> None:
    import keras

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=5, help="held-out digits per class (default 5)")
    args = parser.parse_args()
    x = held_out_digits(args.per_class)
    trained = keras.models.load_model(DEMO_MODEL, compile=False)
    lens = Lens(trained)
    top = lens.adapter.run(x, [], lambda i, a: None).argmax(axis=1)
    names = methods.gradient_methods()
    reference = {n: maps(lens, n, x, top) for n in names}
    weighted = [layer.name for layer in trained.layers if layer.weights][::-1]

    def correlation(a: dict[str, np.ndarray], b: dict[str, np.ndarray], n: str) -> float:
        return float(np.mean([spearman(p, q) for p, q in zip(a[n], b[n])]))

    print(f"Cascading randomisation on the demo CNN, {len(x)} held-out digits; mean Spearman rank "
          "correlation with the trained model's map (1 = unchanged)")
    print(f"{'randomised down to':<20}" + "".join(f"{n:>11}" for n in names))
    last: dict[str, np.ndarray] = {}
    for k, layer in enumerate(weighted, start=1):
        random_lens = Lens(randomised(keras, trained, k))
        last = {n: maps(random_lens, n, x, top) for n in names}
        print(f"{layer:<20}" + "".join(f"{correlation(reference, last, n):>11.2f}" for n in names))
    other = Lens(randomised(keras, trained, len(weighted), seed=1))
    floor = {n: maps(other, n, x, top) for n in names}
    print(f"{'random vs random':<20}" + "".join(f"{correlation(last, floor, n):>11.2f}" for n in names))
    passed = [n for n in names if correlation(reference, last, n) < THRESHOLD]
    failed = [n for n in names if n not in passed]
    print(f"target: below {THRESHOLD} once every layer is random; met by {', '.join(passed) or 'none'}; "
          f"not met by {', '.join(failed) or 'none'}")


if __name__ == "__main__":
    main()
