"""03-convert's locator step and ``zoobook locate`` on a tiny graph with a planted fp16 overflow:
the first divergence is the operator that overflows, and keeping its type in fp32 recovers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from zoobook.cli import main
from zoobook.stages import steps


def _graph(path: Path) -> Path:
    """x -> Mul(x, 3000) -> Mul(., 1e-3) -> Relu -> y: with x at 30 the first product (90000)
    overflows fp16 (largest 65504) and everything after it is inf; kept in fp32, both products
    are exact enough and the Relu sees 90."""
    nodes = [helper.make_node("Mul", ["x", "big"], ["scaled"], name="scale_up"),
             helper.make_node("Mul", ["scaled", "small"], ["down"], name="scale_down"),
             helper.make_node("Relu", ["down"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.array(3000, np.float32), "big"),
                               numpy_helper.from_array(np.array(1e-3, np.float32), "small")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def _run(tmp_path: Path):
    source = _graph(tmp_path / "tiny.onnx")
    feeds = {"x": np.array([[10.0, 20.0, 30.0, 1.0]], np.float32)}
    port = SimpleNamespace(feeds=lambda run, graph, bs: feeds, backend_defaults={})
    return SimpleNamespace(port=port, spec=SimpleNamespace(title="Tiny"), graph_name=lambda g: g or "tiny",
                           onnx=lambda graph, bs: source, path=lambda rel: tmp_path / "artifacts" / rel)


def test_locate_finds_the_overflow_and_suggests_keeping_its_type_in_fp32(tmp_path):
    result = steps.locate(_run(tmp_path), "onnxruntime-fp16")
    assert result["first"]["node"] == "scale_up" and result["first"]["nonfinite"] == 1
    assert [r["node"] for r in result["rows"] if not r["passed"]] == ["scale_up", "scale_down", "relu"]
    assert result["suggested_keep_dtype"] == ["Mul"] and result["recovered"]
    assert [(r["keep_dtype"], r["failing"]) for r in result["rounds"]] == [([], 3), (["Mul"], 0)]
    shown = steps.locate_rows(result)
    assert [r["node"] for r in shown if r["first"]] == ["scale_up"]


def test_the_rounds_compare_against_one_fp32_run(tmp_path, monkeypatch):
    from zoobook import locate as locator

    dumps = []
    real = locator.dump_onnx
    monkeypatch.setattr(locator, "dump_onnx", lambda *a, **k: dumps.append(k.get("transform")) or real(*a, **k))
    result = steps.locate(_run(tmp_path), "onnxruntime-fp16")
    assert len(result["rounds"]) == 2 and len(dumps) == 3  # the fp32 run once, the emulation per round
    assert sum(transform is None for transform in dumps) == 1


def test_locate_without_rounds_suggests_nothing_and_starts_from_keep_dtype(tmp_path):
    result = steps.locate(_run(tmp_path), "onnxruntime-fp16", suggest=0)
    assert result["suggested_keep_dtype"] is None and len(result["rounds"]) == 1
    kept = steps.locate(_run(tmp_path), "onnxruntime-fp16", backend_options={"keep_dtype": "Mul"})
    assert kept["first"] is None and kept["suggested_keep_dtype"] == ["Mul"]


def test_locate_needs_a_dump_for_a_device(tmp_path):
    with pytest.raises(ValueError, match="only through an operator dump"):
        steps.locate(_run(tmp_path), "onnxruntime")


def test_cli_locate_writes_the_table_and_plot(tmp_path, monkeypatch, capsys):
    import zoobook.models

    monkeypatch.setattr(zoobook.models, "open_run", lambda model, profile: _run(tmp_path))
    assert main(["locate", "semask", "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "first divergence at #0 scale_up (Mul)" in text and "keep_dtype with the operators of type Mul" in text
    table = (tmp_path / "out" / "onnxruntime-fp16_tiny_bs1.csv").read_text().splitlines()
    assert table[0].startswith("index,node,op_type") and len(table) == 4
    assert (tmp_path / "out" / "onnxruntime-fp16_tiny_bs1.png").stat().st_size > 1000


def _cancelling_graph(path: Path) -> Path:
    """x -> Add(x, 60000) -> Sub(., 60000) -> Relu -> y. In fp16 the sum is stored in steps of 32
    (an error of 2e-4, which passes) and the difference loses x (which fails). Keeping Sub in fp32
    does not help: it still reads the rounded sum; keeping Add, its producer, too does."""
    nodes = [helper.make_node("Add", ["x", "offset"], ["shifted"], name="shift"),
             helper.make_node("Sub", ["shifted", "offset"], ["back"], name="cancel"),
             helper.make_node("Relu", ["back"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "cancel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.array(60000, np.float32), "offset")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_where_a_kept_operator_still_fails_the_next_round_keeps_its_producers(tmp_path):
    run = _run(tmp_path)
    source = _cancelling_graph(tmp_path / "cancel.onnx")
    run.onnx = lambda graph, bs: source
    result = steps.locate(run, "onnxruntime-fp16")
    assert result["first"]["node"] == "cancel"
    assert [(r["keep_dtype"], r["first_divergence"]) for r in result["rounds"]] == \
        [([], "cancel"), (["Sub"], "cancel"), (["Sub", "Add"], None)]
    assert result["suggested_keep_dtype"] == ["Sub", "Add"] and result["recovered"]


def test_located_metrics_and_tables_name_the_graph_where_there_are_several(tmp_path):
    one = steps.locate(_run(tmp_path), "onnxruntime-fp16")
    two = {**one, "graph": "other", "first": None, "suggested_keep_dtype": [], "recovered": True}
    assert steps.located_metrics([one]) == {"located": ["tiny"], "first_divergence": "scale_up",
                                            "suggested_keep_dtype": ["Mul"]}
    metrics = steps.located_metrics([one, two])
    assert metrics["first_divergence"] == "tiny: scale_up" and metrics["suggested_keep_dtype"] == ["Mul"]
    assert steps.located_metrics([{**one, "recovered": False}])["suggested_keep_dtype"] is None
    tables = steps.located_tables([one, two])
    assert {r["graph"] for r in tables["locate"]} == {"tiny", "other"}
    assert [r["graph"] for r in tables["locate_rounds"]] == ["tiny", "tiny", "other", "other"]
    assert "graph" not in steps.located_tables([one])["locate"][0]


def test_failing_graphs_reads_the_graph_column_of_the_parity_rows():
    rows = [{"graph": "template", "passed": True}, {"graph": "search, batch 1", "passed": False},
            {"graph": "mask", "passed": False}]
    assert steps.failing_graphs(rows, ["template", "search", "mask", "refine"]) == ["search", "mask"]
    assert steps.failing_graphs([{"output": "y", "passed": False}], ["only"]) == ["only"]
    assert steps.failing_graphs([{"output": "y", "passed": True}], ["only"]) == []


def test_graphs_to_locate_follows_the_locate_parameter():
    run = SimpleNamespace(exported={"graphs": {"template": "t.onnx", "search": "s.onnx"}})
    failed = [{"graph": "template", "passed": True}, {"graph": "search", "passed": False}]
    held = [{"graph": "template", "passed": True}, {"graph": "search", "passed": True}]
    assert steps.graphs_to_locate(run, failed, None) == ["search"]  # only where the parity failed
    assert steps.graphs_to_locate(run, held, None) == []
    assert steps.graphs_to_locate(run, None, None) == []  # no emulation compiled, nothing to go by
    assert steps.graphs_to_locate(run, held, True) is None and steps.graphs_to_locate(run, None, True) is None
    assert steps.graphs_to_locate(run, failed, False) == []
