"""Checks of the values of stage notebook parameters, made before any work is done.

A stage notebook declares its parameters in the cell tagged ``parameters``; a profile (the
model's ``SPEC.profiles``) and the user override some of them. :func:`check_values` checks
the values given against :data:`RULES` and names every bad one at once, so that a typo in an
override fails in a second instead of after the data was generated or a graph compiled.

A rule is keyed by the parameter's name, or by ``(model, name)`` where a name means something
of its own in one model, or by ``(model, stage, name)`` where one stage takes less than the
others; the most specific key wins. Names without a rule are accepted. Integers are Python or
numpy integers, never booleans (True is not a batch size); flags are real booleans.

The closed sets below are copies of the library's own (each cited beside it), kept here so that
this module imports nothing of the library; tests/test_params.py checks they still agree.
"""

from __future__ import annotations

import numbers
import os
import re
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Rule:
    """What a parameter may hold: ``accepts(value)`` is True for a legal value;
    ``description`` says which in words, as a noun phrase ("an integer >= 1")."""

    description: str
    accepts: Callable[[Any], bool]

    def __call__(self, value: Any) -> bool:
        return self.accepts(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(low: int, high: int | None = None, note: str = "") -> Rule:
    """An integer from ``low`` (to ``high``, both included); ``note`` says what a value means."""
    words = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    return Rule(words + (f" ({note})" if note else ""),
                lambda v: _is_int(v) and v >= low and (high is None or v <= high))


def one_of(*choices: str) -> Rule:
    return Rule("one of " + ", ".join(repr(c) for c in choices), lambda v: isinstance(v, str) and v in choices)


def optional(rule: Rule, meaning: str) -> Rule:
    """None (which means ``meaning``) or what ``rule`` accepts."""
    return Rule(f"None ({meaning}) or {rule.description}", lambda v: v is None or rule(v))


def _distinct_counts(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_int(v) and v >= 1 for v in value)
            and len(set(value)) == len(value))


def _multiple_of_32(value: Any) -> bool:
    return _is_int(value) and value >= 32 and value % 32 == 0


FLAG = Rule("True or False", lambda v: isinstance(v, bool))
COUNT = integer(1)
COUNTS = Rule("a non-empty list of distinct integers >= 1", _distinct_counts)

# --- closed sets, as the library spells them ---------------------------------------------
PROFILES = ("smoke", "default", "full")  # zoobook.paths.PROFILES
BACKENDS = ("auto", "torch", "onnxruntime", "onnxruntime-fp16", "ascend")  # "auto" and zoobook.backends.BACKENDS
ORT_LEVELS = ("disable", "basic", "extended", "all")  # zoobook.backends.onnxruntime_backend.LEVELS
PRECISION_MODES = ("force_fp16", "allow_fp32_to_fp16", "allow_mix_precision", "must_keep_origin_dtype",
                   "force_fp32")  # zoobook.backends.ascend.PRECISION_MODES: what atc_command passes on
SIAMMASK_MODES = ("split", "port")  # zoobook.models.siammask.tracking.MODES: tracker_engine branches on it
SIAMMASK_PRESETS = ("reference", "ascend-port")  # zoobook.models.siammask.train.PRESETS (--preset choices)
#: presets whose batch_size is the global batch, split over the processes (batch_per_device=False)
GLOBAL_BATCH_PRESETS = ("reference",)

RULES: dict[str | tuple[str, ...], Rule] = {
    # every stage
    "profile": one_of(*PROFILES),
    "backend": one_of(*BACKENDS),
    # 01-data: 0 means every image or sequence of the real set (locate_coco, VotDataset's limit)
    "num_images": integer(0, note="0 for all"),
    "num_sequences": integer(0, note="0 for all of real VOT2016"),
    "num_frames": integer(2, note="a first frame to start on and one to track"),
    "demo_frames": integer(0, note="0 for all of the demo clip"),
    "seed": integer(0, 2**32 - 1, note="numpy's RandomState range"),
    ("retinamask", "input_size"): Rule("an integer multiple of 32, >= 32 (the FPN doubles stride-32 features)",
                                       _multiple_of_32),
    ("semask", "input_size"): Rule("[height, width], each an integer multiple of 32, >= 32 (the port's prepare)",
                                   lambda v: isinstance(v, (list, tuple)) and len(v) == 2
                                   and all(_multiple_of_32(s) for s in v)),
    # 02-export
    "opset": integer(11, 17, note="the opsets ATC accepts"),
    "top_k": COUNT,
    "weights": Rule("None (data/weights/ if present, else the recipe) or a checkpoint's path",
                    lambda v: v is None or (isinstance(v, (str, os.PathLike)) and str(v) != "")),
    ("semask", "02-export", "batch_sizes"): COUNTS,  # one static graph each: None has no meaning here
    # 03-convert: None leaves the backend's own default (backend_options drops None)
    "batch_sizes": optional(COUNTS, "every exported batch size"),
    "soc_version": optional(Rule("an ATC chip name such as 'Ascend310P3'",
                                 lambda v: isinstance(v, str) and re.fullmatch(r"Ascend\w+", v) is not None),
                            "ask npu-smi"),
    "precision_mode": optional(one_of(*PRECISION_MODES), "ATC's default"),
    "ort_optimization": optional(one_of(*ORT_LEVELS), "the backend's default, extended"),
    "keep_dtype": optional(Rule("operator types or node names kept in fp32: a list of names, or one string of "
                                "names separated by commas",
                                lambda v: (isinstance(v, str) and all(p.strip() for p in v.split(",")))
                                or (isinstance(v, (list, tuple)) and all(isinstance(p, str) and p for p in v))),
                           "none"),
    # 04-infer, 05-evaluate
    "batch_size": COUNT,
    "device_id": integer(0),
    ("siammask", "mode"): one_of(*SIAMMASK_MODES),
    "show_images": integer(0, note="pictures shown"),
    "strip_frames": COUNT,
    # 06-benchmark: bench.Budget needs one timed call; the ports would silently raise 0 items to 1
    "seconds": Rule("a number of seconds >= 0 (each candidate's timing budget)",
                    lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0),
    "min_calls": COUNT,
    "max_calls": optional(COUNT, "no cap"),
    "warmup": integer(0),
    "host_items": COUNT,
    "reference_batch_sizes": optional(COUNTS, "every timed batch size"),
    "tracker_frames": COUNT,
    # siammask 00-train
    ("siammask", "preset"): one_of(*SIAMMASK_PRESETS),
    "processes": COUNTS,
    "epochs": COUNT,
    "pairs": COUNT,
    "videos": COUNT,
    "frames": COUNT,
    # flags
    **{name: FLAG for name in ("resume", "require_real", "require_official", "reference", "original", "trained",
                                   "full_graph", "fp16")},
    "locate": optional(FLAG, "where the fp16 emulation's parity fails"),
    "suggest": integer(0),
}


def _global_batch_splits(p: dict) -> bool:
    return p["preset"] not in GLOBAL_BATCH_PRESETS or all(p["batch_size"] % n == 0 for n in p["processes"])


#: checks of several parameters of one stage together: (names, what must hold, check); made
#: where every name is given and passes its own rule
def _calls_ordered(p: dict) -> bool:
    return p["max_calls"] is None or p["max_calls"] >= p["min_calls"]


_BUDGET = ((("min_calls", "max_calls"), "max_calls must be None or at least min_calls", _calls_ordered),)

ACROSS: dict[tuple[str, str], tuple[tuple[tuple[str, ...], str, Callable[[dict], bool]], ...]] = {
    **{(model, "06-benchmark"): _BUDGET for model in ("yolact_edge", "retinamask", "semask", "siammask")},
    ("siammask", "00-train"): ((("preset", "batch_size", "processes"),
                                "the reference preset's batch_size is the global batch: it must split evenly "
                                "over every entry of processes", _global_batch_splits),),
}


def rule_for(model: str, stage: str, name: str) -> Rule | None:
    """The rule of parameter ``name`` of ``model``'s ``stage`` (the most specific key), or None."""
    for key in ((model, stage, name), (model, name), name):
        if key in RULES:
            return RULES[key]
    return None


def problems(model: str, stage: str, parameters: dict) -> list[str]:
    """``"name=value: must be ..."`` for every bad value in ``parameters``, in their order."""
    rules = {name: rule_for(model, stage, name) for name in parameters}
    bad = [name for name, rule in rules.items() if rule is not None and not rule(parameters[name])]
    found = [f"{name}={parameters[name]!r}: must be {rules[name].description}" for name in bad]
    for names, must, check in ACROSS.get((model, stage), ()):
        if set(names) <= parameters.keys() - set(bad) and not check(parameters):
            found.append(", ".join(f"{n}={parameters[n]!r}" for n in names) + f": {must}")
    return found


def check_values(model: str, stage: str, parameters: dict) -> None:
    """A :class:`ValueError` naming ``model``, ``stage`` and every bad value in
    ``parameters`` with the rule it breaks; nothing where all are legal."""
    found = problems(model, stage, parameters)
    if found:
        raise ValueError(f"{model} {stage}: bad parameter values: " + "; ".join(found))
