"""The Ascend backend's contract, driven by the FAKE atc, npu-smi and ais_bench of
tests/fakes (no NPU is involved; nothing here is an NPU measurement)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zoobook.backends import backend_options, get_backend
from zoobook.backends.ascend import AscendBackend, AscendError, atc_command


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from zoobook.export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    export_onnx(module, (torch.randn(1, 3, 8, 8),), path, input_names=["image"], output_names=["out"], opset=13)
    return path, module


def test_auto_picks_onnxruntime_without_ais_bench():
    assert get_backend("auto").name == "onnxruntime"


def test_auto_picks_ascend_where_ais_bench_imports_and_a_device_answers(fake_ascend):
    assert AscendBackend.available()
    assert get_backend("auto").name == "ascend"
    assert backend_options("auto", soc_version="Ascend310P3", precision_mode="force_fp16", device_id=1,
                           ort_optimization="all", threads=2) == {
        "soc_version": "Ascend310P3", "precision_mode": "force_fp16", "device_id": 1}  # only what Ascend takes
    assert backend_options("onnxruntime", ort_optimization="all", threads=None, device_id=1) == {
        "compile_optimization": "all"}


def test_atc_command_line_takes_every_setting_as_a_parameter(tmp_path):
    command = atc_command(tmp_path / "m.onnx", tmp_path / "m_bs4", input_shapes={"image": [4, 3, 550, 550]},
                          soc_version="Ascend310P3", precision_mode="allow_fp32_to_fp16")
    assert command[:2] == ["atc", "--framework=5"]
    assert "--input_shape=image:4,3,550,550" in command and "--soc_version=Ascend310P3" in command
    assert "--precision_mode=allow_fp32_to_fp16" in command
    with pytest.raises(ValueError, match="unknown precision_mode"):
        atc_command(tmp_path / "m.onnx", tmp_path / "m", input_shapes={}, soc_version="x", precision_mode="fp8")
    with pytest.raises(ValueError, match="2 to 100 profiles"):
        atc_command(tmp_path / "m.onnx", tmp_path / "m", input_shapes={}, soc_version="x", dynamic_batch_sizes=[1])


def test_compile_open_run_and_device_time_with_fakes(fake_ascend, tiny_onnx, tmp_path):
    path, module = tiny_onnx
    backend = AscendBackend(precision_mode="must_keep_origin_dtype")  # soc_version from (fake) npu-smi
    om = backend.compile(path, tmp_path / "om", input_shapes={"image": [2, 3, 8, 8]}, name="tiny_bs2")
    assert om.name == "tiny_bs2.om"
    logged = json.loads(fake_ascend.read_text().splitlines()[-1])
    assert "--soc_version=Ascend310P3" in logged and "--precision_mode=must_keep_origin_dtype" in logged
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with backend.open(om) as session:
        assert session.input_names == ["image"] and session.output_names == ["out"]
        out = session.run({"image": x})["out"]
        times = session.device_times_ms()
        assert len(times) == 1 and session.device_times_ms() == []  # reset after reading
        with pytest.raises(ValueError, match="static shape"):
            session.run({"image": x[:1]})
    with torch.no_grad():
        np.testing.assert_allclose(out, module(torch.from_numpy(x)).numpy(), atol=1e-5)
    assert backend.device()["kind"] == "npu"


def test_atc_failure_is_reported(fake_ascend, tmp_path):
    backend = AscendBackend(soc_version="Ascend310P3")
    with pytest.raises(AscendError, match="ATC failed"):
        backend.compile(tmp_path / "missing.onnx", tmp_path, input_shapes={"image": [1, 3, 8, 8]})


def test_missing_soc_version_without_npu_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AscendError, match="soc_version is not set"):
        AscendBackend().compile(tmp_path / "m.onnx", tmp_path, input_shapes={"image": [1]})
