"""What capturing more PyTorch rows costs, against the plain forward pass.

torchvision ResNet-50 (random weights, one 224x224 image), interleaved in one
process: every conv row; then also every block (container) row; then also
every merge (residual add: a functional row, captured through the op watch).
Prints medians and minima; on a shared machine the minima are the steadier
figure. Run:

    .venv/bin/python benchmarks/bench_torch_rows.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import numpy as np  # noqa: E402

from convlens.adapters import open_model  # noqa: E402

KINDS = (("conv",), ("conv", "block"), ("conv", "block", "merge"))


def main() -> None:
    import torch
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    adapter = open_model(model, input_shape=(224, 224, 3), preprocess="raw")
    table = adapter.layers()
    x = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def plain() -> None:
        with torch.inference_mode():
            model(xt)

    cases = {"plain": (plain, 0)}
    for kinds in KINDS:
        rows = [layer.index for layer in table if layer.kind in kinds]
        cases["+".join(kinds)] = ((lambda rows=rows: adapter.run(x, rows, lambda i, a: None)), len(rows))
    for run, _ in cases.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (run, _) in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    med, low = statistics.median(times["plain"]), min(times["plain"])
    print(f"ResNet-50, one 224x224 image, {args.repeats} interleaved runs")
    print(f"{'captured':<20}{'rows':>5}{'median s':>10}{'x plain':>9}{'min s':>8}{'x plain':>9}")
    for name, (_, n) in cases.items():
        m, lo = statistics.median(times[name]), min(times[name])
        print(f"{name:<20}{n:>5}{m:>10.3f}{m / med:>9.2f}{lo:>8.3f}{lo / low:>9.2f}")


if __name__ == "__main__":
    main()
