"""Building blocks that more than one model really shares."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """Post-activation ResNet bottleneck: 1x1 -> BN -> ReLU -> 3x3 -> BN -> ReLU -> 1x1 (x4)
    -> BN, plus the shortcut, then ReLU. The stride sits on the 3x3 conv (torchvision /
    "v1.5" layout) or, with ``stride_in_1x1``, on the first 1x1 (MSRA / Caffe2 layout).
    ``padding``, ``dilation`` and the shortcut's kernel and padding are parameters because
    models change them per block (SiamMask's trunk does); ``norm`` builds the normalisation
    layers (BatchNorm2d, or a frozen variant). A shortcut ``downsample`` (conv + norm) is
    built when ``shortcut_kernel`` is given, or when the shape changes (then 1x1)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, *, stride: int = 1, padding: int = 1, dilation: int = 1,
                 shortcut_kernel: int | None = None, shortcut_padding: int = 0, stride_in_1x1: bool = False,
                 norm=nn.BatchNorm2d) -> None:
        super().__init__()
        cout = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(cin, planes, 1, stride=stride_1x1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride_3x3, padding=padding, dilation=dilation, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = norm(cout)
        if shortcut_kernel is None and (stride != 1 or cin != cout):
            shortcut_kernel = 1
        self.downsample: nn.Module | None = None
        if shortcut_kernel is not None:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, shortcut_kernel, stride=stride, padding=shortcut_padding, bias=False),
                norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)
