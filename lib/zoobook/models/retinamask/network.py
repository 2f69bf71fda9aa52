"""RetinaMask R-50-FPN (chengyangfu/retinamask, config retinanet_mask_R-50-FPN_2x_adjust_std011_ms).

Module names follow the official checkpoint, so its 318 keys load as they are:

* ``backbone.body``: MSRA-style ResNet-50 (stride on the first 1x1 of each stage's first
  block, FrozenBatchNorm without epsilon); returns C3, C4, C5.
* ``backbone.fpn``: laterals on C3-C5, 3x3 outputs, nearest x2 top-down; P6 = 3x3/2 conv
  on P5 (the FPN output), P7 = 3x3/2 conv on ReLU(P6).
* ``rpn``: the RetinaNet head shared by P3-P7 (two towers of 4 conv+ReLU; 9 anchors x 80
  classes, anchor-major channels; 9 x 4 box deltas) and the legacy base anchors as buffers.
* ``mask``: the Mask R-CNN FPN mask head on P3-P5 (RoIAlign 14x14, sampling 2, 4 conv+ReLU,
  2x2 deconv + ReLU, per-class 1x1 logits, 81 channels at 28x28).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoobook.models.blocks import Bottleneck
from zoobook.ops.roi_align import roi_align

NUM_CLASSES = 80
NUM_ANCHORS = 9
STRIDES = (8, 16, 32, 64, 128)
SIZES = (32, 64, 128, 256, 512)
RATIOS = (0.5, 1.0, 2.0)
OCTAVES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
DELTA_CLAMP = math.log(1000.0 / 16)
MASK_LEVELS = 3  # P3-P5
POOLER_SIZE, POOLER_SAMPLING = 14, 2


class FrozenBatchNorm2d(nn.Module):
    """y = x * w / sqrt(var) + (b - mean * w / sqrt(var)); no epsilon, no bookkeeping buffer."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((channels,), value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * self.running_var.rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


class Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)


class ResNetBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = Stem()
        cin = 64
        for index, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
            layer = []
            for i in range(blocks):
                layer.append(Bottleneck(cin, planes, stride=stride if i == 0 else 1, stride_in_1x1=True,
                                        norm=FrozenBatchNorm2d, shortcut_kernel=1 if i == 0 else None))
                cin = planes * 4
            setattr(self, f"layer{index}", nn.Sequential(*layer))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


class TopBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(256, 256, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(256, 256, 3, stride=2, padding=1)


class FPN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for level, cin in zip((2, 3, 4), (512, 1024, 2048)):
            setattr(self, f"fpn_inner{level}", nn.Conv2d(cin, 256, 1))
            setattr(self, f"fpn_layer{level}", nn.Conv2d(256, 256, 3, padding=1))
        self.top_blocks = TopBlocks()

    def forward(self, c: list[torch.Tensor]) -> list[torch.Tensor]:
        inner = self.fpn_inner4(c[2])
        outs = [self.fpn_layer4(inner)]
        for level, feature in ((3, c[1]), (2, c[0])):
            inner = getattr(self, f"fpn_inner{level}")(feature) + F.interpolate(inner, scale_factor=2.0, mode="nearest")
            outs.insert(0, getattr(self, f"fpn_layer{level}")(inner))
        p6 = self.top_blocks.p6(outs[-1])
        p7 = self.top_blocks.p7(F.relu(p6))
        return outs + [p6, p7]


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = ResNetBody()
        self.fpn = FPN()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.fpn(self.body(x))


def _tower() -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


class RetinaHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_tower, self.bbox_tower = _tower(), _tower()
        self.cls_logits = nn.Conv2d(256, NUM_ANCHORS * NUM_CLASSES, 3, padding=1)
        self.bbox_pred = nn.Conv2d(256, NUM_ANCHORS * 4, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([self.cls_logits(self.cls_tower(f)) for f in features],
                [self.bbox_pred(self.bbox_tower(f)) for f in features])


class CellAnchors(nn.Module):
    """The 5 x [9, 4] base anchors, as buffers ``0`` .. ``4`` (they are in the checkpoint)."""

    def __init__(self) -> None:
        super().__init__()
        for level, (stride, size) in enumerate(zip(STRIDES, SIZES)):
            self.register_buffer(str(level), legacy_cell_anchors(stride, size))

    def __getitem__(self, level: int) -> torch.Tensor:
        return getattr(self, str(level))


class AnchorGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell_anchors = CellAnchors()


class RetinaNetModule(nn.Module):
    """Named ``rpn`` in the checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor_generator = AnchorGenerator()
        self.head = RetinaHead()


class MaskFeatureExtractor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for i in range(1, 5):
            setattr(self, f"mask_fcn{i}", nn.Conv2d(256, 256, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 5):
            x = F.relu(getattr(self, f"mask_fcn{i}")(x))
        return x


class MaskPredictor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(256, 256, 2, stride=2)
        self.mask_fcn_logits = nn.Conv2d(256, NUM_CLASSES + 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_fcn_logits(F.relu(self.conv5_mask(x)))


class MaskHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.feature_extractor = MaskFeatureExtractor()
        self.predictor = MaskPredictor()


def legacy_cell_anchors(stride: int, size: int) -> torch.Tensor:
    """Detectron's base anchors [9, 4] (ratio-major, octave-minor): ratios of a stride x stride
    box with rounded sides, scaled by size * octave / stride, centred at (stride - 1) / 2,
    corners at centre -/+ (side - 1) / 2."""
    import numpy as np

    centre = (stride - 1) / 2
    anchors = []
    for ratio in RATIOS:
        w = np.round(np.sqrt(stride * stride / ratio))
        h = np.round(w * ratio)
        for octave in OCTAVES:
            sw, sh = w * size * octave / stride, h * size * octave / stride
            anchors.append([centre - (sw - 1) / 2, centre - (sh - 1) / 2, centre + (sw - 1) / 2, centre + (sh - 1) / 2])
    return torch.tensor(anchors, dtype=torch.float32)


def grid_anchors(cell: torch.Tensor, stride: int, height: int, width: int) -> torch.Tensor:
    """All anchors of a level [H*W*9, 4], row = (y * W + x) * 9 + anchor."""
    xs = torch.arange(width, dtype=torch.float32) * stride
    ys = torch.arange(height, dtype=torch.float32) * stride
    sy, sx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)
    return (shifts + cell.view(1, -1, 4)).reshape(-1, 4)


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Legacy box coder (+1 widths, weights 10, 10, 5, 5, size deltas clamped at log(1000/16))."""
    widths = anchors[:, 2] - anchors[:, 0] + 1
    heights = anchors[:, 3] - anchors[:, 1] + 1
    cx = anchors[:, 0] + 0.5 * widths
    cy = anchors[:, 1] + 0.5 * heights
    wx, wy, ww, wh = BOX_WEIGHTS
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = (deltas[:, 2] / ww).clamp(max=DELTA_CLAMP)
    dh = (deltas[:, 3] / wh).clamp(max=DELTA_CLAMP)
    px, py = dx * widths + cx, dy * heights + cy
    pw, ph = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw - 1, py + 0.5 * ph - 1], dim=1)


def mask_levels(boxes: torch.Tensor) -> torch.Tensor:
    """FPN level index 0..2 (P3..P5) per box: floor(4 + log2(sqrt(area) / 224 + 1e-6)) in [3, 5],
    area with +1 sides."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    level = torch.floor(4 + torch.log2(torch.sqrt(area) / 224 + 1e-6))
    return (level.clamp(3, 5) - 3).to(torch.int64)


class RetinaMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.rpn = RetinaNetModule()
        self.mask = MaskHead()

    def forward(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """``image [N, 3, H, W]`` (BGR minus mean) -> (P3..P7, class logits, box deltas) per level."""
        features = self.backbone(image)
        logits, deltas = self.rpn.head(features)
        return features, logits, deltas

    def anchors(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [grid_anchors(self.rpn.anchor_generator.cell_anchors[i], stride, f.shape[-2], f.shape[-1])
                for i, (f, stride) in enumerate(zip(features, STRIDES))]

    def pool(self, features: list[torch.Tensor], boxes: torch.Tensor, *, static: bool = False) -> torch.Tensor:
        """RoIAlign of ``boxes [K, 4]`` (image 0) on each box's level -> ``[K, 256, 14, 14]``.
        ``static`` pools every box at every level and keeps the right one (fixed shapes, as the
        port's graph); otherwise each level pools only its own boxes."""
        levels = mask_levels(boxes)
        batch = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
        if static:
            pooled = None
            for i in range(MASK_LEVELS):
                here = roi_align(features[i], boxes, batch, POOLER_SIZE, 1.0 / STRIDES[i], POOLER_SAMPLING)
                pooled = here if pooled is None else torch.where((levels == i).view(-1, 1, 1, 1), here, pooled)
            return pooled
        out = boxes.new_zeros((len(boxes), features[0].shape[1], POOLER_SIZE, POOLER_SIZE))
        for i in range(MASK_LEVELS):
            chosen = torch.nonzero(levels == i).flatten()
            if len(chosen):
                out[chosen] = roi_align(features[i], boxes[chosen], batch[chosen], POOLER_SIZE, 1.0 / STRIDES[i],
                                        POOLER_SAMPLING)
        return out

    def mask_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[K, 256, 14, 14]`` -> per-class logits ``[K, 81, 28, 28]``."""
        return self.mask.predictor(self.mask.feature_extractor(pooled))

    def mask_probabilities(self, features: list[torch.Tensor], boxes: torch.Tensor, labels: torch.Tensor, *,
                           static: bool = False) -> torch.Tensor:
        """Sigmoid of each box's label channel (1..80) -> ``[K, 1, 28, 28]``."""
        logits = self.mask_logits(self.pool(features, boxes, static=static))
        index = labels.long().view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[-2:])
        return torch.gather(logits, 1, index).sigmoid()
