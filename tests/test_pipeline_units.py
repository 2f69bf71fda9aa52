"""Tensor comparison, the timing loop, records and the environment files."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml

from zoobook.bench import Budget, benchmark, latency_stats
from zoobook.compare import compare_outputs, compare_tensors
from zoobook.atomic import write_json_atomic
from zoobook.records import StageRecorder, read_record

ROOT = Path(__file__).parents[1]


def test_compare_identical_and_perturbed():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 8)).astype(np.float32)
    same = compare_tensors(a, a.copy(), atol=0.0)
    assert same["cosine"] == pytest.approx(1.0) and same["max_abs"] == 0 and same["passed"]
    noisy = compare_tensors(a, a + 0.3 * rng.standard_normal(a.shape), atol=1e-3)
    assert not noisy["passed"] and not noisy["within_tolerance"]
    assert noisy["rel_euclidean"] > 0.05  # msit threshold fails too
    flipped = compare_tensors(a, -a)
    assert flipped["cosine"] == pytest.approx(-1.0) and not flipped["passed"]


def test_compare_outputs_names_and_shapes():
    rows = compare_outputs({"x": np.ones(3)}, {"x": np.ones(3), "y": np.zeros(1)})
    assert [r["output"] for r in rows] == ["x"]
    with pytest.raises(KeyError, match="candidate lacks outputs: \\['x'\\]"):
        compare_outputs({"x": np.ones(3)}, {})
    with pytest.raises(ValueError, match="shape mismatch"):
        compare_tensors(np.ones(3), np.ones(4))


def test_latency_stats():
    stats = latency_stats([10.0, 20.0, 30.0, 40.0], batch_size=4)
    assert stats["mean_ms"] == 25.0 and stats["p50_ms"] == 25.0
    assert stats["throughput"] == pytest.approx(4 * 1000 / 25.0)
    assert stats["p90_ms"] == pytest.approx(37.0)


def test_benchmark_interleaves_and_excludes_warmup():
    calls = []
    rows = benchmark({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, batch_size=2, warmup=1,
                     budget=Budget(seconds=0, min_calls=3), progress=False,
                     device_times={"a": lambda: [1.0, 2.0, 3.0], "b": lambda: None})
    assert calls == ["a", "b"] * 4
    assert [r["calls"] for r in rows] == [3, 3]
    assert rows[0]["device_mean_ms"] == 2.0 and "device_mean_ms" not in rows[1]


def test_atomic_json_leaves_no_temporaries(tmp_path):
    target = write_json_atomic(tmp_path / "r.json", {"x": np.float32(1.5), "a": np.arange(2)})
    assert json.loads(target.read_text()) == {"x": 1.5, "a": [0, 1]}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_stage_record_fields():
    rec = StageRecorder("yolact_edge", "99-test", "smoke", "onnxruntime", {"k": 1})
    rec.provenance["weights"] = {"kind": "recipe"}
    rec.metrics["m"] = np.float64(0.5)
    rec.finish()
    record = read_record("smoke", "yolact_edge", "99-test")
    for key in ("model", "stage", "profile", "backend", "device", "status", "duration_s", "parameters",
                "versions", "git_commit", "provenance", "metrics", "machine"):
        assert key in record
    assert record["status"] == "ok" and record["metrics"]["m"] == 0.5 and record["versions"]["torch"].startswith("2.13.0")


def _locked() -> dict[str, dict]:
    """uv.lock -> {canonical name: its package entry}."""
    from packaging.utils import canonicalize_name

    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    assert lock["version"] == 1
    return {canonicalize_name(p["name"]): p for p in lock["package"]}


def test_lock_pins_every_declared_dependency_with_hashes():
    """uv.lock holds every dependency pyproject.toml declares (extras included), at a version its
    range allows; every locked file has an address and a sha256 (uv checks them on install),
    except torch's CPU wheel, which uv takes by path from the local wheel folder."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    locked = _locked()
    for requirement in map(Requirement, declared):
        version = locked[canonicalize_name(requirement.name)]["version"]
        assert requirement.specifier.contains(version, prereleases=True), f"uv.lock: {requirement} but {version}"
    unhashed = []
    for name, package in locked.items():
        if package["source"].get("editable") == ".":
            continue                                    # the project itself
        files = package.get("wheels", []) + ([package["sdist"]] if "sdist" in package else [])
        if name == "torch":
            assert package["version"] == "2.13.0+cpu" and package["source"] == {"registry": "/opt/wheels"}
            assert [Path(f["path"]).name for f in files] == ["torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"]
            continue
        if not files or not all(re.fullmatch(r"sha256:[0-9a-f]{64}", f.get("hash", "")) and f.get("url")
                                for f in files):
            unhashed.append(name)
    assert not unhashed


def test_environment_yml_and_makefile_install_the_lock():
    """Every install goes through uv.lock as it is: `uv sync --frozen`, nothing else resolved."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert [d.split("=")[0].rstrip("<>") for d in env["dependencies"]] == ["python", "uv"]
    makefile = (ROOT / "Makefile").read_text()
    assert "sync --frozen" in makefile and "pip install -r" not in makefile
    assert not [p.name for p in ROOT.iterdir() if p.name.startswith(("requirements", "pylock"))], "one lock: uv.lock"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]
    constraints = [line for line in (ROOT / "constraints.txt").read_text().splitlines()
                   if line and not line.startswith("#")]
    assert pyproject["constraint-dependencies"] == constraints


def test_constraints_pin_cpu_torch():
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in lines


def test_graph_flops_counts_convolutions(tmp_path):
    import torch

    from zoobook.export import export_onnx, graph_flops

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1, stride=2))
    path = tmp_path / "net.onnx"
    export_onnx(net, (torch.zeros(1, 3, 16, 16),), path, input_names=["x"], output_names=["y"], opset=13)
    per_image = 2 * (8 * 16 * 16 * 3 * 3 * 3 + 4 * 8 * 8 * 8)
    assert graph_flops(path) == per_image
    assert graph_flops(path, batch_size=4) == 4 * per_image


def test_graph_flops_counts_matmuls_of_activations(tmp_path):
    """Attention's q k^T and (q k^T) v have no weight operand; a Linear on tokens is a MatMul
    whose output rows are tokens, not the batch. All count their full M x N x K."""
    import torch

    from zoobook.export import export_onnx, graph_flops

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(8, 24)

        def forward(self, x):  # x [2, 5, 8]: 2 windows of 5 tokens
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return (q @ k.transpose(-2, -1)).softmax(-1) @ v

    path = tmp_path / "attention.onnx"
    export_onnx(Attention(), (torch.zeros(2, 5, 8),), path, input_names=["x"], output_names=["y"], opset=13,
                dynamic_batch=False)
    macs = 2 * 5 * 24 * 8 + 2 * 5 * 5 * 8 + 2 * 5 * 8 * 5  # qkv, q k^T, attention x v
    assert graph_flops(path) == 2 * macs


def _hold(megabytes: int) -> int:
    """Touch ``megabytes`` of memory in the isolated process, then return."""
    import numpy as np

    return int(np.ones(megabytes * 2**17).sum())  # 8 bytes per float64


def _fail() -> None:
    raise ValueError("bad input in the child")


def test_run_isolated_returns_the_result_and_that_process_peak_memory():
    from zoobook.bench import run_isolated

    small, small_peak = run_isolated(_hold, 1)
    big, big_peak = run_isolated(_hold, 300)
    assert (small, big) == (2**17, 300 * 2**17)
    assert big_peak - small_peak > 250  # its own 300 MB, not the parent's memory


def test_run_isolated_reports_a_failing_process():
    from zoobook.bench import IsolatedRunFailed, run_isolated

    with pytest.raises(IsolatedRunFailed, match="_fail.*exit status 1.*bad input in the child"):
        run_isolated(_fail)


def test_graph_flops_counts_every_item_of_a_non_batch_first_axis(tmp_path):
    """A mask head runs its convolutions on k RoIs stacked on the first axis of a batch-1
    graph: all k count (an earlier count took that axis for the batch and counted one)."""
    import torch

    from zoobook.export import export_onnx, graph_flops

    class PerRoi(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):  # [1, 3, 8, 8] -> 4 "RoIs" of 3 x 4 x 4
            return self.conv(x.reshape(4, 3, 4, 4))

    path = tmp_path / "rois.onnx"
    export_onnx(PerRoi(), (torch.zeros(1, 3, 8, 8),), path, input_names=["x"], output_names=["y"], opset=13,
                dynamic_batch=False)
    assert graph_flops(path) == 2 * 4 * (8 * 4 * 4) * (3 * 3 * 3)


def test_pin_batches_in_processes_gives_the_files_one_at_a_time_gives(tmp_path):
    """SeMask's static graphs: each batch pinned and simplified in a spawned process of its own
    writes the same file as pinning them one after another, its shape arithmetic folded."""
    import onnx
    from onnx import TensorProto, helper

    from zoobook.export import onnx_io, pin_batches

    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Reshape", ["r", "shape"], ["y"])], "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 4])])
    source = tmp_path / "dynamic.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), source)
    apart = pin_batches(source, {bs: tmp_path / f"apart_bs{bs}.onnx" for bs in (1, 4)}, processes=2)
    serial = pin_batches(source, {bs: tmp_path / f"serial_bs{bs}.onnx" for bs in (1, 4)}, processes=1)
    for bs in (1, 4):
        assert (tmp_path / f"apart_bs{bs}.onnx").read_bytes() == (tmp_path / f"serial_bs{bs}.onnx").read_bytes()
        assert onnx_io(tmp_path / f"apart_bs{bs}.onnx") == {"inputs": {"x": [bs, 3, 4]}, "outputs": {"y": [bs, 3, 4]}}
        assert apart[bs]["op_types"] == serial[bs]["op_types"] == ["Relu"]
