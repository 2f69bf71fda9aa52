"""The exported YolactEdge graph: the port's names and shapes, and ONNX Runtime parity with
PyTorch on an input other than the one used for export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoobook.backends.onnxruntime_backend import OnnxRuntimeSession
from zoobook.export import export_onnx, onnx_io
from zoobook.models.yolact_edge import GRAPH
from zoobook.models.yolact_edge import postprocess as post


@pytest.fixture(scope="module")
def exported(recipe_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "yolact_edge.onnx"
    example = torch.zeros(1, 3, 550, 550)  # export input; parity is checked on the golden image
    summary = export_onnx(recipe_model, (example,), path, input_names=list(GRAPH.inputs),
                          output_names=list(GRAPH.outputs), opset=11)
    return path, summary


def test_graph_io_is_the_ports(exported):
    path, summary = exported
    assert summary["simplified"] and summary["opset"] == 11
    assert onnx_io(path) == {"inputs": {"image": ["bs", 3, 550, 550]},
                             "outputs": {k: list(v) for k, v in GRAPH.outputs.items()}}


def test_onnxruntime_matches_pytorch_and_golden_detections(exported, golden_outputs, recipe_model, golden):
    x, reference = golden_outputs
    outputs = OnnxRuntimeSession(exported[0]).run({"image": x})
    for k, ref in enumerate(reference):
        got = outputs[f"output{k}"]
        assert np.all(np.abs(got - ref) <= 2e-3 + 1e-4 * np.abs(ref)), f"output{k}"
    result = post.postprocess(recipe_model.head, [outputs[f"output{k}"] for k in range(6)], [(427, 640)])[0]
    np.testing.assert_array_equal(np.sort(result.classes), np.sort(golden["pp_classes"]))
    np.testing.assert_allclose(np.sort(result.scores), np.sort(golden["pp_scores"]), atol=1e-4)  # as in the golden test


def test_dynamic_batch(exported, golden_outputs):
    x, reference = golden_outputs
    batch = np.concatenate([x, x[:, :, ::-1].copy()])
    outputs = OnnxRuntimeSession(exported[0]).run({"image": batch})
    assert outputs["output5"].shape == (2, 138, 138, 32)
    np.testing.assert_allclose(outputs["output0"][:1], reference[0], atol=2e-3, rtol=1e-4)


def test_opset_outside_atc_range_is_refused(recipe_model, tmp_path):
    with pytest.raises(ValueError, match="opset 18 is outside what ATC accepts"):
        export_onnx(recipe_model, (torch.zeros(1, 3, 550, 550),), tmp_path / "m.onnx", input_names=["image"],
                    output_names=["o"], opset=18)
