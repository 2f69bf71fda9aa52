"""PyTorch eager: the reference. Its "artifact" is the ``nn.Module`` itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from zoobook.backends.base import Backend, Session


class TorchSession(Session):
    backend = "torch"

    def __init__(self, module: nn.Module, input_names: list[str], output_names: list[str]) -> None:
        self.module = module.eval()
        self.input_names, self.output_names = list(input_names), list(output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outputs = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names))
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return {name: out.numpy() for name, out in zip(self.output_names, outputs)}


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)

    def compile(self, onnx_path: str | Path, out_dir: str | Path, *, input_shapes, name=None) -> Path:
        raise NotImplementedError("the torch backend runs the nn.Module eagerly; there is nothing to compile")

    def open(self, artifact: tuple[nn.Module, list[str], list[str]]) -> TorchSession:
        module, inputs, outputs = artifact
        return TorchSession(module, inputs, outputs)
