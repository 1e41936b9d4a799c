"""The PyTorch layer model: every module call a row, containers as blocks, functional ops as rows.

Issue 18, part 1. Models: torchvision ResNet-18 and MobileNetV2 (random weights),
and the architectures of ``tests/torch_models.py`` written as the codebases
people bring write them: an EfficientNet-Lite whose convolutions are
``nn.Conv2d`` subclasses owning a ``ZeroPad2d`` (static same padding), and a
U-Net with ``F.interpolate`` and ``torch.cat`` in ``forward``.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from convlens import Lens, methods
from convlens._errors import LayerNotFound
from convlens.adapters import open_model
from convlens.cli import main
from convlens.selection import select_indexes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch_models import Conv2dStaticSamePadding, EfficientNetLite, SmallUNet  # noqa: E402


def _rows(adapter) -> dict[str, object]:
    return {layer.name: layer for layer in adapter.layers()}


def _image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, size, size, 3)).astype(np.float32)


def _captured(adapter, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    rows = _rows(adapter)
    got: dict[int, np.ndarray] = {}
    adapter.run(x, [rows[n].index for n in names], lambda i, a: got.__setitem__(i, a))
    return {n: got[rows[n].index] for n in names}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    return model, open_model(model, preprocess="raw")


@pytest.fixture(scope="module")
def effnet():
    torch.manual_seed(0)
    model = EfficientNetLite(64).eval()
    return model, open_model(model, input_shape=(64, 64, 3), preprocess="raw")


# --------------------------------------------------------------------------- conv subclasses (failure 1)


def test_conv_subclasses_are_conv_rows_with_kernels(effnet):
    model, adapter = effnet
    rows = _rows(adapter)
    convs = [r for r in rows.values() if r.kind == "conv"]
    subclasses = [m for m in model.modules() if isinstance(m, Conv2dStaticSamePadding)]
    # before: zero conv rows (only the ZeroPad2d/Identity children were rows)
    assert len(convs) == len(subclasses) == 23
    stem = rows["stem.0"]
    assert (stem.type, stem.kind, stem.kernel_shape, stem.kernel_size, stem.stride) == (
        "Conv2dStaticSamePadding", "conv", (16, 3, 3, 3), (3, 3), (2, 2))
    assert stem.padding == (0, 0)  # the padding is its child's: a row of its own, nested under it
    pad = rows["stem.0.static_padding"]
    assert (pad.kind, pad.parent, pad.padding, stem.parents) == ("reshape", stem.index, (0, 0), (pad.index,))
    dw = rows["blocks.2.0._depthwise_conv.static_padding"]  # 5x5 stride 2 on 16x16: TF pads 1 before, 2 after
    assert dw.type == "ZeroPad2d" and dw.padding == (1, 1) and dw.output_shape == (19, 19, 96)
    np.testing.assert_array_equal(adapter.kernels(stem.index), model.stem[0].weight.detach().numpy())
    # receptive fields grow through the subclass convs (before: 1 for every layer)
    assert rows["head.0"].rf_size is not None and rows["head.0"].rf_size[0] > 100
    assert rows["head.0"].params == model.head[0].weight.numel()  # its child's rows count theirs
    assert sum(r.params for r in rows.values()) == sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for b in model.buffers() if b.is_floating_point())


def test_conv_subclass_blocks_filters_and_default_cam_layer(effnet):
    model, adapter = effnet
    table = adapter.layers()
    names = [table[i].name for i in select_indexes(table, "blocks")]
    assert names == ["blocks.0", "blocks.1", "blocks.2", "head"]  # before: "no layer of the selected kinds"
    layer = methods.default_layer(table)
    assert (layer.name, layer.kind) == ("head", "block")  # before: head.2, the last activation
    lens = Lens(model, input_shape=(64, 64, 3), preprocess="raw")
    filters = lens.filters("conv")
    assert len(filters) == 23 and filters["blocks.2.0._depthwise_conv"].shape == (96, 1, 5, 5)
    x = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    cam = methods.create("gradcam").compute(adapter, _image(64), target=3)
    assert cam.layer.name == "head" and cam.maps.shape == (1, 64, 64) and cam.maps.std() > 0
    assert lens.feature_maps(x, layers="blocks")["blocks.2"].shape == (1, 8, 8, 40)


def test_a_leaf_conv_that_pads_in_forward_has_that_padding():
    class Conv2dDynamicSamePadding(nn.Conv2d):  # lukemelas's dynamic variant: F.pad inside the conv
        def forward(self, x):
            return F.conv2d(F.pad(x, [1, 2, 1, 2]), self.weight, self.bias, self.stride, 0)

    model = nn.Sequential(Conv2dDynamicSamePadding(3, 4, 4, 2, bias=False), nn.ReLU())
    row = _rows(open_model(model, input_shape=(16, 16, 3)))["0"]
    assert (row.kind, row.padding, row.stride, row.output_shape) == ("conv", (1, 1), (2, 2), (8, 8, 4))


# --------------------------------------------------------------------------- containers, nesting, names (failure 2)


def test_every_module_call_is_a_row_nested_under_its_container(resnet):
    model, adapter = resnet
    rows = _rows(adapter)
    calls = {name for name, _ in model.named_modules() if name}
    assert calls <= set(rows)  # every submodule (containers included) has a row
    block, stage = rows["layer4.1"], rows["layer4"]
    assert (block.type, block.kind, stage.kind) == ("BasicBlock", "block", "block")
    assert rows["layer4.1.conv1"].parent == block.index and block.parent == stage.index
    assert stage.parent is None and rows["fc"].parent is None
    # a block's output is the row that makes it: its receptive field is that row's
    assert block.parents == (rows["layer4.1.relu#2"].index,) and block.rf_size == rows["layer4.1.relu#2"].rf_size
    assert [adapter.layers()[i].name for i in select_indexes(adapter.layers(), "blocks")] == [
        "conv1", "layer1", "layer2", "layer3", "layer4"]
    assert select_indexes(adapter.layers(), "layer4.1") == [block.index]
    text = str(Lens(model, preprocess="raw", input_shape=(64, 64, 3)).layers())
    assert "\n" in text and "    layer4.1.conv1" in text and "  layer4.1 " in text


def test_default_selection_stays_readable(resnet):
    _, adapter = resnet
    table = adapter.layers()
    chosen = [table[i] for i in select_indexes(table, None)]
    assert {layer.kind for layer in chosen} == {"conv", "pool"}
    assert len(chosen) == 22  # 20 convs and 2 pools: no container, merge or activation rows


def test_functional_rows_after_residual_adds_and_flatten(resnet):
    model, adapter = resnet
    rows = _rows(adapter)
    add = rows["layer1.0.add"]
    assert (add.type, add.kind, add.parent) == ("add", "merge", rows["layer1.0"].index)
    assert add.parents == (rows["maxpool"].index, rows["layer1.0.bn2"].index)
    assert rows["layer1.0.relu#2"].parents == (add.index,)
    assert rows["flatten"].kind == "reshape" and rows["flatten"].output_shape == (512,)
    x = _image(64)
    got = _captured(adapter, x, ["layer1.0.add", "layer1.0.bn2", "maxpool", "flatten", "avgpool"])
    np.testing.assert_allclose(got["layer1.0.add"], got["layer1.0.bn2"] + got["maxpool"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["flatten"], got["avgpool"].reshape(1, -1), rtol=1e-6)
    torch_mode_stack = torch._C._len_torch_function_stack()
    assert torch_mode_stack == 0  # the op watch is gone after the pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_mobilenet_v2_inverted_residuals_have_a_row_after_the_add():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    adapter = open_model(model, input_shape=(64, 64, 3), preprocess="raw")
    rows = _rows(adapter)
    residual = [i for i, block in enumerate(model.features) if getattr(block, "use_res_connect", False)]
    assert residual and all(f"features.{i}.add" in rows for i in residual)
    add = rows[f"features.{residual[0]}.add"]
    assert add.kind == "merge" and rows[f"features.{residual[0]}"].parents == (add.index,)
    got = _captured(adapter, _image(64), [f"features.{residual[0]}.add", f"features.{residual[0] - 1}",
                                          f"features.{residual[0]}.conv"])
    np.testing.assert_allclose(got[f"features.{residual[0]}.add"],
                               got[f"features.{residual[0] - 1}"] + got[f"features.{residual[0]}.conv"],
                               rtol=1e-5, atol=1e-5)


def test_unet_interpolate_and_cat_rows_with_their_geometry():
    torch.manual_seed(0)
    model = SmallUNet().eval()
    adapter = open_model(model, input_shape=(32, 32, 3), preprocess="raw")
    rows = _rows(adapter)
    up, cat = rows["up2.interpolate"], rows["up2.cat"]
    assert (up.kind, up.upsample, up.output_shape) == ("reshape", (2.0, 2.0), (16, 16, 32))
    assert (cat.kind, cat.parents, cat.output_shape) == ("merge", (rows["enc2"].index, up.index), (16, 16, 48))
    assert rows["up2.conv.0"].parents == (cat.index,)
    got = _captured(adapter, _image(32), ["up2.cat", "up2.interpolate", "enc2", "enc3"])
    np.testing.assert_allclose(got["up2.cat"], np.concatenate([got["up2.interpolate"], got["enc2"]], -1), rtol=1e-6)
    expected = F.interpolate(torch.from_numpy(got["enc3"]).permute(0, 3, 1, 2), size=(16, 16), mode="bilinear")
    np.testing.assert_allclose(got["up2.interpolate"], expected.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)


def test_functional_pad_row_and_conv_padding_geometry():
    class Padded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding="same", dilation=2)
            self.pool = nn.MaxPool2d(3, 2, padding=1)

        def forward(self, x):
            return self.pool(self.b(F.pad(self.a(x), (2, 0, 3, 1))))

    rows = _rows(open_model(Padded(), input_shape=(16, 16, 3)))
    assert rows["pad"].padding == (3, 2) and rows["pad"].output_shape == (20, 18, 4)
    assert (rows["a"].padding, rows["b"].padding, rows["pool"].padding) == ((1, 1), (2, 2), (1, 1))


# --------------------------------------------------------------------------- module objects and reference agreement


def test_module_objects_are_layers(resnet):
    model, adapter = resnet
    table = adapter.layers()
    rows = _rows(adapter)
    assert select_indexes(table, [model.layer4[-1]]) == [rows["layer4.1"].index]
    assert select_indexes(table, model.layer4[-1]) == [rows["layer4.1"].index]
    assert select_indexes(table, [model.layer1, "fc"]) == [rows["layer1"].index, rows["fc"].index]
    # a module called twice is every call of it
    assert select_indexes(table, model.layer1[0].relu) == [rows["layer1.0.relu"].index, rows["layer1.0.relu#2"].index]
    assert methods.resolve_layer(table, model.layer4[-1]).name == "layer4.1"


def test_grad_cam_on_layer4_1_equals_pytorch_grad_cam(resnet):
    model, adapter = resnet
    x = _image(160, seed=3)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    with GradCAM(model, target_layers=[model.layer4[-1]]) as cam:
        expected = cam(t, targets=[ClassifierOutputTarget(7)])
    for layer in ("layer4.1", model.layer4[-1]):
        got = methods.create("gradcam").compute(adapter, x, target=7, layer=layer)
        assert got.layer.name == "layer4.1"
        np.testing.assert_allclose(got.maps, expected, atol=1e-4)
    assert expected.std() > 0.05


def test_grad_cam_at_a_functional_row(resnet):
    model, adapter = resnet
    x = _image(64, seed=4)
    got = methods.create("gradcam").compute(adapter, x, target=2, layer="layer4.1.add")
    assert got.maps.shape == (1, 64, 64) and np.isfinite(got.maps).all() and got.maps.std() > 0
    ranked = adapter.run_ranked(x, [], lambda i, a: None, layer=_rows(adapter)["layer4.1.add"].index, top=2)
    assert ranked.activations.shape == (1, 2, 2, 512) and np.abs(ranked.grads).sum() > 0


# --------------------------------------------------------------------------- bad input


class _WithIndexes(nn.Module):
    """A classifier whose ``argmax`` module returns integer indices and ``size`` module a shape."""

    class ArgMax(nn.Module):
        def forward(self, x):
            return x.argmax(1)

    class Size(nn.Module):
        def forward(self, x):
            return x.shape

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.argmax = self.ArgMax()
        self.size = self.Size()

    def forward(self, x):
        y = self.conv(x)
        self.argmax(y)
        self.size(y)
        return y


def test_a_module_not_in_the_model_names_its_type_and_the_closest_layers(resnet):
    _, adapter = resnet
    stranger = nn.Conv2d(256, 512, 3, stride=2, padding=1, bias=False)
    with pytest.raises(LayerNotFound, match=r"the Conv2d object .* not part of this model.*closest: "
                                            r"layer4\.0\.conv1") as info:
        select_indexes(adapter.layers(), [stranger])
    assert "\n" not in str(info.value)
    other = torchvision.models.resnet18(weights=None)
    with pytest.raises(LayerNotFound, match=r"BasicBlock object .*closest: layer1\.0, layer1\.1"):
        methods.resolve_layer(adapter.layers(), other.layer4[-1])


def test_a_layer_whose_output_is_not_a_map_is_named_in_one_line():
    model = _WithIndexes()
    adapter = open_model(model, input_shape=(8, 8, 3))
    table = adapter.layers()
    with pytest.raises(LayerNotFound, match=r"layer 'argmax' \(ArgMax\) outputs an integer tensor "
                                            r"\(int64, shape \(1, 6, 6\)\), not a map"):
        select_indexes(table, "argmax")
    with pytest.raises(LayerNotFound, match=r"'size' \(Size\) outputs a shape \(1, 4, 6, 6\)"):
        select_indexes(table, [model.size])


def test_cli_bad_layers_exit_2_one_line_nothing_written(tmp_path):
    torch.save(_WithIndexes(), tmp_path / "m.pt")
    import PIL.Image

    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    for layer in ("argmax", "size"):
        stdout, stderr = io.StringIO(), io.StringIO()
        status = main(["heatmap", str(tmp_path / "m.pt"), str(tmp_path / "x.png"), "--trust", "--input-shape",
                       "8,8,3", "--layer", layer, "--out", str(out)], stdout=stdout, stderr=stderr)
        assert status == 2 and len(stderr.getvalue().strip().splitlines()) == 1, stderr.getvalue()
        assert "not a map" in stderr.getvalue() and "Traceback" not in stderr.getvalue()
        assert not out.exists()


def test_cli_layer_names_of_blocks(tmp_path, resnet):
    import PIL.Image

    PIL.Image.fromarray((np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)).save(
        tmp_path / "x.png")
    out = tmp_path / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    status = main(["heatmap", "torchvision:resnet18", str(tmp_path / "x.png"), "--weights", "none",
                   "--input-shape", "64,64,3", "--layer", "layer4.1", "--out", str(out)], stdout=stdout, stderr=stderr)
    assert status == 0, stderr.getvalue()  # before: "no layer matches 'layer4.1'"
    assert json.loads((out / "index.json").read_text())["heatmaps"][0]["layer"] == "layer4.1"
    assert methods.resolve_layer(resnet[1].layers(), "layer4").name == "layer4"  # a stage is one layer too
