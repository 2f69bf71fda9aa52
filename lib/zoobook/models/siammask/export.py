"""Export SiamMask's graphs: the port's "mask" and "refine", and the template-once split
("template" once per sequence, "search" per frame). Batch 1, static shapes, as the port."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from zoobook.export import export_onnx
from zoobook.models.siammask import GRAPHS
from zoobook.models.siammask.network import SearchGraph, SiamMask, TemplateGraph


def graph_module(model: SiamMask, name: str) -> nn.Module:
    return {"mask": model, "refine": model.refine, "template": TemplateGraph(model), "search": SearchGraph(model)}[name]


def example_inputs(name: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the graph's shapes (crops hold 0..255, features are O(1))."""
    rng = np.random.RandomState(seed)
    inputs = []
    for input_name, shape in GRAPHS[name].inputs.items():
        scale = 255.0 if input_name in ("template", "search") else 1.0
        inputs.append(torch.from_numpy((rng.random_sample(shape) * scale).astype(np.float32)))
    return tuple(inputs)


def export_graph(model: SiamMask, name: str, path: str | Path, *, opset: int = 11) -> dict:
    """Export graph ``name`` with the port's input and output names (static batch 1)."""
    spec = GRAPHS[name]
    return export_onnx(graph_module(model, name).eval(), example_inputs(name), path, input_names=list(spec.inputs),
                       output_names=list(spec.outputs), opset=opset, dynamic_batch=False)
