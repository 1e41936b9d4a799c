"""Exact receptive fields of torchvision architectures, against the brute-force measurement.

Every conv and pool row of ResNet-18, MobileNetV3 (whose squeeze-excitation
gates make everything after the first one global), ConvNeXt-T and FCN (a
ResNet-50 with dilated last stages) must give every unit's box as measured by
:mod:`tests.receptive.shared`. Inputs are small to keep the passes short:
deep layers' boxes then cover the whole image, and only their containment and
their inner edges at the corners are checked there.
"""

from __future__ import annotations

import pytest
import torchvision

from convlens.adapters.torch import TorchAdapter

from .shared import check_table, torch_responses


@pytest.mark.parametrize(("name", "size", "thin", "at_least"), [
    ("resnet18", 64, 32, {"exact": 8, "global": 1}),
    ("mobilenet_v3_small", 64, 32, {"exact": 2, "global": 50}),
    ("convnext_tiny", 32, 32, {"exact": 2}),
])
def test_every_conv_and_pool_row_matches_the_measurement(name, size, thin, at_least) -> None:  # type: ignore[no-untyped-def]
    model = getattr(torchvision.models, name)(weights=None).eval()
    table = TorchAdapter(model, input_shape=(size, size, 3)).layers()
    convs = [row for row in table if row.kind in ("conv", "pool")]
    assert all(row.global_rf or row.rf_offset is not None for row in convs), (
        [row.name for row in convs if not row.global_rf and row.rf_offset is None])
    counts = check_table(table, torch_responses(model, table, (size, size), 3, thin=thin), (size, size),
                         kinds=("conv", "pool"))
    assert sum(counts.values()) == len(convs)
    assert all(counts[k] >= n for k, n in at_least.items()), counts


@pytest.mark.slow
def test_fcn_with_dilated_stages() -> None:
    """FCN-ResNet50's layer3 and layer4 keep stride 8 and dilate by 2 and 4; its head is a 3x3 conv."""
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None,
                                                          aux_loss=False).eval()
    size = 24  # a 3x3 map at stride 8: the smallest input that keeps the passes short
    table = TorchAdapter(model, input_shape=(size, size, 3)).layers()
    dilated = [row for row in table if row.dilation is not None and row.dilation[0] > 1]
    assert {row.dilation for row in dilated} == {(2, 2), (4, 4)}
    counts = check_table(table, torch_responses(model, table, (size, size), 3, thin=8), (size, size),
                         kinds=("conv", "pool"))
    assert counts["exact"] >= 5 and sum(counts.values()) == len([r for r in table if r.kind in ("conv", "pool")])
