"""zoobook.params: every notebook's defaults and every profile pass, bad values are named, and the
closed sets copied into it still agree with the library's."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from zoobook.models import MODELS, get_spec
from zoobook.params import GLOBAL_BATCH_PRESETS, RULES, Rule, check_values, rule_for

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*/*.ipynb"))


def notebook_defaults(path: Path) -> dict:
    """The values the notebook's ``parameters`` cell sets (the cell run on its own)."""
    cells = [c for c in json.loads(path.read_text())["cells"]
             if c["cell_type"] == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path}: {len(cells)} cells tagged parameters"
    values: dict = {}
    exec("".join(cells[0]["source"]), {}, values)
    return values


def _stage(path: Path) -> tuple[str, str]:
    return path.parent.name, path.stem


def test_there_are_notebooks_to_check():
    assert len(NOTEBOOKS) >= 20 and {p.parent.name for p in NOTEBOOKS} == set(MODELS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_notebook_default_passes_and_has_a_rule(path):
    model, stage = _stage(path)
    defaults = notebook_defaults(path)
    check_values(model, stage, defaults)
    assert [n for n in defaults if rule_for(model, stage, n) is None] == [], "give these parameters a rule"


PROFILE_STAGES = [(model, profile, stage) for model in MODELS
                  for profile, stages in get_spec(model).profiles.items() for stage in stages]


@pytest.mark.parametrize("model,profile,stage", PROFILE_STAGES, ids=lambda v: str(v))
def test_every_profile_passes(model, profile, stage):
    parameters = get_spec(model).stage_parameters(profile, stage)
    assert parameters
    check_values(model, stage, {"profile": profile, "backend": "auto", **parameters})


BAD = [
    ("semask", "02-export", "batch_sizes", [0]),
    ("semask", "02-export", "batch_sizes", []),
    ("semask", "02-export", "batch_sizes", [1, 1]),
    ("semask", "02-export", "batch_sizes", None),  # one graph per batch size: None means nothing here
    ("yolact_edge", "03-convert", "batch_sizes", 4),
    ("yolact_edge", "04-infer", "batch_size", 0),
    ("yolact_edge", "04-infer", "batch_size", True),
    ("semask", "04-infer", "batch_size", 1.0),
    ("siammask", "06-benchmark", "min_calls", 0),
    ("siammask", "06-benchmark", "warmup", -1),
    ("retinamask", "06-benchmark", "seconds", -1.0),
    ("retinamask", "06-benchmark", "seconds", "5"),
    ("semask", "06-benchmark", "max_calls", 0),
    ("yolact_edge", "06-benchmark", "host_items", 0),
    ("siammask", "06-benchmark", "tracker_frames", 0),
    ("yolact_edge", "02-export", "opset", 9),
    ("yolact_edge", "02-export", "opset", 18),
    ("retinamask", "02-export", "top_k", 0),
    ("retinamask", "02-export", "weights", ""),
    ("siammask", "04-infer", "mode", "nonsense"),
    ("siammask", "00-train", "preset", "fast"),
    ("siammask", "00-train", "processes", [0, 2]),
    ("siammask", "00-train", "processes", []),
    ("siammask", "00-train", "epochs", 0),
    ("siammask", "01-data", "num_frames", 1),
    ("siammask", "01-data", "num_sequences", -1),
    ("retinamask", "04-infer", "device_id", -1),
    ("retinamask", "01-data", "seed", -1),
    ("retinamask", "01-data", "input_size", 1333),
    ("semask", "01-data", "input_size", [1024]),
    ("semask", "01-data", "input_size", [1000, 2048]),
    ("yolact_edge", "01-data", "num_images", -1),
    ("yolact_edge", "01-data", "require_real", 1),
    ("retinamask", "04-infer", "resume", "yes"),
    ("retinamask", "05-evaluate", "show_images", True),
    ("siammask", "03-convert", "ort_optimization", "fast"),
    ("siammask", "03-convert", "precision_mode", "fp16"),
    ("siammask", "03-convert", "soc_version", "310P3"),
    ("semask", "03-convert", "backend", "gpu"),
    ("semask", "03-convert", "profile", "tiny"),
]


@pytest.mark.parametrize("model,stage,name,value", BAD, ids=lambda v: repr(v))
def test_a_bad_value_is_named_with_its_rule(model, stage, name, value):
    with pytest.raises(ValueError) as caught:
        check_values(model, stage, {"profile": "default", name: value})
    message = str(caught.value)
    assert message.startswith(f"{model} {stage}: bad parameter values: {name}={value!r}: must be ")
    assert rule_for(model, stage, name).description in message
    assert message.count("must be") == 1  # the good profile beside it is not named


def test_every_bad_value_is_listed_at_once():
    with pytest.raises(ValueError) as caught:
        check_values("yolact_edge", "03-convert", {"batch_sizes": [0], "min_calls": 0, "soc_version": None})
    assert str(caught.value) == (
        "yolact_edge 03-convert: bad parameter values: batch_sizes=[0]: must be None (every exported batch size) "
        "or a non-empty list of distinct integers >= 1; min_calls=0: must be an integer >= 1")


def test_a_budget_whose_cap_is_below_its_floor_is_refused():
    with pytest.raises(ValueError, match="min_calls=5, max_calls=2: max_calls must be None or at least min_calls"):
        check_values("yolact_edge", "06-benchmark", {"min_calls": 5, "max_calls": 2})
    check_values("yolact_edge", "06-benchmark", {"min_calls": 5, "max_calls": None, "seconds": 0})


def test_legal_values_pass():
    check_values("siammask", "04-infer", {"mode": "port", "device_id": np.int64(3), "resume": False,
                                          "something_new": object()})  # a name without a rule passes
    check_values("semask", "01-data", {"input_size": (128, 256), "num_images": 0, "seed": 2**32 - 1})
    check_values("semask", "03-convert", {"batch_sizes": None, "ort_optimization": "all",
                                          "precision_mode": "allow_mix_precision", "soc_version": "Ascend910B3"})
    check_values("retinamask", "02-export", {"weights": Path("data/weights/x.pth"), "opset": 17, "top_k": 1})
    check_values("yolact_edge", "04-infer", {"mode": "anything"})  # mode is siammask's


def test_the_global_batch_must_split_over_the_processes():
    train = {"preset": "reference", "processes": [1, 2], "batch_size": 8}
    check_values("siammask", "00-train", train)
    check_values("siammask", "00-train", {**train, "batch_size": 3, "preset": "ascend-port"})  # per process
    check_values("siammask", "00-train", {"batch_size": 3})  # processes not given: nothing to check against
    with pytest.raises(ValueError, match=r"preset='reference', batch_size=3, processes=\[1, 2\]: .* split evenly"):
        check_values("siammask", "00-train", {**train, "batch_size": 3})
    with pytest.raises(ValueError) as caught:  # a bad value alone is named, not the combination too
        check_values("siammask", "00-train", {**train, "batch_size": 0})
    assert "split evenly" not in str(caught.value)


def test_the_closed_sets_agree_with_the_library():
    from zoobook.backends import BACKENDS
    from zoobook.backends.ascend import PRECISION_MODES
    from zoobook.backends.onnxruntime_backend import LEVELS
    from zoobook.models.siammask.tracking import MODES
    from zoobook.models.siammask.train import PRESETS
    from zoobook.paths import PROFILES

    def legal(key, values):
        return [v for v in values if RULES[key](v)]

    assert legal("profile", PROFILES + ("x",)) == list(PROFILES)
    assert legal("backend", ("auto",) + BACKENDS + ("x",)) == ["auto", *BACKENDS]
    assert legal("ort_optimization", LEVELS + ("x",)) == list(LEVELS)
    assert legal("precision_mode", PRECISION_MODES + ("x",)) == list(PRECISION_MODES)
    assert legal(("siammask", "mode"), MODES + ("x",)) == list(MODES)
    assert legal(("siammask", "preset"), (*PRESETS, "x")) == list(PRESETS)
    assert set(GLOBAL_BATCH_PRESETS) == {name for name, p in PRESETS.items() if not p.batch_per_device}


def test_every_rule_can_be_listed_in_the_docs():
    assert all(isinstance(rule, Rule) and rule.description for rule in RULES.values())
    assert all(isinstance(key, str) or (isinstance(key, tuple) and key[0] in MODELS) for key in RULES)


def test_params_imports_only_the_standard_library_and_numpy():
    tree = ast.parse((ROOT / "lib" / "zoobook" / "params.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    outside = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names | {"numpy"}}
    assert not outside, f"zoobook.params is a foundation module: {outside}"
