"""Building blocks that more than one model really shares."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """Post-activation ResNet bottleneck with the stride on the 3x3 conv (torchvision /
    "v1.5" layout): 1x1 -> BN -> ReLU -> 3x3 -> BN -> ReLU -> 1x1 (x4) -> BN, plus the
    shortcut, then ReLU. ``padding``, ``dilation`` and the shortcut's kernel and padding are
    parameters because models change them per block (SiamMask's trunk does). A shortcut
    ``downsample`` (conv + BN) is built when ``shortcut_kernel`` is given, or when the shape
    changes (then 1x1)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, *, stride: int = 1, padding: int = 1, dilation: int = 1,
                 shortcut_kernel: int | None = None, shortcut_padding: int = 0) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=padding, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        if shortcut_kernel is None and (stride != 1 or cin != cout):
            shortcut_kernel = 1
        self.downsample: nn.Module | None = None
        if shortcut_kernel is not None:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, shortcut_kernel, stride=stride, padding=shortcut_padding, bias=False),
                nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)
