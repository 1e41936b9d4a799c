"""Networks for the comparison tests: the four-framework agreement network and ResNet-18.

The agreement network is built as tests/adapters/test_agreement.py builds
it (its helpers are loaded from that file): one small CNN in Keras with
seeded weights, its PyTorch twin, the twin's ONNX export and the Keras
model's float and int8 TFLite conversions.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SIZE = 32


def _agreement_module():
    path = Path(__file__).parent.parent / "adapters" / "test_agreement.py"
    spec = importlib.util.spec_from_file_location("convlens_tests_agreement", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _images(n: int, size: int = SIZE, seed: int = 3) -> list[np.ndarray]:
    """``n`` random uint8 pictures ``(size, size, 3)``."""
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, 256, (n, size, size, 3)).astype("uint8"))


@pytest.fixture(scope="session")
def images():
    """``images(n, size=32, seed=3)``: random uint8 pictures."""
    return _images


def export_onnx(module, path: Path, size: int = SIZE) -> Path:
    import torch

    torch.onnx.export(module, (torch.zeros(1, 3, size, size),), str(path), input_names=["image"],
                      output_names=["logits"], dynamo=False)
    return path


@pytest.fixture(scope="session")
def agree(tmp_path_factory, keras):
    """Files and objects of the agreement network: keras model + file, torch twin, onnx, tflite float/int8."""
    agr = _agreement_module()
    tmp = tmp_path_factory.mktemp("compare-agree")
    kmodel = agr._keras_model(keras)
    kmodel.save(tmp / "agree.keras")
    tmodel = agr._torch_twin(kmodel)
    return {
        "module": agr,
        "keras": kmodel,
        "keras_file": tmp / "agree.keras",
        "torch": tmodel,
        "onnx": export_onnx(tmodel, tmp / "agree.onnx"),
        "tflite": agr._tflite(kmodel, tmp / "float.tflite", quantise=False),
        "int8": agr._tflite(kmodel, tmp / "int8.tflite", quantise=True),
        "dir": tmp,
    }


@pytest.fixture(scope="session")
def resnets():
    """ResNet-18 (random weights, eval) and a copy whose layer3.0.conv1 weights are perturbed."""
    import copy

    import torch
    import torchvision

    torch.manual_seed(0)
    a = torchvision.models.resnet18(weights=None).eval()
    b = copy.deepcopy(a)
    with torch.no_grad():
        w = b.layer3[0].conv1.weight
        w.add_(0.05 * w.std() * torch.randn(w.shape, generator=torch.Generator().manual_seed(1)))
    return a, b
