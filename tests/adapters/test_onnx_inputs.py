"""ONNX models with several inputs: the image input explained, the others held (issue 19, several inputs).

The graphs are torch.onnx.export of the PyTorch models of ``tests/two_input_models.py`` (an image plus
a conditioning vector; a Siamese network of two images) and of two small variants made here (a mask
with free height and width; an int64 size tensor). Every reference is the PyTorch module itself, run
with the same held values, and its own autograd for the gradients.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convlens import BadArgument, Lens, UnsupportedModel, methods
from convlens.adapters import open_model
from convlens.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from two_input_models import torch_siamese, torch_two_input  # noqa: E402

V = np.array([0.5, -1.0, 2.0, 0.3], np.float32)
W = np.array([-2.0, 0.7, -0.4, 1.5], np.float32)


def _export(net: nn.Module, path: Path, names: tuple[str, ...], examples: tuple[torch.Tensor, ...],
            free: dict[str, dict[int, str]] | None = None) -> Path:
    axes = {name: {0: "batch"} for name in names} | {"logits": {0: "batch"}}
    for name, dims in (free or {}).items():
        axes[name] = {**axes[name], **dims}
    torch.onnx.export(net, examples, str(path), input_names=list(names), output_names=["logits"],
                      dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx_inputs")


@pytest.fixture(scope="module")
def two(folder):
    net = torch_two_input(0)
    return net, _export(net, folder / "two.onnx", ("image", "vector"),
                        (torch.zeros(1, 3, 16, 16), torch.zeros(1, 4)))


@pytest.fixture(scope="module")
def siamese(folder):
    net = torch_siamese(0)
    return net, _export(net, folder / "siamese.onnx", ("left", "right"),
                        (torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)))


class MaskNet(nn.Module):
    """conv -> times a mask (N, 1, H, W) -> ReLU -> conv -> ReLU -> mean -> linear; any H, W."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1), \
            nn.Linear(6, 3)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(image) * mask)))
        return self.fc(h.mean((2, 3)))


class SizeNet(nn.Module):
    """An int64 size tensor (N, 2) whose sum / 100 is added after the first conv."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1), \
            nn.Linear(6, 3)

    def forward(self, image: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        h = self.conv1(image) + (size.to(torch.float32).sum(1) / 100.0)[:, None, None, None]
        h = torch.relu(self.conv2(torch.relu(h)))
        return self.fc(h.mean((2, 3)))


@pytest.fixture(scope="module")
def masked(folder):
    net = MaskNet().eval()
    return net, _export(net, folder / "masked.onnx", ("image", "mask"),
                        (torch.zeros(1, 3, 16, 16), torch.ones(1, 1, 16, 16)),
                        free={"image": {2: "h", 3: "w"}, "mask": {2: "h", 3: "w"}})


@pytest.fixture(scope="module")
def sized(folder):
    net = SizeNet().eval()
    return net, _export(net, folder / "sized.onnx", ("image", "size"),
                        (torch.zeros(1, 3, 16, 16), torch.zeros(1, 2, dtype=torch.int64)))


def _images(n: int = 2, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 256, (16, 16, 3)).astype(np.uint8) for _ in range(n)]


def _batch(images: list[np.ndarray]) -> np.ndarray:
    """The images as the ``raw`` preset hands them over: (N, H, W, C) float32, 0..255."""
    return np.stack(images).astype(np.float32)


def _torch_stages(net: nn.Module, image: np.ndarray, *held: np.ndarray,
                  modules: tuple[str, ...] = ()) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The module's outputs of ``modules`` (channels last) and its logits, held inputs batched."""
    seen: dict[str, np.ndarray] = {}
    handles = [getattr(net, m).register_forward_hook(
        lambda _m, _i, out, m=m: seen.__setitem__(m, out.detach().numpy())) for m in modules]
    x = torch.from_numpy(image.transpose(0, 3, 1, 2).copy())
    args = [torch.from_numpy(np.repeat(h[None], len(image), 0)) for h in held]
    try:
        with torch.no_grad():
            logits = net(x, *args).numpy()
    finally:
        for h in handles:
            h.remove()
    return {m: np.moveaxis(a, 1, -1) for m, a in seen.items()}, logits


def _torch_cam_and_saliency(net: nn.Module, image: np.ndarray, held: list[np.ndarray], layer: str,
                            target: int, image_at: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM at module ``layer`` (raw, before ReLU) and |d score / d image| (N, H, W, C), by torch autograd."""
    acts: dict[str, torch.Tensor] = {}

    def keep(_m, _i, out):
        out.retain_grad()
        acts["a"] = out

    handle = getattr(net, layer).register_forward_hook(keep)
    x = torch.from_numpy(image.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    args = [torch.from_numpy(np.repeat(h[None], len(image), 0)) for h in held]
    args.insert(image_at, x)
    try:
        net(*args)[:, target].sum().backward()
    finally:
        handle.remove()
    a, g = acts["a"].detach().double().numpy(), acts["a"].grad.double().numpy()
    cam = np.einsum("nchw,nc->nhw", a, g.mean(axis=(2, 3)))
    return cam, np.abs(np.moveaxis(x.grad.numpy(), 1, -1))


def _close(got, want, rel=1e-4):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max()), 1e-12)
    assert float(np.abs(got - want).max()) <= rel * scale, float(np.abs(got - want).max()) / scale


# ----------------------------------------------------------------------------- the image + vector model


def test_inputs_are_slots_and_the_vector_gets_no_row(two):
    _, path = two
    adapter = open_model(path, inputs={"vector": V})
    held = adapter.held_inputs
    assert [(s.name, s.shape, s.dtype) for s in held.slots] == [("image", (3, 16, 16), "float32"),
                                                                 ("vector", (4,), "float32")]
    assert held.image == 0 and adapter.input_name == "image" and adapter.input_shape == (16, 16, 3)
    assert held.notes == ()
    np.testing.assert_array_equal(held.values["vector"], V)
    table = adapter.layers()
    assert [r.type for r in table] == ["Input", "Conv", "Add", "Relu", "Conv", "Relu", "GlobalAveragePool",
                                       "Flatten", "Gemm"]
    add = table[2]
    assert add.parents == (1,) and add.params == 0  # the vector's Linear is held values, not weights
    assert table[-1].params == 6 * 3 + 3 and table[1].params == 4 * 3 * 9 + 4
    # receptive fields come from the image alone: two 3x3 convs see 5x5
    assert table[5].rf_size == table[4].rf_size == (5, 5) and table[2].rf_size == (3, 3)


def test_maps_follow_the_held_vector_and_equal_torch(two):
    net, path = two
    images = _images()
    layers = ["/conv1/Conv", "/relu1/Relu", "/relu2/Relu"]
    stages = ("conv1", "relu1", "relu2")
    maps = {}
    for v in (V, W):
        lens = Lens(path, inputs={"vector": v}, preprocess="raw")
        got = lens.feature_maps(images, layers=layers)
        want, logits = _torch_stages(net, _batch(images), v, modules=stages)
        for name, module in zip(layers, stages):
            _close(got[name], want[module])
        _close(got.output, logits)
        maps[v.tobytes()] = got
    a, b = maps[V.tobytes()], maps[W.tobytes()]
    np.testing.assert_allclose(a["/conv1/Conv"], b["/conv1/Conv"], rtol=1e-6)  # before the vector enters
    assert np.abs(a["/relu1/Relu"] - b["/relu1/Relu"]).max() > 1.0  # after: the vector changes the maps


def test_a_missing_vector_is_held_at_zeros_with_a_note(two):
    net, path = two
    lens = Lens(path, preprocess="raw")
    notes = lens.model.input_notes
    assert len(notes) == 1 and "held at zeros" in notes[0] and "vector (4,) float32" in notes[0]
    images = _images(1)
    got = lens.feature_maps(images, layers=["/relu2/Relu"])
    assert notes[0] in got.notes
    want, _ = _torch_stages(net, _batch(images), np.zeros(4, np.float32), modules=("relu2",))
    _close(got["/relu2/Relu"], want["relu2"])


@pytest.mark.parametrize("layer, module", [("/relu2/Relu", "relu2"), ("/conv1/Conv", "conv1")])
def test_gradcam_and_saliency_equal_torch_autograd(two, layer, module):
    net, path = two
    adapter = open_model(path, inputs={"vector": V})
    batch = _batch(_images(3))
    for target in (0, 2):
        cam, sal = _torch_cam_and_saliency(net, batch, [V], module, target)
        got = methods.create("gradcam").compute(adapter, batch, target=target, layer=layer)
        _close(got.raw, cam)
        _close(methods.create("saliency").compute(adapter, batch, target=target).raw, sal)
    assert adapter._tails  # Grad-CAM ran onnxruntime up to the layer and the twin after it


def test_integrated_gradients_and_visualize_hold_the_vector(two):
    net, path = two
    lens = Lens(path, inputs={"vector": V}, preprocess="raw")
    ig = methods.create("ig", steps=8).compute(lens.adapter, _batch(_images(1)), target=1)
    assert abs(ig.extra["completeness_gap"][0]) < 0.05 * max(1.0, float(np.abs(ig.raw).sum()))
    vis = lens.visualize("/relu2/Relu", channels=[0], steps=2, size=16)
    assert vis.images.shape[0] == 1 and np.isfinite(vis.history).all()


def test_randomized_copies_keep_the_held_vector(two):
    net, path = two
    adapter = open_model(path, inputs={"vector": V})
    copy = adapter.randomized([4], seed=0)
    np.testing.assert_array_equal(copy.held_inputs.values["vector"], V)
    batch = _batch(_images(1))
    got: dict[int, np.ndarray] = {}
    copy.run(batch, [3], got.__setitem__)  # before the re-drawn conv: the original's values
    want, _ = _torch_stages(net, batch, V, modules=("relu1",))
    _close(got[3], want["relu1"])
    assert copy.gradients_unavailable() is None
    methods.create("gradcam").compute(copy, batch, target=0)


# ----------------------------------------------------------------------------- Siamese


def test_siamese_explains_the_left_image_or_the_one_picked(siamese):
    net, path = siamese
    images = _images(2, seed=5)
    other = _images(1, seed=6)[0].astype(np.float32).transpose(2, 0, 1)  # the held image, channels first
    lens = Lens(path, inputs={"right": other}, preprocess="raw")
    assert any("2 image inputs" in n and "--image-input" in n for n in lens.model.input_notes)
    names = [r.name for r in lens.model.layers()]
    assert "/left_conv/Conv" in names and "/right_conv/Conv" not in names
    got = lens.feature_maps(images, layers=["/left_relu/Relu", "/relu/Relu"])
    want, _ = _torch_stages(net, _batch(images), other, modules=("left_relu", "relu"))
    _close(got["/left_relu/Relu"], want["left_relu"])
    _close(got["/relu/Relu"], want["relu"])

    right = Lens(path, image_input="right", inputs={"left": other}, preprocess="raw")
    table = right.model.layers()
    assert table[0].name == "right" and "/left_conv/Conv" not in [r.name for r in table]
    got = right.feature_maps(images, layers=["/relu/Relu"])
    seen: dict[str, np.ndarray] = {}
    handle = net.relu.register_forward_hook(lambda _m, _i, out: seen.__setitem__("relu", out.detach().numpy()))
    with torch.no_grad():
        net(torch.from_numpy(np.repeat(other[None], 2, 0)),
            torch.from_numpy(_batch(images).transpose(0, 3, 1, 2).copy()))
    handle.remove()
    _close(got["/relu/Relu"], np.moveaxis(seen["relu"], 1, -1))

    cam, sal = _torch_cam_and_saliency(net, _batch(images), [other], "relu", 1, image_at=1)
    _close(methods.create("gradcam").compute(right.adapter, _batch(images), target=1, layer="/relu/Relu").raw,
           cam)
    _close(methods.create("saliency").compute(right.adapter, _batch(images), target=1).raw, sal)


# ----------------------------------------------------------------------------- free dims, int64


def test_a_free_dimension_must_be_given(masked):
    net, path = masked
    with pytest.raises(BadArgument) as err:
        open_model(path)
    text = str(err.value)
    assert "\n" not in text and "mask" in text and "free dimensions" in text and "--input mask=" in text
    mask = (np.arange(16 * 16).reshape(1, 16, 16) % 3 > 0).astype(np.float32)
    lens = Lens(path, inputs={"mask": mask}, preprocess="raw", input_shape=(16, 16, 3))
    images = _images(2)
    got = lens.feature_maps(images, layers=["/Relu_1"])
    want, logits = _torch_stages(net, _batch(images), mask)
    _close(got.output, logits)
    cam, sal = _torch_cam_and_saliency(net, _batch(images), [mask], "conv2", 0)
    _close(methods.create("gradcam").compute(lens.adapter, _batch(images), target=0, layer="/conv2/Conv").raw, cam)
    # after conv1, the twin's tail reads the mask graph input itself: it is fed the held mask
    cam, _ = _torch_cam_and_saliency(net, _batch(images), [mask], "conv1", 0)
    _close(methods.create("gradcam").compute(lens.adapter, _batch(images), target=0, layer="/conv1/Conv").raw, cam)
    assert any("mask" in tail.inputs for tail in lens.adapter._tails.values())
    _close(methods.create("saliency").compute(lens.adapter, _batch(images), target=0).raw, sal)


def test_a_mask_of_another_size_than_the_image_is_one_line(masked):
    _, path = masked
    lens = Lens(path, inputs={"mask": np.ones((1, 8, 8), np.float32)}, preprocess="raw", input_shape=(16, 16, 3))
    with pytest.raises(UnsupportedModel) as err:
        lens.feature_maps(_images(1), layers=["/Relu_1"])
    assert "\n" not in str(err.value) and "onnxruntime could not run" in str(err.value)


def test_an_int64_size_is_held_at_zeros_with_a_note_or_given(sized):
    net, path = sized
    adapter = open_model(path)
    slot = adapter.held_inputs.slots[1]
    assert (slot.name, slot.shape, slot.dtype) == ("size", (2,), "int64")
    assert adapter.held_inputs.values["size"].dtype == np.int64
    assert "size (2,) int64" in adapter.held_inputs.notes[0] and "zeros" in adapter.held_inputs.notes[0]
    batch = _batch(_images(2))
    for size in (np.zeros(2, np.int64), np.array([160, 240], np.int64)):
        adapter = open_model(path, inputs={"size": size})
        got: dict[int, np.ndarray] = {}
        out = adapter.run(batch, [1], got.__setitem__)
        _, logits = _torch_stages(net, batch, size)
        _close(out, logits)
        cam, sal = _torch_cam_and_saliency(net, batch, [size], "conv2", 2)
        _close(methods.create("gradcam").compute(adapter, batch, target=2, layer="/conv2/Conv").raw, cam)
        _close(methods.create("saliency").compute(adapter, batch, target=2).raw, sal)
    with pytest.raises(BadArgument, match="fractions"):
        open_model(path, inputs={"size": np.array([1.5, 2.0])})


def test_a_string_input_cannot_be_held(folder):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["image"], ["y"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8]),
                               helper.make_tensor_value_info("tag", TensorProto.STRING, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = folder / "tagged.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedModel) as err:
        open_model(path)
    assert "\n" not in str(err.value) and "tag (string)" in str(err.value) and "wrapper" in str(err.value)


# ----------------------------------------------------------------------------- the CLI


def _cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(args, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def files(folder):
    image = folder / "img.png"
    Image.fromarray(_images(1)[0]).save(image)
    data = folder / "data"
    data.mkdir()
    for i, im in enumerate(_images(3, seed=9)):
        Image.fromarray(im).save(data / f"{i}.png")
    np.save(folder / "v.npy", V)
    np.save(folder / "v5.npy", np.zeros(5, np.float32))
    np.save(folder / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return image, data, folder


def test_cli_maps_heatmap_stats_dataset_with_a_held_vector(two, files, tmp_path):
    _, path = two
    image, data, folder = files
    held = ["--input", f"vector={folder / 'v.npy'}"]
    code, _, err = _cli(["maps", str(path), str(image), "--out", str(tmp_path / "maps"), "--layers", "conv",
                         *held])
    assert code == 0, err
    assert any((tmp_path / "maps").rglob("*.png"))
    code, _, err = _cli(["heatmap", str(path), str(image), "--method", "gradcam,saliency",
                         "--out", str(tmp_path / "heat"), *held])
    assert code == 0, err
    assert len(list((tmp_path / "heat").rglob("*.png"))) >= 2
    code, out, err = _cli(["stats", str(path), str(image), "--json", *held])
    assert code == 0 and out.strip(), err
    code, _, err = _cli(["dataset", str(path), str(data), "--out", str(tmp_path / "ds"), "--engine", "local",
                         "--k", "2", "--layers", "conv", *held])
    assert code == 0, err
    assert (tmp_path / "ds" / "index.json").is_file()
    two_images = [str(p) for p in sorted(data.glob("*.png"))[:2]]
    code, _, err = _cli(["evaluate", str(path), *two_images, "--method", "gradcam", "--metrics", "randomisation",
                         "--out", str(tmp_path / "ev"), *held])  # randomized copies hold the vector too
    assert code == 0, err
    assert (tmp_path / "ev" / "index.json").is_file()
    code, _, err = _cli(["maps", str(path), str(image), "--out", str(tmp_path / "zeros"), "--layers", "conv"])
    assert code == 0 and "held at zeros" in err


@pytest.mark.parametrize("given, needle", [
    ("nope=v.npy", "no such input"),
    ("vector=v5.npy", "the array has shape (5,)"),
    ("image=v.npy", "is the image input"),
    ("vector=pickled.npy", "does not unpickle"),
])
def test_cli_bad_inputs_are_one_line_and_exit_2(two, files, tmp_path, given, needle):
    _, path = two
    image, _, folder = files
    name, file = given.split("=")
    out = tmp_path / "out"
    code, stdout, err = _cli(["heatmap", str(path), str(image), "--method", "gradcam", "--out", str(out),
                              "--input", f"{name}={folder / file}"])
    lines = err.strip().splitlines()
    assert code == 2 and stdout == "" and len(lines) == 1 and needle in lines[0], err
    assert not out.exists()


def test_cli_image_input_picks_the_right_image(siamese, files, tmp_path):
    _, path = siamese
    image, _, _ = files
    code, out, err = _cli(["layers", str(path), "--image-input", "right"])
    assert code == 0, err
    assert "/right_conv/Conv" in out and "/left_conv/Conv" not in out
    code, _, err = _cli(["heatmap", str(path), str(image), "--image-input", "right", "--method", "gradcam",
                         "--out", str(tmp_path / "h")])
    assert code == 0 and "held at zeros" in err, err
