"""Devices on a machine without a GPU: parsing, placement, dtypes read at each call, device-side
reductions, the providers asked of onnxruntime, TF32 off, and the one-line errors of ``--device``.

A ``meta``-device module proves placement without running anything; float64 and bfloat16
modules (and a dtype changed after the Lens was made) prove the inputs follow the module.
"""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from torch import nn

import convlens.passes
from convlens import Lens
from convlens._errors import BadArgument, OutOfMemory, UnsupportedModel
from convlens.adapters import _device, open_model, tflite_device_note
from convlens.adapters._device import (
    exact_kernels,
    onnx_providers,
    parse_device,
    resolve_torch_device,
    torch_reduce_channels,
)
from convlens.adapters.base import Target
from convlens.cli import main
from convlens.core.reduce import REDUCTIONS, reduce_channels


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (20, 20, 3)).astype(np.uint8)


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- parsing and resolving


@pytest.mark.parametrize("text, want", [("auto", "auto"), ("CPU", "cpu"), (" cuda ", "cuda"), ("cuda:1", "cuda:1"),
                                        ("mps", "mps"), (None, None)])
def test_device_words(text, want):
    assert parse_device(text) == want


@pytest.mark.parametrize("text", ["gpu", "gpu:0", "cuda:x", "tpu", "cuda:-1", ""])
def test_not_a_device(text):
    with pytest.raises(BadArgument, match="cuda"):
        parse_device(text)


def test_auto_is_the_cpu_without_an_accelerator():
    assert not torch.cuda.is_available()
    assert resolve_torch_device("auto") == "cpu" and resolve_torch_device(None) == "cpu"
    assert resolve_torch_device(torch.device("cpu")) == "cpu"


def test_cuda_without_cuda(monkeypatch):
    with pytest.raises(BadArgument, match=r"--device cuda: .*(CPU-only|no CUDA GPU).*--device cpu"):
        resolve_torch_device("cuda")


def test_cuda_index_past_the_last_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(BadArgument, match=r"cuda:7: this machine has 2 CUDA GPUs \(cuda:0 to cuda:1\)"):
        resolve_torch_device("cuda:7")
    assert resolve_torch_device("cuda:1") == "cuda:1"


def test_mps_off_macos(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(BadArgument, match="only on macOS"):
        resolve_torch_device("mps")


# --------------------------------------------------------------------------- placement


def test_meta_module_is_placed_without_running():
    with torch.device("meta"):
        net = small_net()
    lens = Lens(net, input_shape=(20, 20, 3))
    assert lens.device == "meta" and lens.model.device == "meta"  # an in-memory module stays where it is
    table = lens.layers()  # the probe runs on meta tensors: shapes without arithmetic
    assert [row.output_shape for row in table][1:3] == [(20, 20, 4), (20, 20, 4)]
    x = lens.adapter._to_torch(np.zeros((2, 20, 20, 3), np.float32))
    assert x.device.type == "meta" and x.dtype == torch.float32 and tuple(x.shape) == (2, 3, 20, 20)


def test_device_given_moves_the_module(monkeypatch):
    net = small_net()
    asked = []

    def resolve(device):
        asked.append(device)
        return "meta"  # stands for a GPU: the module is moved, nothing runs

    monkeypatch.setattr(_device, "resolve_torch_device", resolve)
    adapter = open_model(net, device="cuda", input_shape=(20, 20, 3))
    assert asked == ["cuda"] and adapter.device == "meta"
    assert {p.device.type for p in net.parameters()} == {"meta"}


def test_files_and_names_default_to_auto(monkeypatch):
    asked = []
    real = _device.resolve_torch_device
    monkeypatch.setattr(_device, "resolve_torch_device", lambda d: asked.append(d) or real(d))
    lens = Lens("torchvision:resnet18", weights="none")
    assert asked == ["auto"] and lens.device == "cpu"
    assert lens.model.spec is not None and lens.model.spec.device is None  # each process resolves auto itself


def test_parameters_on_several_devices():
    net = small_net()
    net[6].to("meta")
    with pytest.raises(UnsupportedModel, match=r"several devices \(cpu, meta\).*model.to\('cuda:0'\)"):
        Lens(net, input_shape=(20, 20, 3))


# --------------------------------------------------------------------------- dtypes


def test_dtype_changed_after_the_lens_was_made():
    net = small_net()
    lens = Lens(net, input_shape=(20, 20, 3))
    want = lens.feature_maps(image(), layers="conv").arrays
    net.double()  # after the adapter exists: inputs must follow
    got = lens.feature_maps(image(), layers="conv").arrays
    for name in want:
        assert got[name][0].dtype == np.float32
        np.testing.assert_allclose(got[name][0], want[name][0], rtol=1e-5, atol=1e-5)
    net.to(torch.bfloat16)
    half = lens.feature_maps(image(), layers="conv").arrays
    for name in want:
        assert np.isfinite(half[name][0]).all()
        # bfloat16 keeps 8 bits of mantissa: about 1% of the layer's scale
        scale = float(np.abs(want[name][0]).max())
        np.testing.assert_allclose(half[name][0], want[name][0], rtol=0, atol=0.03 * scale)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_low_and_high_precision_modules_give_finite_results(dtype):
    net = small_net().to(dtype)
    lens = Lens(net, input_shape=(20, 20, 3))
    stats = lens.channel_stats([image(0), image(1)], layers="conv")
    assert len(list(stats)) == 2
    for layer in stats:
        assert np.isfinite(layer.mean).all() and np.isfinite(layer.std).all()
    heat = lens.heatmaps(image(), "gradcam,saliency", layer=2)
    assert len(heat.entries) == 2
    for entry in heat.entries:
        assert np.isfinite(entry.map).all() and entry.map.dtype == np.float32
        assert float(entry.map.max()) > 0
    vis = lens.visualize("2", channels=[0, 1], steps=4, size=16, batch_size=2)
    assert np.isfinite(vis.images).all() and np.isfinite(vis.activations).all()


# --------------------------------------------------------------------------- reductions on the device


def _messy(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=shape).astype(np.float32)
    a[a > 1.5] = 0.0
    flat = a.reshape(-1)
    flat[rng.choice(flat.size, 5, replace=False)] = [np.nan, np.inf, -np.inf, np.nan, 0.0]
    return a


@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_reductions_equal_numpy(channels_last):
    canonical = _messy((3, 5, 4, 6))  # (n, H, W, C)
    canonical[1, :, :, 2] = np.nan  # a channel without a finite value
    t = torch.from_numpy(canonical if channels_last else np.ascontiguousarray(canonical.transpose(0, 3, 1, 2)))
    got = torch_reduce_channels(t, REDUCTIONS, channels_last)
    want = reduce_channels(canonical, REDUCTIONS)
    assert got["shape"].tolist() == want["shape"].tolist() == [5, 4, 6]
    for op in REDUCTIONS:
        if op == "shape":
            continue
        assert got[op].dtype == want[op].dtype and got[op].shape == (3, 6), op
        if want[op].dtype == np.int64:
            assert np.array_equal(got[op], want[op]), op
        else:
            np.testing.assert_allclose(got[op], want[op], rtol=1e-12, atol=1e-12, err_msg=op)
    assert got["argmax"][1, 2] == got["argmin"][1, 2] == -1 and got["count"][1, 2] == 0
    first = canonical[0, :, :, 0].reshape(-1)
    assert got["argmin"][0, 0] == int(np.nanargmin(np.where(np.isfinite(first), first, np.nan)))


def test_torch_reductions_of_vectors_and_bfloat16():
    v = _messy((4, 7), seed=1)
    got = torch_reduce_channels(torch.from_numpy(v), ("count", "sum", "max", "argmax", "nonfinite"))
    want = reduce_channels(v, ("count", "sum", "max", "argmax", "nonfinite"))
    for op in want:
        np.testing.assert_allclose(got[op], want[op], rtol=1e-12)
    b = torch.from_numpy(_messy((2, 3, 8, 8), seed=2)).to(torch.bfloat16)
    got = torch_reduce_channels(b, ("sum", "m2", "min", "max"))
    want = reduce_channels(b.float().movedim(1, -1).numpy(), ("sum", "m2", "min", "max"))
    for op in want:  # the same bfloat16 values, summed in float64 in both
        np.testing.assert_allclose(got[op], want[op], rtol=1e-12, atol=1e-12)


def test_the_engine_reduces_on_the_device_before_one_transfer(monkeypatch):
    lens = Lens(small_net(), input_shape=(20, 20, 3))
    images = [image(i) for i in range(3)]
    host = lens.channel_stats(images, layers="conv,act")
    calls = []
    real = lens.adapter.run_reducing

    def counting(*args, **kwargs):
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(convlens.passes, "DEVICE_REDUCTIONS_ON_CPU", True)
    monkeypatch.setattr(lens.adapter, "run_reducing", counting)
    device = lens.channel_stats(images, layers="conv,act")
    assert calls and set(calls[0]) == {layer.index for layer in lens.select("conv,act")}
    assert len(list(host)) == 4
    for a, b in zip(host, device):
        for field in ("mean", "std", "min", "max", "zero_fraction"):
            np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=1e-6, atol=1e-7, err_msg=field)


def test_to_numpy_makes_one_canonical_float32_copy():
    from convlens.adapters._autograd import to_numpy

    t = torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4)
    a = to_numpy(t)
    t.zero_()  # an in-place op after the hook must not change what was handed over
    assert a.shape == (1, 3, 4, 2) and a.flags.c_contiguous and a[0, 0, 1, 1] == 13.0
    b = to_numpy(torch.ones(2, 3, 4, 5, dtype=torch.bfloat16))
    assert b.dtype == np.float32 and b.shape == (2, 4, 5, 3)


# --------------------------------------------------------------------------- errors


def test_out_of_memory_in_a_forward_pass_is_its_own_error():
    class Hungry(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            if x.shape[0] > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return self.conv(x)

    lens = Lens(Hungry(), input_shape=(12, 12, 3))
    with pytest.raises(OutOfMemory, match="smaller --batch-size"):
        lens.feature_maps([image(0), image(1)], layers="conv")
    assert lens.feature_maps(image(0), layers="conv")["conv"].shape == (1, 10, 10, 2)


def test_other_forward_errors_keep_their_message():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            if x.shape[0] > 1:
                raise RuntimeError("shapes do not match")
            return self.conv(x)

    lens = Lens(Broken(), input_shape=(12, 12, 3))
    with pytest.raises(UnsupportedModel, match="shapes do not match"):
        lens.feature_maps([image(0), image(1)], layers="conv")


@pytest.mark.parametrize("device, message", [
    ("cuda", "--device cuda: "), ("cuda:0", "--device cuda:0: "), ("mps", "only on macOS")])
def test_cli_device_not_here(tmp_path, monkeypatch, device, message):
    monkeypatch.setattr(sys, "platform", "linux")
    out = tmp_path / "maps"
    code, stdout, stderr = cli("maps", "torchvision:resnet18", "--weights", "none", _png(tmp_path),
                               "--out", str(out), "--device", device)
    assert code == 2 and message in stderr and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert not out.exists()


def test_cli_cuda_index_past_the_last_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    out = tmp_path / "maps"
    code, _, stderr = cli("maps", "torchvision:resnet18", "--weights", "none", _png(tmp_path), "--out", str(out),
                          "--device", "cuda:7")
    assert code == 2 and "2 CUDA GPUs (cuda:0 to cuda:1)" in stderr and stderr.count("\n") == 1
    assert not out.exists()


def test_cli_not_a_device(tmp_path):
    code, _, stderr = cli("layers", "demo", "--device", "gpu")
    assert code == 2 and "argument --device: 'gpu' is not a device" in stderr and stderr.count("\n") == 1


def test_cli_out_of_memory(tmp_path, monkeypatch):
    import torchvision

    def oom(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torchvision.models.ResNet, "forward", oom)
    out = tmp_path / "maps"
    code, _, stderr = cli("maps", "torchvision:resnet18", "--weights", "none", _png(tmp_path), "--out", str(out),
                          "--device", "cpu")
    assert code == 2 and "ran out of memory" in stderr and "--batch-size" in stderr and stderr.count("\n") == 1
    assert not out.exists()


def test_cli_device_cpu_runs(tmp_path):
    out = tmp_path / "maps"
    code, stdout, stderr = cli("maps", "demo", _png(tmp_path, gray=True), "--out", str(out), "--device", "cpu",
                               "--layers", "conv1")
    assert code == 0, stderr
    assert (out / "index.json").is_file()


def _png(tmp_path, gray: bool = False) -> str:
    from PIL import Image

    path = tmp_path / ("g.png" if gray else "c.png")
    Image.fromarray(image()[..., 0] if gray else image()).save(path)
    return str(path)


# --------------------------------------------------------------------------- exactness


def test_exact_kernels_turns_tf32_and_autotuning_off_and_restores():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = True
    try:
        with exact_kernels():
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cudnn.benchmark
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


# --------------------------------------------------------------------------- onnxruntime


def _onnx_model():
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


GPU_ORT = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_onnx_providers_follow_what_onnxruntime_has(monkeypatch):
    monkeypatch.setattr(_device, "cuda_device_count", lambda: 2)
    assert onnx_providers("auto", GPU_ORT) == ([("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"],
                                               "cuda:0")
    assert onnx_providers("cuda:1", GPU_ORT)[1] == "cuda:1"
    assert onnx_providers("cpu", GPU_ORT) == (["CPUExecutionProvider"], "cpu")
    assert onnx_providers(None, ["CPUExecutionProvider"]) == (["CPUExecutionProvider"], "cpu")
    with pytest.raises(BadArgument, match="cuda:2: this machine has 2 CUDA GPUs"):
        onnx_providers("cuda:2", GPU_ORT)
    with pytest.raises(BadArgument, match=r"onnxruntime-gpu.*convlens\[gpu\]"):
        onnx_providers("cuda", ["CPUExecutionProvider"])


def test_onnx_sessions_ask_for_the_cuda_provider(monkeypatch):
    import onnxruntime

    asked = []
    real_session = onnxruntime.InferenceSession

    def session(model, options=None, providers=None, **kw):
        asked.append(providers)
        return real_session(model, options, providers=["CPUExecutionProvider"], **kw)

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: GPU_ORT)
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    monkeypatch.setattr(_device, "cuda_device_count", lambda: 1)
    lens = Lens(_onnx_model())
    assert lens.device == "cuda:0"
    maps = lens.feature_maps(np.zeros((8, 8, 3), np.uint8), layers="conv")
    assert maps["conv"].shape == (1, 6, 6, 4)
    assert asked and all(p[0] == ("CUDAExecutionProvider", {"device_id": 0}) for p in asked)
    lens.adapter.use_device("cpu")
    lens.feature_maps(np.zeros((8, 8, 3), np.uint8), layers="conv")
    assert asked[-1] == ["CPUExecutionProvider"] and lens.device == "cpu"


def test_onnx_twin_check_reads_a_cpu_copy(monkeypatch):
    """The onnx2torch check converts with .cpu() first (a CUDA tensor has no .numpy())."""
    lens = Lens(_onnx_model())
    grads = lens.adapter.gradients(np.ones((1, 8, 8, 3), np.float32), Target(layer=1),
                                   layers=[1])
    assert grads.grads[1].shape == (1, 6, 6, 4) and np.isfinite(grads.grads[1]).all()
    assert lens.adapter._twin_device() == "cpu"


# --------------------------------------------------------------------------- keras and tflite


def test_tflite_says_once_that_it_runs_on_the_cpu():
    assert tflite_device_note("auto") is None and tflite_device_note("cpu") is None
    assert "run on the CPU" in tflite_device_note("cuda:1") and "--device cuda:1" in tflite_device_note("cuda:1")


@pytest.mark.keras
def test_keras_device_on_a_machine_without_gpus(keras):
    from convlens.adapters.keras import use_keras_device

    assert use_keras_device("cpu") == "cpu" and use_keras_device("auto") == "cpu"
    with pytest.raises(BadArgument, match="--device cuda"):
        use_keras_device("cuda")
    assert Lens("demo", device="cpu").device == "cpu"


# --------------------------------------------------------------------------- the dataset view on the device


def test_dataset_reductions_from_channels_equal_reduce_maps():
    from convlens.dataset.accumulate import DATASET_REDUCTIONS, reduce_maps, reduced_from_channels

    a = np.random.default_rng(3).normal(3.0, 2.0, size=(4, 5, 7, 6)).astype(np.float32)
    a[a < 1.0] = 0.0
    want = reduce_maps(a)
    got = reduced_from_channels(reduce_channels(a, DATASET_REDUCTIONS))
    assert got.map_hw == want.map_hw == (5, 7)
    for name in ("top", "bottom", "negative"):
        np.testing.assert_allclose(got.rankings[name][0], want.rankings[name][0], rtol=1e-6)
        assert np.array_equal(got.rankings[name][1], want.rankings[name][1]), name
    for key in ("n", "zeros", "bad", "meta"):
        assert np.array_equal(got.moments[key], want.moments[key]), key
    for key in ("mean", "m2", "lo", "hi"):
        np.testing.assert_allclose(got.moments[key], want.moments[key], rtol=1e-5, err_msg=key)
    a[1, 2, 3, 4] = np.inf  # a map holding a non-finite value: its channel's keys are skipped
    got = reduced_from_channels(reduce_channels(a, DATASET_REDUCTIONS))
    assert all(np.isnan(got.rankings[name][0][1, 4]) for name in ("top", "bottom", "negative"))
    assert got.moments["bad"][4] and not got.moments["bad"][3]


def test_dataset_view_reduced_on_the_device_equals_the_host_path(tmp_path, monkeypatch):
    from PIL import Image

    for i in range(10):
        folder = tmp_path / "data" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image(i)).save(folder / f"{i}.png")
    lens = Lens(small_net(), input_shape=(20, 20, 3))
    host = lens.dataset(tmp_path / "data", "conv,act", k=3, batch_size=4)
    seen = []
    real = lens.adapter.run_reducing
    monkeypatch.setattr(lens.adapter, "run_reducing", lambda *a, **kw: seen.append(1) or real(*a, **kw))
    monkeypatch.setattr(convlens.passes, "DEVICE_REDUCTIONS_ON_CPU", True)
    device = lens.dataset(tmp_path / "data", "conv,act", k=3, batch_size=4)
    assert len(seen) == 3  # every batch went through the device-side reductions
    assert [ex.layer.name for ex in host.layers] == [ex.layer.name for ex in device.layers]
    for a, b in zip(host.layers, device.layers):
        assert a.map_hw == b.map_hw
        for field in ("mean", "std", "min", "max", "zero_fraction"):
            np.testing.assert_allclose(getattr(b.stats, field), getattr(a.stats, field), rtol=1e-5, atol=1e-6)
        for name in ("top", "bottom", "negative"):
            ra, rb = getattr(a, name), getattr(b, name)
            np.testing.assert_allclose(rb.scores, ra.scores, rtol=1e-5, atol=1e-6)
            assert np.array_equal(rb.ids, ra.ids) and np.array_equal(rb.positions, ra.positions), name
