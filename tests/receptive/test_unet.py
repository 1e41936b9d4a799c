"""Exact receptive fields through a U-Net's decoder: upsampling, transposed convs and concatenation.

One small U-Net in PyTorch (``F.interpolate`` and ``torch.cat`` in ``forward``, a
transposed conv, valid and dilated convs), its ONNX export (``Resize``,
``Concat``, ``ConvTranspose``), and a Keras twin converted to TFLite
(``RESIZE_BILINEAR``, ``RESIZE_NEAREST_NEIGHBOR``, ``TRANSPOSE_CONV``,
``CONCATENATION``). Each layer table must give every unit's box as measured
(:mod:`tests.receptive.shared`): exactly in the encoder, as a tight envelope in
the decoder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .shared import check_table, lines, split, torch_responses

SIZE = 64


class UNet(nn.Module):
    """Two levels down, two up: the decoder upsamples with F.interpolate (bilinear, then nearest) and a
    transposed conv, and concatenates the skips with torch.cat."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(3, 4, 3, padding=1)
        self.enc2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)            # 32
        self.pool = nn.MaxPool2d(2)                                     # 16
        self.mid = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.valid = nn.Conv2d(4, 4, 3)                                 # 14: no padding
        self.pad = nn.ZeroPad2d((1, 1, 1, 1))                           # 16
        self.up_t = nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1)    # 32
        self.dec2 = nn.Conv2d(12, 4, 3, padding=1)
        self.dec1 = nn.Conv2d(8, 2, 5, padding=2)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.act(self.enc1(x))
        e2 = self.act(self.enc2(e1))
        m = self.pad(self.act(self.valid(self.act(self.mid(self.pool(e2))))))
        up = F.interpolate(m, scale_factor=2, mode="bilinear", align_corners=False)
        d2 = self.act(self.dec2(torch.cat([up, self.up_t(m), e2], dim=1)))
        d1 = F.interpolate(d2, scale_factor=2, mode="nearest")
        return self.dec1(torch.cat([d1, e1], dim=1))


def _averaging(model: nn.Module) -> nn.Module:
    """Positive constant weights ``1/fan_in`` and zero biases, in place: a linear, positive network."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / (m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]))
            elif isinstance(m, nn.ConvTranspose2d):
                m.weight.fill_(1.0 / (m.weight.shape[0] * m.weight.shape[2] * m.weight.shape[3]))
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    return model.eval()


def _forward_lines(adapter, table) -> dict[int, tuple[np.ndarray, np.ndarray]]:  # type: ignore[no-untyped-def]
    """Each row's response to every input line, from the adapter's own forward pass."""
    got: dict[int, np.ndarray] = {}
    adapter.run(lines(SIZE, SIZE, 3), [row.index for row in table],
                lambda i, a: got.__setitem__(i, np.abs(a).sum(-1) if a.ndim == 4 else a))
    return {i: split(a, SIZE) for i, a in got.items() if a.ndim == 3}


def test_torch_unet_with_interpolate_and_cat() -> None:
    """Needs the functional rows (F.interpolate, torch.cat) of the PyTorch layer model."""
    from convlens.adapters.torch import TorchAdapter

    model = UNet().eval()
    table = TorchAdapter(model, input_shape=(SIZE, SIZE, 3)).layers()
    upsampling = [row for row in table if row.upsample is not None]
    assert len(upsampling) == 3, [(row.name, row.type) for row in table]  # two interpolations, one transposed
    counts = check_table(table, torch_responses(model, table, (SIZE, SIZE), 3, thin=16), (SIZE, SIZE),
                         kinds=("conv", "pool"))
    assert counts["exact"] >= 5 and counts["envelope"] >= 3, counts


def test_onnx_export_of_the_unet(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from convlens.adapters.onnx import OnnxAdapter

    path = tmp_path / "unet.onnx"
    torch.onnx.export(_averaging(UNet()), (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=["image"],
                      dynamic_axes={"image": {0: "batch"}}, dynamo=False)
    adapter = OnnxAdapter(path)
    table = adapter.layers()
    assert {row.type for row in table if row.upsample is not None} == {"Resize", "ConvTranspose"}
    counts = check_table(table, _forward_lines(adapter, table), (SIZE, SIZE), kinds=("conv", "pool", "merge"))
    assert counts["exact"] >= 5 and counts["envelope"] >= 4, counts


def _keras_unet(*, for_tflite: bool = False):  # type: ignore[no-untyped-def]
    """The Keras twin. ``for_tflite``: no dilation (the converter rewrites a dilated conv as
    SPACE_TO_BATCH_ND, CONV_2D, BATCH_TO_SPACE_ND, whose table rows are ``?``), and the nearest
    upsampling as ``Resizing`` (``UpSampling2D`` repeats, which converts to TILE and RESHAPE: ``?`` as well)."""
    import keras

    L = keras.layers
    x = keras.Input((SIZE, SIZE, 3))
    e1 = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    e2 = L.Conv2D(4, 3, strides=2, padding="same", activation="relu")(e1)      # 32; TF pads 0 then 1
    m = L.MaxPooling2D(2)(e2)                                                   # 16
    m = L.Conv2D(4, 3, padding="same", dilation_rate=1 if for_tflite else 2, activation="relu")(m)
    m = L.Conv2D(4, 3, padding="valid", activation="relu")(m)                   # 14
    m = L.ZeroPadding2D(1)(m)                                                   # 16
    up = L.UpSampling2D(2, interpolation="bilinear")(m)
    up_t = L.Conv2DTranspose(4, 3, strides=2, padding="same")(m)
    d2 = L.Conv2D(4, 3, padding="same", activation="relu")(L.Concatenate()([up, up_t, e2]))
    d1 = L.Resizing(SIZE, SIZE, interpolation="nearest")(d2) if for_tflite else L.UpSampling2D(2)(d2)
    out = L.Conv2D(2, 5, padding="same")(L.Concatenate()([d1, e1]))
    model = keras.Model(x, out)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            kernel = weights[0]
            fan = int(np.prod(kernel.shape[:2])) * kernel.shape[2 if "Transpose" not in type(layer).__name__ else 3]
            layer.set_weights([np.full_like(kernel, 1.0 / fan), *(np.zeros_like(w) for w in weights[1:])])
    return model


def test_keras_unet_and_its_tflite_conversion(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.fail("TFLite conversion needs KERAS_BACKEND=tensorflow")  # make test runs it there
    import tensorflow as tf

    from convlens.adapters.keras import KerasAdapter
    from convlens.adapters.tflite import TFLiteAdapter

    model = _keras_unet()
    keras_adapter = KerasAdapter(model)
    table = keras_adapter.layers()
    counts = check_table(table, _forward_lines(keras_adapter, table), (SIZE, SIZE),
                         kinds=("conv", "pool", "merge", "other"))
    assert counts["exact"] >= 5 and counts["envelope"] >= 4, counts

    path = tmp_path / "unet.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(_keras_unet(for_tflite=True)).convert())
    adapter = TFLiteAdapter(path)
    table = adapter.layers()
    ops = {row.type for row in table if row.upsample is not None}
    assert ops == {"RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "TRANSPOSE_CONV"}, ops
    counts = check_table(table, _forward_lines(adapter, table), (SIZE, SIZE), kinds=("conv", "pool", "merge"))
    assert counts["exact"] >= 5 and counts["envelope"] >= 4, counts
