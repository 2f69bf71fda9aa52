"""The library's shape: the backend registry, the import layering, and the book's table of
contents against the models' stages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from zoobook.backends import BACKENDS, REGISTRY, Backend, capabilities, get_backend, resolve
from zoobook.cli import main

ROOT = Path(__file__).parents[1]
LIB = ROOT / "lib"
# lower layers never import higher ones; everything not named here is the foundation (0):
# paths, records, compare, bench, export, checkpoints, ops, data, metrics, backends, ...
LAYERS = {"stages": 1, "models": 2, "runner": 3, "book": 3, "report": 3, "cli": 4}


def test_every_registered_backend_loads_under_its_own_name():
    for name, info in REGISTRY.items():
        backend = info.load()
        assert issubclass(backend, Backend) and backend.name == name
    assert [info.name for info in REGISTRY.values() if info.reference] == ["torch"]
    assert not REGISTRY[resolve("auto")].needs_device  # no NPU here: auto is the embedded default


def test_capabilities_answer_what_callers_used_to_ask_by_name():
    assert not capabilities("torch").compiles and capabilities("onnxruntime").compiles
    assert capabilities("ascend").static_batch and capabilities("ascend").device_time
    assert capabilities("ascend").precision == "fp16" and capabilities("onnxruntime").precision == "fp32"
    with pytest.raises(ValueError, match="unknown backend 'onnx'.*onnxruntime"):
        capabilities("onnx")


def test_auto_picks_the_npu_only_where_it_answers(fake_ascend):
    assert resolve("auto") == "ascend" and get_backend("auto").name == "ascend"


def test_cli_offers_the_registered_backends(capsys):
    with pytest.raises(SystemExit):
        main(["run", "yolact_edge", "--backend", "cuda"])
    error = capsys.readouterr().err
    assert all(f"'{name}'" in error for name in ("auto", *BACKENDS))


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.split(".")[0] == "zoobook"}


def _module(path: Path) -> str:
    parts = path.relative_to(LIB).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def test_nothing_imports_upward_and_there_are_no_cycles():
    graph = {_module(p): _imports(p) for p in (LIB / "zoobook").rglob("*.py")}
    upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps if _layer(d) > _layer(m)]
    assert not upward
    visiting, done = set(), set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in visiting, f"import cycle: {' -> '.join(path)}"
        if module in done:
            return
        visiting.add(module)
        for dep in graph.get(module, ()):
            visit(dep, (*path, dep))
        visiting.discard(module)
        done.add(module)

    for module in graph:
        visit(module, (module,))


def test_toc_lists_every_stage_of_every_model_in_order():
    from zoobook.models import MODELS, get_spec

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = {c["file"]: [s["file"] for s in c.get("sections", [])] for c in toc["chapters"]}
    models = [f.split("/")[1] for f in chapters if f.endswith("/index")]
    assert sorted(models) == sorted(MODELS)
    for model in models:
        stages = list(get_spec(model).stages)
        assert chapters[f"book/{model}/index"] == [f"book/{model}/{stage}" for stage in stages], model
        for stage in stages:
            assert (ROOT / "notebooks" / model / f"{stage}.ipynb").is_file()


def _code_sources() -> dict[str, str]:
    """Library modules outside ``backends/`` and the CLI, and every notebook's code cells."""
    import nbformat

    sources = {str(p.relative_to(ROOT)): p.read_text() for p in (LIB / "zoobook").rglob("*.py")
               if "backends" not in p.parts and p.name != "cli.py"}
    for path in (ROOT / "notebooks").rglob("*.ipynb"):
        cells = nbformat.read(path, as_version=4).cells
        sources[str(path.relative_to(ROOT))] = "\n".join(c.source for c in cells if c.cell_type == "code")
    return sources


def _names_compared(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every backend name a comparison tests (==, !=, in, not in)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for operand in (node.left, *node.comparators):
            values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
            found += [(node.lineno, v.value) for v in values
                      if isinstance(v, ast.Constant) and v.value in REGISTRY]
    return found


def test_no_backend_name_is_compared_outside_the_registry_and_the_cli():
    compared = {name: hits for name, source in _code_sources().items()
                if (hits := _names_compared(ast.parse(source)))}
    assert not compared, f"ask zoobook.backends.capabilities() instead: {compared}"


def test_the_name_check_finds_a_comparison():
    assert _names_compared(ast.parse('if backend == "torch" or name in ("onnxruntime", "x"): pass')) == [
        (1, "torch"), (1, "onnxruntime")]


def test_no_model_package_defines_a_stage_function():
    """Stages are written once (zoobook.stages.steps); a model gives hooks on its port."""
    from zoobook.stages import steps

    stage_names = {name for name, value in vars(steps).items() if callable(value) and not name.startswith("_")
                   and getattr(value, "__module__", "") == steps.__name__}
    stage_names |= {"locate_dataset", "load_manifest", "load_model", "preprocess_dataset", "track_vot", "onnx_path"}
    defined: dict[str, list[str]] = {}
    for path in (LIB / "zoobook" / "models").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name in stage_names:
                defined.setdefault(node.name, []).append(str(path.relative_to(LIB)))
    assert not defined, defined


def test_every_model_has_a_port_with_its_spec():
    from zoobook.models import MODELS, get_port, get_spec
    from zoobook.stages import Port

    for model in MODELS:
        port = get_port(model)
        assert isinstance(port, Port) and port.spec is get_spec(model)
        for stage in get_spec(model).stages:
            assert port.stage_io(stage).stage == stage


def test_a_run_reads_each_record_once(monkeypatch, tmp_path):
    """What a stage left is read from disk once per run, however often the stage asks."""
    import json as _json

    from zoobook.models import open_run

    monkeypatch.setenv("ZOOBOOK_RUNS", str(tmp_path))
    run = open_run("yolact_edge", "smoke")
    (run.folder / "inputs").mkdir(parents=True)
    (run.folder / "inputs" / "manifest.json").write_text(_json.dumps({"dataset": {"kind": "synthetic"}, "images": []}))
    reads = []
    original = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self.name) or original(self, *a, **k))
    assert run.manifest is run.manifest and run.dataset == {"kind": "synthetic"}
    assert reads == ["manifest.json"]
    with pytest.raises(FileNotFoundError, match="export.json: not found; run stage 02-export of yolact_edge first"):
        run.exported
