"""The at-a-glance matrix, agreement limits and the comparison of two runs, on records
written here (the smoke runs' shapes, with the values each test needs)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from zoobook.cli import main
from zoobook.models import MODELS, get_spec
from zoobook.report import RunFolder, compare_markdown, compare_table, fingerprint_changes, matrix_rows
from zoobook.compare import AgreementLimit, agreement_verdict, judge_agreement


def test_limits_judge_values_nan_and_absolute_values():
    limits = (AgreementLimit("recall", at_least=0.99), AgreementLimit("mIoU difference", at_most=0.1, absolute=True))
    rows = judge_agreement([{"measure": "recall of matches", "value": 0.995},
                            {"measure": "mIoU difference (points)", "value": -0.3},
                            {"measure": "recall again", "value": float("nan")},
                            {"measure": "unjudged", "value": 0.0}], limits)
    assert [r.get("passed") for r in rows] == [True, False, False, None]
    assert rows[0]["limit"] == "value >= 0.99" and rows[1]["limit"] == "|value| <= 0.1" and "limit" not in rows[3]
    assert agreement_verdict(rows) is False and agreement_verdict(rows[:1]) is True
    assert agreement_verdict([{"measure": "x", "value": 1}]) is None


@pytest.mark.parametrize("model", MODELS)
def test_every_model_declares_task_metrics_and_fp32_limits(model):
    spec = get_spec(model)
    assert spec.task_metrics and spec.agreement_limits["fp32"]


def _record(model: str, stage: str, **fields) -> dict:
    return {"model": model, "stage": stage, "profile": "t", "backend": "onnxruntime", "status": "ok",
            "metrics": {}, "tables": {}, "provenance": {"weights": {"kind": "recipe"}, "data": {"kind": "synthetic"}},
            "fingerprint": {"notebook": "n1", "parameters": {"profile": "t", "seconds": 2.0}, "library": "l1"},
            **fields}


def _write_run(folder: Path, records: list[dict]) -> Path:
    for r in records:
        path = folder / r["model"] / f"{r['stage']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    return folder


def _semask_run() -> list[dict]:
    agreement = judge_agreement([{"measure": "pixels where onnxruntime and torch give the same class", "value": 0.9995},
                                 {"measure": "the same, worst image", "value": 0.995},
                                 {"measure": "mIoU difference (points)", "value": 0.02}],
                                get_spec("semask").agreement_limits["fp32"])
    accuracy = [{"source": "measured", "candidate": "onnxruntime", "mIoU": 1.5},
                {"source": "measured", "candidate": "torch", "mIoU": 1.5},
                {"source": "published", "candidate": "Ascend 310P3", "mIoU": 76.54}]
    parity = [{"graph": "batch 1", "output": "output", "agreement": 0.9999, "passed": True}]
    graph = [{"candidate": c, "batch_size": 1, "calls": 10, "mean_ms": m, "std_ms": 2.0}
             for c, m in (("torch", 150.0), ("onnxruntime", 120.0))]
    pipeline = [{"backend": "onnxruntime", "loop": "sequential", "calls": 4, "mean_ms": 140.0, "throughput": 7.1}]
    deployment = [{"threads": 1, "host_ms": 30.0, "device_ms": 211.9, "overlapped_fps": 4.72, "bottleneck": "device"}]
    return [_record("semask", "01-data"),
            _record("semask", "02-export", metrics={"parity_passed": True}, tables={"parity": parity}),
            _record("semask", "03-convert", metrics={"parity_passed": True}, tables={"parity": copy.deepcopy(parity)}),
            _record("semask", "05-evaluate", tables={"accuracy": accuracy, "agreement": agreement}),
            _record("semask", "06-benchmark", tables={"graph": graph, "pipeline": pipeline, "deployment": deployment})]


def test_matrix_has_a_row_per_model_and_candidate_with_verdicts(tmp_path):
    run = RunFolder.open(_write_run(tmp_path / "t", _semask_run()))
    rows = matrix_rows(run)
    assert [r["model"] for r in rows] == [get_spec(m).title for m in MODELS for _ in range(1 if m != "semask" else 2)]
    reference, ort = [r for r in rows if r["model"] == get_spec("semask").title]
    assert reference["candidate"] == "torch (ref.)" and reference["agreement"] == "reference"
    assert ort["export parity"] == "pass" and ort["convert parity"] == "pass" and ort["agreement"] == "pass (3/3)"
    assert ort["task metric"] == "mIoU 1.5 (pub. 76.54)"
    assert ort["end to end"] == "7.1/s; bound 4.72/s (device)"
    assert ort["data"] == "[ok](semask/01-data.ipynb)" and ort["infer"] == "[**not run**](semask/04-infer.ipynb)"
    assert ort["train"] == "—" and ort["weights / data"] == "recipe / synthetic"
    yolact = next(r for r in rows if r["model"] == get_spec("yolact_edge").title)
    assert yolact["data"] == "[**not run**](yolact_edge/01-data.ipynb)"


def test_end_to_end_falls_back_to_the_breakdown_where_the_real_loops_did_not_run(tmp_path):
    records = _semask_run()
    tables = records[-1]["tables"]
    tables["pipeline"] = [{"backend": "onnxruntime", "loop": "sequential and pipelined", "calls": 0, "mean_ms": None,
                           "note": "not run"}]
    tables["host"] = [{"threads": 1, "host_ms": 30.0, "total_ms": 400.0}, {"threads": 2, "host_ms": 25.0,
                                                                          "total_ms": 250.0}]
    rows = [r for r in matrix_rows(RunFolder.open(_write_run(tmp_path / "t", records)))
            if r["model"] == get_spec("semask").title]
    assert rows[1]["end to end"] == "4/s; bound 4.72/s (device)"  # 1000 / 250 ms, the machine's threads
    assert rows[0]["end to end"] == "—"  # the reference went through no loop


def test_matrix_names_the_first_failing_agreement_measure(tmp_path):
    records = _semask_run()
    evaluate = records[3]
    evaluate["tables"]["agreement"][1].update(value=0.5, passed=False)
    records[2]["metrics"]["parity_passed"] = False
    ort = matrix_rows(RunFolder.open(_write_run(tmp_path / "t", records)))[-1]
    assert ort["agreement"] == "**FAIL** (2/3: the same, worst image)" and ort["convert parity"] == "**FAIL**"


def test_compare_flags_changes_beyond_tolerance_and_noise(tmp_path):
    a = _semask_run()
    b = copy.deepcopy(a)
    b[1]["tables"]["parity"][0].update(agreement=0.98, passed=False)                       # verdict flips
    b[3]["tables"]["accuracy"][0]["mIoU"] = 1.5 * (1 + 1e-5)                                # within tolerance
    b[3]["tables"]["accuracy"][1]["mIoU"] = 2.0                                             # beyond it
    b[4]["tables"]["graph"][0]["mean_ms"] = 152.0                                           # within 2 std
    b[4]["tables"]["graph"][1]["mean_ms"] = 130.0                                           # beyond 2 std
    b[4]["fingerprint"]["parameters"]["seconds"] = 5.0
    b[4]["fingerprint"]["library"] = "l2"
    page, flagged = compare_markdown(RunFolder.open(_write_run(tmp_path / "a", a), "before"),
                                     RunFolder.open(_write_run(tmp_path / "b", b), "after"))
    assert "# What changed: `before` → `after`" in page
    assert "**verdict changed**" in page and "**slower**" in page
    assert "library; parameters (seconds: 2.0 → 5.0)" in page
    # the flagged lines: the parity verdict (and its agreement figure), torch's mIoU, onnxruntime's latency
    assert flagged == 4
    lines = [line for line in page.splitlines() if line.startswith("|") and "**changed**" in line]
    assert len(lines) == 2 and any("candidate=torch" in line and "mIoU" in line for line in lines)


def test_compare_table_matches_repeated_rows_by_order_and_reports_missing_rows():
    a = [{"loss": 2.0}, {"loss": 1.0}]
    rows, flagged = compare_table("training", a, a[:1])
    assert flagged == 1 and rows[-1]["flag"] == "**only in A**"
    rows, flagged = compare_table("training", a, [dict(a[0]), {"loss": 1.5}])
    assert flagged == 1 and [r["flag"] for r in rows if r["column"] == "loss"] == ["", "**changed**"]


def test_fingerprint_changes_name_what_changed():
    a = {"notebook": "x", "reads": {"a.onnx": "1", "b.json": "2"}, "parameters": {"k": 1}}
    b = {"notebook": "x", "reads": {"a.onnx": "9", "b.json": "2"}, "parameters": {"k": 1, "j": True}}
    assert fingerprint_changes(a, b) == ["parameters (j: — → True)", "reads (a.onnx)"]
    assert fingerprint_changes(a, a) == []
    many = {"key": "k1", "reads": {f"inputs/{i}.bin": "1" for i in range(6)}}
    assert fingerprint_changes(many, {"key": "k2", "reads": {f"inputs/{i}.bin": "2" for i in range(6)}}) == [
        "reads (inputs/0.bin, inputs/1.bin, inputs/2.bin, inputs/3.bin and 2 more)"]


def test_cli_compare_writes_the_page_and_explains_a_bad_folder(tmp_path, capsys):
    folder = _write_run(tmp_path / "runs-before" / "t", _semask_run())
    out = tmp_path / "page.md"
    assert main(["compare", str(tmp_path / "runs-before"), str(folder), "--out", str(out)]) == 0
    assert out.read_text().startswith("# What changed") and "0 difference(s) flagged" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "nowhere"), str(folder)]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_matrix_has_a_row_for_the_fp16_emulation_where_03_convert_checked_it(tmp_path):
    records = _semask_run()
    convert = records[2]
    convert["tables"]["parity_fp16"] = [{"graph": "batch 1", "output": "output", "agreement": 0.97, "passed": False}]
    convert["metrics"]["fp16_parity_passed"] = False
    rows = [r for r in matrix_rows(RunFolder.open(_write_run(tmp_path / "t", records)))
            if r["model"] == get_spec("semask").title]
    assert [r["candidate"] for r in rows] == ["torch (ref.)", "onnxruntime", "onnxruntime-fp16"]
    fp16 = rows[-1]
    assert fp16["convert parity"] == "**FAIL**" and fp16["agreement"] == "—" and rows[1]["convert parity"] == "pass"


def test_matrix_shows_the_fp16_emulations_agreement_and_task_metric_from_05_evaluate(tmp_path):
    records = _semask_run()
    records[2]["tables"]["parity_fp16"] = [{"output": "output", "agreement": 0.999, "passed": True}]
    records[2]["metrics"]["fp16_parity_passed"] = True
    evaluate = next(r for r in records if r["stage"] == "05-evaluate")
    evaluate["tables"]["agreement_fp16"] = [
        {"measure": "pixels where onnxruntime-fp16 and torch give the same class", "value": 0.995, "passed": True},
        {"measure": "mIoU difference (points)", "value": 0.9, "passed": False}]
    measured = next(r for r in evaluate["tables"]["accuracy"] if r.get("candidate") == "onnxruntime")
    evaluate["tables"]["accuracy"].append({**measured, "candidate": "onnxruntime-fp16", "mIoU": 12.5})
    rows = [r for r in matrix_rows(RunFolder.open(_write_run(tmp_path / "t", records)))
            if r["model"] == get_spec("semask").title]
    fp16 = next(r for r in rows if r["candidate"] == "onnxruntime-fp16")
    assert fp16["convert parity"] == "pass"
    assert fp16["agreement"] == "**FAIL** (1/2: mIoU difference (points))"
    assert fp16["task metric"].startswith("mIoU 12.5")
    assert next(r for r in rows if r["candidate"] == "onnxruntime")["agreement"] != fp16["agreement"]


def test_compare_keys_rows_by_names_not_by_measured_columns_and_shows_rates_unjudged():
    host_a = [{"threads": 1, "graph": 471.7, "host_ms": 10.0}, {"threads": 2, "graph": 480.2, "host_ms": 9.0}]
    host_b = [{"threads": 1, "graph": 471.1, "host_ms": 10.5}, {"threads": 2, "graph": 465.8, "host_ms": 9.1}]
    rows, flagged = compare_table("host", host_a, host_b)
    assert flagged == 0 and [r["row"] for r in rows] == ["threads=1", "threads=2"]
    rows, flagged = compare_table("training", [{"epoch": 1, "loss": 2.0, "samples_per_s": 3.0}],
                                  [{"epoch": 1, "loss": 2.0, "samples_per_s": 3.2}])
    assert flagged == 0 and [r["difference"] for r in rows if r["column"] == "samples_per_s"] == ["+6.7 %"]
