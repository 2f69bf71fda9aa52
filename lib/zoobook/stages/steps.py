"""The stages, written once for every model: each takes a :class:`~zoobook.stages.run.Run`
and calls its port's hooks (:mod:`zoobook.stages.port`) for what the model does its own way.

Artifacts under ``runs/<profile>/<model>/artifacts/``::

    <port.manifest_file>, <port.data_files>   01-data
    export.json, <port.onnx_files>            02-export ({graph: {batch: file}})
    compiled/<backend>.json and artifacts     03-convert ({graph: {batch size: artifact}})
    outputs/<backend>/<item><suffix>          04-infer (resumable)
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from tqdm import tqdm

from zoobook import bench
from zoobook.backends import (EMBEDDED_DEFAULT, REFERENCE, benchmark_candidates, capabilities, get_backend,
                              with_reference)
from zoobook.backends.onnxruntime_backend import OnnxRuntimeSession
from zoobook.compare import judge_agreement as judge_agreement_rows
from zoobook.export import graph_flops, onnx_io
from zoobook.resume import file_stamps, resumable_folder
from zoobook.stages.run import EXPORT_RECORD, Run, compiled_record

# ---------------------------------------------------------------------------------------
# 01-data


def locate_data(run: Run, **params):
    """The dataset and its provenance (real under ``data/`` when present, else generated)."""
    return run.port.locate(run, **params)


def prepare_data(run: Run, dataset, provenance: dict, **params) -> dict:
    """Check and preprocess ``dataset`` as the port does; returns the manifest it wrote."""
    manifest = run.port.prepare(run, dataset, provenance, **params)
    run.write_json(run.port.manifest_file, manifest)
    return manifest


# ---------------------------------------------------------------------------------------
# 02-export


def export(run: Run, *, opset: int = 11, weights: str | None = None, require_official: bool = False,
           **params) -> dict:
    """Build the network and load its weights (official if found, else the recipe unless
    ``require_official``), export the port's graph(s) (traced, simplified with onnxsim, checked
    with ``onnx.checker``), check each file's names and shapes against the port's, and compare
    ONNX Runtime with PyTorch per graph on the run's data (the model's fp32 tolerance).
    ``params`` go to the port's ``export_graphs`` (e.g. batch sizes, a top-k)."""
    port = run.port
    model, provenance = port.build(weights, allow_recipe=not require_official)
    run.use_model(model, provenance)
    graphs = port.export_graphs(run, model, run.folder, opset=opset, **params)
    record = {graph: {"onnx": {batch: str(summary["path"]) for batch, summary in by_batch.items()},
                      "summaries": {batch: {k: v for k, v in summary.items() if k != "path"}
                                    for batch, summary in by_batch.items()}}
              for graph, by_batch in graphs.items()}
    # written before the checks, so that the hooks below see it (run.exported); a check that
    # fails fails the stage, and its record says so
    run.write_json(EXPORT_RECORD, {"weights": provenance, "opset": opset, "graphs": record,
                                   **port.export_extra(run, **params)})
    tolerance = port.tolerance("fp32")
    isolated = port.isolate_checks(run)
    parity, io = [], {}
    for graph, by_batch in record.items():
        for batch, path in tqdm(by_batch["onnx"].items(), desc=f"parity {graph}", disable=len(by_batch["onnx"]) < 2):
            found, expected = onnx_io(path), port.expected_io(run, graph, batch)
            if found != expected:
                raise AssertionError(f"{path}: graph I/O {found} differs from the port's {expected}")
            io.setdefault(graph, found)
            feeds = port.feeds(run, graph, 1 if batch == "*" else int(batch))
            reference = port.reference_outputs(run, graph, feeds)
            candidate = _run_graph(None, path, feeds, port, isolated=isolated)
            parity += [{**_label(graph, batch, len(record), len(by_batch["onnx"])), **row}
                       for row in port.compare(graph, reference, candidate, tolerance)]
    return {"graphs": record, "io": io, "parity": parity, "weights": provenance,
            "summary": _summary(record)}


def _label(graph: str, batch: str, graphs: int, batches: int) -> dict:
    """The ``graph`` column of a parity row: the graph where a model has several, the batch
    where a graph has several files or artifacts; nothing where there is one of each."""
    parts = ([graph] if graphs > 1 else []) + ([f"batch {batch}"] if batches > 1 and batch != "*" else [])
    return {"graph": ", ".join(parts)} if parts else {}


def _summary(record: dict) -> dict:
    """One line per exported file: graph, batch, nodes, size."""
    return {f"{graph}" + ("" if batch == "*" else f" (batch {batch})"): summary
            for graph, entry in record.items() for batch, summary in entry["summaries"].items()}


# ---------------------------------------------------------------------------------------
# 03-convert


def convert(run: Run, backend: str = "auto", *, batch_sizes: list[int] | None = None,
            backend_options: dict | None = None) -> dict:
    """Compile every exported graph for ``backend`` at each of ``batch_sizes`` (default:
    the exported ones, or 1 for a dynamic batch) and compare each compiled artifact with
    plain ONNX Runtime on the exported graph, on the run's data. A dynamic-batch graph is
    compiled once for a backend without a static batch; a static-batch backend (ATC) gets one
    artifact per batch size. The tolerance is the model's for the backend's precision. A
    backend with nothing to compile (the PyTorch reference) records that and returns."""
    info = capabilities(backend)
    if not info.compiles:
        return {"backend": info.name, "artifacts": {}, "parity": [], "device": {},
                "note": f"{info.name} runs the nn.Module eagerly: nothing to compile"}
    port = run.port
    options = backend_options or {}
    engine = get_backend(info.name, **{**port.backend_defaults.get(info.name, {}), **options})
    folder = run.path(f"compiled/{info.name}")
    folder.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, dict[str, str]] = {}
    rewrites: dict[str, dict] = {}
    jobs = []
    for graph, entry in run.exported["graphs"].items():
        dynamic = "*" in entry["onnx"]
        sizes = [int(bs) for bs in (batch_sizes or run.exported_batch_sizes(graph) or [1])]
        for bs in sizes:
            run.onnx(graph, bs)  # an error naming the exported sizes where ``bs`` is not one
        if dynamic and not info.static_batch:  # one artifact serves every batch size
            jobs.append((graph, sizes, f"{graph}"))
        else:
            jobs += [(graph, [bs], f"{graph}_bs{bs}" if dynamic or len(entry["onnx"]) > 1 else graph) for bs in sizes]
    for graph, sizes, name in tqdm(jobs, desc=f"compile {info.name}", disable=len(jobs) < 2):
        source = run.onnx(graph, sizes[0])
        target, note = port.before_compile(run, info.compiler, source, folder)
        if note:
            rewrites[graph] = note
        shapes = {inp: [sizes[0] if isinstance(d, str) else d for d in dims]
                  for inp, dims in onnx_io(target)["inputs"].items()}
        artifact = str(engine.compile(target, folder, input_shapes=shapes, name=name))
        artifacts.setdefault(graph, {}).update({str(bs): artifact for bs in sizes})
    record = {"backend": info.name, "options": options, "device": engine.device(), "artifacts": artifacts,
              "rewrites": rewrites}
    run.write_json(compiled_record(info.name), record)
    tolerance = port.tolerance(info.precision)
    isolated = port.isolate_checks(run)
    parity = []
    for graph, by_batch in artifacts.items():
        checked = set()
        for bs, artifact in by_batch.items():
            if artifact in checked:
                continue
            checked.add(artifact)
            feeds = port.feeds(run, graph, int(bs))
            reference = _run_graph(None, run.onnx(graph, int(bs)), feeds, port, isolated=isolated)
            candidate = _run_graph(info.name, artifact, feeds, port, options, isolated=isolated)
            parity += [{**_label(graph, bs, len(artifacts), len(set(by_batch.values()))), **row}
                       for row in port.compare(graph, reference, candidate, tolerance)]
    return {**record, "parity": parity}


#: the locator's chunks: at most this many tensors, and this many bytes of them, per dump run
LOCATE_CHUNK, LOCATE_BYTES = 256, 1 << 30


def locate(run: Run, candidate: str = "onnxruntime-fp16", *, graph: str | None = None, batch_size: int = 1,
           backend_options: dict | None = None, dump: str | Path | None = None, suggest: int = 3,
           chunk: int = LOCATE_CHUNK, max_bytes: int = LOCATE_BYTES) -> dict:
    """Per-operator divergence of ``candidate`` from the exported graph under plain fp32 ONNX
    Runtime, on the first batch of the run's data (:func:`zoobook.locate.locate`): one row per
    float tensor an operator produces, in graph order, with the first that fails.

    For the fp16 emulation the candidate is the same graph emulated with the backend's options
    (``precision_mode``, ``keep_dtype``). With ``suggest``, the operator type of the first
    divergence is then kept in fp32 and the graph located again, up to ``suggest`` times or until
    no operator fails: ``suggested_keep_dtype`` is the list that recovers, as ATC's
    ``--keep_dtype`` would take it (empty where nothing fails; None where ``suggest`` rounds did
    not recover: ``rounds`` shows what each list left failing). Where the first divergence is of
    a type already kept, it fails on inputs that arrive rounded: the next round also keeps the
    types of the operators that produce them. For Ascend, ``dump`` names the operator dump of the
    compiled model on the same batch (:func:`zoobook.locate.acl_dump_config`), read with
    :func:`zoobook.locate.read_ascend_dump`."""
    import functools

    from zoobook import locate as locator
    from zoobook.backends.fp16 import emulate_fp16

    info = capabilities(candidate)
    graph = run.graph_name(graph)
    source = run.onnx(graph, batch_size)
    feeds = run.port.feeds(run, graph, batch_size)
    options = {**run.port.backend_defaults.get(info.name, {}), **(backend_options or {})}
    order = locator.float_tensors(source)
    size = {"chunk": chunk, "max_bytes": max_bytes}
    rounds = []
    if dump is not None:
        reference = locator.dump_onnx(source, feeds, order, **size)
        rows = locator.locate(reference, locator.ascend_tensors(source, locator.read_ascend_dump(dump)), order)
        rounds.append({"keep_dtype": [], "rows": rows})
    elif info.emulates:
        keep = options.get("keep_dtype") or []
        keep = [k.strip() for k in (keep.split(",") if isinstance(keep, str) else keep) if k.strip()]
        mode = options.get("precision_mode") or "force_fp16"
        producers = _producer_types(source)
        # every round compares against the same fp32 run: dumped once, held for the next rounds
        reference = locator.HeldDump(source, feeds, order, hold_bytes=max_bytes if suggest > 0 else 0, **size)
        for _ in range(1 + max(suggest, 0)):
            transform = functools.partial(emulate_fp16, precision_mode=mode, keep_dtype=keep)
            rows = locator.locate_onnx(source, feeds, transform=transform, reference=reference, **size)
            rounds.append({"keep_dtype": list(keep), "rows": rows})
            first = locator.first_divergence(rows)
            if first is None or len(rounds) > suggest:
                break
            more = _types_to_keep(first, keep, producers)
            if not more:
                break
            keep += more
    else:
        raise ValueError(f"locate compares {info.name} only through an operator dump: give dump=FOLDER "
                         "(zoobook.locate.acl_dump_config tells the device to write one)")
    rows = rounds[0]["rows"]
    recovered = locator.first_divergence(rounds[-1]["rows"]) is None
    return {"candidate": info.name, "graph": graph, "batch_size": batch_size, "options": options,
            "rows": rows, "first": locator.first_divergence(rows),
            "rounds": [{"keep_dtype": r["keep_dtype"], "operators": len(r["rows"]),
                        "failing": sum(not row["passed"] for row in r["rows"]),
                        "first_divergence": (locator.first_divergence(r["rows"]) or {}).get("node"),
                        "lowest_cosine": min((row["cosine"] for row in r["rows"]), default=None)}
                       for r in rounds],
            "suggested_keep_dtype": rounds[-1]["keep_dtype"] if recovered else None,
            "recovered": recovered}


def _producer_types(source) -> dict[str, list[str]]:
    """{node name: the op types of the nodes that produce its inputs} of an ONNX graph (nodes
    named as :func:`zoobook.locate.float_tensors` names them)."""
    import onnx

    nodes = onnx.load(str(source), load_external_data=False).graph.node
    made_by = {out: node.op_type for node in nodes for out in node.output if out}
    return {node.name or node.output[0]: list(dict.fromkeys(made_by[i] for i in node.input if i in made_by))
            for node in nodes}


def _types_to_keep(first: dict, keep: list[str], producers: dict[str, list[str]]) -> list[str]:
    """The operator types the next round of :func:`locate` keeps in fp32 besides ``keep``: the
    first divergence's type, or where it is kept already (it fails on rounded inputs) the types
    of the operators that feed it; nothing new where those are kept too."""
    if first["op_type"] not in keep and first["node"] not in keep:
        return [first["op_type"]]
    return [t for t in producers.get(first["node"], []) if t not in keep]


def failing_graphs(parity: list[dict], graphs: list[str]) -> list[str]:
    """The graphs among ``graphs`` (a model's exported graphs, in order) with a parity row of
    :func:`convert` that failed. Rows name their graph only where a model has several."""
    failed = [row for row in parity if not row["passed"]]
    if len(graphs) == 1:
        return list(graphs) if failed else []
    return [g for g in graphs if any(row.get("graph", "").split(",")[0] == g for row in failed)]


def graphs_to_locate(run: Run, fp16_parity: list[dict] | None, locate: bool | None) -> list[str] | None:
    """The graphs 03-convert's ``locate`` parameter asks for, as :func:`locate_graphs` takes them:
    False, or None without an fp16 parity (the emulation was not compiled): none; None: those
    whose fp16 parity failed (:func:`failing_graphs`); True: every exported graph (None)."""
    if locate is False or locate is None and fp16_parity is None:
        return []
    if locate is None:
        return failing_graphs(fp16_parity, list(run.exported["graphs"]))
    return None


def locate_graphs(run: Run, candidate: str = "onnxruntime-fp16", *, graphs: list[str] | None = None,
                  **options) -> list[dict]:
    """:func:`locate` on each of ``graphs`` (None: every exported graph), in the export's order."""
    names = list(run.exported["graphs"]) if graphs is None else [run.graph_name(g) for g in graphs]
    return [locate(run, candidate, graph=g, **options)
            for g in tqdm(names, desc=f"locate {candidate}", disable=len(names) < 2)]


def located_metrics(results: list[dict]) -> dict:
    """The record's metrics of :func:`locate_graphs`: ``first_divergence`` (the first failing
    operator, ``graph: node`` where several graphs were located; None where none fails),
    ``suggested_keep_dtype`` (the operator types to keep in fp32 so that every located graph holds,
    the union of each graph's list; None where a graph did not recover), ``located`` (the graphs)."""
    several = len(results) > 1
    firsts = [(r["graph"], r["first"]["node"]) for r in results if r["first"] is not None]
    suggested = None
    if all(r["recovered"] for r in results):
        suggested = sorted({t for r in results for t in r["suggested_keep_dtype"]})
    return {"located": [r["graph"] for r in results],
            "first_divergence": (f"{firsts[0][0]}: {firsts[0][1]}" if several else firsts[0][1]) if firsts else None,
            "suggested_keep_dtype": suggested}


def located_tables(results: list[dict], worst: int = 10) -> dict[str, list[dict]]:
    """The record's tables of :func:`locate_graphs`: ``locate`` (:func:`locate_rows` of each graph)
    and ``locate_rounds`` (each keep list tried), with a ``graph`` column where there are several."""
    several = len(results) > 1

    def named(r: dict, row: dict) -> dict:
        return {"graph": r["graph"], **row} if several else row

    return {"locate": [named(r, row) for r in results for row in locate_rows(r, worst)],
            "locate_rounds": [named(r, row) for r in results for row in r["rounds"]]}


def locate_rows(result: dict, worst: int = 10) -> list[dict]:
    """The record's view of :func:`locate`: the first divergence and the ``worst`` operators by
    cosine, in graph order."""
    rows = result["rows"]
    keep = sorted(rows, key=lambda r: (r["cosine"] if r["cosine"] == r["cosine"] else -1.0))[:worst]
    if result["first"] is not None and result["first"] not in keep:
        keep.append(result["first"])
    return [{"index": r["index"], "node": r["node"], "op_type": r["op_type"], "cosine": r["cosine"],
             "max_abs": r["max_abs"], "max_rel": r["max_rel"], "nonfinite": r["nonfinite"], "passed": r["passed"],
             "first": r is result["first"]} for r in sorted(keep, key=lambda r: r["index"])]


def _run_graph(backend: str | None, artifact: str | Path, feeds: dict, port, options: dict | None = None, *,
               isolated: bool = False) -> dict[str, np.ndarray]:
    """One run of ``artifact`` on ``feeds``: plain ONNX Runtime without optimisation for
    ``backend`` None (the exported graph as it is), else the backend's session; in a process
    of its own where ``isolated`` (large graphs: one session's arena stays out of the next)."""
    if isolated:
        return bench.run_isolated(_graph_worker, backend, str(artifact), feeds,
                                  {**port.backend_defaults.get(backend or "onnxruntime", {}), **(options or {})})[0]
    return _graph_worker(backend, str(artifact), feeds,
                         {**port.backend_defaults.get(backend or "onnxruntime", {}), **(options or {})})


def _graph_worker(backend: str | None, artifact: str, feeds: dict, options: dict) -> dict[str, np.ndarray]:
    if backend is None:
        with OnnxRuntimeSession(artifact, optimization="disable", **options) as session:
            return session.run(feeds)
    with get_backend(backend, **options).open(artifact) as session:
        return session.run(feeds)


# ---------------------------------------------------------------------------------------
# Sessions


def open_session(run: Run, backend: str, *, graph: str | None = None, batch_size: int = 1,
                 backend_options: dict | None = None, uncompiled: bool = False):
    """A session on ``graph`` for ``backend``: PyTorch running the run's network for the
    reference, else the artifact 03-convert compiled for ``batch_size``. With
    ``uncompiled``, a backend that can open ONNX itself (ONNX Runtime) opens the exported
    graph when 03-convert has not compiled it."""
    info = capabilities(backend)
    graph = run.graph_name(graph)
    if info.reference:
        return run.port.reference_session(run, graph)
    options = {**run.port.backend_defaults.get(info.name, {}), **(backend_options or {})}
    record = run.compiled(info.name)
    if record is None and uncompiled and info.runs_onnx:
        return get_backend(info.name, **options).open(run.onnx(graph, batch_size))
    if record is None:
        raise FileNotFoundError(f"{run.path(compiled_record(info.name))}: not found; run stage 03-convert of "
                                f"{run.name} with backend {info.name} first")
    compiled = record["artifacts"].get(graph, {})
    artifact = compiled.get(str(batch_size))
    if artifact is None and compiled and not info.static_batch and run.exported_batch_sizes(graph) is None:
        artifact = next(iter(compiled.values()))  # one artifact with a dynamic batch serves every size
    if artifact is None:
        raise KeyError(f"{run.name}: no {info.name} artifact of {graph} for batch size {batch_size}; converted: "
                       f"{sorted(record['artifacts'].get(graph, {}), key=int)} (rerun 03-convert with "
                       "batch_sizes including it)")
    return get_backend(info.name, **options).open(artifact)


# ---------------------------------------------------------------------------------------
# 04-infer


def outputs_dir(run: Run, backend: str) -> Path:
    return run.path(run.port.output_files.format(backend=backend)).parent


def output_path(run: Run, backend: str, item) -> Path:
    return outputs_dir(run, backend) / f"{run.port.item_name(run, item)}{run.port.output_suffix}"


def infer(run: Run, backend: str, *, batch_size: int = 1, resume: bool = True,
          backend_options: dict | None = None, **params) -> dict:
    """Run every input through ``backend`` and save its outputs per item
    (``outputs/<backend>/``), with progress. Batches of ``batch_size``; a last partial batch
    is padded (with copies of its last item) where the session takes a fixed batch, and the
    padding's outputs discarded. With ``resume``, items already saved are kept, as long as
    the data, the weights, the compiled artifacts and the port's own key are those they were
    made from. A port whose inference is not such a loop (a tracker) gives its own
    ``infer`` hook, called with the same arguments."""
    info = capabilities(backend)
    port = run.port
    if hasattr(port, "infer"):
        return port.infer(run, info.name, batch_size=batch_size, resume=resume, backend_options=backend_options,
                          **params)
    if params:
        raise TypeError(f"{run.name}'s 04-infer takes no parameters {sorted(params)}")
    items = port.items(run)
    key = {"items": [port.item_name(run, i) for i in items], "dataset": run.dataset,
           "weights": run.weights["sha256"], "artifacts": file_stamps(run.compiled_files(info.name)),
           **port.outputs_key(run)}
    folder = resumable_folder(outputs_dir(run, info.name), key, resume=resume, pattern=f"*{port.output_suffix}")
    todo = [i for i in items if not output_path(run, info.name, i).is_file()]
    fixed = info.compiles and (info.static_batch or run.exported_batch_sizes() is not None)
    start, calls = time.perf_counter(), 0
    with open_session(run, info.name, batch_size=batch_size, backend_options=backend_options) as session:
        for first in tqdm(range(0, len(todo), batch_size), desc=f"infer {info.name} bs{batch_size}"):
            chunk = todo[first:first + batch_size]
            padded = chunk + [chunk[-1]] * (batch_size - len(chunk)) if fixed else chunk
            outputs = session.run(port.read_batch(run, padded))
            calls += 1
            for row, item in enumerate(chunk):
                port.save_output(folder / f"{port.item_name(run, item)}{port.output_suffix}",
                                 {k: v[row:row + 1] for k, v in outputs.items()})
        device_times = session.device_times_ms()
    return {"items": len(items), "computed": len(todo), "skipped": len(items) - len(todo), "batch_size": batch_size,
            "calls": calls, "seconds": round(time.perf_counter() - start, 2),
            "device_time_ms_total": round(sum(device_times), 3) if device_times else None}


def load_outputs(run: Run, backend: str, item) -> dict[str, np.ndarray]:
    """The outputs 04-infer saved for ``item`` (npz files)."""
    path = output_path(run, backend, item)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved outputs; run 04-infer with backend {backend}")
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


# ---------------------------------------------------------------------------------------
# 05-evaluate


def evaluate(run: Run, backend: str, *, reference: bool = True, **params) -> dict:
    """Score ``backend`` (and the PyTorch reference on the same data where ``reference``)
    with the model's evaluator, and their agreement (the port's ``score`` hook)."""
    return run.port.score(run, with_reference(capabilities(backend).name, reference), **params)


def reused(known: Mapping[str, list] | None, names: Iterable[str], count: int) -> dict[str, list]:
    """The per-item results of ``names`` that ``known`` (an earlier evaluation's ``results`` in
    the same run: the same network on the same items) holds, to score again without computing
    them again; a list that does not hold ``count`` items is an error."""
    given = {name: list(known[name]) for name in names if known and name in known}
    wrong = {name: len(items) for name, items in given.items() if len(items) != count}
    if wrong:
        raise ValueError(f"known results of {sorted(wrong)} hold {sorted(wrong.values())} items, the run has {count}")
    return given


def has_outputs(run: Run, backend: str) -> bool:
    """Whether 04-infer saved outputs of ``backend`` in this run."""
    folder = outputs_dir(run, capabilities(backend).name)
    return folder.is_dir() and any(folder.glob(f"*{run.port.output_suffix}"))


def with_measured(accuracy: list[dict], more: list[dict], candidate: str) -> list[dict]:
    """``accuracy`` (a port's accuracy rows: measured, then published) with ``candidate``'s
    measured rows from ``more`` (another evaluation's rows) after its own measured rows."""
    def measured(row: dict) -> bool:
        return row.get("source") == "measured"

    added = [row for row in more if measured(row) and (row.get("candidate") or row.get("backend")) == candidate]
    last = max((i for i, row in enumerate(accuracy) if measured(row)), default=-1)
    return [*accuracy[:last + 1], *added, *accuracy[last + 1:]]


def judge_agreement(run: Run, backend: str, rows: list[dict]) -> list[dict]:
    """05-evaluate's agreement ``rows`` with each judged against the limit the model's spec sets
    for the backend's precision (``limit``, ``passed``); unjudged where it sets none."""
    limits = run.spec.agreement_limits.get(capabilities(backend).precision, ())
    return judge_agreement_rows(rows, limits)


# ---------------------------------------------------------------------------------------
# 06-benchmark


def benchmark(run: Run, backend: str, *, batch_sizes: list[int] | None = None, seconds: float = 5.0,
              min_calls: int = 3, max_calls: int | None = 100, warmup: int = 2,
              backend_options: dict | None = None, host_items: int = 8,
              reference_batch_sizes: list[int] | None = None, **params) -> dict:
    """Time the graph(s) for the PyTorch reference, the embedded default and ``backend`` where
    it is neither, at each batch size (default: the exported ones, else 1; the reference only at
    those of them in ``reference_batch_sizes`` where given), warm-up excluded,
    each for ``seconds`` of calls (at least ``min_calls``, at most ``max_calls``):
    interleaved, one call each in turn, or where the port asks for it each candidate and batch
    size in a process of its own, with its resident memory once loaded and its peak during the
    calls (and a linear fit of the peak over the batch size). Beside them, the harness's
    overhead against a bare ONNX Runtime loop. Then the deployment (:func:`host_speed`) over
    ``host_items`` items, and the port's own tables (a tracker's, derived figures) from
    ``params``."""
    info = capabilities(backend)
    port = run.port
    budget = bench.Budget(seconds, min_calls, max_calls)
    names = benchmark_candidates(info.name)
    graphs = list(port.benchmark_graphs or run.spec.graphs)
    options = {name: backend_options if name == info.name else None for name in names}
    rows, failures = [], []
    for graph in graphs:
        sizes = list(batch_sizes or run.exported_batch_sizes(graph) or [1])
        per_image = _flops_per_image(run, graph)
        label = {"graph": graph} if len(graphs) > 1 else {}
        for bs in tqdm(sizes, desc=f"time {graph}", disable=len(sizes) < 2):
            timed = [n for n in names if n != REFERENCE or reference_batch_sizes is None or bs in reference_batch_sizes]
            if port.isolated:
                found = []
                for name in timed:
                    try:
                        row, peak = bench.run_isolated(_timed_worker, run.port, run.profile, name, graph, bs,
                                                       budget, warmup, options[name])
                    except bench.IsolatedRunFailed as err:
                        failures.append({"candidate": name, "batch_size": bs, **label, "error": str(err)})
                        continue
                    found.append({**row, "peak_rss_mb": peak, "run_mb": peak - row["rss_loaded_mb"]})
            else:
                sessions = {name: open_session(run, name, graph=graph, batch_size=bs, backend_options=options[name],
                                               uncompiled=True) for name in timed}
                feeds = port.feeds(run, graph, bs)
                found = bench.benchmark({n: (lambda s=s: s.run(feeds)) for n, s in sessions.items()}, batch_size=bs,
                                        warmup=warmup, budget=budget,
                                        device_times={n: s.device_times_ms for n, s in sessions.items()})
                for session in sessions.values():
                    session.close()
            rows += [{**label, **row, "gflop_per_s": per_image * bs / row["mean_ms"] / 1e6} for row in found]
    out = {"graph": rows, "candidates": names, "failures": failures, "budget": dataclasses.asdict(budget),
           "graph_gflop": {g: _flops_per_image(run, g) / 1e9 for g in graphs}}
    if port.isolated:
        out["memory"] = bench.memory_fit(rows)
    else:
        out["harness"] = [harness_overhead(run, fastest_graph(rows, graphs), rows, warmup=warmup)]
    out.update(host_speed(run, info.name, items=host_items, backend_options=options[info.name]))
    out.update(port.benchmark_extra(run, names, backend=info.name, graph_rows=rows, budget=budget,
                                    warmup=warmup, backend_options={name: options[name] for name in names},
                                    **params))
    return out


#: the harness check's budget: enough calls for a stable mean of a fast graph, few for a slow one
HARNESS_BUDGET = bench.Budget(seconds=2.0, min_calls=5, max_calls=200)
#: above this, a call's milliseconds dwarf the harness's microseconds: the check is not run. At
#: YolactEdge's 0.8 s a call the check read -1.7 % in one book run and +14 % with fewer calls in
#: another (stop 27), the machine's noise, for about 30 s of calls
HARNESS_MAX_CALL_MS = 500.0


def fastest_graph(graph_rows: list[dict], graphs: list[str]) -> str:
    """Of ``graphs``, the one whose batch-1 call under the embedded default is the shortest in
    ``graph_rows`` (the first where none is timed): where the harness's per-call cost shows
    most against the call's own."""
    timed = {r.get("graph", graphs[0]): r["mean_ms"] for r in graph_rows
             if r["candidate"] == EMBEDDED_DEFAULT and r["batch_size"] == 1}
    return min(graphs, key=lambda g: timed.get(g, float("inf")))


class _Answering:
    """Stands in for ``InferenceSession``: ``run`` returns the recorded outputs at once."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        self.outputs = outputs

    def run(self, names, feeds) -> list[np.ndarray]:
        return self.outputs


def harness_overhead(run: Run, graph: str, graph_rows: list[dict], *, warmup: int = 2) -> dict:
    """Our timing of ONNX Runtime through the backend's session (:func:`bench.benchmark`)
    against ``InferenceSession.run`` in a bare loop, on the exported ``graph`` at batch 1;
    not run where ``graph_rows`` show that one call takes longer than
    :data:`HARNESS_MAX_CALL_MS` (the row says so)."""
    timed_call = next((r["mean_ms"] for r in graph_rows if r["candidate"] == EMBEDDED_DEFAULT
                       and r["batch_size"] == 1 and r.get("graph", graph) == graph), None)
    if timed_call is not None and timed_call > HARNESS_MAX_CALL_MS:
        return {"candidate": EMBEDDED_DEFAULT, "graph": graph, "batch_size": 1, "mean_ms": timed_call,
                "note": f"not measured: one call takes {timed_call / 1000:.1f} s, beside which the harness's "
                        "microseconds per call cannot show"}
    session = open_session(run, EMBEDDED_DEFAULT, graph=graph, batch_size=1, uncompiled=True)
    feeds = run.port.feeds(run, graph, 1)
    raw, names = session._session, session.input_names
    bare_feeds = {n: feeds[n] for n in names}
    # the same wrapper over a runtime that answers at once: what our layers add to one call
    stub = copy.copy(session)
    stub._session = _Answering(raw.run(None, bare_feeds))
    row = bench.bare_loop_overhead(lambda: session.run(feeds), lambda: raw.run(None, bare_feeds),
                                   budget=HARNESS_BUDGET, warmup=warmup, stub_run=lambda: stub.run(feeds))
    session.close()
    return {**row, "candidate": EMBEDDED_DEFAULT, "graph": graph, "batch_size": 1}


#: a graph call slower than this (on this machine) gets one round of the sequential and the
#: pipelined loop instead of two
SLOW_GRAPH_MS = 1000.0
#: a graph call slower than this (on this machine) does not go through the real loops: with the
#: graph and the host on the same cores its seconds leave nothing to overlap, and the four calls
#: cost 20 s or more; the loops run with the device stand-in only. RetinaMask's default graph
#: takes about 5 s a call beside a host of about 25 ms (stop 28's book run), YolactEdge's and
#: SeMask's about 1 s, SiamMask's under 0.3 s
REAL_LOOPS_MAX_MS = 2000.0
#: items through the loops with the device stand-in (cheap: no graph runs), cycling the
#: recorded outputs, so that filling and draining the pipeline weigh little
STAND_IN_CALLS = 12


def host_speed(run: Run, backend: str, *, items: int = 8, backend_options: dict | None = None,
               depth: int = 2) -> dict:
    """The port's deployment (:meth:`~zoobook.stages.port.Port.deployment`: read,
    preprocess, the graph on ``backend``, the host's steps) over ``items`` items:

    - ``host``: where one item's time goes, step by step, with one thread for torch and
      OpenCV and with the machine's threads;
    - ``deployment``: the rate a deployment would reach with the published device time and
      this host, overlapped and one after the other (:func:`zoobook.pipeline.deployment_bound`);
    - ``pipeline``: the sequential loop against the pipelined one (a thread per stage,
      queues of ``depth``), with whether their outputs are the same; and both again with the
      graph replaced by a stand-in that waits the published device time
      (:func:`zoobook.pipeline.with_device_stand_in`), beside the bound it should approach.
      Where one graph call takes over :data:`REAL_LOOPS_MAX_MS` with one thread, the real
      loops are not run (a row says so) and the stand-in hands on the outputs the breakdown
      with the machine's threads recorded.
    """
    from zoobook.backends.base import cpu_threads
    from zoobook.pipeline import breakdown, deployment_bound, loop_speed, recording_graph, with_device_stand_in

    deployment = run.port.deployment(run, backend, items=max(1, items), backend_options=backend_options)
    device = run.spec.device_time
    host, bounds, recorded = [], [], []
    try:
        for n, threads in enumerate(sorted({1, cpu_threads()})):
            slow = n > 0 and host[0].get("graph", 0.0) > REAL_LOOPS_MAX_MS
            # warmed up once: the sessions stay warm, and a slow graph's items, in order, are recorded
            recorder, kept = recording_graph(deployment, len(deployment.items)) if slow else (None, [])
            found = breakdown(recorder or deployment, calls=len(deployment.items), threads=threads,
                              warmup=0 if n else 1)
            recorded = kept or recorded
            host.append({"threads": threads, "unit": deployment.unit, "calls": found["calls"], **found["steps"],
                         "host_ms": found["host_ms"], "total_ms": found["total_ms"]})
            if device is not None:
                bounds.append({"threads": threads, **deployment_bound(found["host_ms"], device.ms),
                               "device": device.basis})
        if recorded:
            calls = len(recorded)
            pipeline = [{"loop": "sequential and pipelined", "calls": 0, "mean_ms": None,
                         "note": f"not run: one graph call takes {host[0]['graph'] / 1000:.1f} s here, on the cores "
                                 "the host shares, so there is nothing to overlap; the device stand-in's loops "
                                 "below show what a device would hide"}]
        else:
            calls = max(len(deployment.items), 2)
            rounds = 1 if host[-1].get("graph", 0.0) > SLOW_GRAPH_MS else 2  # a slow graph: one round of each loop
            # the graph's outputs in the loops' first pass are what the device stand-in hands on
            recorder, recorded = recording_graph(deployment, calls)
            pipeline = loop_speed(recorder or deployment, calls=calls, depth=depth, rounds=rounds)
        stand_in = with_device_stand_in(deployment, device.ms, calls=calls, recorded=recorded) \
            if device is not None else None
        if stand_in is not None:
            bound = deployment_bound(host[-1]["host_ms"], device.ms)  # the loops run with the machine's threads
            pipeline += [{**row, "bound_fps": bound[
                "overlapped_fps" if row["loop"].startswith("pipelined") else "sequential_fps"]}
                for row in loop_speed(stand_in, calls=max(calls, STAND_IN_CALLS), depth=depth,
                                      label=", device stand-in")]
    finally:
        deployment.close()
    return {"host": host, "deployment": bounds, "pipeline": [{"backend": backend, **r} for r in pipeline],
            "host_steps": [name for name in host[0] if name not in ("threads", "unit", "calls", "host_ms",
                                                                     "total_ms")]}


def _flops_per_image(run: Run, graph: str) -> float:
    """The graph's counted FLOP per image (a static file counts its whole batch)."""
    sizes = run.exported_batch_sizes(graph)
    return graph_flops(run.onnx(graph, sizes[0] if sizes else 1)) / (sizes[0] if sizes else 1)


def _timed_worker(port, profile: str, candidate: str, graph: str, batch_size: int, budget: bench.Budget,
                  warmup: int, backend_options: dict | None) -> dict:
    """One candidate at one batch size in a process of its own (see :func:`benchmark`)."""
    import torch

    torch.set_grad_enabled(False)
    run = Run(port, profile)
    feeds = port.feeds(run, graph, batch_size)
    before = bench.resident_mb()
    session = open_session(run, candidate, graph=graph, batch_size=batch_size, backend_options=backend_options,
                           uncompiled=True)
    loaded = bench.resident_mb()
    peak_is_run = bench.reset_peak_resident()
    rows = bench.benchmark({candidate: lambda: session.run(feeds)}, batch_size=batch_size, warmup=warmup,
                           budget=budget, device_times={candidate: session.device_times_ms}, progress=False)
    session.close()
    return {**rows[0], "rss_before_load_mb": before, "rss_loaded_mb": loaded,
            "peak": "during the calls" if peak_is_run else "of the process (loading included)"}


def speedup_rows(rows: list[dict], baseline: str | None = None) -> list[dict]:
    """Per graph, batch size and candidate: the reference's mean latency / the candidate's."""
    baseline = baseline or REFERENCE
    base = {(r.get("graph"), r["batch_size"]): r["mean_ms"] for r in rows if r["candidate"] == baseline}
    return [{**({"graph": r["graph"]} if "graph" in r else {}), "candidate": r["candidate"],
             "batch_size": r["batch_size"], "speedup": base[(r.get("graph"), r["batch_size"])] / r["mean_ms"],
             "versus": f"{baseline} eager"}
            for r in rows if r["candidate"] != baseline and (r.get("graph"), r["batch_size"]) in base]
