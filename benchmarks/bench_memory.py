"""Peak memory of feature maps and channel statistics on a big photo (4000x3000 by default).

For a model that takes any input size, a photo is run at its own size, so one
layer's output can hold gigabytes (VGG16's block1_conv2 on 4000x3000: 64 maps
of 3000x4000 float32, 3.1 GB). The target: the peak stays within the loaded
model plus twice the largest selected layer's output, the least a framework
needs to compute one layer from another while convlens holds one of them.

Each case runs in a fresh subprocess, which

1. opens the model (random weights, free input size) and reads its layer table;
2. takes its resident memory as the baseline (``VmRSS``) and resets the peak
   (writing 5 to ``/proc/self/clear_refs`` sets ``VmHWM`` to the current RSS);
3. runs ``save_maps(photo, layers="blocks")`` or ``channel_stats(photo,
   layers="blocks")``, noting the largest output handed over;
4. reports the peak (``VmHWM``) against ``baseline + 2 x largest output``.

A third case per model, ``plain``, is the reference: the same photo, loaded and
prepared the same way, through the framework's own forward pass (torch
``module(x)`` under ``no_grad``, Keras ``model(x)``) with nothing captured.

Cases: torchvision ResNet-18 and Keras VGG16 without its top, each with maps
and stats. Run:

    make benchmark-memory
    .venv/bin/python benchmarks/bench_memory.py [--size 2000x1500] [--only resnet18]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

MB = 1 << 20
MODELS = ("resnet18", "vgg16")
COMMANDS = ("plain", "maps", "stats")


def _status() -> dict[str, int]:
    """This process's resident memory now and at its peak, in bytes (Linux /proc)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def _open(model: str):
    from convlens import Lens

    if model == "resnet18":
        return Lens("torchvision:resnet18", weights="none", input_shape=(None, None, 3))
    import keras

    keras.utils.set_random_seed(0)
    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    return Lens(vgg, preprocess="caffe")


def _plain_forward(lens, photo: str) -> None:
    """The framework's own forward pass on the prepared photo, nothing captured (the reference)."""
    from convlens.images import load_image, prepare

    x, _ = prepare(load_image(photo), size=None, channels=3, preprocess=lens.preprocess)
    model = lens.adapter.model if hasattr(lens.adapter, "model") else lens.adapter.module
    if lens.adapter.framework == "torch":
        import torch

        with torch.no_grad():
            model.eval()(torch.from_numpy(x[None]).movedim(-1, 1).contiguous())
    else:
        model(x[None], training=False)


def _available() -> int:
    """Bytes the kernel can still give (MemAvailable), without swapping."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(model: str, command: str, photo: str) -> dict:
    """One case, in this (fresh) process; skipped when it would not fit in free memory."""
    from PIL import Image

    lens = _open(model)
    chosen = lens.select("blocks")
    with Image.open(photo) as im:
        width, height = im.size
    # the largest selected output from the table: channels x (H / jump) x (W / jump) float32
    expected = max(
        4
        * (layer.output_shape or (1,))[-1]
        * -(-height // (layer.rf_jump or (1, 1))[0])
        * -(-width // (layer.rf_jump or (1, 1))[1])
        for layer in chosen
    )
    # eager Keras needs ~5x; a machine out of memory kills other people's processes too
    if _available() < 6 * expected:
        need, have = 6 * expected / 2**30, _available() / 2**30
        return {"skipped": f"needs ~{need:.1f} GB, {have:.1f} GB available"}
    largest = {"bytes": 0, "layer": ""}
    run = lens.adapter.run

    def watched_run(batch, wanted, on_output):  # notes each output's size, keeps none of them
        def note(i, a):
            if a.nbytes > largest["bytes"]:
                largest.update(bytes=int(a.nbytes), layer=lens.adapter.layers()[i].name)
            on_output(i, a)

        return run(batch, wanted, note)

    lens.adapter.run = watched_run
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as out:
        baseline = _status()["VmRSS"]
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak starts again from here
        if command == "maps":
            lens.save_maps(photo, out, "blocks")
        elif command == "stats":
            lens.channel_stats(photo, "blocks")
        else:
            _plain_forward(lens, photo)
        peak = _status()["VmHWM"]
    return {
        "baseline": baseline,
        "peak": peak,
        "largest": largest["bytes"],
        "layer": largest["layer"],
        "selected": len(chosen),
    }


def _photo(path: Path, width: int, height: int) -> None:
    from PIL import Image

    import convlens

    with Image.open(convlens.SAMPLE_PHOTO) as im:
        im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="4000x3000", help="photo size WxH (default 4000x3000)")
    parser.add_argument(
        "--only", default=",".join(MODELS), help="comma-separated models: resnet18,vgg16"
    )
    parser.add_argument(
        "--one", nargs=3, metavar=("MODEL", "COMMAND", "PHOTO"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        photo = Path(tmp) / f"photo_{width}x{height}.jpg"
        _photo(photo, width, height)
        for model in args.only.split(","):
            for command in COMMANDS:
                # a fresh process per case: a peak cannot be reset across framework allocators
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", model, command, str(photo)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode:
                    sys.exit(
                        f"{model} {command} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
                    )
                rows.append((model, command, json.loads(proc.stdout.strip().splitlines()[-1])))
    print(
        f"peak resident memory, one {width}x{height} photo at its own size, --layers blocks, "
        "random weights, one process per case"
    )
    print(
        f"{'model':<10}{'command':<8}{'layers':>7}{'model MB':>10}{'largest output':>30}"
        f"{'peak MB':>9}{'bound MB':>10}{'extra/largest':>15}  within"
    )
    largest_of = {model: r["largest"] for model, command, r in rows if r.get("largest")}
    for model, command, r in rows:
        if "skipped" in r:
            print(f"{model:<10}{command:<8}  skipped: {r['skipped']} (try --size 2000x1500)")
            continue
        if command == "plain":  # nothing was captured: the largest output is the other cases'
            r.update(largest=largest_of.get(model, 0), layer="(reference)")
        bound = r["baseline"] + 2 * r["largest"]
        largest = f"{r['layer']} {r['largest'] / MB:,.0f} MB"
        extra = (r["peak"] - r["baseline"]) / max(r["largest"], 1)
        within = "yes" if r["peak"] <= bound else "NO"
        print(
            f"{model:<10}{command:<8}{r['selected']:>7}{r['baseline'] / MB:>10,.0f}{largest:>30}"
            f"{r['peak'] / MB:>9,.0f}{bound / MB:>10,.0f}{extra:>15.2f}  {within}"
        )
    print(
        "model MB: resident memory with the model loaded; bound: model + 2 x largest selected "
        "output; extra/largest: (peak - model) / largest output, target <= 2; plain: the "
        "framework's own forward pass, nothing captured"
    )


if __name__ == "__main__":
    main()
