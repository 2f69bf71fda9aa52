"""Where a candidate first parts from the reference, operator by operator.

A port can pass in fp32 and lose accuracy on the device, where ATC compiles to fp16 by default.
The outputs say *that* it diverges; this module says *where*: every float tensor an operator
produces is taken from the reference run (the exported ONNX graph in fp32) and from a candidate
(the same graph with fp16 storage emulated, :func:`zoobook.backends.fp16.emulate_fp16`, or the
NPU's own operator dump), compared tensor by tensor in graph order with the metrics of
:mod:`zoobook.compare`, and the first operator that fails is named.

- :func:`float_tensors` — the float tensors of a graph, in topological order, with their nodes.
- :func:`dump_onnx` — run a graph in segments, each node once, with the intermediate tensors of
  ``chunk`` names at a time as a segment's outputs (so memory stays bounded on large graphs),
  yielding them.
- :func:`locate` and :func:`first_divergence` — the per-operator rows and the first that fails;
  :func:`locate_onnx` runs both dumps and compares them in one call; :class:`HeldDump` keeps a
  reference dump for the next candidate (rounds of fp32-kept operator types).
- :func:`acl_dump_config`, :func:`read_ascend_dump` and :func:`ascend_tensors` — ask ``ais_bench``
  for an operator dump of an ``.om`` model, read it back, and name its arrays as the ONNX graph
  does.
- :func:`plot_cosine` — cosine (and the relative error) along the graph, the first divergence
  marked.

**The Ascend operator dump.** Where the layout comes from: CANN's documentation of model dumps
("准备离线模型dump数据文件", hiascend.com, CANN 6.0.1 to 8.0) and of the dump file names
(MindStudio's "Dump File Naming Conventions"), and, for the file contents, the ``DumpData``
protobuf schema published with Ascend's msprobe (``AclDumpMsg.proto``, package
``toolkit.dumpdata``; the same schema as MindSpore's ``dump_data.proto``) and the readers of
msaccucmp / msaicerr (``BigDumpDataParser``) and msprobe (``AclDumpDataProcessor``,
``AclTensor``). This module reads that layout with its own minimal protobuf reader; nothing of
theirs is imported. The layout:

- ``acl.json`` ``{"dump": {"dump_path": P, "dump_list": [{"model_name": M}], "dump_mode":
  "output"}}`` (given to ``InferSession(..., acl_json_path=...)``; ``M`` is the ``.om`` file name
  without its suffix; ``P`` must exist beforehand).
- Files under ``{P}/{time}/{device_id}/{model_name}/{model_id}/{data_index}/`` (``time`` as
  YYYYMMDDHHMMSS; in ``model_name`` ``.``, ``/``, ``\\`` and spaces become ``_``; ``data_index``
  counts the runs of the model), one per operator run, named
  ``{op_type}.{op_name}.{task_id}.{stream_id}.{timestamp}`` (newer CANN versions append more
  numeric fields); ``op_type`` and ``op_name`` are reduced to ``[A-Za-z0-9_-]``, so the exact
  operator name is read from the file itself.
- Each file: an 8-byte little-endian unsigned header length ``L``; ``L`` bytes of a serialized
  ``DumpData`` message (1 version, 2 dump_time, 3 repeated OpOutput output, 4 repeated OpInput
  input, 5 repeated OpBuffer buffer, 6 op_name); then the raw bytes of every input, then of every
  output, in order, each ``size`` bytes (then buffers and workspaces, not read here). An entry
  whose own ``data`` field is filled carries its bytes inline instead.
- ``OpOutput``: 1 data_type, 2 format, 3 shape (``Shape``: 1 repeated uint64 dim), 4
  original_op (``OriginalOp``: 1 name, 2 output_index, 3 data_type, 4 format), 5 data, 6 size,
  7 original_shape, 8 sub_format. ``OpInput``: 1 data_type, 2 format, 3 shape, 4 data, 5 size,
  6 original_shape, 7 sub_format.
- ``data_type`` is the dump schema's ``OutputDataType`` (DT_UNDEFINED=0, DT_FLOAT=1,
  DT_FLOAT16=2, DT_INT8=3, DT_UINT8=4, DT_INT16=5, DT_UINT16=6, DT_INT32=7, DT_INT64=8,
  DT_UINT32=9, DT_UINT64=10, DT_BOOL=11, DT_DOUBLE=12, ..., DT_BF16=27): NOT GE's in-memory
  ``ge::DataType`` (where DT_FLOAT=0, DT_FLOAT16=1, DT_INT32=3), which the dumper converts.
- ``format`` is ``OutputFormat`` (FORMAT_NCHW=0, NHWC=1, ND=2, NC1HWC0=3, FRACTAL_Z=4, ...,
  FRACTAL_NZ=29, NCDHW=30, ...). ``shape`` is the device shape in that format;
  ``original_shape`` the framework's. Plain layouts (NCHW, ND, NCDHW, NC, NCL) are read as
  they are; NC1HWC0 (shape N, C1, H, W, C0) is converted back to NCHW with the channel count of
  ``original_shape``; any other format is an error naming the file and the format.

Op names in the dump are ATC's. Where ATC fused operators, an output records the ONNX node it
stands for in ``original_op`` (name and output index): :func:`read_ascend_dump` keys the arrays
by that name (by ATC's own name where none is recorded), so that they meet the ONNX graph's node
names; ``by="atc"`` keeps ATC's names.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zoobook.backends.fp16 import tensor_types
from zoobook.compare import THRESHOLDS

# ---------------------------------------------------------------------------------------------
# the graph


def _load(model_or_path):
    import onnx

    if isinstance(model_or_path, (str, Path)):
        return onnx.load(str(model_or_path))
    return model_or_path


def _topological_indices(nodes: list) -> list[int]:
    """Indices of ``nodes`` in an order where each follows the producers of its inputs: their
    own order where it already is one, else a stable topological sort (lowest index first)."""
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    seen: set[str] = set()
    for node in nodes:
        if any(i in producer and i not in seen for i in node.input):
            break
        seen.update(node.output)
    else:
        return list(range(len(nodes)))
    import heapq

    waiting = [len({i for i in n.input if i in producer}) for n in nodes]
    readers: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        for i in {i for i in n.input if i in producer}:
            readers.setdefault(producer[i], []).append(k)
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        k = heapq.heappop(ready)
        out.append(k)
        for r in readers.get(k, []):
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    if len(out) != len(nodes):
        raise ValueError("the graph has a cycle; it has no topological order")
    return out


def topological_nodes(graph) -> list:
    """The top-level nodes of ``graph`` in an order where every node follows the producers of
    its inputs: ONNX's own order where it already is one, else a stable topological sort."""
    nodes = list(graph.node)
    return [nodes[k] for k in _topological_indices(nodes)]


def tensor_bytes(model) -> dict[str, int]:
    """Bytes of each tensor whose shape and type shape inference can tell (static shapes)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no sizes known: chunks fall back to their count
        return {}
    sizes: dict[str, int] = {}
    for info in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        tensor = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if tensor.elem_type and dims and all(d is not None for d in dims):
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
            sizes[info.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
    return sizes


def chunks(names: list[str], *, chunk: int, max_bytes: int | None = None,
           sizes: Mapping[str, int] | None = None) -> list[list[str]]:
    """``names`` cut into runs of at most ``chunk`` names and, where ``max_bytes`` is set, at
    most that many bytes together (by ``sizes``; a name of unknown size counts nothing, and a
    single tensor larger than the budget gets a chunk of its own)."""
    out: list[list[str]] = [[]]
    held = 0
    for name in names:
        size = (sizes or {}).get(name, 0)
        if out[-1] and (len(out[-1]) >= chunk or (max_bytes is not None and held + size > max_bytes)):
            out.append([])
            held = 0
        out[-1].append(name)
        held += size
    return [part for part in out if part]


def float_tensors(model) -> list[tuple[str, str, str]]:
    """``(tensor_name, node_name, op_type)`` for every float tensor (fp32, fp16, bf16, fp64) an
    operator of the top-level graph produces, in topological order (types from shape inference;
    a tensor whose type it cannot tell is left out). A node without a name is named by its first
    output. Pass the original graph, not an emulated one (whose extra Casts would be listed)."""
    from onnx import TensorProto

    import onnx

    model = _load(model)
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    nodes = list(model.graph.node)
    order = _topological_indices(nodes)
    if order != list(range(len(nodes))):  # shape inference wants the order too
        model_sorted = onnx.ModelProto()
        model_sorted.CopyFrom(model)
        del model_sorted.graph.node[:]
        model_sorted.graph.node.extend(nodes[k] for k in order)
        model, nodes = model_sorted, list(model_sorted.graph.node)
    types = tensor_types(model)
    return [(name, node.name or node.output[0], node.op_type)
            for node in nodes for name in node.output if name and types.get(name) in floats]


def _names(names: Iterable) -> list[str]:
    return [n if isinstance(n, str) else n[0] for n in names]


def _outer_names(graph) -> set[str]:
    """Names a subgraph reads from its enclosing scopes (used, not produced nor declared inside)."""
    inner = {i.name for i in graph.input} | {init.name for init in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        inner.update(o for o in node.output if o)
        used.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                used |= _outer_names(sub)
    return used - inner


def _reads(node) -> list[str]:
    """The tensors ``node`` reads: its inputs and what its subgraphs (If, Loop, Scan) read from
    the enclosing graph."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
            names += sorted(_outer_names(sub))
    return list(dict.fromkeys(names))


def _value_info(name: str, array: np.ndarray):
    from onnx import helper

    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape))


def dump_onnx(model_or_path, feeds: Mapping[str, np.ndarray], names: Iterable, *, chunk: int = 64,
              max_bytes: int | None = None, transform: Callable | None = None, threads: int | None = None,
              optimization: str = "disable", providers: list[str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Run the graph on ``feeds`` and yield ``(name, array)`` for each of ``names`` (tensor
    names, or the tuples of :func:`float_tensors`), in their order, ``chunk`` names at a time
    (and, where ``max_bytes`` is set, at most that many bytes of them, see :func:`chunks`).

    The graph runs in segments, each node once: a chunk's segment is the part of the graph its
    tensors need that no earlier segment ran, a session of its own, fed with the graph's inputs
    and with the tensors earlier segments produced that it reads. A produced tensor is held only
    until the last node that needs it has run, so no more than one chunk's arrays and the tensors
    crossing the cut are held (a large graph with every tensor as an output would not fit), and
    the whole dump costs about one run of the graph. ``transform`` (e.g.
    ``functools.partial(emulate_fp16, precision_mode=...)``) is applied to the model first.
    ONNX Runtime runs on the CPU with every graph optimisation off by default, so that each
    tensor is the one its node produced. Graph inputs and initializers asked for are yielded as
    given; another unknown name is a KeyError."""
    import onnx
    import onnxruntime as ort

    from zoobook.backends.onnxruntime_backend import _level

    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    base = _load(model_or_path)
    model = transform(base) if transform is not None else base
    del base
    graph = model.graph
    nodes = topological_nodes(graph)
    producer = {o: k for k, node in enumerate(nodes) for o in node.output if o}
    reads = [_reads(node) for node in nodes]
    initializers = {init.name: init for init in graph.initializer}
    inputs = {info.name: info for info in graph.input if info.name not in initializers}
    wanted = _names(names)
    for name in wanted:
        if name not in producer and name not in feeds and name not in initializers:
            raise KeyError(f"{name!r} is no tensor of the graph (not produced by a node, fed or an initializer)")

    def ancestors(targets: Iterable[str], done: set[int]) -> set[int]:
        todo, found = [producer[t] for t in targets if t in producer], set()
        while todo:
            k = todo.pop()
            if k in found or k in done:
                continue
            found.add(k)
            todo += [producer[i] for i in reads[k] if i in producer]
        return found

    needed = ancestors(wanted, set())  # nodes off every wanted tensor's path never run
    waiting: dict[str, int] = {}  # tensor -> needed nodes yet to run that read it
    for k in needed:
        for name in reads[k]:
            waiting[name] = waiting.get(name, 0) + 1
    options = ort.SessionOptions()
    options.graph_optimization_level = _level(optimization)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    held: dict[str, np.ndarray] = {}  # produced tensors some node yet to run reads
    early: dict[str, np.ndarray] = {}  # wanted tensors a segment made before their chunk came
    later = dict.fromkeys(wanted, 0)
    for name in wanted:
        later[name] += 1
    done: set[int] = set()
    for part in chunks(wanted, chunk=chunk, max_bytes=max_bytes,
                       sizes=tensor_bytes(model) if max_bytes is not None else None):
        for name in part:
            later[name] -= 1
        segment = sorted(ancestors(part, done))
        values: dict[str, np.ndarray] = {}
        if segment:
            made = {o for k in segment for o in nodes[k].output if o}
            fed = [n for n in dict.fromkeys(i for k in segment for i in reads[k])
                   if n not in made and n not in initializers]
            missing = [n for n in fed if n not in held and n not in feeds]
            if missing:
                raise KeyError(f"the graph reads {missing} with no value (not fed, no initializer)")
            crossing = [o for o in made if waiting.get(o, 0) > sum(o in reads[k] for k in segment)]
            ahead = [n for n in made if later.get(n, 0) > 0 and n not in part]
            outs = list(dict.fromkeys([n for n in part if n in made] + sorted(crossing) + sorted(ahead)))
            used_inits = {i for k in segment for i in reads[k] if i in initializers}
            piece = onnx.helper.make_graph(
                [nodes[k] for k in segment], f"{graph.name or 'graph'}_segment",
                [inputs[n] if n in inputs else _value_info(n, held[n]) for n in fed],
                [onnx.ValueInfoProto(name=n) for n in outs],
                [initializers[n] for n in initializers if n in used_inits])
            sub = onnx.helper.make_model(piece, opset_imports=model.opset_import, ir_version=model.ir_version)
            sub.functions.extend(model.functions)
            session = ort.InferenceSession(sub.SerializeToString(), options,
                                           providers=providers or ["CPUExecutionProvider"])
            given = {**feeds, **held}
            values = dict(zip(outs, session.run(outs, {n: given[n] for n in fed})))
            del session, sub, piece
            done.update(segment)
            for k in segment:
                for name in reads[k]:
                    waiting[name] -= 1
                    if waiting[name] == 0:
                        held.pop(name, None)
            held.update({n: values[n] for n in crossing if waiting.get(n, 0) > 0})
            early.update({n: values[n] for n in ahead})
        for name in part:
            if name in values:
                yield name, values[name]
            elif name in early:
                yield name, (early.pop(name) if later[name] == 0 else early[name])
            elif name in feeds:
                yield name, np.asarray(feeds[name])
            elif name in held:
                yield name, held[name]
            else:
                yield name, onnx.numpy_helper.to_array(initializers[name])
        del values


class HeldDump:
    """A reference dump to compare several candidates against: :func:`dump_onnx` (same
    arguments) the first time it is read, its arrays kept as they pass while they total at most
    ``hold_bytes``; read again, it gives the kept arrays instead of running the graph again, or,
    where they did not fit (or the first read stopped early), dumps once more. ``dumps`` counts
    the graph runs."""

    def __init__(self, model_or_path, feeds: Mapping[str, np.ndarray], names: Iterable, *, hold_bytes: int,
                 **options) -> None:
        self._args, self._options, self.hold_bytes = (model_or_path, feeds, list(names)), options, hold_bytes
        self._held: dict[str, np.ndarray] | None = None
        self.dumps = 0

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        if self._held is not None:
            yield from self._held.items()
            return
        self.dumps += 1
        held: dict[str, np.ndarray] | None = {}
        total = 0
        for name, array in dump_onnx(*self._args, **self._options):
            if held is not None:
                total += array.nbytes
                if total <= self.hold_bytes:
                    held[name] = array
                else:
                    held = None  # too large to keep: the next read runs the graph again
            yield name, array
        self._held = held


# ---------------------------------------------------------------------------------------------
# the comparison


def _lookup(candidate) -> Callable[[str], np.ndarray | None]:
    """A function name -> array (or None) over a mapping, a callable, or an iterable of
    ``(name, array)`` pairs read along (buffered only as far as its order runs ahead)."""
    if isinstance(candidate, Mapping) or (hasattr(candidate, "__getitem__") and hasattr(candidate, "__contains__")
                                          and not isinstance(candidate, (list, tuple))):
        return lambda name: candidate[name] if name in candidate else None
    if callable(candidate):
        return candidate
    stream = iter(candidate)
    buffer: dict[str, np.ndarray] = {}
    done = [False]

    def find(name: str):
        while name not in buffer and not done[0]:
            try:
                key, value = next(stream)
            except StopIteration:
                done[0] = True
                break
            buffer[key] = value
        return buffer.pop(name, None)

    return find


#: entries per block of :func:`tensor_row`: float64 work arrays of 512 KiB, which stay in the cache
ROW_BLOCK = 1 << 16


def _blocks(size: int) -> Iterator[slice]:
    block = ROW_BLOCK  # read at each call (a test sets it small)
    return (slice(k, min(k + block, size)) for k in range(0, size, block))


def tensor_row(reference: np.ndarray, candidate: np.ndarray, *, cosine_min: float = THRESHOLDS["cosine"],
               rel_euclidean_max: float | None = THRESHOLDS["rel_euclidean"], rel_max: float | None = None) -> dict:
    """One tensor's comparison: the metrics of :func:`zoobook.compare.compare_tensors` over the
    entries both hold finite (max_rel relative to the reference's scale, as there), ``nonfinite``
    the entries the candidate holds inf or nan where the reference is finite, ``finite`` whether
    there are none, and ``passed``: finite, cosine at least ``cosine_min``, relative Euclidean
    distance at most ``rel_euclidean_max`` and max_rel at most ``rel_max`` (each where set).

    Computed in float64 a block of :data:`ROW_BLOCK` entries at a time (sums accumulated across
    blocks), so that a large activation costs a few block-sized work arrays, not several copies
    of itself in float64."""
    ref_all, cand_all = np.asarray(reference).ravel(), np.asarray(candidate).ravel()
    if ref_all.size != cand_all.size:
        return {"shape": list(np.shape(reference)), "cosine": float("nan"), "max_abs": float("nan"),
                "max_rel": float("nan"), "rel_euclidean": float("nan"), "nonfinite": 0, "finite": True,
                "passed": False, "note": f"candidate shape {list(np.shape(candidate))}"}
    nonfinite, peak = 0, 0.0
    for part in _blocks(ref_all.size):  # the reference's scale over the entries both hold finite
        ref, cand = ref_all[part].astype(np.float64), cand_all[part].astype(np.float64)
        ref_ok, cand_ok = np.isfinite(ref), np.isfinite(cand)
        nonfinite += int(np.count_nonzero(~cand_ok & ref_ok))
        scale = np.abs(ref[ref_ok & cand_ok])
        peak = max(peak, float(scale.max(initial=0.0)))
    floor = 1e-3 * peak
    dot = ref_sq = cand_sq = diff_sq = max_abs = max_rel = 0.0
    equal = True
    for part in _blocks(ref_all.size):
        ref, cand = ref_all[part].astype(np.float64), cand_all[part].astype(np.float64)
        both = np.isfinite(ref) & np.isfinite(cand)
        if not both.all():
            ref, cand = ref[both], cand[both]
        diff = cand - ref
        dot += float(ref @ cand)
        ref_sq += float(ref @ ref)
        cand_sq += float(cand @ cand)
        diff_sq += float(diff @ diff)
        np.abs(diff, out=diff)
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        equal = equal and not diff.any()
        if peak > 0:
            scale = np.abs(ref)
            significant = scale >= floor
            if significant.any():
                max_rel = max(max_rel, float((diff[significant] / scale[significant]).max()))
    norm = np.sqrt(ref_sq) * np.sqrt(cand_sq)
    ref_norm = np.sqrt(ref_sq)
    row = {"shape": list(np.shape(reference)),
           "cosine": float(dot / norm) if norm > 0 else float(equal),
           "max_abs": max_abs, "max_rel": max_rel,
           "rel_euclidean": float(np.sqrt(diff_sq) / ref_norm) if ref_norm > 0 else max_abs,
           "nonfinite": nonfinite, "finite": nonfinite == 0}
    passed = row["finite"] and row["cosine"] >= cosine_min
    if rel_euclidean_max is not None:
        passed = passed and row["rel_euclidean"] <= rel_euclidean_max
    if rel_max is not None:
        passed = passed and row["max_rel"] <= rel_max
    row["passed"] = bool(passed)
    return row


def locate(reference, candidate, order: Iterable, *, cosine_min: float = THRESHOLDS["cosine"],
           rel_euclidean_max: float | None = THRESHOLDS["rel_euclidean"], rel_max: float | None = None) -> list[dict]:
    """One row per operator output present in both ``reference`` and ``candidate``, in the
    topological order of ``order`` (the tuples of :func:`float_tensors`, or tensor names):
    ``index`` (its place in ``order``), ``node``, ``op_type``, ``tensor``, ``shape``, ``cosine``,
    ``max_abs``, ``max_rel`` (relative to the reference tensor's scale, as
    :mod:`zoobook.compare` does), ``rel_euclidean``, ``nonfinite``, ``finite`` and ``passed``
    (see :func:`tensor_row`; cosine alone cannot see a tensor scaled by a constant, which the
    relative Euclidean distance does).

    ``reference``: a mapping or an iterable of ``(name, array)`` (e.g. :func:`dump_onnx`), read
    once. ``candidate``: a mapping, a callable name -> array (None where it has none), or an
    iterable of ``(name, array)`` in the same order (read along with the reference, so two
    dumps are compared a chunk at a time)."""
    index: dict[str, int] = {}
    about: dict[str, tuple[str, str]] = {}
    for k, item in enumerate(order):
        name, node, op_type = (item, item, "") if isinstance(item, str) else tuple(item)[:3]
        index.setdefault(name, k)
        about.setdefault(name, (node, op_type))
    find = _lookup(candidate)
    rows = []
    for name, ref in (reference.items() if isinstance(reference, Mapping) else reference):
        if name not in index:
            continue
        cand = find(name)
        if cand is None:
            continue
        node, op_type = about[name]
        rows.append({"index": index[name], "node": node, "op_type": op_type, "tensor": name,
                     **tensor_row(ref, cand, cosine_min=cosine_min, rel_euclidean_max=rel_euclidean_max,
                                  rel_max=rel_max)})
    rows.sort(key=lambda row: row["index"])
    return rows


def first_divergence(rows: Iterable[dict]) -> dict | None:
    """The first row (in graph order) that fails, or None where all pass."""
    return next((row for row in sorted(rows, key=lambda r: r["index"]) if not row["passed"]), None)


def locate_onnx(model_or_path, feeds: Mapping[str, np.ndarray], *, transform: Callable | None = None,
                chunk: int = 64, max_bytes: int | None = None, threads: int | None = None,
                reference: Iterable[tuple[str, np.ndarray]] | None = None, **thresholds) -> list[dict]:
    """:func:`locate` of the graph's own fp32 run (reference) against the same graph after
    ``transform`` (candidate; e.g. :func:`zoobook.backends.fp16.emulate_fp16`), over every float
    tensor of :func:`float_tensors`, both dumped ``chunk`` tensors at a time. ``reference``: that
    fp32 dump where the caller holds one (a :class:`HeldDump` of the same graph and feeds, read
    again for each candidate); None dumps it here."""
    model = _load(model_or_path)
    order = float_tensors(model)
    if reference is None:
        reference = dump_onnx(model, feeds, order, chunk=chunk, max_bytes=max_bytes, threads=threads)
    candidate = dump_onnx(model, feeds, order, chunk=chunk, max_bytes=max_bytes, transform=transform, threads=threads)
    return locate(reference, candidate, order, **thresholds)


# ---------------------------------------------------------------------------------------------
# Ascend's operator dump (the layout: see the module's docstring)


def acl_dump_config(dump_path: str | Path, model_name: str, *, layers: list[str] | None = None,
                    mode: str = "output", path: str | Path | None = None) -> dict:
    """The ``acl.json`` content that asks ACL for the operator dump of model ``model_name``
    (the ``.om`` file's name without its suffix) under ``dump_path``: ``{"dump": {"dump_path":
    ..., "dump_list": [{"model_name": ...}], "dump_mode": "output"}}`` (``layers``: only these
    operators). Where ``path`` is given the JSON is written there and ``dump_path`` created (ACL
    wants it to exist); give it to ``InferSession(device_id, om, acl_json_path=path)``."""
    if mode not in ("input", "output", "all"):
        raise ValueError(f"unknown dump_mode {mode!r}; choose one of input, output, all")
    entry: dict = {"model_name": model_name}
    if layers:
        entry["layer"] = list(layers)
    config = {"dump": {"dump_path": str(dump_path), "dump_list": [entry], "dump_mode": mode,
                       "dump_op_switch": "off"}}
    if path is not None:
        Path(dump_path).mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(config, indent=2) + "\n")
    return config


class DumpFormatError(ValueError):
    """A dump file this reader cannot decode; the message names the file and why."""


#: OutputDataType of the dump schema -> numpy (types numpy lacks, bf16 and the quantized, are
#: not read)
DUMP_DTYPES = {1: np.float32, 2: np.float16, 3: np.int8, 4: np.uint8, 5: np.int16, 6: np.uint16, 7: np.int32,
               8: np.int64, 9: np.uint32, 10: np.uint64, 11: np.bool_, 12: np.float64, 16: np.complex64,
               17: np.complex128}
DUMP_DTYPE_NAMES = {0: "DT_UNDEFINED", 1: "DT_FLOAT", 2: "DT_FLOAT16", 3: "DT_INT8", 4: "DT_UINT8", 5: "DT_INT16",
                    6: "DT_UINT16", 7: "DT_INT32", 8: "DT_INT64", 9: "DT_UINT32", 10: "DT_UINT64", 11: "DT_BOOL",
                    12: "DT_DOUBLE", 13: "DT_STRING", 16: "DT_COMPLEX64", 17: "DT_COMPLEX128", 27: "DT_BF16",
                    28: "DT_INT4"}
#: OutputFormat of the dump schema, the names of the common ones
DUMP_FORMAT_NAMES = {0: "NCHW", 1: "NHWC", 2: "ND", 3: "NC1HWC0", 4: "FRACTAL_Z", 5: "NC1C0HWPAD", 6: "NHWC1C0",
                     7: "FSR_NCHW", 8: "FRACTAL_DECONV", 9: "C1HWNC0", 10: "FRACTAL_DECONV_TRANSPOSE",
                     11: "FRACTAL_DECONV_SP_STRIDE_TRANS", 12: "NC1HWC0_C04", 13: "FRACTAL_Z_C04", 14: "CHWN",
                     15: "FRACTAL_DECONV_SP_STRIDE8_TRANS", 16: "HWCN", 17: "NC1KHKWHWC0", 18: "BN_WEIGHT",
                     19: "FILTER_HWCK", 25: "C1HWNCoC0", 26: "MD", 27: "NDHWC", 28: "FRACTAL_ZZ", 29: "FRACTAL_NZ",
                     30: "NCDHW", 31: "DHWCN", 32: "NDC1HWC0", 33: "FRACTAL_Z_3D", 34: "CN", 35: "NC",
                     36: "DHWNC", 37: "FRACTAL_Z_3D_TRANSPOSE", 38: "FRACTAL_ZN_LSTM", 39: "FRACTAL_Z_G",
                     47: "NCL", 49: "C1HWC0"}
PLAIN_FORMATS = {0, 2, 30, 35, 47}  # NCHW, ND, NCDHW, NC, NCL: row-major in the tensor's own axes
NC1HWC0 = 3


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise DumpFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise DumpFormatError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field_number, wire_type, value)`` of a serialized protobuf message: ints for varints
    and fixed-width fields, bytes for length-delimited ones."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise DumpFormatError("truncated fixed64")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise DumpFormatError("truncated length-delimited field")
            value, pos = bytes(buf[pos:pos + size]), pos + size
        elif wire == 5:
            if pos + 4 > len(buf):
                raise DumpFormatError("truncated fixed32")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise DumpFormatError(f"unsupported wire type {wire} (field {number})")
        yield number, wire, value


def _dims(buf: bytes) -> list[int]:
    """A ``Shape`` message: repeated uint64 dim = 1, packed or not."""
    dims: list[int] = []
    for number, wire, value in _fields(buf):
        if number != 1:
            continue
        if wire == 2:  # packed
            pos = 0
            while pos < len(value):
                dim, pos = _varint(value, pos)
                dims.append(dim)
        else:
            dims.append(int(value))
    return dims


@dataclass
class DumpTensor:
    """One input or output entry of a dump file (the bytes still in the device format)."""

    data_type: int = 0
    format: int = 0
    shape: list[int] = field(default_factory=list)
    original_shape: list[int] = field(default_factory=list)
    size: int = 0
    data: bytes | None = None
    original_name: str = ""
    original_index: int = 0


@dataclass
class DumpRecord:
    """One dump file: the operator (its exact name from the file's ``DumpData``, else the one
    its file name gives), its time, its inputs and outputs (still in the device's format), and
    the problems met decoding them where :func:`read_ascend_dump` was told to skip them."""

    path: Path
    op_type: str
    op_name: str
    timestamp: int
    inputs: list[DumpTensor]
    outputs: list[DumpTensor]
    problems: list[str] = field(default_factory=list)


def _tensor_entry(buf: bytes, output: bool) -> DumpTensor:
    tensor = DumpTensor()
    data_field, size_field, original_shape_field = (5, 6, 7) if output else (4, 5, 6)
    for number, _, value in _fields(buf):
        if number == 1:
            tensor.data_type = int(value)
        elif number == 2:
            tensor.format = int(value)
        elif number == 3:
            tensor.shape = _dims(value)
        elif output and number == 4:
            for sub, _, sub_value in _fields(value):
                if sub == 1:
                    tensor.original_name = sub_value.decode("utf-8", "replace")
                elif sub == 2:
                    tensor.original_index = int(sub_value)
        elif number == data_field:
            tensor.data = value or None
        elif number == size_field:
            tensor.size = int(value)
        elif number == original_shape_field:
            tensor.original_shape = _dims(value)
    return tensor


_DUMP_NAME = re.compile(r"^(?P<type>[A-Za-z0-9_-]+)\.(?P<name>[A-Za-z0-9_-]+)(?P<numbers>(\.\d+){2,})$")


def is_dump_file(path: str | Path) -> bool:
    """Whether the file name is that of an operator dump (``{op_type}.{op_name}.{numbers}``)."""
    match = _DUMP_NAME.match(Path(path).name)
    return bool(match) and match["type"] != "Opdebug"


def read_dump_file(path: str | Path) -> DumpRecord:
    """Parse one dump file (see the module's docstring); its tensors' bytes are attached, not
    yet decoded (:func:`dump_array` does)."""
    path = Path(path)
    blob = path.read_bytes()
    match = _DUMP_NAME.match(path.name)
    if len(blob) < 8:
        raise DumpFormatError(f"{path}: {len(blob)} bytes, shorter than the 8-byte header length")
    (header,) = struct.unpack_from("<Q", blob, 0)
    if header > len(blob) - 8:
        raise DumpFormatError(f"{path}: header length {header} exceeds the file ({len(blob)} bytes)")
    dump_time, op_name, inputs, outputs = 0, "", [], []
    try:
        for number, _, value in _fields(blob[8:8 + header]):
            if number == 2:
                dump_time = int(value)
            elif number == 3:
                outputs.append(_tensor_entry(value, output=True))
            elif number == 4:
                inputs.append(_tensor_entry(value, output=False))
            elif number == 6:
                op_name = value.decode("utf-8", "replace")
    except DumpFormatError as err:
        raise DumpFormatError(f"{path}: not a DumpData message ({err})") from None
    offset = 8 + header
    for tensor in (*inputs, *outputs):  # raw bytes: every input, then every output, in order
        if tensor.data is not None:
            continue
        if offset + tensor.size > len(blob):
            raise DumpFormatError(f"{path}: the data of its tensors ({tensor.size} bytes at {offset}) runs past "
                                  f"the end of the file ({len(blob)} bytes)")
        tensor.data = blob[offset:offset + tensor.size]
        offset += tensor.size
    numbers = [int(n) for n in match["numbers"].strip(".").split(".")] if match else []
    stamp = dump_time or next((n for n in numbers if n >= 10 ** 12), numbers[-1] if numbers else 0)
    return DumpRecord(path, match["type"] if match else "", op_name or (match["name"] if match else path.name),
                      stamp, inputs, outputs)


def dump_array(tensor: DumpTensor, where: str = "") -> np.ndarray:
    """The numpy array of a dump entry, in the framework's layout: plain formats reshaped,
    NC1HWC0 converted back to NCHW; other formats and data types: :class:`DumpFormatError`
    naming ``where`` (the file and entry) and the format."""
    if tensor.data_type not in DUMP_DTYPES:
        name = DUMP_DTYPE_NAMES.get(tensor.data_type, f"data type {tensor.data_type}")
        raise DumpFormatError(f"{where}: {name} is not supported (readable: float32, float16, int, bool, float64)")
    dtype = np.dtype(DUMP_DTYPES[tensor.data_type])
    data = tensor.data or b""
    shape = list(tensor.shape)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dtype.itemsize != len(data):
        raise DumpFormatError(f"{where}: shape {shape} of {dtype} needs {count * dtype.itemsize} bytes, "
                              f"the entry holds {len(data)}")
    flat = np.frombuffer(data, dtype=dtype)
    fmt = DUMP_FORMAT_NAMES.get(tensor.format, f"format {tensor.format}")
    if tensor.format in PLAIN_FORMATS:
        original = list(tensor.original_shape)
        if original and int(np.prod(original, dtype=np.int64)) == count:
            return flat.reshape(original)
        return flat.reshape(shape)
    if tensor.format == NC1HWC0:
        if len(shape) != 5:
            raise DumpFormatError(f"{where}: NC1HWC0 with a shape of {len(shape)} axes ({shape}), not 5")
        n, c1, h, w, c0 = shape
        original = list(tensor.original_shape)
        if len(original) != 4:
            raise DumpFormatError(f"{where}: NC1HWC0 without a 4-axis original shape ({original}); cannot tell "
                                  "the channel count")
        channels = original[1]
        if not (c1 - 1) * c0 < channels <= c1 * c0:
            raise DumpFormatError(f"{where}: NC1HWC0 shape {shape} cannot hold the {channels} channels of {original}")
        nchw = flat.reshape(n, c1, h, w, c0).transpose(0, 1, 4, 2, 3).reshape(n, c1 * c0, h, w)
        return np.ascontiguousarray(nchw[:, :channels]).reshape(original)
    raise DumpFormatError(f"{where}: format {fmt} is not supported (readable: NCHW, ND, NCDHW, NC, NCL, and NC1HWC0 "
                          "converted to NCHW); dump this operator in a plain format or convert it with msaccucmp")


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def dump_files(folder: str | Path, *, data_index: int | None = None) -> list[Path]:
    """The operator dump files of one model run under ``folder`` (a ``dump_path`` or any folder
    below it). Where the files lie in several run folders (several ``data_index``, times,
    devices or models), ``data_index`` picks the run folders of that name; still more than one
    is an error listing them, so that the reader never mixes runs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such dump folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_dump_file(p))
    if data_index is not None:
        files = [p for p in files if p.parent.name == str(data_index)]
    runs = sorted({p.parent for p in files})
    if not runs:
        said = f" with data_index {data_index}" if data_index is not None else ""
        raise FileNotFoundError(f"{folder}: no operator dump files{said} ({{op_type}}.{{op_name}}.{{task_id}}."
                                "{stream_id}.{timestamp})")
    if len(runs) > 1:
        shown = ", ".join(str(r.relative_to(folder)) for r in runs[:6]) + (" ..." if len(runs) > 6 else "")
        raise ValueError(f"{folder}: dumps of {len(runs)} runs ({shown}); pass data_index or the folder of one run")
    return files


def read_ascend_dump(folder: str | Path, *, data_index: int | None = None, by: str = "original",
                     errors: str = "raise", records: list | None = None) -> dict[str, list[np.ndarray | None]]:
    """The output arrays of every operator of one run of an ``.om`` model, from the operator
    dump that ``acl_dump_config`` asks for: ``{op name: [output 0, output 1, ...]}`` (None at an
    index no file gave). ``by="original"`` (default) keys each output by the ONNX node it stands
    for where the dump records one (``original_op``: fused operators), else by ATC's operator
    name; ``by="atc"`` keeps ATC's names. Where two files give the same original output (a
    format conversion ATC inserted after it, say), the operator of that name wins, else the
    earliest. An output this reader cannot decode (a fractal format, bf16) is a
    :class:`DumpFormatError` naming the file and the format; with ``errors="skip"`` it is left
    None and the message kept in its record's ``problems``. ``records``, where given a list,
    receives each file's :class:`DumpRecord`."""
    if by not in ("original", "atc"):
        raise ValueError(f"unknown by={by!r}; choose original or atc")
    if errors not in ("raise", "skip"):
        raise ValueError(f"unknown errors={errors!r}; choose raise or skip")
    parsed = [read_dump_file(p) for p in dump_files(folder, data_index=data_index)]
    parsed.sort(key=lambda r: (r.timestamp, r.path.name))
    if records is not None:
        records.extend(parsed)
    result: dict[str, list[np.ndarray | None]] = {}
    owner: dict[tuple[str, int], str] = {}
    for record in parsed:
        for k, tensor in enumerate(record.outputs):
            if by == "original" and tensor.original_name:
                key, slot = tensor.original_name, tensor.original_index
            else:
                key, slot = record.op_name, k
            taken = owner.get((key, slot))
            if taken is not None and (taken == key or record.op_name != key):
                continue
            try:
                array = dump_array(tensor, f"{record.path} output {k}")
            except DumpFormatError as err:
                if errors == "raise":
                    raise
                record.problems.append(str(err))
                continue
            outputs = result.setdefault(key, [])
            outputs.extend([None] * (slot + 1 - len(outputs)))
            outputs[slot] = array
            owner[(key, slot)] = record.op_name
    return result


def ascend_tensors(model, dump: Mapping[str, list]) -> dict[str, np.ndarray]:
    """A dump of :func:`read_ascend_dump` named as the ONNX graph names its tensors: output
    ``k`` of the entry of node ``n`` is the graph's tensor ``n.output[k]``. Node names are
    matched as they are, then as the dump's file names reduce them (``[A-Za-z0-9_-]``)."""
    model = _load(model)
    sanitized = {_sanitize(k): k for k in dump}
    out: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        key = node.name if node.name in dump else sanitized.get(_sanitize(node.name)) if node.name else None
        if key is None:
            continue
        for k, name in enumerate(node.output):
            arrays = dump[key]
            if name and k < len(arrays) and arrays[k] is not None:
                out[name] = arrays[k]
    return out


# ---------------------------------------------------------------------------------------------
# the picture


def plot_cosine(rows: list[dict], title: str = "Per-operator agreement", *,
                cosine_min: float = THRESHOLDS["cosine"]):
    """Cosine similarity of each operator output along the graph (left axis), log10 of its max
    relative error (right axis), the cosine threshold, failing rows and the first divergence
    marked. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.8))
    x = np.array([row["index"] for row in rows], dtype=float)
    cosine = np.array([row["cosine"] for row in rows], dtype=float)
    rel = np.array([row["max_rel"] for row in rows], dtype=float)
    failed = np.array([not row["passed"] for row in rows], dtype=bool)
    ax.plot(x, cosine, ".-", lw=1, color="tab:blue", label="cosine")
    ax.axhline(cosine_min, ls="--", lw=1, color="tab:red", label=f"cosine threshold {cosine_min:g}")
    if failed.any():
        ax.plot(x[failed], np.nan_to_num(cosine[failed], nan=cosine_min), "x", color="tab:red", label="fails")
    ax.set_xlabel("operator output (graph order)")
    ax.set_ylabel("cosine similarity")
    finite = cosine[np.isfinite(cosine)]
    low = min(float(finite.min()) if finite.size else cosine_min, cosine_min)
    ax.set_ylim(low - 0.05 * max(1.0 - low, 1e-3), 1.0 + 0.05 * max(1.0 - low, 1e-3))
    right = ax.twinx()
    right.plot(x, np.log10(np.maximum(np.nan_to_num(rel, nan=0.0), 1e-12)), lw=0.8, color="tab:gray",
               alpha=0.7, label="log10 max_rel")
    right.set_ylabel("log10 max relative error")
    first = first_divergence(rows)
    if first is not None:
        ax.axvline(first["index"], ls=":", color="black")
        ax.annotate(f"first divergence: {first['node']} ({first['op_type']})", (first["index"], low),
                    xytext=(4, 6), textcoords="offset points", fontsize=8)
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="lower left")
    ax.set_title(title)
    fig.tight_layout()
    return fig
