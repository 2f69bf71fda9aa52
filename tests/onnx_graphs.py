"""Tiny hand-built ONNX graphs for the fp16 emulation and locator tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F32 = np.float32


def make_model(nodes, inputs, outputs, initializers=()):
    """A checked opset-17 model of ``nodes``; ``inputs``/``outputs`` are (name, shape) pairs of
    float tensors, ``initializers`` (name, values) pairs stored as float32."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                              initializer=[numpy_helper.from_array(np.asarray(v, F32), n) for n, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model
