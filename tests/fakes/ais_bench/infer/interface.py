"""FAKE ais_bench.infer.interface (tests only): InferSession over a fake .om, run on the CPU
with ONNX Runtime. Follows the documented API: get_inputs/get_outputs, infer(feeds, mode),
summary().exec_time_list, reset_summaryinfo(), free_resource()."""

import json
import time
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort


class InferSession:
    def __init__(self, device_id, model_path, acl_json_path=None, debug=False, loop=1):
        with open(model_path, "rb") as handle:
            header, onnx_bytes = handle.read().split(b"\n", 1)
        self.header = json.loads(header)
        if not self.header.get("fake_om"):
            raise RuntimeError(f"{model_path}: not a fake .om")
        self.device_id = device_id
        self._session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self._times = []
        self.freed = False

    def get_inputs(self):
        return [SimpleNamespace(name=i.name, shape=self.header["input_shapes"][i.name], datatype="FLOAT32")
                for i in self._session.get_inputs()]

    def get_outputs(self):
        return [SimpleNamespace(name=o.name, shape=o.shape, datatype="FLOAT32") for o in self._session.get_outputs()]

    def infer(self, feeds, mode="static", custom_sizes=None, out_array=True):
        if self.freed:
            raise RuntimeError("session already freed")
        if not isinstance(feeds, list):
            raise TypeError("feeds must be a list of numpy arrays in input order")
        inputs = self._session.get_inputs()
        for tensor, spec in zip(feeds, inputs):
            expected = self.header["input_shapes"][spec.name]
            if mode == "static" and list(tensor.shape) != expected:
                raise ValueError(f"input {spec.name}: static shape {expected}, got {list(tensor.shape)}")
        start = time.perf_counter()
        outputs = self._session.run(None, {spec.name: np.asarray(t) for spec, t in zip(inputs, feeds)})
        self._times.append((time.perf_counter() - start) * 1000.0)
        return outputs

    def summary(self):
        return SimpleNamespace(exec_time_list=list(self._times))

    def reset_summaryinfo(self):
        self._times.clear()

    def free_resource(self):
        self.freed = True
