"""A reduced-precision candidate that runs anywhere: the ONNX graph with fp16 *storage*
emulated on the CPU, a stand-in for what ATC's default ``--precision_mode=force_fp16`` does to
a port, before (or without) an Ascend NPU.

What is emulated. :func:`emulate_fp16` rewrites the graph so that every float32 tensor is
rounded to fp16 (round to nearest even; beyond ±65504 it becomes ±inf, as fp16 does) where it is
produced: float32 initializers are rounded once and stored back as float32 values that fp16
represents exactly; the float32 graph inputs are rounded on entry; after each node, each of its
float32 outputs goes through ``Cast(to=FLOAT16)`` then ``Cast(to=FLOAT)``. Every operator thus
computes in fp32 on fp16-rounded inputs, and its output is rounded to fp16. Matrix products
(MatMul, Gemm, Conv) therefore accumulate in fp32, like the NPU's cube unit, which multiplies
fp16 operands and accumulates in fp32.

What is not. Operators that the NPU computes as several fp16 steps (a fused LayerNorm, Softmax,
GELU, a reduction done in fp16 vector arithmetic) round only once here, at their output, so the
emulation can be kinder than the device there. Transcendental functions (Exp, Log, Erf, Tanh...)
follow the CPU's fp32 implementation, not the NPU's. fp16 subnormals are kept (numpy's and ONNX
Runtime's conversion); whether a given NPU kernel flushes them is not modelled. No int8, no bf16.
Nodes inside subgraphs (the bodies of If, Loop, Scan) are left unrounded: they read the outer
operators' outputs rounded, the graph inputs as fed, and the If/Loop/Scan node's own outputs are
rounded where they leave it; tensors whose type shape inference cannot tell are left unrounded too. Both are
counted in the report the graph carries. Nothing here is an NPU measurement: it says how much a
port's outputs move when its tensors are stored in fp16, not what a given chip computes.

Precision modes, named after ATC's: ``force_fp16`` rounds everything except the operators of
``keep_dtype``; ``allow_mix_precision`` keeps :data:`MIXED_FP32_OPS` in fp32 besides (OUR list,
in the spirit of ATC's mixed mode, not ATC's own list, which depends on the chip and CANN
version); ``must_keep_origin_dtype`` rounds nothing (fp32 as exported). ``keep_dtype`` names op
types or node names kept in fp32, mirroring ATC's ``--keep_dtype`` / ``modify_mixlist``: their
outputs are not rounded and their float initializers are not either; their other inputs arrive
rounded from the operators that produce them, as on the device.

Every original tensor name is kept for the *rounded* value (a node's raw output is renamed
``name + "/fp32"``, and the second Cast produces ``name``), so the original and the emulated graph
share their tensor names, which the per-operator locator (:mod:`zoobook.locate`) relies on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from zoobook.backends.base import Session
from zoobook.backends.onnxruntime_backend import OnnxRuntimeBackend, OnnxRuntimeSession

PRECISION_MODES = ("force_fp16", "allow_mix_precision", "must_keep_origin_dtype")

#: Op types ``allow_mix_precision`` keeps in fp32 here: reductions, normalisations, Softmax and
#: the functions whose fp16 results lose most (exponentials, logarithms, powers, division,
#: square roots, Erf). OUR list, in the spirit of ATC's mixed-precision mode; it is not ATC's
#: list, which depends on the chip and the CANN version.
MIXED_FP32_OPS = frozenset({
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp",
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    "LpNormalization", "MeanVarianceNormalization",
    "Softmax", "LogSoftmax",
    "Exp", "Log", "Pow", "Div", "Sqrt", "Reciprocal", "Erf",
})

#: ``metadata_props`` key under which the emulated graph records what it rounded (JSON)
METADATA_KEY = "zoobook.fp16"
RAW_SUFFIX = "/fp32"  # a node's raw (unrounded) output
HALF_SUFFIX = "/fp16"  # the same value stored in fp16
INPUT_SUFFIX = "/fp16in"  # a graph input or a shared initializer, rounded


def round_fp16(array: np.ndarray) -> np.ndarray:
    """``array`` (float32) rounded to fp16 and back: float32 values fp16 represents exactly,
    ±inf beyond ±65504."""
    with np.errstate(over="ignore"):
        return np.asarray(array, np.float32).astype(np.float16).astype(np.float32)


def keep_list(keep_dtype: Iterable[str] | str | None) -> list[str]:
    """``keep_dtype`` as a list of names: a comma-separated string (as a notebook parameter or
    a command line gives it) or any iterable of op types and node names."""
    if keep_dtype is None:
        return []
    if isinstance(keep_dtype, str):
        return [part.strip() for part in keep_dtype.split(",") if part.strip()]
    return [str(k) for k in keep_dtype]


def check_mode(precision_mode: str) -> str:
    if precision_mode not in PRECISION_MODES:
        raise ValueError(f"unknown precision_mode {precision_mode!r}; choose one of {', '.join(PRECISION_MODES)}")
    return precision_mode


def tensor_types(model) -> dict[str, int]:
    """Element type of every top-level tensor whose type is known (declared or inferred)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a graph shape inference rejects is still emulated, with what is declared
        inferred = model
    types: dict[str, int] = {}
    for graph in (model.graph, inferred.graph):
        for info in (*graph.value_info, *graph.input, *graph.output):
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                types.setdefault(info.name, info.type.tensor_type.elem_type)
        for init in graph.initializer:
            types.setdefault(init.name, init.data_type)
    return types


def _count_subgraph_nodes(node) -> int:
    import onnx

    count = 0
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else \
            list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []
        for graph in graphs:
            for inner in graph.node:
                count += 1 + _count_subgraph_nodes(inner)
    return count


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return candidate


def emulate_fp16(model, *, precision_mode: str = "force_fp16", keep_dtype: Iterable[str] | str = ()):
    """A new ``onnx.ModelProto``: ``model`` with fp16 storage emulated (see the module's
    docstring); ``model`` itself is left unchanged. The result records what it rounded under
    ``metadata_props[METADATA_KEY]`` (see :func:`emulation_report`). Unknown ``precision_mode``:
    ValueError listing the choices."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    check_mode(precision_mode)
    keep = set(keep_list(keep_dtype))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    report = {"precision_mode": precision_mode, "keep_dtype": sorted(keep), "rounded_tensors": 0,
              "rounded_initializers": 0, "rounded_inputs": 0, "kept_nodes": [], "untyped_outputs": 0,
              "subgraph_nodes_unrounded": 0}
    if precision_mode == "must_keep_origin_dtype":
        _set_report(out, report)
        return out
    if precision_mode == "allow_mix_precision":
        keep |= MIXED_FP32_OPS

    types = tensor_types(model)
    nodes = list(graph.node)  # one wrapper per node, so that id() names it throughout
    initializers = {init.name: init for init in graph.initializer}
    taken = {name for node in nodes for name in (*node.input, *node.output)} | set(initializers) \
        | {i.name for i in graph.input} | {node.name for node in nodes if node.name}
    kept = [node for node in nodes if node.op_type in keep or (node.name and node.name in keep)]
    kept_ids = {id(node) for node in kept}
    # a Constant node read only by kept nodes is their weight, as an initializer would be
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in nodes:
        users = [u for name in node.output for u in consumers.get(name, [])]
        if node.op_type == "Constant" and id(node) not in kept_ids and users \
                and all(id(u) in kept_ids for u in users):
            kept.append(node)
            kept_ids.add(id(node))
    report["kept_nodes"] = [node.name or node.output[0] for node in kept]

    # initializers: rounded in place where no kept node reads them; where both kinds do, the kept
    # ones keep the fp32 original and the others read a rounded copy
    for name, init in initializers.items():
        if init.data_type != TensorProto.FLOAT:
            continue
        users = consumers.get(name, [])
        rounding = [n for n in users if id(n) not in kept_ids]
        if users and not rounding:
            continue  # read by kept nodes only
        rounded = numpy_helper.from_array(round_fp16(numpy_helper.to_array(init)), name)
        report["rounded_initializers"] += 1
        if len(rounding) == len(users):  # no kept reader (or a graph output/unused): in place
            init.CopyFrom(rounded)
            continue
        copy_name = _unique(name + INPUT_SUFFIX, taken)
        rounded.name = copy_name
        graph.initializer.append(rounded)
        for node in rounding:
            node.input[:] = [copy_name if i == name else i for i in node.input]

    new_nodes = []
    # graph inputs: rounded on entry, the rounded value under a new name read by every non-kept
    # node (kept nodes read the fp32 input, as an fp32 first operator on the device would)
    for info in graph.input:
        if info.name in initializers or types.get(info.name) != TensorProto.FLOAT:
            continue
        users = [n for n in consumers.get(info.name, []) if id(n) not in kept_ids]
        if not users:
            continue
        half, back = _unique(info.name + HALF_SUFFIX, taken), _unique(info.name + INPUT_SUFFIX, taken)
        new_nodes += [helper.make_node("Cast", [info.name], [half], to=TensorProto.FLOAT16,
                                       name=_unique(info.name + "/to_fp16", taken), doc_string=METADATA_KEY),
                      helper.make_node("Cast", [half], [back], to=TensorProto.FLOAT,
                                       name=_unique(info.name + "/from_fp16", taken), doc_string=METADATA_KEY)]
        for node in users:
            node.input[:] = [back if i == info.name else i for i in node.input]
        report["rounded_inputs"] += 1

    for node in nodes:
        report["subgraph_nodes_unrounded"] += _count_subgraph_nodes(node)
        new_nodes.append(node)
        if id(node) in kept_ids:
            continue
        casts = []
        for k, name in enumerate(node.output):
            if not name:
                continue
            kind = types.get(name)
            if kind is None:
                report["untyped_outputs"] += 1
                continue
            if kind != TensorProto.FLOAT:
                continue
            raw, half = _unique(name + RAW_SUFFIX, taken), _unique(name + HALF_SUFFIX, taken)
            node.output[k] = raw
            base = node.name or name
            casts += [helper.make_node("Cast", [raw], [half], to=TensorProto.FLOAT16,
                                       name=_unique(f"{base}/{k}/to_fp16", taken), doc_string=METADATA_KEY),
                      helper.make_node("Cast", [half], [name], to=TensorProto.FLOAT,
                                       name=_unique(f"{base}/{k}/from_fp16", taken), doc_string=METADATA_KEY)]
            report["rounded_tensors"] += 1
        new_nodes += casts
    final = []
    for node in new_nodes:
        final.append(onnx.NodeProto())
        final[-1].CopyFrom(node)
    graph.ClearField("node")
    graph.node.extend(final)
    _set_report(out, report)
    return out


def _set_report(model, report: dict) -> None:
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(report, sort_keys=True)


def emulation_report(model) -> dict | None:
    """What :func:`emulate_fp16` rounded in ``model`` (an emulated ModelProto), None for a graph
    it did not make."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return None


class Fp16EmulationSession(OnnxRuntimeSession):
    backend = "onnxruntime-fp16"


class Fp16EmulationBackend(OnnxRuntimeBackend):
    """ONNX Runtime on the CPU, running the graph with fp16 storage emulated. ``compile`` writes
    ``<name>.fp16.onnx`` (the emulated graph, checked with ``onnx.checker``) and
    ``<name>.fp16.json`` (what it rounded); ``open`` runs it with every graph optimisation off, so
    that no optimiser can fold a Cast pair away. It emulates fp16 storage on the CPU; it is
    never an NPU."""

    name = "onnxruntime-fp16"
    #: every optimisation off: the Cast pairs are the emulation and must all run
    OPTIMIZATION = "disable"

    def __init__(self, precision_mode: str = "force_fp16", keep_dtype: Iterable[str] | str = (),
                 threads: int | None = None, spinning: bool = False, memory_pattern: bool = True) -> None:
        super().__init__(threads=threads, optimization=self.OPTIMIZATION, compile_optimization=self.OPTIMIZATION,
                         spinning=spinning, memory_pattern=memory_pattern)
        self.precision_mode = check_mode(precision_mode)
        self.keep_dtype = keep_list(keep_dtype)

    def compile(self, onnx_path: str | Path, out_dir: str | Path, *, input_shapes=None, name: str | None = None) -> Path:
        import onnx

        stem = name or Path(onnx_path).stem
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model = emulate_fp16(onnx.load(str(onnx_path)), precision_mode=self.precision_mode, keep_dtype=self.keep_dtype)
        onnx.checker.check_model(model)
        out = out_dir / f"{stem}.fp16.onnx"
        onnx.save(model, str(out))
        report = {"source": str(onnx_path), "artifact": out.name, **emulation_report(model)}
        (out_dir / f"{stem}.fp16.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        return out

    def open(self, artifact: str | Path) -> Session:
        session = Fp16EmulationSession(artifact, threads=self.threads, optimization=self.OPTIMIZATION,
                                       spinning=self.spinning, memory_pattern=self.memory_pattern)
        meta = session._session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(f"{artifact} is not an fp16-emulated graph; compile the ONNX file with this backend "
                             "first (it writes <name>.fp16.onnx)")
        return session

    def device(self) -> dict:
        return {**super().device(), "backend": self.name, "kind": "cpu",
                "emulates": "fp16 storage on the CPU (every tensor rounded to fp16 where it is produced, "
                            "arithmetic in fp32); not an NPU",
                "precision_mode": self.precision_mode, "keep_dtype": self.keep_dtype}
