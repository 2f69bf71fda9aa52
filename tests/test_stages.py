"""The stage protocol, checked the same way for every model (as torchvision's model tests run
over its model list): a smoke run of every stage through the notebooks, the record tables
against the declared contract, the stage declarations against the files the run left, resume,
the FAKE Ascend toolchain, and a failure recorded while the other stages go on. Each model's
own tests (goldens, conventions) live in ``test_<model>*.py``."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import nbformat
import pytest

from zoobook.models import MODELS, get_port, get_spec, open_run
from zoobook.records import read_record
from zoobook.runner import default_kernel, notebook_path, run_model
from zoobook.stages import steps

from .conftest import assert_all_stages_ok, fake_npu_record, run_fake_npu, run_smoke

#: what the FAKE Ascend run cannot do for a model, and why
FAKE_NPU_LIMITS = {
    "retinamask": "the fake ais_bench runs an .om with ONNX Runtime, which refuses the fp16-cast graph's mixed-type "
                  "RoiAlign inputs (test_retinamask_stages checks that ATC receives the cast graph)",
}


@pytest.fixture(params=MODELS)
def model(request) -> str:
    return request.param


@pytest.fixture
def smoke(model) -> dict:
    return run_smoke(model)


def test_every_stage_runs_ok_on_smoke(model, smoke):
    assert_all_stages_ok(model, smoke)


def test_executed_notebooks_keep_their_outputs(model, smoke):
    for stage, result in smoke.items():
        executed = nbformat.read(result.notebook, as_version=4)
        assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code"), stage


def test_every_recorded_table_is_a_declared_section_and_keeps_its_contract(model, smoke):
    spec = get_spec(model)
    for stage in spec.stages:
        for table, rows in read_record("smoke", model, stage)["tables"].items():
            spec.section(stage, table).check(rows)


def test_the_fp16_emulation_is_checked_in_convert_and_judged_in_evaluate(model, smoke):
    """03-convert compares the fp16 emulation with the ONNX graph (and locates the graphs that
    fail), 04-infer runs it (SiamMask: 05-evaluate, in lock-step), 05-evaluate judges it against
    every fp16 limit of the model. Verdicts depend on the weights; that each was reached is
    checked here, the emulation's arithmetic in test_fp16 and the locator in test_locate*."""
    convert = read_record("smoke", model, "03-convert")
    assert convert["tables"]["parity_fp16"] and isinstance(convert["metrics"]["fp16_parity_passed"], bool)
    if not convert["metrics"]["fp16_parity_passed"]:
        assert convert["tables"]["locate"] and convert["tables"]["locate_rounds"], "parity failed: not located"
        assert "suggested_keep_dtype" in convert["metrics"]
    evaluate = read_record("smoke", model, "05-evaluate")
    rows = evaluate["tables"]["agreement_fp16"]
    for limit in get_spec(model).agreement_limits["fp16"]:
        judged = [r for r in rows if r["measure"].startswith(limit.measure)]
        assert judged and all(r["limit"] == limit.text and isinstance(r["passed"], bool) for r in judged), limit
    if model != "siammask":
        measured = [r for r in evaluate["tables"]["accuracy"] if r.get("source") == "measured"]
        assert any((r.get("candidate") or r.get("backend")) == "onnxruntime-fp16" for r in measured)
        assert read_record("smoke", model, "04-infer")["metrics"]["fp16"]["items"] > 0


@pytest.mark.parametrize("name", ["yolact_edge", "retinamask"])
def test_a_second_evaluation_reuses_the_reference_results_it_is_given(name, monkeypatch):
    """05-evaluate scores the fp16 emulation against PyTorch's results of its first evaluation
    (``known``), not by running PyTorch over the images again."""
    import importlib

    from zoobook.backends import FP16_EMULATION

    run_smoke(name)
    run = open_run(name, "smoke")
    extra = {"original": False} if name == "retinamask" else {}
    first = steps.evaluate(run, "onnxruntime", reference=True, **extra)
    port_module = importlib.import_module(f"zoobook.models.{name}.port")

    def no_reference_run(*args, **kwargs):
        raise AssertionError("the reference ran again")

    monkeypatch.setattr(port_module, "read_input", no_reference_run)  # only the reference's path reads it
    again = steps.evaluate(run, FP16_EMULATION, reference=True, known=first["results"], **extra)
    assert again["results"]["torch"] == first["results"]["torch"]
    with pytest.raises(ValueError, match="torch"):
        steps.evaluate(run, FP16_EMULATION, reference=True, known={"torch": first["results"]["torch"][:-1]}, **extra)
    with pytest.raises(AssertionError, match="ran again"):
        steps.evaluate(run, FP16_EMULATION, reference=True, **extra)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_stage_declarations_cover_what_the_run_left(model, smoke):
    """Every file under the run's artifacts was declared as written by some stage; every
    declared read is written by a declared upstream stage, and upstream stages come first."""
    port, spec = get_port(model), get_spec(model)
    backends = {read_record("smoke", model, stage)["backend"] for stage in spec.stages} | {"torch"}
    declared = {stage: port.stage_io(stage) for stage in spec.stages}
    writes = [p for io in declared.values() for b in backends for p in io.paths(b)["writes"]]
    folder = open_run(model, "smoke").folder
    undeclared = [f for f in _files(folder) if not any(fnmatch.fnmatch(f, p) for p in writes)
                  and not f.endswith("key.json")]  # a resume key lives beside the results it guards
    assert not undeclared, f"files no stage of {model} declares: {undeclared[:10]}"
    for stage, io in declared.items():
        assert all(spec.stages.index(up) < spec.stages.index(stage) for up in io.upstream), stage
        upstream_writes = {p for up in io.upstream for p in declared[up].writes}
        assert set(io.reads) <= upstream_writes, (stage, set(io.reads) - upstream_writes)


@pytest.mark.parametrize("model", [m for m in MODELS if not hasattr(get_port(m), "infer")])
def test_infer_resumes_only_on_the_same_inputs_and_model(model):
    run_smoke(model)
    run = open_run(model, "smoke")
    batch = get_spec(model).stage_parameters("smoke", "04-infer").get("batch_size", 1)
    first = steps.infer(run, "onnxruntime", batch_size=batch)
    assert first["computed"] == 0 and first["skipped"] == first["items"]  # all saved by the smoke run
    key_file = steps.outputs_dir(run, "onnxruntime") / "key.json"
    key = json.loads(key_file.read_text())
    key["weights"] = "something else"
    key_file.write_text(json.dumps(key))
    again = steps.infer(run, "onnxruntime", batch_size=batch)
    assert again["computed"] == again["items"]


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.skip(reason=FAKE_NPU_LIMITS[m]))
                                   if m in FAKE_NPU_LIMITS else m for m in MODELS])
def test_convert_to_benchmark_on_the_fake_ascend_toolchain(model):
    """03-convert to 06-benchmark with backend=auto over the FAKE Ascend tools: every stage ok,
    one .om per compiled artifact, and the records name the (fake) NPU, never the CPU."""
    folder, results = run_fake_npu(model)
    assert [r.status for r in results] == ["ok"] * len(results), [r.error for r in results]
    convert = fake_npu_record(folder, model, "03-convert")
    assert convert["backend"] == "ascend" and convert["device"]["kind"] == "npu"
    assert convert["metrics"]["parity_passed"]
    compiled = json.loads((folder / "runs" / "smoke" / model / "artifacts" / "compiled" / "ascend.json").read_text())
    artifacts = {Path(a).name for by_batch in compiled["artifacts"].values() for a in by_batch.values()}
    oms = {p.name for p in (folder / "runs" / "smoke" / model / "artifacts" / "compiled" / "ascend").glob("*.om")}
    assert artifacts == oms and len(oms) == sum(len(b) for b in compiled["artifacts"].values())
    assert fake_npu_record(folder, model, "05-evaluate")["backend"] == "ascend"
    bench = fake_npu_record(folder, model, "06-benchmark")
    assert {r["candidate"] for r in bench["tables"]["graph"]} == {"torch", "onnxruntime", "ascend"}


def test_a_stage_whose_upstream_has_not_run_is_blocked_and_its_notebook_says_what_to_run(model, monkeypatch,
                                                                                         tmp_path):
    """The runner does not start 02-export before 01-data has run: it records it blocked,
    naming the upstream. Run by hand (papermill, no runner), the notebook itself stops with
    what to run first, and keeps the error."""
    import papermill

    monkeypatch.setenv("ZOOBOOK_RUNS", str(tmp_path / "runs"))
    (result,) = run_model(model, ["export"], profile="smoke", timeout=600)
    assert result.status == "blocked" and result.error.startswith("upstream 01-data is not run"), result.error
    record = read_record("smoke", model, "02-export")
    assert record["status"] == "blocked" and "01-data" in record["error"]
    executed = tmp_path / "02-export.ipynb"
    with pytest.raises(papermill.PapermillExecutionError, match=f"run stage 01-data of {model} first"):
        papermill.execute_notebook(str(notebook_path(model, "02-export")), str(executed), parameters={"profile": "smoke"},
                                   kernel_name=default_kernel(), cwd=str(notebook_path(model, "02-export").parent))
    executed = nbformat.read(executed, as_version=4)  # kept, with the error in it
    assert any(o.get("output_type") == "error" for c in executed.cells for o in c.get("outputs", []))
