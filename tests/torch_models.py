"""PyTorch architectures written as the codebases people bring write them (module level, so pickles of them load).

* :class:`EfficientNetLite`: an EfficientNet-Lite whose convolutions are
  ``nn.Conv2d`` subclasses that own a ``ZeroPad2d`` child and call it in
  ``forward`` (the "static same padding" of lukemelas/EfficientNet-PyTorch and
  the timm-style ports), inverted residual blocks ending in ``x + identity``,
  ReLU6, no squeeze-excitation (the Lite variant), a stem and a head as
  ``nn.Sequential`` (as RangiLyu/EfficientNet-Lite).
* :class:`SmallUNet`: a U-Net whose decoder upsamples with ``F.interpolate``
  and joins the skip connection with ``torch.cat`` in ``forward``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Conv2dStaticSamePadding(nn.Conv2d):
    """TensorFlow's "SAME" padding for a fixed image size: a ``ZeroPad2d`` (or ``Identity``) child, then the conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = False, image_size: int = 64) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=bias)
        k, s = self.kernel_size[0], self.stride[0]
        out = math.ceil(image_size / s)
        pad = max((out - 1) * s + k - image_size, 0)
        if pad > 0:
            self.static_padding: nn.Module = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        else:
            self.static_padding = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _conv_bn_act(cin: int, cout: int, k: int, s: int, size: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [Conv2dStaticSamePadding(cin, cout, k, s, groups=groups, image_size=size),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConvBlock(nn.Module):
    """An inverted residual block: expand 1x1, depthwise kxk, project 1x1, ``x + identity`` when shapes allow."""

    def __init__(self, cin: int, cout: int, k: int, s: int, expand: int, size: int) -> None:
        super().__init__()
        mid = cin * expand
        self._expand_conv = Conv2dStaticSamePadding(cin, mid, 1, image_size=size)
        self._bn0 = nn.BatchNorm2d(mid)
        self._depthwise_conv = Conv2dStaticSamePadding(mid, mid, k, s, groups=mid, image_size=size)
        self._bn1 = nn.BatchNorm2d(mid)
        self._project_conv = Conv2dStaticSamePadding(mid, cout, 1, image_size=math.ceil(size / s))
        self._bn2 = nn.BatchNorm2d(cout)
        self._relu = nn.ReLU6()
        self.residual = s == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self._relu(self._bn0(self._expand_conv(inputs)))
        x = self._relu(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.residual:
            x = x + inputs
        return x


class EfficientNetLite(nn.Module):
    """A small EfficientNet-Lite for ``size`` x ``size`` RGB images (stages at strides 2, 4, 8, 16)."""

    def __init__(self, size: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn_act(3, 16, 3, 2, size)
        stages = []
        cin, s_in = 16, size // 2
        for cout, k, s, repeats in ((16, 3, 1, 1), (24, 3, 2, 2), (40, 5, 2, 2), (80, 3, 2, 2)):
            blocks = []
            for r in range(repeats):
                stride = s if r == 0 else 1
                blocks.append(MBConvBlock(cin, cout, k, stride, 1 if cout == 16 else 4, s_in))
                s_in, cin = math.ceil(s_in / stride), cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.head = _conv_bn_act(cin, 128, 1, 1, s_in)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Up(nn.Module):
    """Upsample x2 with ``F.interpolate``, join the skip with ``torch.cat``, two convs."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = _double_conv(cin + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class SmallUNet(nn.Module):
    """A three-level U-Net: per-pixel scores for ``classes`` classes, as large as the input."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.enc1 = _double_conv(3, 8)
        self.enc2 = _double_conv(8, 16)
        self.enc3 = _double_conv(16, 32)
        self.pool = nn.MaxPool2d(2)
        self.up2 = Up(32, 16, 16)
        self.up1 = Up(16, 8, 8)
        self.out = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        return self.out(self.up1(self.up2(e3, e2), e1))
