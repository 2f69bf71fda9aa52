"""SiamMask's exported graphs: the port's names and shapes, ONNX Runtime against PyTorch on
inputs other than the export's, and the split giving what the port's mask graph gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoobook.backends.onnxruntime_backend import OnnxRuntimeSession
from zoobook.export import onnx_io
from zoobook.models.siammask import GRAPHS
from zoobook.models.siammask.checkpoint import build
from zoobook.models.siammask.export import example_inputs, export_graph, graph_module


@pytest.fixture(scope="module")
def model():
    return build(None)[0]


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("siammask")
    return {name: export_graph(model, name, folder / f"{name}.onnx")["path"] for name in GRAPHS}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_graph_io_and_parity(model, exported, name):
    spec = GRAPHS[name]
    assert onnx_io(exported[name]) == {"inputs": {k: list(v) for k, v in spec.inputs.items()},
                                       "outputs": {k: list(v) for k, v in spec.outputs.items()}}
    inputs = example_inputs(name, seed=1)  # not the export's example
    with torch.inference_mode():
        reference = graph_module(model, name)(*inputs)
    reference = (reference,) if isinstance(reference, torch.Tensor) else reference
    got = OnnxRuntimeSession(exported[name]).run({k: v.numpy() for k, v in zip(spec.inputs, inputs)})
    for output, ref in zip(spec.outputs, reference):
        ref = ref.numpy()
        tolerance = 5e-3 if output == "corr_feature" else 1e-3
        np.testing.assert_allclose(got[output], ref, atol=tolerance * max(1.0, np.abs(ref).max() / 10), rtol=0,
                                   err_msg=f"{name}.{output}")


def test_split_equals_the_ports_mask_graph(exported):
    template, search = example_inputs("mask", seed=2)
    port = OnnxRuntimeSession(exported["mask"]).run({"template": template.numpy(), "search": search.numpy()})
    kernels = OnnxRuntimeSession(exported["template"]).run({"template": template.numpy()})
    split = OnnxRuntimeSession(exported["search"]).run({"search": search.numpy(), **kernels})
    for name in GRAPHS["mask"].outputs:
        np.testing.assert_allclose(split[name], port[name], atol=1e-3, rtol=1e-4, err_msg=name)
