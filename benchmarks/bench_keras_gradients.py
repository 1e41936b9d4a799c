"""Keras gradient passes: TensorFlow's eager tape (what convlens ran first before) against the compiled pass,
and the JAX backend's jitted pass, on VGG16 (random weights).

The eager pass is the compiled pass's own fallback (``_tf_traced`` answering ``None``, as for a model
TensorFlow cannot trace): the same tape, run eagerly, which also computes every kernel's gradient.

Run: ``KERAS_BACKEND=tensorflow python benchmarks/bench_keras_gradients.py [--size 224] [--batch 4]``;
``KERAS_BACKEND=jax`` times the jitted pass (no eager column). Prints seconds per call (median of
``--repeat``), the first call (which traces and compiles) apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(first call, median of the next ``repeat``) in seconds."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import keras

    from convlens.adapters.base import Target
    from convlens.adapters.keras import KerasAdapter

    backend = keras.backend.backend()
    model = keras.applications.VGG16(weights=None, input_shape=(args.size, args.size, 3))
    x = np.random.default_rng(0).random((args.batch, args.size, args.size, 3), np.float32)
    rows = {t.name: t.index for t in KerasAdapter(model).layers()}
    cases: dict[str, Callable[[KerasAdapter], Callable[[], object]]] = {
        "forward (run)": lambda a: lambda: a.run(x, [], lambda r, v: None),
        "Grad-CAM pass (block5_conv3)": lambda a: lambda: a.gradients(x, Target(channels=(1,)), [rows["block5_conv3"]]),
        "saliency pass (input)": lambda a: lambda: a.gradients(x, Target(channels=(1,)), wrt_input=True),
        "visualise step (block4_conv3 mean)": lambda a: lambda: a.gradients(
            x, Target(layer=rows["block4_conv3"], channels=(0,), reduce="mean"), wrt_input=True, need_output=False),
    }
    print(f"VGG16, random weights, batch {args.batch} at {args.size} px, Keras {keras.__version__} on {backend}; "
          f"seconds per call, median of {args.repeat} (first call apart)")
    header = f"{'pass':38s} {'compiled 1st':>13s} {'compiled':>9s}"
    if backend == "tensorflow":
        header += f" {'eager tape':>11s} {'eager/compiled':>15s}"
    print(header)
    for name, make in cases.items():
        compiled = KerasAdapter(model)
        first, steady = _timed(make(compiled), args.repeat)
        line = f"{name:38s} {first:13.3f} {steady:9.3f}"
        if backend == "tensorflow" and name != "forward (run)":
            eager = KerasAdapter(model)
            eager._tf_traced = lambda plan, shape: None  # type: ignore[method-assign]  # the eager fallback
            _, slow = _timed(make(eager), args.repeat)
            line += f" {slow:11.3f} {slow / steady:14.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
