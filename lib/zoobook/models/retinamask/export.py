"""The port's RetinaMask graph, its export, and the Cast rewrite ATC needs.

:class:`PortGraph` computes what the Ascend port's ``.om`` computes (batch 1, no NMS):
sigmoid scores of all anchors and classes, **one global top-k** (1000) sorted by score,
label = index mod 80 + 1 (int32), the chosen anchors' boxes decoded and clamped to
[0, input size], and the mask head on all k boxes (pooled on every level, the right one
kept, as the port's static pooler). Only the chosen anchors are decoded (the port decodes
all 338,454 and gathers; the values are the same).

:func:`cast_roi_inputs_to_fp16` is the port's ``cast_onnx.py`` done by pattern instead of by
node names: ATC typed the two inputs of the Concat that builds the RoIAlign RoIs
differently, so each input of that Concat gets a ``Cast`` to float16 (with no such Concat,
the RoIs input itself). Only for the Ascend backend: ONNX ``RoiAlign`` needs features and
RoIs of one type, so ONNX Runtime runs the uncast graph.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from zoobook.export import export_onnx
from zoobook.models.retinamask import GRAPH
from zoobook.models.retinamask.network import NUM_ANCHORS, NUM_CLASSES, RetinaMask, decode_boxes

INPUT_SIZE, TOP_K = 1344, 1000


class PortGraph(nn.Module):
    def __init__(self, model: RetinaMask, *, top_k: int = TOP_K) -> None:
        super().__init__()
        self.model, self.top_k = model, top_k

    def forward(self, image: torch.Tensor):
        features, logits, deltas = self.model(image)
        scores = torch.cat([c[0].view(NUM_ANCHORS, NUM_CLASSES, *c.shape[-2:]).permute(2, 3, 0, 1).reshape(-1, NUM_CLASSES)
                            for c in logits]).sigmoid()
        regression = torch.cat([d[0].view(NUM_ANCHORS, 4, *d.shape[-2:]).permute(2, 3, 0, 1).reshape(-1, 4)
                                for d in deltas])
        anchors = torch.cat(self.model.anchors(features))
        top_scores, top_index = scores.flatten().topk(self.top_k, sorted=True)
        anchor = torch.div(top_index, NUM_CLASSES, rounding_mode="floor")
        labels = (top_index % NUM_CLASSES + 1).to(torch.int32)
        boxes = decode_boxes(regression[anchor], anchors[anchor]).clamp(0, image.shape[-1])
        # the port's static pooler in the graph (every box on every level); run eagerly, each box
        # is pooled on its own level only: the same values for a quarter of the RoIAlign work
        masks = self.model.mask_probabilities(features, boxes, labels, static=torch.onnx.is_in_onnx_export())
        return boxes[None], labels[None], top_scores[None], masks[None]


def graph_shapes(size: int = INPUT_SIZE, top_k: int = TOP_K) -> dict[str, dict[str, list[int]]]:
    """The graph's I/O shapes; the port's are 1344 and 1000 (``GRAPH``)."""
    return {"inputs": {"image": [1, 3, size, size]},
            "outputs": {"boxes": [1, top_k, 4], "labels": [1, top_k], "scores": [1, top_k],
                        "masks": [1, top_k, 1, 28, 28]}}


def export_port_graph(model: RetinaMask, path: str | Path, *, size: int = INPUT_SIZE, top_k: int = TOP_K,
                      opset: int = 11) -> dict:
    """Export :class:`PortGraph` at a static ``size`` x ``size`` input with the port's names."""
    example = torch.zeros(1, 3, size, size)
    return export_onnx(PortGraph(model, top_k=top_k).eval(), (example,), path, input_names=list(GRAPH.inputs),
                       output_names=list(GRAPH.outputs), opset=opset, dynamic_batch=False)


def cast_roi_inputs_to_fp16(source: str | Path, target: str | Path) -> dict:
    """Write a copy of ``source`` where the RoIs of every ``RoiAlign`` reach it through
    float16: each input of the Concat that builds them gets a ``Cast`` (to=FLOAT16), as the
    port's ``cast_onnx.py`` does; without such a Concat, the RoIs input does. Returns where
    the casts went. The rewritten graph passes ``onnx.checker``."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(source))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    inserted, rewired = [], []
    new_nodes = []
    for node in graph.node:
        if node.op_type == "RoiAlign":
            rois = node.input[1]
            maker = producers.get(rois)
            target_node, slots = (maker, range(len(maker.input))) if maker is not None and maker.op_type == "Concat" \
                else (node, [1])
            for slot in slots:
                name = target_node.input[slot]
                cast_out = f"{name}_fp16_for_{target_node.name or target_node.op_type}"
                new_nodes.append(helper.make_node("Cast", [name], [cast_out], to=TensorProto.FLOAT16,
                                                  name=f"Cast_fp16_{len(inserted)}"))
                target_node.input[slot] = cast_out
                inserted.append(cast_out)
            rewired.append(target_node.name or target_node.op_type)
    if not inserted:
        raise ValueError(f"{source}: no RoiAlign node found; nothing to cast")
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(_topological(new_nodes + nodes))
    onnx.save(model, str(target))
    return {"casts": inserted, "rewired": rewired}


def _topological(nodes):
    """Order nodes so each comes after the producers of its inputs."""
    produced_by = {out: i for i, node in enumerate(nodes) for out in node.output}
    done, order = set(), []

    def visit(i):
        if i in done:
            return
        done.add(i)
        for name in nodes[i].input:
            if name in produced_by:
                visit(produced_by[name])
        order.append(nodes[i])

    import sys

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(nodes)))
    for i in range(len(nodes)):
        visit(i)
    return order
