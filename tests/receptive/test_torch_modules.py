"""Exact receptive fields of PyTorch module rows: padding forms, nn.Upsample, transposed convs."""

from __future__ import annotations

import torch
from torch import nn

from convlens.adapters.torch import TorchAdapter

from .shared import check_table, torch_responses

SIZE = 32


def test_padding_forms_upsample_modules_and_transposed_convs() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.MaxPool2d(3, stride=2, padding=1),                                  # 16
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),    # 32
        nn.Conv2d(4, 4, 3, padding="same", dilation=2),
        nn.Conv2d(4, 4, 4, stride=2, padding=(2, 1)),                         # 17 x 16: top and left differ
        nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1),  # 34 x 32
        nn.Upsample(scale_factor=2, mode="nearest"),                          # 68 x 64
        nn.Conv2d(4, 2, 3, padding=1, padding_mode="reflect"),
    ).eval()
    table = TorchAdapter(model, input_shape=(SIZE, SIZE, 3)).layers()
    assert [row.padding for row in table[1:]] == [(1, 1), (1, 1), (0, 0), (2, 2), (2, 1), (1, 1), (0, 0), (1, 1)]
    assert [row.upsample for row in table if row.upsample] == [(2.0, 2.0), (2.0, 2.0), (2.0, 2.0)]
    counts = check_table(table, torch_responses(model, table, (SIZE, SIZE), 3), (SIZE, SIZE),
                         kinds=("conv", "pool", "other"))
    assert counts["exact"] == 2 and counts["envelope"] >= 4, counts


def test_circular_padding_leaves_the_box_unknown_but_not_the_size() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular", bias=False),
                          nn.Conv2d(4, 4, 3)).eval()
    table = TorchAdapter(model, input_shape=(SIZE, SIZE, 3)).layers()
    assert [(row.rf_size, row.rf_jump, row.rf_offset) for row in table[1:]] == [
        ((3, 3), (1, 1), None), ((5, 5), (1, 1), None)]
    with torch.no_grad():  # the wrap is real: the corner unit sees the far side of the image
        x = torch.zeros(1, 3, SIZE, SIZE)
        x[0, :, SIZE - 1, SIZE - 1] = 1.0
        assert float(model[0](x)[0, :, 0, 0].abs().sum()) > 0
