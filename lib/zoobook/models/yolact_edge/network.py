"""YolactEdge with a ResNet-50 FPN backbone, as the Ascend port exports it.

Paper: Liu et al., "YolactEdge: Real-time Instance Segmentation on the Edge", ICRA 2021.
Reference: haotian-liu/yolact_edge @ a9a00281b33b3ac90253a4939773308a8f95e21d,
config ``yolact_edge_resnet50_config``. Port: Ascend/ModelZoo-PyTorch
``ACL_PyTorch/built-in/cv/YolactEdge_for_PyTorch`` (graph cut after FPN and protonet).

Layout of this module: building blocks (ResNet-50 on the shared bottleneck, FPN, protonet,
prediction head), then the model. The checkpoint mapping and the weight recipe live in
``checkpoint.py``; priors, box decoding, fast NMS and mask assembly in ``postprocess.py``.

Tensors are NCHW float32 RGB, normalised with the repository's BGR mean/std (see
``preprocess.py``), 550x550. ``YolactEdge.forward`` returns exactly the six tensors of the
port's graph: P3..P7 (NCHW, 256 channels) and the prototypes (NHWC, ReLU'd).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoobook.models.blocks import Bottleneck

FPN_CHANNELS = 256
NUM_PROTOTYPES = 32
NUM_CLASSES = 81  # background + 80 COCO classes
ANCHORS_PER_CELL = 3


class ResNet50(nn.Module):
    """ResNet-50 trunk (blocks 3, 4, 6, 3); returns C3, C4, C5 (strides 8, 16, 32)."""

    def __init__(self, *, blocks: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_channels = 64
        stages = []
        for index, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stride = 1 if index == 0 else 2
            layers = [Bottleneck(in_channels, width, stride=stride)]
            in_channels = width * Bottleneck.expansion
            layers += [Bottleneck(in_channels, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c3, c4, c5


class FPN(nn.Module):
    """Feature pyramid P3..P7 as YolactEdge builds it.

    Top-down sums are upsampled bilinearly (align_corners False) to the exact size of the
    next finer map (18 -> 35 -> 69, not x2). P3..P5 get a 3x3 conv and a ReLU; P6 and P7 are
    stride-2 3x3 convs on the post-ReLU P5 and on P6, without ReLU.
    """

    def __init__(self, in_channels: tuple[int, int, int] = (512, 1024, 2048), *,
                 channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        self.lateral = nn.ModuleDict(
            {name: nn.Conv2d(c, channels, 1) for name, c in zip(("c3", "c4", "c5"), in_channels)}
        )
        self.output = nn.ModuleDict(
            {name: nn.Conv2d(channels, channels, 3, padding=1) for name in ("p3", "p4", "p5")}
        )
        self.extra = nn.ModuleDict(
            {name: nn.Conv2d(channels, channels, 3, stride=2, padding=1) for name in ("p6", "p7")}
        )

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor) -> list[torch.Tensor]:
        l5 = self.lateral["c5"](c5)
        l4 = self.lateral["c4"](c4) + _resize_to(l5, c4)
        l3 = self.lateral["c3"](c3) + _resize_to(l4, c3)
        p3 = F.relu(self.output["p3"](l3))
        p4 = F.relu(self.output["p4"](l4))
        p5 = F.relu(self.output["p5"](l5))
        p6 = self.extra["p6"](p5)
        p7 = self.extra["p7"](p6)
        return [p3, p4, p5, p6, p7]


def _resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class ProtoNet(nn.Module):
    """Three 3x3 convs on P3, x2 bilinear upsample, a 3x3 conv, a 1x1 conv to 32 maps, ReLU.

    Returns the prototypes NHWC [B, 2H, 2W, 32] (138x138 for a 550 input), as the port does.
    """

    def __init__(self, channels: int = FPN_CHANNELS, *, num_prototypes: int = NUM_PROTOTYPES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv4 = nn.Conv2d(channels, channels, 3, padding=1)
        self.proto = nn.Conv2d(channels, num_prototypes, 1)

    def forward(self, p3: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(p3))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = F.relu(self.conv4(x))
        return F.relu(self.proto(x)).permute(0, 2, 3, 1)


class PredictionHead(nn.Module):
    """The one prediction head shared by all five levels (run on the host in the port).

    Per level: 3x3 conv + ReLU, then three 3x3 convs giving per anchor 4 box regressions,
    81 class logits and 32 mask coefficients (tanh). Outputs are flattened in (y, x, anchor)
    order: loc [B, H*W*3, 4], conf [B, H*W*3, 81] (raw logits), coef [B, H*W*3, 32].
    """

    def __init__(self, channels: int = FPN_CHANNELS, *, num_classes: int = NUM_CLASSES,
                 num_prototypes: int = NUM_PROTOTYPES, anchors: int = ANCHORS_PER_CELL) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_prototypes = num_prototypes
        self.upfeature = nn.Conv2d(channels, channels, 3, padding=1)
        self.box = nn.Conv2d(channels, anchors * 4, 3, padding=1)
        self.cls = nn.Conv2d(channels, anchors * num_classes, 3, padding=1)
        self.coef = nn.Conv2d(channels, anchors * num_prototypes, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        locs, confs, coefs = [], [], []
        for x in features:
            x = F.relu(self.upfeature(x))
            locs.append(_flatten_anchors(self.box(x), 4))
            confs.append(_flatten_anchors(self.cls(x), self.num_classes))
            coefs.append(_flatten_anchors(self.coef(x), self.num_prototypes))
        return torch.cat(locs, 1), torch.cat(confs, 1), torch.tanh(torch.cat(coefs, 1))


def _flatten_anchors(x: torch.Tensor, per_anchor: int) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, per_anchor)


class YolactEdge(nn.Module):
    """YolactEdge R-50-FPN.

    ``forward(image)`` is the port's graph: image [B,3,550,550] -> (P3, P4, P5, P6, P7,
    prototypes NHWC). ``head`` runs on the host on P3..P7. ``semantic_seg`` is the
    training-only semantic head: kept so the official checkpoint loads strictly, never run.
    """

    def __init__(self, *, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.backbone = ResNet50()
        self.fpn = FPN()
        self.protonet = ProtoNet()
        self.head = PredictionHead(num_classes=num_classes)
        self.semantic_seg = nn.Conv2d(FPN_CHANNELS, num_classes - 1, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.fpn(*self.backbone(image))
        return (*features, self.protonet(features[0]))

    def whole(self) -> WholeNetwork:
        """The network with its prediction head inside, as one graph (not the port's cut)."""
        return WholeNetwork(self)

    def predict(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The whole network in PyTorch (the reference path): graph outputs plus head outputs."""
        *features, prototypes = self(image)
        loc, conf, coef = self.head(features)
        return {"loc": loc, "conf": conf, "coef": coef, "prototypes": prototypes}


class WholeNetwork(nn.Module):
    """YolactEdge with the prediction head in the graph: image -> (loc, conf logits, coefs,
    prototypes NHWC), the outputs of :meth:`YolactEdge.predict`. The port cuts the graph
    before the head and runs the head on the host; this is the graph without that cut, to
    measure what the cut costs."""

    def __init__(self, model: YolactEdge) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        found = self.model.predict(image)
        return found["loc"], found["conf"], found["coef"], found["prototypes"]
