"""Extraction overhead of each adapter on a VGG16-sized network (random weights, 224x224).

For each framework, two cases run interleaved in one process:

(plain)   the framework's own forward pass, as a user would call it:
          keras ``model.predict_on_batch``, torch ``model(x)`` under
          ``inference_mode``, an onnxruntime session with the model's own
          outputs, a LiteRT interpreter without preserved tensors;
(capture) ``adapter.run`` with every conv layer wanted, each output handed
          over as a float32 NHWC numpy array (what every convlens command
          does before drawing).

``torch-blocks`` is torchvision's ResNet-50 instead, with every conv and block
(container) row captured: the cost of hooking containers.

The network is VGG16's convolutional part (13 conv + 5 pool layers; Keras's
``VGG16(include_top=False)``, torchvision's ``vgg16().features``), so the four
runs do the same arithmetic. ONNX is exported from the torch network, TFLite
converted from the Keras one. Prints medians and the ratio capture/plain per
framework (target: within 1.2x). Run:

    make benchmark-adapters   # or: .venv/bin/python benchmarks/bench_adapters.py [--only torch,onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
SIZE = 224

import numpy as np  # noqa: E402

from convlens.adapters import open_model  # noqa: E402

Case = tuple[Callable[[], object], Callable[[], object], int]  # plain, capture, conv layers captured


def _image() -> np.ndarray:
    return np.random.default_rng(0).random((1, SIZE, SIZE, 3), dtype=np.float32)


def _capture(adapter, x: np.ndarray, kinds: tuple[str, ...] = ("conv",)) -> tuple[Callable[[], object], int]:
    convs = [layer.index for layer in adapter.layers() if layer.kind in kinds]
    held: list[np.ndarray] = []

    def run() -> None:
        held.clear()  # keep what one pass hands over, as a caller would, then let it go
        adapter.run(x, convs, lambda i, a: held.append(a))

    return run, len(convs)


def _keras_model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.applications.VGG16(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))


def case_keras(tmp: Path) -> Case:
    model = _keras_model()
    x = _image()
    capture, n = _capture(open_model(model, preprocess="raw"), x)
    return (lambda: model.predict_on_batch(x)), capture, n


def _torch_model():
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).features.eval()


def case_torch(tmp: Path) -> Case:
    import torch

    model = _torch_model()
    x = _image()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def plain() -> object:
        with torch.inference_mode():
            return model(xt).numpy()

    capture, n = _capture(open_model(model, input_shape=(SIZE, SIZE, 3), preprocess="raw"), x)
    return plain, capture, n


def case_torch_blocks(tmp: Path) -> Case:
    """torchvision ResNet-50 with its containers hooked: every conv and block (``layer1``, ``layer1.0``...)
    row captured (before containers were rows: the convs only)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = _image()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def plain() -> object:
        with torch.inference_mode():
            return model(xt).numpy()

    adapter = open_model(model, input_shape=(SIZE, SIZE, 3), preprocess="raw")
    capture, n = _capture(adapter, x, ("conv", "block"))
    return plain, capture, n


def case_onnx(tmp: Path) -> Case:
    import onnxruntime as ort
    import torch

    path = tmp / "vgg16.onnx"
    torch.onnx.export(_torch_model(), (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=["image"],
                      dynamo=False)
    x = _image()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xn = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    capture, n = _capture(open_model(path, preprocess="raw"), x)
    return (lambda: session.run(None, {"image": xn})), capture, n


def case_tflite(tmp: Path) -> Case:
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    model = _keras_model()
    model.export(str(tmp / "vgg16.savedmodel"), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp / "vgg16.savedmodel"))
    path = tmp / "vgg16.tflite"
    path.write_bytes(converter.convert())
    x = _image()
    adapter = open_model(path, preprocess="raw")
    from convlens.adapters.tflite import threads

    # the plain pass gets the adapter's threads and LiteRT's default (XNNPACK) delegate, but
    # neither preserved tensors nor the per-op delegate nodes the adapter needs to read them
    interpreter = Interpreter(model_path=str(path), num_threads=threads())
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]

    def plain() -> object:
        interpreter.set_tensor(inp, x)
        interpreter.invoke()
        return interpreter.get_tensor(out)

    capture, n = _capture(adapter, x)
    return plain, capture, n


CASES = {"keras": case_keras, "torch": case_torch, "torch-blocks": case_torch_blocks, "onnx": case_onnx,
         "tflite": case_tflite}


def measure(name: str, repeats: int) -> dict:
    """Time one framework's two cases, interleaved, in this process."""
    with tempfile.TemporaryDirectory(prefix="bench-adapters-") as tmp:
        plain, capture, n = CASES[name](Path(tmp))
        for _ in range(2):  # warm-up: graph tracing, session and interpreter allocations
            plain()
            capture()
        times: dict[str, list[float]] = {"plain": [], "capture": []}
        for _ in range(repeats):  # interleaved, so machine noise hits both alike
            for key, run in (("plain", plain), ("capture", capture)):
                t = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - t)
    return {"convs": n, "plain": statistics.median(times["plain"]),
            "capture": statistics.median(times["capture"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated frameworks")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs of each case")
    parser.add_argument("--one", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeats)))
        return
    rows = []
    for name in args.only.split(","):
        # one process per framework: TensorFlow and torch each bring their own thread pools,
        # and each framework's numbers should not depend on which ran before it
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--repeats", str(args.repeats)],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        rows.append((name, json.loads(proc.stdout.strip().splitlines()[-1])))
    print(f"VGG16 conv part (random weights), one {SIZE}x{SIZE} image, medians of {args.repeats} "
          "interleaved runs after 2 warm-ups, one process per framework")
    print(f"{'framework':<13}{'rows':>6}{'plain s':>10}{'capture s':>11}{'capture/plain':>15}")
    for name, r in rows:
        print(f"{name:<13}{r['convs']:>6}{r['plain']:>10.3f}{r['capture']:>11.3f}"
              f"{r['capture'] / r['plain']:>15.2f}")
    print("target: capture/plain <= 1.2")


if __name__ == "__main__":
    main()
