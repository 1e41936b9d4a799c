"""PyTorch models with several inputs: the image in one, the others held (tests/two_input_models.py).

A ``forward(image, vector)`` whose vector is a per-channel bias after the
first conv, a Siamese ``forward(left, right)`` with a tower per image, and the
first exported as a ``.pt2`` program (whose placeholders declare the shapes,
so a vector left out is held at zeros). Maps equal the numpy reference;
Grad-CAM and saliency equal pytorch-grad-cam and torch's own autograd on the
same held input; the CLI takes ``--input NAME=FILE.npy`` and ``--image-input``.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from convlens import Lens, methods
from convlens._errors import BadArgument
from convlens.adapters import open_model
from convlens.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from two_input_models import (  # noqa: E402
    siamese_reference,
    siamese_weights,
    torch_siamese,
    torch_two_input,
    two_input_reference,
    two_input_weights,
)

VEC = np.array([0.5, -1.0, 2.0, 0.3], np.float32)


def _images(n: int, seed: int = 0) -> np.ndarray:
    """``n`` canonical (16, 16, 3) images in 0..1 (an image given to a Lens is read as 0..255 pixels: the maps
    are compared with the prepared ``maps.inputs``, at a relative tolerance)."""
    return np.random.RandomState(seed).rand(n, 16, 16, 3).astype(np.float32)


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _last(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1)


class _Held(nn.Module):
    """``model`` as a one-input module, its other input fixed: what pytorch-grad-cam and autograd run."""

    def __init__(self, model: nn.Module, other: np.ndarray, image_first: bool = True) -> None:
        super().__init__()
        self.model, self.image_first = model, image_first
        self.register_buffer("other", torch.from_numpy(other))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        other = self.other.expand(x.shape[0], *self.other.shape)
        return self.model(x, other) if self.image_first else self.model(other, x)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The image + vector model as a ``.pt2`` program and a pickled module, two PNGs, .npy inputs."""
    root = tmp_path_factory.mktemp("torch_inputs")
    model = torch_two_input()
    ep = torch.export.export(model, (torch.zeros(2, 3, 16, 16), torch.zeros(2, 4)),
                             dynamic_shapes=({0: torch.export.Dim("n")}, {0: torch.export.Dim("n")}))
    torch.export.save(ep, root / "two.pt2")
    torch.save(model, root / "two.pt")
    for i, im in enumerate(_images(2, seed=5)):
        Image.fromarray((im * 255).astype(np.uint8)).save(root / f"img{i}.png")
    np.save(root / "v.npy", VEC)
    np.save(root / "v5.npy", np.zeros(5, np.float32))
    np.save(root / "image.npy", np.zeros((3, 16, 16), np.float32))
    np.save(root / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return {"pt2": root / "two.pt2", "pt": root / "two.pt", "png": root / "img0.png", "png1": root / "img1.png",
            "v": root / "v.npy", "v5": root / "v5.npy", "image": root / "image.npy", "obj": root / "obj.npy",
            "root": root}


# --------------------------------------------------------------------------- the table and the maps


def test_the_table_is_the_images_and_the_vector_changes_the_maps():
    lens = Lens(torch_two_input(), inputs={"vector": VEC}, preprocess="raw")
    table = lens.layers()
    names = [row.name for row in table]
    assert names == ["input", "conv1", "relu1", "conv2", "relu2", "pool", "flatten", "fc"]  # no `dense` row
    assert lens.input_shape == (None, None, 3) and lens.adapter.input_name == "image"
    by = {row.name: row for row in table}
    assert by["conv1"].rf_size == (3, 3) and by["conv2"].rf_size == (5, 5) and by["relu1"].parents == (1,)
    x = _images(2)
    maps = lens.feature_maps(list(x), "conv1,relu1,relu2")
    ref = two_input_reference(two_input_weights(), _nchw(maps.inputs), np.stack([VEC, VEC]))
    for name in ("conv1", "relu1", "relu2"):
        np.testing.assert_allclose(maps[name], _last(ref[name]), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(maps.output, ref["fc"], rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        own = torch_two_input()(torch.from_numpy(_nchw(maps.inputs)), torch.from_numpy(np.stack([VEC, VEC])))
    np.testing.assert_allclose(maps.output, own.numpy(), rtol=1e-5, atol=1e-4)
    other = Lens(torch_two_input(), inputs={"vector": -VEC}, preprocess="raw").feature_maps(list(x), "conv1,relu1")
    np.testing.assert_allclose(other["conv1"], maps["conv1"], atol=1e-6)  # before the vector enters
    assert np.abs(other["relu1"] - maps["relu1"]).max() > 0.1


def test_a_module_needs_its_other_inputs_given_and_names_are_checked():
    with pytest.raises(BadArgument, match=r"vector does not declare its shape.*--input vector=FILE.npy"):
        open_model(torch_two_input())
    with pytest.raises(BadArgument, match="--input bias: TwoInputNet has no such input; its inputs are image, vector"):
        open_model(torch_two_input(), inputs={"bias": VEC})
    with pytest.raises(BadArgument, match="image is the image input"):
        open_model(torch_two_input(), inputs={"vector": VEC, "image": np.zeros((3, 16, 16))})
    with pytest.raises(BadArgument, match="--image-input x: TwoInputNet has no such input"):
        open_model(torch_two_input(), image_input="x", inputs={"vector": VEC})


class _Optional(nn.Module):
    """``forward(x, scale=None)``: one input unless the user gives ``scale``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv(x)
        return y if scale is None else y * scale[:, :, None, None]


def test_an_optional_parameter_is_an_input_only_when_given():
    module = _Optional().eval()
    plain = open_model(module)
    assert plain.held_inputs is None and plain.input_name == "x"
    held = open_model(module, inputs={"scale": np.array([2.0, -1.0])})
    assert held.held_inputs is not None and [s.name for s in held.held_inputs.slots] == ["x", "scale"]
    x = _images(1)
    a, b = plain.run(x, [], lambda r, t: None), held.run(x, [], lambda r, t: None)
    np.testing.assert_allclose(b, a * np.array([2.0, -1.0])[None, None, None, :], atol=1e-5)


def test_an_exported_program_declares_its_inputs_and_holds_a_missing_one_at_zeros(files):
    lens = Lens(files["pt2"], preprocess="raw")
    held = lens.model.held_inputs
    assert held is not None and [s.describe() for s in held.slots] == ["image (3, 16, 16) float32",
                                                                       "vector (4,) float32"]
    assert lens.input_shape == (16, 16, 3) and lens.adapter.fixed_batch is None
    x = _images(3)
    maps = lens.feature_maps(list(x), "relu1")
    assert any("held at zeros: vector (4,) float32" in n for n in maps.notes)
    ref = two_input_reference(two_input_weights(), _nchw(maps.inputs), np.zeros((3, 4)))
    np.testing.assert_allclose(maps["relu1"], _last(ref["relu1"]), rtol=1e-5, atol=1e-4)
    given = Lens(files["pt2"], preprocess="raw", inputs={"vector": VEC[None]}).feature_maps(list(x), "relu1")
    assert not any("held at zeros" in n for n in given.notes)
    ref = two_input_reference(two_input_weights(), _nchw(given.inputs), np.stack([VEC] * 3))
    np.testing.assert_allclose(given["relu1"], _last(ref["relu1"]), rtol=1e-5, atol=1e-4)
    with pytest.raises(BadArgument, match=r"the array has shape \(5,\), but two takes vector \(4,\) float32"):
        open_model(files["pt2"], inputs={"vector": np.zeros(5)})


def test_an_exported_program_with_a_keyword_input_and_a_fixed_batch(tmp_path):
    ep = torch.export.export(torch_two_input(), (torch.zeros(1, 3, 16, 16),), {"vector": torch.zeros(1, 4)})
    torch.export.save(ep, tmp_path / "kw.pt2")
    adapter = open_model(tmp_path / "kw.pt2", inputs={"vector": VEC})
    assert adapter.fixed_batch == 1
    x = _images(3)
    out = adapter.run(x, [], lambda r, t: None)
    ref = two_input_reference(two_input_weights(), _nchw(x), np.stack([VEC] * 3))
    np.testing.assert_allclose(out, ref["fc"], atol=1e-5)


# --------------------------------------------------------------------------- gradients


def test_grad_cam_and_saliency_equal_autograd_on_the_held_vector():
    adapter = open_model(torch_two_input(), inputs={"vector": VEC})
    x = _images(2, seed=3)
    ref_model = _Held(torch_two_input(), VEC).eval()
    t = torch.from_numpy(_nchw(x))
    with GradCAM(ref_model, target_layers=[ref_model.model.relu2]) as cam:
        expected = cam(t, targets=[ClassifierOutputTarget(1)] * 2)
    got = methods.create("gradcam").compute(adapter, x, target=1, layer="relu2")
    np.testing.assert_allclose(got.maps, expected, atol=1e-4)
    assert expected.std() > 0.05
    xs = t.clone().requires_grad_(True)
    ref_model(xs)[:, 1].sum().backward()
    sal = methods.create("saliency").compute(adapter, x, target=1)
    np.testing.assert_allclose(sal.raw, np.abs(xs.grad.numpy()).transpose(0, 2, 3, 1), atol=1e-4)
    # the vector changes the gradients: another held value, another map
    other = methods.create("saliency").compute(open_model(torch_two_input(), inputs={"vector": -VEC}), x, target=1)
    assert np.abs(other.raw - sal.raw).max() > 1e-3


def test_siamese_explains_the_first_image_or_the_one_named():
    x = _images(2, seed=7)
    right = _nchw(x)[1]
    lens = Lens(torch_siamese(), inputs={"right": right}, preprocess="raw")
    assert [row.name for row in lens.layers()][:3] == ["input", "left_conv", "left_relu"]
    assert "right_conv" not in [row.name for row in lens.layers()]  # the held tower is no row
    maps = lens.feature_maps([x[0]], "left_relu,relu")
    assert any("2 image inputs (left, right); left is explained" in n for n in maps.notes)
    ref = siamese_reference(siamese_weights(), _nchw(maps.inputs), right[None])
    np.testing.assert_allclose(maps["relu"], _last(ref["relu"]), rtol=1e-5, atol=1e-4)
    # --image-input right: the left image held, the right one explained
    left = _nchw(x)[0]
    picked = Lens(torch_siamese(), image_input="right", inputs={"left": left}, preprocess="raw")
    names = [row.name for row in picked.layers()]
    assert "right_relu" in names and "left_conv" not in names and picked.input_shape == (16, 16, 3)
    maps = picked.feature_maps([x[1]], "right_relu,relu")
    assert not any("image inputs" in n for n in maps.notes)
    ref = siamese_reference(siamese_weights(), left[None], _nchw(maps.inputs))
    np.testing.assert_allclose(maps["right_relu"], _last(ref["right_relu"]), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(maps["relu"], _last(ref["relu"]), rtol=1e-5, atol=1e-4)
    # pixels 0..255 (as a Lens gives them): CAMs well above pytorch-grad-cam's 1e-7 in its normalisation
    x, left = x * 255, left * 255
    adapter = open_model(torch_siamese(), image_input="right", inputs={"left": left})
    ref_model = _Held(torch_siamese(), left, image_first=False).eval()
    t = torch.from_numpy(_nchw(x[1:]))
    with GradCAM(ref_model, target_layers=[ref_model.model.right_relu]) as cam:
        expected = cam(t, targets=[ClassifierOutputTarget(0)])
    got = methods.create("gradcam").compute(adapter, x[1:], target=0, layer="right_relu")
    np.testing.assert_allclose(got.maps, expected, atol=1e-4)


def test_randomized_copies_keep_the_held_inputs():
    adapter = open_model(torch_two_input(), inputs={"vector": VEC})
    rows = {row.name: row.index for row in adapter.layers()}
    twin = adapter.randomized([rows["conv2"]], seed=0)
    assert twin.held_inputs is adapter.held_inputs or twin.held_inputs.values["vector"].tolist() == VEC.tolist()
    x = _images(2)
    a, b = adapter.run(x, [], lambda r, t: None), twin.run(x, [], lambda r, t: None)
    assert np.abs(a - b).max() > 1e-4 and np.isfinite(b).all()
    np.testing.assert_allclose(adapter.run(x, [], lambda r, t: None), a)  # the original is untouched


# --------------------------------------------------------------------------- the CLI


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_maps_and_heatmaps_with_an_input_file(files, tmp_path):
    out = tmp_path / "maps"
    code, stdout, err = _run("maps", files["pt2"], files["png"], "--input", f"vector={files['v']}", "--layers",
                             "relu1", "--out", out)
    assert code == 0, err
    assert list(out.rglob("*.png")) and "held at zeros" not in err
    heat = tmp_path / "heat"
    code, stdout, err = _run("heatmap", files["pt"], files["png"], "--trust", "--input", f"vector={files['v']}",
                             "--method", "gradcam,saliency", "--out", heat)
    assert code == 0, err
    index = json.loads((heat / "index.json").read_text())
    assert [e["method"] for e in index["heatmaps"]] == ["gradcam", "saliency"]
    assert all((heat / e["file"]).is_file() and (heat / e["array"]).is_file() for e in index["heatmaps"])
    # the score is the model's own on the prepared image and the given vector
    x = np.asarray(Image.open(files["png"]), np.float32)[None] / 255
    with torch.no_grad():
        own = torch_two_input()(torch.from_numpy(_nchw(x)), torch.from_numpy(VEC[None]))[0]
    assert index["heatmaps"][0]["score"] == pytest.approx(float(own[index["heatmaps"][0]["class"]]), abs=1e-4)


@pytest.mark.parametrize(("extra", "needle"), [
    (("--input", "bias={v}"), "--input bias: two has no such input; its inputs are image (3, 16, 16) float32"),
    (("--input", "vector={v5}"), "the array has shape (5,), but two takes vector (4,) float32"),
    (("--input", "image={image}"), "image is the image input"),
    (("--input", "vector={obj}"), "does not unpickle"),
    (("--image-input", "nope"), "--image-input nope: two has no such input"),
])
def test_cli_bad_inputs_are_one_line_and_write_nothing(files, tmp_path, extra, needle):
    out = tmp_path / "out"
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in extra]
    code, stdout, err = _run("maps", files["pt2"], files["png"], *args, "--out", out)
    assert code == 2 and stdout == "" and not out.exists()
    assert err.count("\n") == 1 and err.startswith("convlens: error: ") and needle in err, err


def test_cli_a_module_without_its_vector_says_to_give_it(files, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = _run("maps", files["pt"], files["png"], "--trust", "--out", out)
    assert code == 2 and not out.exists() and err.count("\n") == 1
    assert "vector does not declare its shape" in err and "--input vector=FILE.npy" in err


def test_cli_stats_report_and_dataset_run_on_the_two_input_program(files, tmp_path):
    code, stdout, err = _run("stats", files["pt2"], files["png"], files["png1"], "--input", f"vector={files['v']}",
                             "--json")
    assert code == 0, err
    assert json.loads(stdout)
    report = tmp_path / "report.html"
    code, stdout, err = _run("report", files["pt2"], files["png"], "--out", report)
    assert code == 0, err
    assert "held at zeros: vector (4,) float32" in err
    assert "held at zeros: vector" in report.read_text()
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        Image.fromarray((_images(1, seed=10 + i)[0] * 255).astype(np.uint8)).save(data / f"{i}.png")
    ds = tmp_path / "ds"
    code, stdout, err = _run("dataset", files["pt2"], data, "--input", f"vector={files['v']}", "--layers",
                             "relu1,relu2", "--k", "2", "--engine", "local", "--out", ds)
    assert code == 0, err
    assert (ds / "index.json").is_file()


def test_evaluate_randomisation_runs_with_the_held_vector():
    lens = Lens(torch_two_input(), inputs={"vector": VEC}, preprocess="raw")
    result = lens.evaluate(list(_images(2, seed=11)), "gradcam,saliency", metrics="randomisation", layer="relu2")
    record = result.to_json()
    assert record["randomised_layers"] == ["fc", "conv2", "conv1"]
    assert [r["method"] for r in record["ranking"]] and np.isfinite(
        json.loads(json.dumps(record["ranking"][0]["cost_s"])))


def test_feature_visualisation_climbs_with_the_held_vector():
    """Redirected gradients (the first half of the steps) and plain ones, through the held vector."""
    vis = Lens(torch_two_input(), inputs={"vector": VEC}).visualize("relu2", "0-1", steps=8, size=16,
                                                                    input_size=(16, 16))
    record = vis.to_json()
    assert record["settings"]["redirected_steps"] == 4 and len(record["images"]) == 2
    assert all(np.isfinite(im["activation"]) for im in record["images"]) and np.isfinite(vis.atlas()).all()


class _Indexed(nn.Module):
    """``forward(image, index)``: an embedding of an int64 index scales the first conv's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.embed = nn.Embedding(4, 2)

    def forward(self, image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.conv(image) * self.embed(index)[:, :, None, None]


def test_integer_inputs_stay_integers_in_a_module_and_a_program(tmp_path):
    torch.manual_seed(0)
    module = _Indexed().eval()
    x = _images(2)
    with torch.no_grad():
        expected = module(torch.from_numpy(_nchw(x)), torch.tensor([2, 2])).permute(0, 2, 3, 1).numpy()
    adapter = open_model(module, inputs={"index": np.array(2)})
    assert adapter.held_inputs.slots[1].dtype == "int64"
    np.testing.assert_allclose(adapter.run(x, [], lambda r, t: None), expected, atol=1e-5)
    ep = torch.export.export(module, (torch.zeros(1, 3, 16, 16), torch.tensor([1])))  # a batch of 1: chunked
    torch.export.save(ep, tmp_path / "indexed.pt2")
    program = open_model(tmp_path / "indexed.pt2", inputs={"index": np.array(2.0)})  # whole floats are accepted
    assert [s.describe() for s in program.held_inputs.slots] == ["image (3, 16, 16) float32", "index () int64"]
    np.testing.assert_allclose(program.run(x, [], lambda r, t: None), expected, atol=1e-5)
    with pytest.raises(BadArgument, match="holds fractions"):
        open_model(tmp_path / "indexed.pt2", inputs={"index": np.array(0.5)})


def test_a_tower_shared_by_both_images_is_named_and_read_by_its_image_call():
    """A Siamese network whose two images go through ONE tower module: the held image's call has no rows,
    so the image's call is the tower's row under its plain names (no ``#2``), on either side."""
    torch.manual_seed(0)

    class Shared(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                             torch.nn.Conv2d(4, 4, 3, padding=1))
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, left, right):
            return self.fc((self.tower(left) + self.tower(right)).mean((2, 3)))  # symmetric in the two

    model = Shared().eval()
    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    other = np.random.default_rng(1).random((3, 8, 8)).astype(np.float32)
    cams = {}
    for side, held in (("right", "left"), ("left", "right")):
        lens = Lens(model, image_input=side, inputs={held: other}, preprocess="unit")
        names = [t.name for t in lens.layers()]
        assert names == ["input", "tower.0", "tower.1", "tower.2", "tower", "fc"], names
        maps = lens.feature_maps(list(x), layers="tower.0")
        with torch.no_grad():
            want = model.tower[0](torch.tensor(x.astype(np.float32) / 255).permute(0, 3, 1, 2))
        np.testing.assert_allclose(maps["tower.0"], want.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)
        cams[side] = lens.heatmaps(list(x), "gradcam", layer="tower.2", target=1).results["gradcam"][0].raw
    assert np.abs(cams["left"]).max() > 0
    np.testing.assert_allclose(cams["right"], cams["left"], rtol=1e-4, atol=1e-6 * np.abs(cams["left"]).max())
