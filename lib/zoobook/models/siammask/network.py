"""SiamMask (the VOT "sharp" model: base + refine), as the Ascend port exports it.

Paper: Wang et al., "Fast Online Object Tracking and Segmentation: A Unifying Approach",
CVPR 2019. Reference: foolwood/SiamMask @ 0eaac33 (``experiments/siammask_sharp``).
Port: Ascend/ModelZoo-PyTorch ``ACL_PyTorch/contrib/cv/segmentation/SiamMask`` (two graphs,
"mask" and "refine").

Layout: the modified ResNet-50 trunk, the adjust layer, the depthwise-correlation heads, the
refine module, then the model. Inputs are BGR crops, float32 holding 0..255, NCHW, with no
mean/std normalisation: template 127x127, search 255x255.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoobook.models.blocks import Bottleneck

ANCHORS = 5
MASK_SIDE = 63  # the mask branch's 63x63 mask per score-map cell
REFINE_SIDE = 127


def _conv_bn(cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0,
             dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout))


class ResNet50Trunk(nn.Module):
    """conv1 .. layer3 of SiamMask's ResNet-50: conv1 without padding; layer2's first block
    with an unpadded 3x3 and a 3x3 stride-2 shortcut; layer3 at stride 1, its first block with
    a 3x3 shortcut, the others dilated by 2. Returns f0 (conv1, before the max-pool), f1, f2, f3.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(Bottleneck(64, 64, shortcut_kernel=1),
                                    *(Bottleneck(256, 64) for _ in range(2)))
        self.layer2 = nn.Sequential(Bottleneck(256, 128, stride=2, padding=0, shortcut_kernel=3),
                                    *(Bottleneck(512, 128) for _ in range(3)))
        self.layer3 = nn.Sequential(Bottleneck(512, 256, shortcut_kernel=3, shortcut_padding=1),
                                    *(Bottleneck(1024, 256, padding=2, dilation=2) for _ in range(5)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(F.max_pool2d(f0, 3, stride=2, padding=1))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return f0, f1, f2, f3


def xcorr_depthwise(search: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate every search channel with the same channel of the kernel (no flip, no
    padding): search [B,C,H,W], kernel [B,C,h,w] -> [B,C,H-h+1,W-w+1]. The kernel is a
    runtime tensor, as in the port's graph."""
    b, c, h, w = search.shape
    out = F.conv2d(search.reshape(1, b * c, h, w), kernel.reshape(b * c, 1, kernel.shape[2], kernel.shape[3]),
                   groups=b * c)
    return out.reshape(b, c, out.shape[2], out.shape[3])


class DepthCorr(nn.Module):
    """One correlation head: 3x3 conv+BN+ReLU on template and search (separate weights),
    depthwise correlation, then 1x1 conv+BN+ReLU and a 1x1 conv to ``out_channels``."""

    def __init__(self, out_channels: int, channels: int = 256) -> None:
        super().__init__()
        self.kernel = nn.Sequential(*_conv_bn(channels, channels, 3), nn.ReLU(inplace=True))
        self.search = nn.Sequential(*_conv_bn(channels, channels, 3), nn.ReLU(inplace=True))
        self.head = nn.Sequential(*_conv_bn(channels, channels, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, out_channels, 1))

    def correlate(self, search_feature: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return xcorr_depthwise(self.search(search_feature), kernel)

    def forward(self, search_feature: torch.Tensor, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``kernel`` is ``self.kernel(template_feature)``; returns (output, correlation)."""
        corr = self.correlate(search_feature, kernel)
        return self.head(corr), corr


def _conv_relu_pair(cin: int, mid: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, mid, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, cout, 3, padding=1), nn.ReLU(inplace=True))


class Refine(nn.Module):
    """SiamMask's refine module for one score-map position.

    Inputs (the port's "refine" graph): p0 [B,64,61,61], p1 [B,256,31,31], p2 [B,512,15,15]
    (windows of f0, f1, f2, see :func:`refine_inputs`) and p3 [B,256,1,1] (the mask branch's
    correlation at that cell). Output: logits [B, 16129], a 127x127 mask in row-major order.
    Upsampling is nearest with floor indices (PyTorch's legacy ``upsample`` default).
    """

    def __init__(self) -> None:
        super().__init__()
        self.v0 = _conv_relu_pair(64, 16, 4)
        self.v1 = _conv_relu_pair(256, 64, 16)
        self.v2 = _conv_relu_pair(512, 128, 32)
        self.h2 = _conv_relu_pair(32, 32, 32)
        self.h1 = _conv_relu_pair(16, 16, 16)
        self.h0 = _conv_relu_pair(4, 4, 4)
        self.deconv = nn.ConvTranspose2d(256, 32, 15, 15)
        self.post0 = nn.Conv2d(32, 16, 3, padding=1)
        self.post1 = nn.Conv2d(16, 4, 3, padding=1)
        self.post2 = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor) -> torch.Tensor:
        out = self.deconv(p3)
        out = self.post0(F.interpolate(self.h2(out) + self.v2(p2), size=(31, 31), mode="nearest"))
        out = self.post1(F.interpolate(self.h1(out) + self.v1(p1), size=(61, 61), mode="nearest"))
        out = self.post2(F.interpolate(self.h0(out) + self.v0(p0), size=(127, 127), mode="nearest"))
        return out.reshape(out.shape[0], REFINE_SIDE * REFINE_SIDE)


def refine_inputs(f0: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor, corr: torch.Tensor, row: int,
                  col: int) -> tuple[torch.Tensor, ...]:
    """The host-side "dynamic pad" between the port's two graphs: zero-pad f0, f1, f2 by 16,
    8, 4 and take the windows of the score-map cell (row, col); p3 = corr[:, :, row, col]."""
    p0 = F.pad(f0, [16] * 4)[:, :, 4 * row:4 * row + 61, 4 * col:4 * col + 61]
    p1 = F.pad(f1, [8] * 4)[:, :, 2 * row:2 * row + 31, 2 * col:2 * col + 31]
    p2 = F.pad(f2, [4] * 4)[:, :, row:row + 15, col:col + 15]
    p3 = corr[:, :, row, col].reshape(corr.shape[0], corr.shape[1], 1, 1)
    return p0, p1, p2, p3


class SiamMask(nn.Module):
    """SiamMask: trunk, adjust layer, three correlation heads (cls, loc, mask) and, for the
    sharp model, the refine module. ``refine=False`` builds the base model (training stage 1).

    * ``template(z)`` -> the three correlation kernels (cls, loc, mask), each [B,256,5,5]:
      computed once per sequence.
    * ``track(x, kernels)`` -> score [B,10,25,25], delta [B,20,25,25], mask [B,3969,25,25],
      f0, f1, f2, corr_feature [B,256,25,25].
    * ``forward(template, search)`` is the port's "mask" graph: both branches every call.
    """

    def __init__(self, *, refine: bool = True) -> None:
        super().__init__()
        self.backbone = ResNet50Trunk()
        self.adjust = _conv_bn(1024, 256, 1)
        self.cls = DepthCorr(2 * ANCHORS)
        self.loc = DepthCorr(4 * ANCHORS)
        self.mask = DepthCorr(MASK_SIDE * MASK_SIDE)
        self.refine = Refine() if refine else None

    def features(self, x: torch.Tensor, *, crop: bool) -> tuple[torch.Tensor, ...]:
        """Trunk and adjust layer; ``crop`` takes 4 px off every side (the template: 15 -> 7)."""
        f0, f1, f2, f3 = self.backbone(x)
        feature = self.adjust(f3)
        if crop:
            feature = feature[:, :, 4:-4, 4:-4]
        return feature, f0, f1, f2

    def template(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feature = self.features(z, crop=True)[0]
        return self.cls.kernel(feature), self.loc.kernel(feature), self.mask.kernel(feature)

    def track(self, x: torch.Tensor, kernels: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        feature, f0, f1, f2 = self.features(x, crop=False)
        score, _ = self.cls(feature, kernels[0])
        delta, _ = self.loc(feature, kernels[1])
        mask, corr = self.mask(feature, kernels[2])
        return score, delta, mask, f0, f1, f2, corr

    def forward(self, template: torch.Tensor, search: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.track(search, self.template(template))


class TemplateGraph(nn.Module):
    """Per-sequence graph of the template-once split: template -> three kernels."""

    def __init__(self, model: SiamMask) -> None:
        super().__init__()
        self.model = model

    def forward(self, template: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.template(template)


class SearchGraph(nn.Module):
    """Per-frame graph of the template-once split: search + kernels -> the mask graph's outputs."""

    def __init__(self, model: SiamMask) -> None:
        super().__init__()
        self.model = model

    def forward(self, search: torch.Tensor, kernel_cls: torch.Tensor, kernel_loc: torch.Tensor,
                kernel_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.track(search, (kernel_cls, kernel_loc, kernel_mask))
