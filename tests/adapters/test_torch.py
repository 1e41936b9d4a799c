"""The PyTorch adapter on real torch modules, .pt2 programs, pickles and torchvision models."""

from __future__ import annotations

import io
import json
import os
import socket
import time
import urllib.error
import warnings
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from convlens import BadArgument, BadModel, Lens, UnsafeModel, UnsupportedModel, WeightsUnavailable
from convlens.adapters.torch import TorchAdapter, open_torchvision
from convlens.cli import main
from convlens.selection import select_indexes


def _run(adapter, batch, wanted):
    """Everything ``run`` hands over, by row, plus the model output."""
    got: dict[int, np.ndarray] = {}
    y = adapter.run(np.asarray(batch, np.float32), wanted, lambda i, a: got.__setitem__(i, a))
    return got, y


class SmallNet(nn.Module):
    """A small CNN at module level, so that pickles of it can be unpickled (trusted)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return SmallNet().eval()


# --------------------------------------------------------------------------- capture semantics


def test_inplace_relu_does_not_overwrite_the_conv_output():
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():  # channel 0 = x, channel 1 = -x: negatives the ReLU will clip in place
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.zero_()
    model = nn.Sequential(conv, nn.ReLU(inplace=True))
    adapter = TorchAdapter(model, input_shape=(2, 3, 1))
    assert [(t.name, t.type, t.kind) for t in adapter.layers()] == [
        ("input", "Input", "input"), ("0", "Conv2d", "conv"), ("1", "ReLU", "act")]
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1) - 2.0  # -2..3
    got, y = _run(adapter, x, [1, 2])
    np.testing.assert_array_equal(got[1][..., 0], x[..., 0])
    np.testing.assert_array_equal(got[1][..., 1], -x[..., 0])  # still negative where x > 0
    assert (got[1] < 0).any()
    np.testing.assert_array_equal(got[2], np.maximum(got[1], 0))
    np.testing.assert_array_equal(y, got[2])
    assert got[1].shape == (1, 2, 3, 2) and got[1].dtype == np.float32


class Doubler(nn.Module):
    """The same 1x1 conv (times 2) applied twice: one module, two calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(2.0)
        self.act = nn.Identity()

    def forward(self, x):
        return self.act(self.conv(self.conv(x)))


def test_a_module_called_twice_gives_two_rows():
    adapter = TorchAdapter(Doubler(), input_shape=(4, 4, 1))
    table = adapter.layers()
    assert [t.name for t in table] == ["input", "conv", "conv#2", "act"]
    assert [t.parents for t in table[1:]] == [(0,), (1,), (2,)]
    x = np.full((1, 4, 4, 1), 3.0, np.float32)
    got, _ = _run(adapter, x, [1, 2])
    assert float(got[1].max()) == 6.0 and float(got[2].max()) == 12.0
    only_second, _ = _run(adapter, x, [2])  # calls are counted even when the first is not wanted
    assert list(only_second) == [2] and float(only_second[2].min()) == 12.0


class Splitter(nn.Module):
    """A leaf returning a tuple with a nested tuple and an integer tensor."""

    def forward(self, x):
        return x + 1, (x * 2, x.argmax(dim=1))


class Heads(nn.Module):
    """A leaf returning a dict."""

    def forward(self, x):
        return {"low": x - 1, "high": x + 1}


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.split = Splitter()
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.heads = Heads()

    def forward(self, x):
        a, (b, _) = self.split(x)
        p, _ = self.pool(a + b)
        return self.heads(p)


def test_tuple_and_dict_outputs_give_one_row_per_float_tensor():
    adapter = TorchAdapter(TupleNet(), input_shape=(4, 4, 2))
    table = adapter.layers()
    # the pool returns (values, int64 indices): one float tensor, so the row keeps its name
    assert [t.name for t in table] == ["input", "split:0", "split:1.0", "add", "pool", "heads:low", "heads:high"]
    assert table[4].output_shape == (2, 2, 2) and table[4].kind == "pool"
    # ``a + b`` in the model's forward merges two rows: an ``add`` row of its own feeds the pool
    assert table[3].kind == "merge" and [t.parents for t in table[1:]] == [(0,), (0,), (1, 2), (3,), (4,), (4,)]
    x = np.random.default_rng(0).normal(size=(1, 4, 4, 2)).astype(np.float32)
    got, y = _run(adapter, x, [1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(got[1], x + 1)
    np.testing.assert_allclose(got[2], x * 2)
    np.testing.assert_allclose(got[3], 3 * x + 1, rtol=1e-6)
    pooled = (3 * x + 1).reshape(1, 2, 2, 2, 2, 2).max(axis=(2, 4))
    np.testing.assert_allclose(got[4], pooled, rtol=1e-6)
    np.testing.assert_allclose(got[5], pooled - 1, rtol=1e-6)
    np.testing.assert_allclose(got[6], pooled + 1, rtol=1e-6)
    np.testing.assert_allclose(y, got[5])  # the model's output: its first float tensor ("low")


class Gate(nn.Module):
    """Uses its child's weight functionally: the child is never called, so the gate is the row."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]).view(2, 2, 1, 1))

    def forward(self, x):
        return x * torch.sigmoid(nn.functional.conv2d(x, self.proj.weight))


def test_a_module_whose_children_are_not_called_is_one_row():
    model = nn.Sequential(nn.Identity(), Gate())
    adapter = TorchAdapter(model, input_shape=(3, 3, 2))
    assert [(t.name, t.type) for t in adapter.layers()] == [("input", "Input"), ("0", "Identity"), ("1", "Gate")]
    x = np.random.default_rng(8).normal(size=(1, 3, 3, 2)).astype(np.float32)
    got, _ = _run(adapter, x, [2])
    sig = 1 / (1 + np.exp(-x * np.array([1.0, -1.0], np.float32)))
    np.testing.assert_allclose(got[2], x * sig, rtol=1e-6, atol=1e-7)


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.explode = False

    def forward(self, x):
        x = self.bn(self.conv(x))
        if self.explode:
            raise RuntimeError("boom")
        return x


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_and_train_state_restored_even_when_the_pass_raises():
    model = Exploding()
    model.train()
    model.bn.eval()  # a mixed state must come back exactly as it was
    adapter = TorchAdapter(model, input_shape=(8, 8, 3))
    before = {name: m.training for name, m in model.named_modules()}
    stats = model.bn.running_mean.clone()
    assert len(adapter.layers()) == 3
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
    got, _ = _run(adapter, x, [1, 2])
    assert _hooks(model) == 0
    assert {name: m.training for name, m in model.named_modules()} == before
    torch.testing.assert_close(model.bn.running_mean, stats)  # ran in eval: statistics untouched
    model.explode = True
    received = []
    with pytest.raises(UnsupportedModel, match="boom"):
        adapter.run(x, [1, 2], lambda i, a: received.append(i))
    assert received == [1, 2]  # the hooks fired, then the pass raised
    assert _hooks(model) == 0
    assert {name: m.training for name, m in model.named_modules()} == before
    assert model.training and not model.bn.training


def test_several_inputs_need_the_others_given():
    """forward(image, mask) declares no shapes: mask must be given (tests/adapters/test_torch_inputs.py has more)."""
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, image, mask):
            return self.conv(image * mask)

    with pytest.raises(BadArgument, match=r"mask does not declare its shape.*--input mask=FILE.npy"):
        Lens(TwoInputs())
    assert Lens(TwoInputs(), inputs={"mask": np.ones((3, 8, 8))}, input_shape=(8, 8, 3)).layers()[1].name == "conv"


# --------------------------------------------------------------------------- table and kernels


class Zoo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, dilation=2)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.Hardswish()
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.silu = nn.SiLU()
        self.up = nn.ConvTranspose2d(16, 4, 2, stride=2, groups=2)
        self.maxpool = nn.MaxPool2d(3, stride=2)
        self.avgpool = nn.AvgPool2d(2)
        self.adapt = nn.AdaptiveAvgPool2d(2)
        self.gap = nn.AdaptiveMaxPool2d(1)
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.up(self.silu(self.dw(self.act(self.bn(self.conv(x))))))
        x = self.adapt(self.avgpool(self.maxpool(x)))
        return self.fc(self.drop(self.flat(self.gap(x))))


def test_kinds_kernels_and_receptive_fields():
    torch.manual_seed(2)
    model = Zoo()
    lens = Lens(model, input_shape=(33, 33, 3))
    table = lens.layers()
    rows = {t.name: t for t in table}
    assert [(t.name, t.kind) for t in table[1:]] == [
        ("conv", "conv"), ("bn", "norm"), ("act", "act"), ("dw", "conv"), ("silu", "act"), ("up", "conv"),
        ("maxpool", "pool"), ("avgpool", "pool"), ("adapt", "pool"), ("gap", "pool"), ("flat", "reshape"),
        ("drop", "reshape"), ("fc", "dense")]
    assert rows["conv"].output_shape == (15, 15, 8)
    assert rows["bn"].params == 4 * 8  # weight, bias, running mean and variance (as Keras counts)
    assert rows["conv"].params == 8 * 3 * 9 + 8
    # conv 3x3 dilation 2 stride 2: field 5, jump 2; depthwise 3x3 at jump 2: 9, from -2 (its padding);
    # the 2x2 stride-2 transpose halves the jump: outputs 2m and 2m+1 both see unit m, [-2 + 2m, 7 + 2m),
    # so evenly spaced boxes of 10 from -3 hold them; the 3x3 max pool over units 2q..2q+2 sees [-2 + 2q, 9 + 2q)
    assert (rows["conv"].rf_size, rows["conv"].rf_jump, rows["conv"].dilation) == ((5, 5), (2, 2), (2, 2))
    assert (rows["dw"].rf_size, rows["dw"].rf_jump, rows["dw"].rf_offset) == ((9, 9), (2, 2), (-2, -2))
    assert (rows["up"].rf_size, rows["up"].rf_jump, rows["up"].rf_offset, rows["up"].output_shape) == (
        (10, 10), (1, 1), (-3, -3), (30, 30, 4))
    assert (rows["maxpool"].kernel_size, rows["maxpool"].stride, rows["maxpool"].rf_size) == ((3, 3), (2, 2), (11, 11))
    assert (rows["avgpool"].kernel_size, rows["avgpool"].stride) == ((2, 2), (2, 2))
    # adaptive pool 7x7 -> 2x2 is not an even split: no window; 1x1 output is a global pool
    assert rows["adapt"].kernel_size is None and not rows["adapt"].global_rf
    assert rows["gap"].extra["global"] and rows["gap"].global_rf and rows["fc"].global_rf
    # kernels in (O, I, kh, kw)
    assert rows["dw"].kernel_shape == (16, 1, 3, 3)
    np.testing.assert_array_equal(lens.filters("dw")["dw"], model.dw.weight.detach().numpy())
    up = lens.filters("up")["up"]
    w = model.up.weight.detach().numpy()  # (in 16, out/groups 2, 2, 2)
    assert up.shape == rows["up"].kernel_shape == (4, 8, 2, 2)
    for o in range(4):  # output o belongs to group o // 2 and sees inputs 8g..8g+7
        g, j = divmod(o, 2)
        np.testing.assert_array_equal(up[o], w[8 * g:8 * g + 8, j])
    with pytest.raises(UnsupportedModel, match="no convolution kernel"):
        lens.adapter.kernels(rows["bn"].index)
    x = np.random.default_rng(2).normal(size=(1, 33, 33, 3)).astype(np.float32)
    got, y = _run(lens.adapter, x, [rows["conv"].index, rows["up"].index])
    with torch.no_grad():
        want = model.eval().conv(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got[rows["conv"].index], want, rtol=1e-5, atol=1e-6)
    assert y.shape == (1, 3)


def test_conv1d_signals_and_kernels():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv1d(2, 5, 4, stride=2), nn.ReLU(), nn.MaxPool1d(2))
    adapter = TorchAdapter(model)
    assert adapter.input_shape == (None, 2)  # (L, C), any length
    table = adapter.layers()
    assert table[1].output_shape == (None, 5) and table[1].kernel_shape == (5, 2, 1, 4)
    assert (table[1].kernel_size, table[1].stride) == ((1, 4), (1, 2))
    assert (table[3].rf_size, table[3].rf_jump) == ((1, 6), (1, 4))
    np.testing.assert_array_equal(adapter.kernels(1), model[0].weight.detach().numpy()[:, :, None, :])
    x = np.random.default_rng(3).normal(size=(1, 20, 2)).astype(np.float32)
    got, _ = _run(adapter, x, [1])
    with torch.no_grad():
        want = model[0](torch.from_numpy(x).transpose(1, 2)).transpose(1, 2).numpy()
    np.testing.assert_allclose(got[1], want, rtol=1e-5, atol=1e-6)  # (N, L, C)


def test_input_shape_any_size_fixed_size_and_needed():
    fully_conv = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    adapter = TorchAdapter(fully_conv)
    assert adapter.input_shape == (None, None, 1)  # channels from the first conv
    assert [t.output_shape for t in adapter.layers()[1:]] == [(None, None, 3), (None, None, 3), (1, 1, 3), (3,)]
    fixed = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 224 * 224, 2))
    assert TorchAdapter(fixed).input_shape == (224, 224, 3)
    lenet = nn.Sequential(nn.Conv2d(1, 2, 5), nn.Flatten(), nn.Linear(2 * 24 * 24, 10))
    with pytest.raises(UnsupportedModel, match="--input-shape"):
        Lens(lenet).layers()
    lens = Lens(lenet, input_shape=(28, 28, 1))
    assert lens.input_shape == (28, 28, 1) and lens.layers()[-1].output_shape == (10,)
    # a bare number selects by index (1 is the module named "0"), as for every framework
    maps = lens.feature_maps(np.zeros((40, 30), np.uint8), layers="1")  # resized to 28x28
    assert maps["0"].shape == (1, 24, 24, 2)


class Permute(nn.Module):
    """As torchvision.ops.misc.Permute (ConvNeXt, Swin)."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class ChannelsLastBlock(nn.Module):
    """ConvNeXt's block (Linear layers on (N, H, W, C)), then ViT's tokens (N, L, C) made by plain code."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(3, 3, 3, padding=1, groups=3)
        self.to_last = Permute([0, 2, 3, 1])
        self.norm = nn.LayerNorm(3)
        self.fc = nn.Linear(3, 5)
        self.act = nn.GELU()
        self.to_first = Permute([0, 3, 1, 2])
        self.patch = nn.Conv2d(5, 4, 2, stride=2)
        self.drop = nn.Dropout(0.1)
        self.token_fc = nn.Linear(4, 6)

    def forward(self, x):
        x = self.to_first(self.act(self.fc(self.norm(self.to_last(self.dw(x))))))
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (N, L, C), as ViT makes them
        return self.token_fc(self.drop(tokens))


def test_channels_last_outputs_are_not_moved_again(tmp_path):
    torch.manual_seed(6)
    model = ChannelsLastBlock().eval()
    x = np.random.default_rng(6).uniform(0, 255, size=(2, 6, 8, 3)).astype(np.float32)
    with torch.no_grad():
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)
        fc = model.fc(model.norm(model.dw(xt).permute(0, 2, 3, 1)))  # (N, H, W, C)
        tokens = model.patch(model.act(fc).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        # the tokens are restored to the patch conv's (3, 4) grid (adapters/_tokens.py)
        want = {"fc": fc.numpy(), "act": model.act(fc).numpy(), "drop": tokens.numpy().reshape(2, 3, 4, 4),
                "token_fc": model.token_fc(tokens).numpy().reshape(2, 3, 4, 6)}
    exported = tmp_path / "block.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 6, 8),)), exported)
    for lens in (Lens(model, input_shape=(6, 8, 3)), Lens(exported)):
        shapes = {t.name: t.output_shape for t in lens.layers()}
        assert shapes == {"input": (6, 8, 3), "dw": (6, 8, 3), "to_last": (6, 8, 3), "norm": (6, 8, 3),
                          "fc": (6, 8, 5), "act": (6, 8, 5), "to_first": (6, 8, 5), "patch": (3, 4, 4),
                          "flatten": (12, 4), "drop": (3, 4, 4), "token_fc": (3, 4, 6)}  # flatten(2): a row
        maps = lens.feature_maps(list(x), layers="all", preprocess="raw")
        for name, array in want.items():
            np.testing.assert_allclose(maps[name], array, rtol=1e-5, atol=1e-5, err_msg=name)
    # a LayerNorm over a whole (C, H, W) map leaves it channels-first
    whole = nn.Sequential(nn.Conv2d(3, 2, 1), nn.LayerNorm([2, 6, 8]))
    shapes = [t.output_shape for t in Lens(whole, input_shape=(6, 8, 3)).layers()]
    assert shapes == [(6, 8, 3), (6, 8, 2), (6, 8, 2)]


def test_an_image_too_big_for_a_free_size_model_suggests_size(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()).eval()
    side = torch.export.Dim("side", min=8, max=64)
    program = torch.export.export(model, (torch.zeros(1, 3, 32, 32),), dynamic_shapes=({2: side, 3: side},))
    path = tmp_path / "bounded.pt2"
    torch.export.save(program, path)
    lens = Lens(path)
    assert lens.input_shape == (None, None, 3)
    with pytest.raises(UnsupportedModel, match=r"<= 64.*pass --size HxW"):
        lens.feature_maps(np.zeros((100, 100, 3), np.uint8), layers="all")


# --------------------------------------------------------------------------- files


def test_pt2_program_follows_the_original_names(small, tmp_path):
    path = tmp_path / "small.pt2"
    torch.export.save(torch.export.export(small, (torch.zeros(1, 3, 20, 20),)), path)
    exported = Lens(path, preprocess="unit")
    eager = Lens(small, preprocess="unit")
    assert exported.adapter.framework == "torch" and exported.name == "small"
    assert exported.input_shape == (20, 20, 3)  # the program's example input
    program = torch.export.export(small, (torch.zeros(1, 3, 20, 20),))
    assert Lens(program).input_shape == (20, 20, 3)  # an ExportedProgram object works too
    dynamic = torch.export.export(small, (torch.zeros(1, 3, 20, 20),),
                                  dynamic_shapes=({2: torch.export.Dim("h", min=8, max=64)},))
    dyn = TorchAdapter(dynamic)  # probed within the program's range (8..64), not at 224
    assert dyn.input_shape == (None, 20, 3) and dyn.name == "SmallNet"
    assert dyn.layers()[1].output_shape == (None, 18, 4) and dyn.layers()[-1].output_shape == (2,)
    names = [t.name for t in exported.layers()]
    assert names == ["input", "features.0", "features.1", "features.2", "features.3", "features.4", "features",
                     "head.0", "head.1", "head.2", "head"]
    assert [(t.type, t.kind) for t in exported.layers()[1:4]] == [
        ("Conv2d", "conv"), ("ReLU", "act"), ("MaxPool2d", "pool")]
    assert [t.kernel_shape for t in exported.layers()] == [t.kernel_shape for t in eager.layers()]
    assert [(t.rf_size, t.rf_jump) for t in exported.layers()] == [(t.rf_size, t.rf_jump) for t in eager.layers()]
    image = np.random.default_rng(4).integers(0, 256, (20, 20, 3)).astype(np.uint8)
    a = exported.feature_maps(image, layers="all")
    b = eager.feature_maps(image, layers="all")
    for name in names[1:]:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(a.output, b.output, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(exported.filters("features.3")["features.3"],
                                  small.features[3].weight.detach().numpy())

    out = tmp_path / "out"
    for argv in (["layers", str(path)], ["maps", str(path), _png(tmp_path), "--out", str(out)],
                 ["filters", str(path), "--out", str(out)]):
        stdout, stderr = io.StringIO(), io.StringIO()
        assert main(argv, stdout=stdout, stderr=stderr) == 0, stderr.getvalue()
    index = json.loads((out / "index.json").read_text())
    assert index["framework"] == "torch"
    assert [e["layer"] for e in index["maps"]] == ["features.0", "features.2", "features.3", "head.0"]
    assert all((out / e["file"]).is_file() for e in index["maps"] + index["filters"])


def _png(tmp_path) -> str:
    from PIL import Image

    path = tmp_path / "in.png"
    if not path.exists():
        Image.fromarray(np.random.default_rng(5).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_pickled_module_needs_trust(small, tmp_path):
    path = tmp_path / "small.pt"
    torch.save(small, path)
    with pytest.raises(UnsafeModel, match=r"unpickling runs code.*--trust"):
        Lens(path)
    stdout, stderr = io.StringIO(), io.StringIO()
    assert main(["layers", str(path)], stdout=stdout, stderr=stderr) == 2
    assert stderr.getvalue().startswith("convlens: error: ") and stderr.getvalue().count("\n") == 1
    assert "--trust" in stderr.getvalue() and stdout.getvalue() == ""
    out = tmp_path / "out"
    assert main(["maps", str(path), _png(tmp_path), "--out", str(out)], stdout=stdout, stderr=stderr) == 2
    assert not out.exists()  # nothing written
    trusted = Lens(path, trust=True)
    assert trusted.name == "small" and trusted.input_shape == (None, None, 3)
    assert [t.name for t in trusted.layers()][1:3] == ["features.0", "features.1"]
    np.testing.assert_array_equal(trusted.filters("features.0")["features.0"],
                                  small.features[0].weight.detach().numpy())
    assert main(["maps", str(path), _png(tmp_path), "--out", str(out), "--trust"],
                stdout=stdout, stderr=stderr) == 0, stderr.getvalue()
    assert (out / "index.json").is_file()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_state_dicts_torchscript_and_corrupt_files(small, tmp_path):
    sd = tmp_path / "weights.pth"
    torch.save(small.state_dict(), sd)
    with pytest.raises(BadModel, match=r"state dict: it holds weights only.*torchvision:NAME --weights"):
        Lens(sd)
    ts = tmp_path / "scripted.pt"
    torch.jit.script(small).save(str(ts))
    with pytest.raises(UnsupportedModel, match=r"TorchScript.*torch\.export"):
        Lens(ts)
    with pytest.raises(UnsupportedModel, match="TorchScript"):
        Lens(torch.jit.script(small))
    good = tmp_path / "good.pt"
    torch.save(small, good)
    data = good.read_bytes()
    cases = {"truncated.pt": data[: len(data) // 2], "junk.pt": b"hello, not a checkpoint",
             "empty.bin": b"", "junk.pt2": b"PK not really", "notes.pt2": _zip_bytes({"a/readme.txt": b"hi"})}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(BadModel):
            Lens(tmp_path / name, trust=True)
    # pickle protocol 4: torch's safe loader warns on stderr; convlens says it once, in its error
    protocol4 = tmp_path / "protocol4.pt"
    torch.save(small, protocol4, pickle_protocol=4)
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        assert Lens(protocol4, trust=True).name == "protocol4"
    assert not [w for w in caught_warnings if "pickle protocol" in str(w.message)]
    # untrusted, random bytes are not called "pickled objects" (that would only invite --trust)
    noise = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)
    (tmp_path / "noise.pt").write_bytes(noise.tobytes())
    with pytest.raises(UnsafeModel, match=r"not plain weights.*Unsupported operand.*damaged") as caught:
        Lens(tmp_path / "noise.pt")
    assert "holds pickled Python objects" not in str(caught.value)
    program = tmp_path / "prog.pt2"
    torch.export.save(torch.export.export(small, (torch.zeros(1, 3, 20, 20),)), program)
    whole = program.read_bytes()
    (tmp_path / "cut.pt2").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BadModel):
        Lens(tmp_path / "cut.pt2")
    with pytest.raises(BadModel, match="not found"):
        Lens(tmp_path / "missing.pt")


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


class _Payload:
    """Unpickling this makes a folder: proof that code from a file ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pt2_that_would_unpickle_objects_is_refused(small, tmp_path):
    program = tmp_path / "prog.pt2"
    torch.export.save(torch.export.export(small, (torch.zeros(1, 3, 20, 20),)), program)
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(program) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            content = src.read(item)
            if item.filename.endswith("data/sample_inputs/model.pt"):
                buf = io.BytesIO()
                torch.save((_Payload(str(marker)), {}), buf)
                content = buf.getvalue()
            dst.writestr(item, content)
    with pytest.raises(UnsafeModel, match="--trust"):
        Lens(evil)
    assert not marker.exists()


def test_pt2_with_a_compiled_library_is_refused_and_failures_stay_one_line(small, tmp_path, capfd):
    """torch.export.load dlopens the shared library of an AOTInductor package: native code."""
    program = tmp_path / "prog.pt2"
    torch.export.save(torch.export.export(small, (torch.zeros(1, 3, 20, 20),)), program)
    aoti = tmp_path / "aoti.pt2"
    with zipfile.ZipFile(program) as src, zipfile.ZipFile(aoti, "w") as dst:
        root = src.namelist()[0].split("/", 1)[0]
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        meta = json.dumps({"AOTI_DEVICE_KEY": "cpu"})
        dst.writestr(f"{root}/data/aotinductor/model/model.wrapper.so", b"\x7fELF not really a library")
        dst.writestr(f"{root}/data/aotinductor/model/model.wrapper_metadata.json", meta)
        dst.writestr(f"{root}/data/aotinductor/model/wrapper_metadata.json", meta)
    with pytest.raises(UnsafeModel, match=r"AOTInductor.*--trust"):
        Lens(aoti)
    capfd.readouterr()
    # trusted, torch tries the library, fails, and logs a traceback: convlens says one line instead
    stdout, stderr = io.StringIO(), io.StringIO()
    assert main(["layers", str(aoti), "--trust"], stdout=stdout, stderr=stderr) == 2
    assert stderr.getvalue().startswith("convlens: error: cannot read") and stderr.getvalue().count("\n") == 1
    assert "warnings above" not in stderr.getvalue()  # torch's own reason, not a pointer to hidden logs
    assert capfd.readouterr().err == ""


# --------------------------------------------------------------------------- torchvision


def test_torchvision_resnet18_through_the_cli(tmp_path):
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (180, 240, 3), dtype=np.uint8)).save(image)
    stdout, stderr = io.StringIO(), io.StringIO()
    assert main(["layers", "torchvision:resnet18", "--weights", "none", "--json"], stdout=stdout,
                stderr=stderr) == 0, stderr.getvalue()
    table = json.loads(stdout.getvalue())
    names = [t["name"] for t in table]
    assert names[:5] == ["input", "conv1", "bn1", "relu", "maxpool"]
    assert "layer1.0.relu#2" in names and names[-1] == "fc"
    assert table[0]["output_shape"] == [224, 224, 3]
    conv1 = table[1]
    assert conv1["kernel_shape"] == [64, 3, 7, 7] and conv1["output_shape"] == [112, 112, 64]
    assert table[-1]["output_shape"] == [1000] and table[-1]["global_rf"]
    out = tmp_path / "out"
    stdout = io.StringIO()
    assert main(["maps", "torchvision:resnet18", "--weights", "none", str(image), "--layers",
                 "blocks,layer1.0.conv1", "--out", str(out)], stdout=stdout, stderr=stderr) == 0, stderr.getvalue()
    assert "resized" in stderr.getvalue()  # a note (stderr): to the model's 224x224
    index = json.loads((out / "index.json").read_text())
    assert index["framework"] == "torch" and index["options"]["preprocess"] == "torch"
    assert [e["layer"] for e in index["maps"]] == [
        "conv1", "layer1.0.conv1", "layer1", "layer2", "layer3", "layer4"]  # blocks: the stages' outputs
    assert [e["shape"] for e in index["maps"]][-1] == [7, 7, 512]
    assert main(["filters", "torchvision:resnet18", "--weights", "none", "--layers", "conv1,layer4.1.conv2",
                 "--out", str(out)], stdout=stdout, stderr=stderr) == 0, stderr.getvalue()
    index = json.loads((out / "index.json").read_text())
    assert {e["layer"] for e in index["filters"]} == {"conv1", "layer4.1.conv2"}
    assert all((out / e["file"]).is_file() for e in index["maps"] + index["filters"])
    if os.environ.get("CONVLENS_KEEP"):  # to look at a grid: CONVLENS_KEEP=/some/folder
        import shutil

        shutil.copytree(out, os.environ["CONVLENS_KEEP"], dirs_exist_ok=True)


def test_torchvision_names_and_weights(tmp_path, monkeypatch):
    with pytest.raises(BadModel, match=r"unknown torchvision model 'resnet19' \(closest: resnet18"):
        Lens("torchvision:resnet19")

    # offline: the download fails at once, no hang, and the message says what to do
    import torch.hub
    import torchvision.models._api as api

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # an empty cache
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    timeout = socket.getdefaulttimeout()
    for weights in (None, "default", "imagenet"):
        start = time.monotonic()
        with pytest.raises(WeightsUnavailable, match=r"--weights none.*--weights PATH"):
            open_torchvision("squeezenet1_1", weights=weights)
        assert time.monotonic() - start < 10
    assert socket.getdefaulttimeout() == timeout  # the download's timeout does not leak

    # a state dict file
    torch.manual_seed(7)
    import torchvision

    source = torchvision.models.squeezenet1_1(weights=None)
    path = tmp_path / "squeeze.pth"
    torch.save(source.state_dict(), path)
    lens = Lens("torchvision:squeezenet1_1", weights=str(path))
    np.testing.assert_array_equal(lens.filters("features.0")["features.0"],
                                  source.features[0].weight.detach().numpy())
    assert lens.preprocess == "torch" and lens.input_shape == (224, 224, 3)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, wrapped)
    np.testing.assert_array_equal(Lens("torchvision:squeezenet1_1", weights=str(wrapped)).filters("features.0")
                                  ["features.0"], source.features[0].weight.detach().numpy())
    broken = dict(source.state_dict())
    broken["features.0.kernel"] = broken.pop("features.0.weight")
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(WeightsUnavailable, match=r"missing \(e\.g\. features\.0\.weight\).*unexpected "
                                                 r"\(e\.g\. features\.0\.kernel\)"):
        Lens("torchvision:squeezenet1_1", weights=str(tmp_path / "broken.pth"))
    with pytest.raises(WeightsUnavailable, match="not found"):
        Lens("torchvision:squeezenet1_1", weights=str(tmp_path / "nope.pth"))
    torch.save(source, tmp_path / "whole.pth")  # a pickled module as weights: needs trust
    with pytest.raises(UnsafeModel, match="--trust"):
        Lens("torchvision:squeezenet1_1", weights=str(tmp_path / "whole.pth"))
    trusted = Lens("torchvision:squeezenet1_1", weights=str(tmp_path / "whole.pth"), trust=True)
    np.testing.assert_array_equal(trusted.filters("features.0")["features.0"],
                                  source.features[0].weight.detach().numpy())
    assert Lens("torchvision:squeezenet1_1", weights="none", input_shape=(96, 96)).input_shape == (96, 96, 3)


def test_select_blocks_on_a_torch_model(small):
    lens = Lens(small)
    names = [t.name for t in lens.layers()]
    assert [names[i] for i in select_indexes(lens.layers(), "blocks")] == ["features.0", "features.3"]


def test_compiled_and_traced_modules_keep_the_original_names(small):
    names = [t.name for t in Lens(small).layers()]
    assert [t.name for t in Lens(torch.compile(small)).layers()] == names  # never compiled: the eager module
    traced = torch.fx.symbolic_trace(small)  # its graph calls the leaves directly: no container rows
    assert [t.name for t in Lens(traced).layers()] == [t.name for t in Lens(small).layers() if t.kind != "block"]


def test_failed_download_prints_nothing(tmp_path, monkeypatch, capfd):
    # torch.hub writes "Downloading: URL" to stdout before fetching; only convlens's error may speak
    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(WeightsUnavailable, match="--weights none"):
        open_torchvision("squeezenet1_1", weights="default")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_a_program_exported_with_batch_one_takes_batches_in_chunks(tmp_path):
    """The pass engine batches images; a .pt2 whose batch is fixed at 1 gets them one chunk at a time."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    exported = tmp_path / "one.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 8, 8),)), exported)
    x = np.random.default_rng(2).uniform(0, 255, size=(3, 8, 8, 3)).astype(np.float32)
    lens = Lens(exported)
    assert lens.adapter.fixed_batch == 1
    maps = lens.feature_maps(list(x), layers="all", preprocess="raw")
    with torch.no_grad():
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)
        want_conv = model[0](xt).permute(0, 2, 3, 1).numpy()
        want_out = model(xt).numpy()
    np.testing.assert_allclose(maps["0"], want_conv, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(maps.output, want_out, rtol=1e-5, atol=1e-4)
