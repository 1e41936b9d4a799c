#!/usr/bin/env python
"""Build small, REAL legacy tf.keras 2 ``.h5`` files used as test fixtures.

The files are written by ``tf_keras`` (the Keras 2 package) so that convlens's
Keras 3 loader is tested against what old tutorials and old projects actually
saved. Run from the repository root (no network access needed)::

    python scripts/make_legacy_h5_fixture.py            # build + check with Keras 3
    python scripts/make_legacy_h5_fixture.py --no-check # build only

Outputs (all written atomically: temporary file + ``os.replace``):

``tests/fixtures/legacy_tfkeras2.h5``
    The Sequential CNN of tutorial seed 000 (150x150x3 input, three
    Conv2D/MaxPooling2D pairs, Flatten, Dense 1024/512/3), same layer names,
    same output shapes, same parameter count (10,003,347). To keep the file
    small, the two big Dense kernels are *sparse* (a few percent non-zeros,
    each one of 8 quantised values) and every weight dataset is rewritten
    with HDF5 gzip compression. The rest of the file (model_config, attributes,
    layout) is byte-for-byte what tf_keras wrote.
``tests/fixtures/legacy_tfkeras2_expected.npy``
    Output of that model, computed by tf_keras (Keras 2, an independent
    reference) after reloading the compressed file, for ``fixture_input()``
    below: shape (1, 3), float32.
``tests/fixtures/legacy_tfkeras2_lambda.h5``
    A tiny functional model with a ``Lambda(lambda x: x * 2.0)`` layer, used to
    test that convlens refuses Lambda layers unless ``--trust``.  The lambda is
    stored as marshalled Python bytecode (Keras 2 behaviour): it can only be
    executed by the same Python minor version that wrote it.

Fixture input (reproduce it in tests with exactly this code)::

    i = np.arange(150 * 150 * 3, dtype=np.int64)
    x = ((i * 7919) % 251).astype(np.float32) / np.float32(250.0)
    x = x.reshape(1, 150, 150, 3)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
SEQ_PATH = FIXTURES / "legacy_tfkeras2.h5"
EXPECTED_PATH = FIXTURES / "legacy_tfkeras2_expected.npy"
LAMBDA_PATH = FIXTURES / "legacy_tfkeras2_lambda.h5"

SEED = 0
# Density of non-zeros in the two big Dense kernels (the bulk of the 10M params).
DENSE_DENSITY = 0.005  # dense:   9248 x 1024 -> ~46 inputs per unit
DENSE_1_DENSITY = 0.03  # dense_1: 1024 x 512  -> ~31 inputs per unit
QUANT_LEVELS = np.array([-4, -3, -2, -1, 1, 2, 3, 4], dtype=np.float32) / 4.0

# Output shapes of tutorial seed 000 (batch dimension dropped).
SEED000_SHAPES = {
    "conv2d": (148, 148, 8),
    "max_pooling2d": (74, 74, 8),
    "conv2d_1": (72, 72, 16),
    "max_pooling2d_1": (36, 36, 16),
    "conv2d_2": (34, 34, 32),
    "max_pooling2d_2": (17, 17, 32),
    "flatten": (9248,),
    "dense": (1024,),
    "dense_1": (512,),
    "dense_2": (3,),
}
SEED000_PARAMS = 10_003_347


def fixture_input() -> np.ndarray:
    """Deterministic, platform-independent (integer arithmetic) test image in [0, 1]."""
    i = np.arange(150 * 150 * 3, dtype=np.int64)
    x = ((i * 7919) % 251).astype(np.float32) / np.float32(250.0)
    return x.reshape(1, 150, 150, 3)


# --------------------------------------------------------------------------- io


def _tmp_path(final: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=final.suffix, dir=final.parent)
    os.close(fd)
    return Path(name)


def _publish(tmp: Path, final: Path) -> None:
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, final)


def _copy_attrs(src, dst) -> None:
    """Copy HDF5 attributes keeping their exact stored dtype and shape."""
    for name in src.attrs:
        aid = src.attrs.get_id(name)
        dst.attrs.create(name, data=src.attrs[name], shape=aid.shape, dtype=aid.dtype)


def repack_compressed(src_path: Path, dst_path: Path) -> None:
    """Copy an HDF5 file, rewriting every dataset with gzip compression.

    Groups, attributes and their order are preserved; only the storage layout of
    datasets changes (h5py/HDF5 read gzip transparently, so any reader works).
    """
    import h5py

    with h5py.File(src_path, "r") as src, h5py.File(dst_path, "w", track_order=False) as dst:
        _copy_attrs(src, dst)

        def walk(s, d):
            for key in s:
                obj = s[key]
                if isinstance(obj, h5py.Group):
                    g = d.create_group(key)
                    _copy_attrs(obj, g)
                    walk(obj, g)
                else:
                    data = obj[()]
                    kw = {}
                    if data.size >= 64:
                        kw = {"compression": "gzip", "compression_opts": 9}
                    ds = d.create_dataset(key, data=data, dtype=obj.dtype, **kw)
                    _copy_attrs(obj, ds)

        walk(src, dst)

    # Paranoia: the repacked file must hold exactly the same tree, attrs, data.
    with h5py.File(src_path, "r") as a, h5py.File(dst_path, "r") as b:

        def same(x, y, path="/"):
            assert list(x.attrs) == list(y.attrs), path
            for n in x.attrs:
                assert x.attrs.get_id(n).dtype == y.attrs.get_id(n).dtype, (path, n)
                assert np.array_equal(np.asarray(x.attrs[n]), np.asarray(y.attrs[n])), (path, n)
            if isinstance(x, h5py.Dataset):
                assert x.dtype == y.dtype and x.shape == y.shape, path
                assert np.array_equal(x[()], y[()]), path
                return
            assert sorted(x) == sorted(y), path
            for k in x:
                same(x[k], y[k], f"{path}{k}/")

        same(a, b)


# ------------------------------------------------------------------- tf_keras 2


def _import_tf_keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tf_keras

    tf.random.set_seed(SEED)
    return tf_keras


def build_seed000(tfk):
    """Tutorial seed 000, verbatim apart from the explicit layer names."""
    L = tfk.layers
    return tfk.models.Sequential(
        [
            L.Conv2D(8, (3, 3), activation="relu", input_shape=(150, 150, 3), name="conv2d"),
            L.MaxPooling2D(2, 2, name="max_pooling2d"),
            L.Conv2D(16, (3, 3), activation="relu", name="conv2d_1"),
            L.MaxPooling2D(2, 2, name="max_pooling2d_1"),
            L.Conv2D(32, (3, 3), activation="relu", name="conv2d_2"),
            L.MaxPooling2D(2, 2, name="max_pooling2d_2"),
            L.Flatten(name="flatten"),
            L.Dense(1024, activation="relu", name="dense"),
            L.Dense(512, activation="relu", name="dense_1"),
            L.Dense(3, activation="softmax", name="dense_2"),
        ],
        name="sequential",
    )


def _sparse_kernel(rng, shape, density):
    """Sparse He-scaled kernel whose non-zeros take one of 8 values (compresses well)."""
    fan_in = shape[0]
    mean_sq = float(np.mean(QUANT_LEVELS**2))
    scale = np.float32(np.sqrt(2.0 / (mean_sq * density * fan_in)))
    mask = rng.random(shape) < density
    values = rng.choice(QUANT_LEVELS, size=shape) * scale
    return np.where(mask, values, np.float32(0)).astype(np.float32)


def set_seed000_weights(model, rng) -> None:
    x = fixture_input()
    for layer in model.layers:
        if not layer.weights:
            continue
        kshape = tuple(layer.kernel.shape)
        bshape = tuple(layer.bias.shape)
        if layer.name == "dense":
            kernel = _sparse_kernel(rng, kshape, DENSE_DENSITY)
        elif layer.name == "dense_1":
            kernel = _sparse_kernel(rng, kshape, DENSE_1_DENSITY)
        else:  # small layers: plain He-normal float32
            fan_in = int(np.prod(kshape[:-1]))
            kernel = (rng.standard_normal(kshape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        bias = rng.uniform(-0.05, 0.05, bshape).astype(np.float32)
        if layer.name == "dense_2":
            # Scale the last layer so the softmax is informative (not one-hot)
            # on the fixture input: logits spread ~1.5.
            layer.set_weights([kernel, bias])
            probe = tfk_model_logits(model, x)
            spread = float(np.std(probe)) or 1.0
            kernel = (kernel * np.float32(1.5 / spread)).astype(np.float32)
        layer.set_weights([kernel, bias])


def tfk_model_logits(model, x):
    """Pre-softmax output of the last layer, computed with the same tf_keras model."""
    import tensorflow as tf

    h = tf.convert_to_tensor(x)
    for layer in model.layers[:-1]:
        h = layer(h)
    last = model.layers[-1]
    return (tf.matmul(h, last.kernel) + last.bias).numpy()[0]


def build_lambda_model(tfk, rng):
    L = tfk.layers
    inp = tfk.Input((8, 8, 1), name="image")
    x = L.Conv2D(2, 3, name="conv")(inp)
    # Compiled from source with a fixed file name so that the marshalled
    # bytecode stored in the .h5 does not embed this checkout's absolute path.
    double = eval(compile("lambda t: t * 2.0", "<convlens-fixture>", "eval"))  # noqa: S307
    x = L.Lambda(double, name="double")(x)
    out = L.GlobalAveragePooling2D(name="gap")(x)
    model = tfk.Model(inp, out, name="lambda_model")
    conv = model.get_layer("conv")
    conv.set_weights(
        [
            rng.standard_normal(tuple(conv.kernel.shape)).astype(np.float32) * np.float32(0.5),
            np.array([0.1, -0.1], dtype=np.float32),
        ]
    )
    return model


def make_fixtures() -> None:
    tfk = _import_tf_keras()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)

    # -- seed 000 Sequential ------------------------------------------------
    model = build_seed000(tfk)
    got = {layer.name: tuple(layer.output_shape[1:]) for layer in model.layers}
    assert got == SEED000_SHAPES, got
    assert model.count_params() == SEED000_PARAMS, model.count_params()
    set_seed000_weights(model, rng)
    x = fixture_input()
    y_mem = model.predict(x, verbose=0)

    raw = _tmp_path(SEQ_PATH)
    packed = _tmp_path(SEQ_PATH)
    try:
        model.save(raw, include_optimizer=False, save_format="h5")
        repack_compressed(raw, packed)
        # Independent reference: reload the *compressed* file with Keras 2.
        reloaded = tfk.models.load_model(packed, compile=False)
        y_ref = reloaded.predict(x, verbose=0).astype(np.float32)
        assert np.allclose(y_ref, y_mem, rtol=1e-6, atol=1e-7), (y_ref, y_mem)
        _publish(packed, SEQ_PATH)
    finally:
        for p in (raw, packed):
            if p.exists():
                p.unlink()

    tmp = _tmp_path(EXPECTED_PATH)
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, y_ref)
        _publish(tmp, EXPECTED_PATH)
    finally:
        if tmp.exists():
            tmp.unlink()

    print(f"wrote {SEQ_PATH.relative_to(REPO_ROOT)} ({SEQ_PATH.stat().st_size} bytes)")
    print(f"wrote {EXPECTED_PATH.relative_to(REPO_ROOT)} = {y_ref.tolist()}")

    # -- Lambda model ----------------------------------------------------------
    lam = build_lambda_model(tfk, np.random.default_rng(SEED + 1))
    tmp = _tmp_path(LAMBDA_PATH)
    try:
        lam.save(tmp, include_optimizer=False, save_format="h5")
        _publish(tmp, LAMBDA_PATH)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"wrote {LAMBDA_PATH.relative_to(REPO_ROOT)} ({LAMBDA_PATH.stat().st_size} bytes)")


# ------------------------------------------------------------ Keras 3 checks

_KERAS3_CHECK = r"""
import json, sys, traceback
import numpy as np
import keras
seq_path, exp_path, lam_path, shapes_json = sys.argv[1:5]
shapes = {k: tuple(v) for k, v in json.loads(shapes_json).items()}
report = {"backend": keras.backend.backend(), "keras": keras.__version__}

m = keras.saving.load_model(seq_path, compile=False)
got = {l.name: tuple(l.output.shape[1:]) for l in m.layers}
assert got == shapes, got
assert m.count_params() == 10_003_347, m.count_params()
i = np.arange(150 * 150 * 3, dtype=np.int64)
x = (((i * 7919) % 251).astype(np.float32) / np.float32(250.0)).reshape(1, 150, 150, 3)
y = np.asarray(keras.ops.convert_to_numpy(m(x)))
expected = np.load(exp_path)
report["seq_max_abs_diff"] = float(np.max(np.abs(y - expected)))
assert np.allclose(y, expected, rtol=1e-4, atol=1e-6), (y, expected)

for safe in (True, False):
    key = f"lambda_safe_mode_{safe}"
    try:
        lm = keras.saving.load_model(lam_path, compile=False, safe_mode=safe)
        xin = np.ones((1, 8, 8, 1), np.float32)
        report[key] = {"loaded": True,
                       "layers": [type(l).__name__ for l in lm.layers],
                       "output": np.asarray(keras.ops.convert_to_numpy(lm(xin))).tolist()}
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)[-1]
        report[key] = {"loaded": False, "type": f"{type(e).__module__}.{type(e).__qualname__}",
                       "message": str(e), "raised_at": f"{tb.filename}:{tb.lineno}"}
print("REPORT " + json.dumps(report))
"""


def check_with_keras3(backends) -> int:
    failures = 0
    for backend in backends:
        env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
        env["KERAS_BACKEND"] = backend
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _KERAS3_CHECK,
                str(SEQ_PATH),
                str(EXPECTED_PATH),
                str(LAMBDA_PATH),
                json.dumps(SEED000_SHAPES),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
        if proc.returncode != 0 or not lines:
            failures += 1
            print(f"[keras3/{backend}] FAILED (rc={proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        print(f"[keras3/{backend}] " + json.dumps(json.loads(lines[-1][7:]), indent=2))
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-check", action="store_true", help="skip the Keras 3 load checks")
    ap.add_argument(
        "--backends",
        default="tensorflow,torch",
        help="Keras 3 backends to check with (comma separated; default: %(default)s)",
    )
    args = ap.parse_args()
    make_fixtures()
    if args.no_check:
        return 0
    return 1 if check_with_keras3([b for b in args.backends.split(",") if b]) else 0


if __name__ == "__main__":
    sys.exit(main())
