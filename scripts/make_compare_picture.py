"""Render docs/compare_int8.png: the demo model against its int8 TFLite conversion.

The built-in demo CNN (Keras, trained on MNIST) is converted to a
full-integer int8 TFLite model, calibrated on 64 shifted copies of the
bundled digit; ``convlens compare`` then runs on 8 other shifts of it. The
picture is the run's error-growth chart above its side-by-side maps of the
worst layer. Run:

    .venv/bin/python scripts/make_compare_picture.py [--out docs/compare_int8.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def _shifted(digit: np.ndarray, dy: int, dx: int) -> np.ndarray:
    return np.roll(np.roll(digit, dy, axis=0), dx, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "compare_int8.png"))
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from convlens import DEMO_IMAGE, DEMO_MODEL
    from convlens.cli import main as convlens
    from convlens.render.png import encode_png

    tmp = Path(tempfile.mkdtemp(prefix="compare-picture-"))
    digit = np.asarray(Image.open(DEMO_IMAGE).convert("L"), np.uint8)
    calib = [_shifted(digit, dy, dx) for dy in range(-4, 4) for dx in range(-4, 4)]
    model = keras.saving.load_model(DEMO_MODEL)
    saved = tmp / "demo.savedmodel"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([(x[None, ..., None] / 255.0).astype("float32")] for x in calib)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    int8 = tmp / "demo_int8.tflite"
    int8.write_bytes(converter.convert())
    images = []
    for k, (dy, dx) in enumerate([(0, 0), (1, 2), (-2, 1), (2, -2), (-1, -3), (3, 0), (0, 3), (-3, -1)]):
        path = tmp / f"digit{k}.png"
        Image.fromarray(_shifted(digit, dy, dx)).save(path)
        images.append(str(path))
    out = tmp / "cmp"
    rc = convlens(["compare", "demo", str(int8), *images, "--out", str(out)])
    if rc:
        raise SystemExit(rc)
    chart = np.asarray(Image.open(out / "errors.png").convert("RGB"))
    maps_name = "maps_worst.png" if (out / "maps_worst.png").exists() else "maps_first_divergence.png"
    maps = np.asarray(Image.open(out / maps_name).convert("RGB"))
    width = max(chart.shape[1], maps.shape[1])
    canvas = np.full((chart.shape[0] + 10 + maps.shape[0], width, 3), 255, np.uint8)
    canvas[: chart.shape[0], : chart.shape[1]] = chart
    canvas[chart.shape[0] + 10:, : maps.shape[1]] = maps
    Path(args.out).write_bytes(encode_png(canvas, compress_level=9))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
