"""Export a traceable module to ONNX the way the ports do, then simplify and check it.

Uses the TorchScript exporter (``dynamo=False``) at an opset ATC accepts (11 to 17),
simplifies with onnxsim and validates with ``onnx.checker``. Names and shapes come from the
model's graph spec so every port keeps its I/O contract.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

ATC_OPSETS = range(11, 18)


def export_onnx(module: nn.Module, example: tuple[torch.Tensor, ...], path: str | Path, *,
                input_names: list[str], output_names: list[str], opset: int = 11,
                dynamic_batch: bool = True, simplify: bool = True) -> dict:
    """Export ``module`` to ``path``; returns a summary (opset, node counts, simplified, size).

    With ``dynamic_batch`` the first axis of every input and output is named ``bs`` (the port
    exports that way and builds one static OM per batch size from it).
    """
    import onnx

    if opset not in ATC_OPSETS:
        raise ValueError(f"opset {opset} is outside what ATC accepts ({ATC_OPSETS.start}..{ATC_OPSETS.stop - 1})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "bs"} for name in [*input_names, *output_names]} if dynamic_batch else None
    tmp = path.with_suffix(".raw.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(tmp), input_names=input_names, output_names=output_names,
                          opset_version=opset, dynamic_axes=axes, do_constant_folding=True, dynamo=False)
    model = onnx.load(str(tmp))
    raw_nodes = len(model.graph.node)
    simplified = False
    if simplify:
        import onnxsim

        model, simplified = onnxsim.simplify(model)
        if not simplified:
            raise RuntimeError(f"onnxsim could not validate the simplified graph of {path}")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    tmp.unlink()
    return {"path": str(path), "opset": opset, "nodes_raw": raw_nodes, "nodes": len(model.graph.node),
            "simplified": simplified, "size_mb": round(path.stat().st_size / 2**20, 2),
            "op_types": sorted({n.op_type for n in model.graph.node})}


def onnx_io(path: str | Path) -> dict[str, dict[str, list]]:
    """Input and output names with their shapes (symbolic dims as strings)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    initializers = {i.name for i in graph.initializer}
    return {"inputs": {v.name: dims(v) for v in graph.input if v.name not in initializers},
            "outputs": {v.name: dims(v) for v in graph.output}}


def graph_flops(path: str | Path, batch_size: int = 1) -> float:
    """Floating-point operations of one run of the graph at ``batch_size``: 2 x the
    multiply-accumulates of its Conv, Gemm and MatMul nodes (everything else is noise for a
    CNN or a transformer). Symbolic dimensions count as 1, so the count is per sample for a
    dynamic-batch graph (then scaled by ``batch_size``) and for the whole static batch of a
    static graph. MatMul counts any operands, weights or activations (attention's q k^T)."""
    import onnx

    model = onnx.load(str(path))
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_value = 1
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.output, *graph.input]}
    shapes.update({i.name: list(i.dims) for i in graph.initializer})
    macs = 0
    for node in graph.node:
        out = shapes.get(node.output[0])
        operands = [shapes.get(name) for name in node.input[:2]]
        if not out or len(operands) < 2 or not all(operands):
            continue
        first, weight = operands
        if node.op_type == "Conv":
            macs += _prod(out) * _prod(weight[1:])
        elif node.op_type == "MatMul":
            macs += _prod(out) * (first[-1] or 1)
        elif node.op_type == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            macs += _prod(out) * (first[0 if trans_a else -1] or 1)
    return 2.0 * macs * batch_size


def _prod(values) -> int:
    """The product of a shape's dimensions; a symbolic one (0 after shape inference: the
    batch axis carried through) counts as 1."""
    total = 1
    for v in values:
        total *= int(v) or 1
    return total


def pin_batches(source: str | Path, targets: dict[int, str | Path], *, processes: int | None = None) -> dict[int, dict]:
    """:func:`pin_batch` of ``source`` at each batch size of ``targets`` (batch size -> file),
    up to ``processes`` at once (default: the CPU threads this process may use). onnxsim
    simplifies on one core and holds the GIL while it does, so each runs in a process of its own
    (spawned: a forked copy of a process that has run OpenMP may hang); one at a time where only
    one core or one batch size is there."""
    from zoobook.backends.base import cpu_threads

    workers = min(len(targets), processes or cpu_threads())
    if workers < 2:
        return {bs: pin_batch(source, target, bs) for bs, target in targets.items()}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pinned = {bs: pool.submit(pin_batch, str(source), str(target), bs) for bs, target in targets.items()}
        return {bs: future.result() for bs, future in pinned.items()}


def pin_batch(source: str | Path, target: str | Path, batch_size: int) -> dict:
    """A static copy of a dynamic-batch graph: the first axis of every input and output set to
    ``batch_size``, shapes inferred afresh and the graph simplified again (onnxsim folds the
    shape arithmetic the batch axis kept alive), then checked. Same weights, same operators:
    what tracing at that batch would give, without holding a traced batch in memory."""
    import onnx
    import onnxsim

    model = onnx.load(str(source))
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = batch_size
    del model.graph.value_info[:]
    model, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError(f"onnxsim could not validate the graph of {target} pinned to batch {batch_size}")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(target))
    return {"path": str(target), "nodes": len(model.graph.node), "batch_size": batch_size,
            "size_mb": round(Path(target).stat().st_size / 2**20, 2),
            "op_types": sorted({n.op_type for n in model.graph.node})}
