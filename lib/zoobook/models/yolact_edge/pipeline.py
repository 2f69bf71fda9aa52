"""The YolactEdge stages as library calls; the notebooks narrate and call these.

Artifacts of a run live in ``runs/<profile>/yolact_edge/artifacts/``::

    inputs/<index>.bin, ids.json, manifest.json   01-data (the port's .bin layout)
    export.json, yolact_edge.onnx                  02-export
    compiled/<backend>.json and its artifacts      03-convert
    outputs/<backend>/<index>.npz                  04-infer (resumable)
    results/<backend>/*.json                       05-evaluate (COCO results files)
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from zoobook import bench
from zoobook.artifacts import Artifacts
from zoobook.backends import benchmark_candidates, get_backend
from zoobook.backends import resolve as resolve_backend  # noqa: F401 (the notebooks call it)
from zoobook.backends.onnxruntime_backend import OnnxRuntimeSession
from zoobook.backends.torch_backend import TorchSession
from zoobook.checkpoints import weights_label
from zoobook.compare import compare_outputs
from zoobook.data.coco import CocoDataset, locate_coco
from zoobook.data.images import read_bgr
from zoobook.export import export_onnx, graph_flops, onnx_io
from zoobook.metrics.coco import agreement_rows, record_metrics, score_candidates  # noqa: F401 (notebooks)
from zoobook.models.yolact_edge import GRAPH
from zoobook.models.yolact_edge.checkpoint import build
from zoobook.models.yolact_edge.postprocess import postprocess
from zoobook.models.yolact_edge.preprocess import INPUT_SIZE, preprocess
from zoobook.atomic import save_npz_atomic, write_json_atomic
from zoobook.resume import file_stamps, resumable_folder

MODEL = "yolact_edge"
INPUT_NAMES = list(GRAPH.inputs)
OUTPUT_NAMES = list(GRAPH.outputs)
#: fp32 tolerance for the six graph outputs (golden README: observed <= 7.4e-5 relative)
ATOL, RTOL = 2e-3, 1e-4


FILES = Artifacts(MODEL)
_artifacts = FILES.folder


# ---------------------------------------------------------------------------------------
# 01-data


def locate_dataset(profile: str, *, num_images: int = 24, require_real: bool = False,
                   seed: int = 0) -> tuple[CocoDataset, dict]:
    """Real COCO val2017 under ``data/coco`` when present, else a generated set in COCO's
    layout (see :func:`zoobook.data.coco.locate_coco`). ``num_images`` 0 means all."""
    return locate_coco(profile, num_images=num_images, require_real=require_real, seed=seed)


def preprocess_dataset(profile: str, dataset: CocoDataset, provenance: dict) -> dict:
    """Write each image as the port does: float32 ``<index>.bin`` [1,3,550,550], plus
    ``ids.json`` and a manifest with image sizes and the data provenance."""
    folder = _artifacts(profile) / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for index in tqdm(range(len(dataset)), desc="preprocess"):
        sample = dataset[index]
        tensor = preprocess(dataset.load_image(index))[None]
        tensor.tofile(folder / f"{index}.bin")
        images.append({"index": index, "image_id": sample["image_id"], "file_name": sample["file_name"],
                       "path": str(sample["path"]), "height": sample["height"], "width": sample["width"]})
    write_json_atomic(folder / "ids.json", [im["image_id"] for im in images])
    manifest = {"dataset": provenance, "input_shape": [1, 3, INPUT_SIZE, INPUT_SIZE], "images": images}
    write_json_atomic(folder / "manifest.json", manifest)
    return manifest


def load_manifest(profile: str) -> dict:
    return FILES.read(profile, "inputs/manifest.json", "01-data")


def read_input(profile: str, index: int) -> np.ndarray:
    """Preprocessed input ``index`` as float32 [3, 550, 550]."""
    path = _artifacts(profile) / "inputs" / f"{index}.bin"
    data = np.fromfile(path, dtype=np.float32)
    if data.size != 3 * INPUT_SIZE * INPUT_SIZE:
        raise ValueError(f"{path}: expected {3 * INPUT_SIZE ** 2} float32 values, found {data.size}")
    return data.reshape(3, INPUT_SIZE, INPUT_SIZE)


def ground_truth_file(manifest: dict) -> Path:
    return Path(manifest["dataset"]["annotation_file"])


# ---------------------------------------------------------------------------------------
# 02-export


def load_model(profile: str) -> tuple[torch.nn.Module, dict]:
    """The network with the weights the export stage used."""
    weights = FILES.read(profile, "export.json", "02-export")["weights"]
    recipe = weights["kind"] == "recipe"
    return build(None if recipe else weights["path"], allow_recipe=recipe)


def export(profile: str, *, opset: int = 11, weights: str | None = None, require_official: bool = False,
           parity_index: int = 0) -> dict:
    """Build, load weights, export the port's graph (dynamic batch), simplify, check, and
    compare ONNX Runtime with PyTorch on a data image (not the export's random example)."""
    model, provenance = build(weights, allow_recipe=not require_official)
    path = _artifacts(profile) / f"{MODEL}.onnx"
    example = torch.from_numpy(np.random.RandomState(0).standard_normal((1, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32))
    summary = export_onnx(model, (example,), path, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, opset=opset)
    io = onnx_io(path)
    expected = {"inputs": {k: list(v) for k, v in GRAPH.inputs.items()},
                "outputs": {k: list(v) for k, v in GRAPH.outputs.items()}}
    if io != expected:
        raise AssertionError(f"{path}: graph I/O {io} differs from the port's {expected}")
    feeds = {"image": read_input(profile, parity_index)[None]}
    reference = TorchSession(model, INPUT_NAMES, OUTPUT_NAMES).run(feeds)
    candidate = OnnxRuntimeSession(path, optimization="disable").run(feeds)
    parity = compare_outputs(reference, candidate, atol=ATOL, rtol=RTOL)
    write_json_atomic(_artifacts(profile) / "export.json", {"onnx": str(path), "weights": provenance, **summary})
    return {"summary": summary, "io": io, "parity": parity, "weights": provenance}


def onnx_path(profile: str) -> Path:
    return Path(FILES.read(profile, "export.json", "02-export")["onnx"])


# ---------------------------------------------------------------------------------------
# 03-convert


def convert(profile: str, backend: str = "auto", *, batch_sizes: list[int] = (1,), backend_options: dict | None = None,
            parity_index: int = 0) -> dict:
    """Compile the exported graph for ``backend`` and compare it with plain ONNX Runtime on
    the exported ONNX, per output (msit thresholds; fp32 tolerance too for CPU backends)."""
    engine = get_backend(backend, **(backend_options or {}))
    source = onnx_path(profile)
    folder = _artifacts(profile) / "compiled"
    artifacts: dict[str, str] = {}
    if engine.name == "onnxruntime":  # one graph with a dynamic batch serves every batch size
        artifacts = {str(bs): str(engine.compile(source, folder)) for bs in batch_sizes[:1]}
        artifacts.update({str(bs): artifacts[str(batch_sizes[0])] for bs in batch_sizes})
    elif engine.name == "ascend":
        for bs in batch_sizes:
            om = engine.compile(source, folder, input_shapes=GRAPH.input_shapes(bs), name=f"{MODEL}_bs{bs}")
            artifacts[str(bs)] = str(om)
    manifest = {"backend": engine.name, "options": backend_options or {}, "device": engine.device(),
                "artifacts": artifacts}
    write_json_atomic(folder / f"{engine.name}.json", manifest)
    parity = []
    if artifacts:
        bs = batch_sizes[0]
        feeds = {"image": np.repeat(read_input(profile, parity_index)[None], bs, 0)}
        reference = OnnxRuntimeSession(source, optimization="disable").run(feeds)
        with engine.open(artifacts[str(bs)]) as session:
            candidate = session.run(feeds)
        cpu = engine.name == "onnxruntime"
        parity = compare_outputs(reference, candidate, atol=ATOL if cpu else None, rtol=RTOL if cpu else 0.0)
    return {**manifest, "parity": parity}


def open_session(profile: str, backend: str, batch_size: int = 1, backend_options: dict | None = None):
    """A session for ``backend``: the eager model for ``torch``, else the compiled artifact."""
    if backend == "torch":
        return TorchSession(load_model(profile)[0], INPUT_NAMES, OUTPUT_NAMES)
    engine = get_backend(backend, **(backend_options or {}))
    manifest = FILES.read(profile, f"compiled/{engine.name}.json", "03-convert")
    artifact = manifest["artifacts"].get(str(batch_size))
    if artifact is None:
        raise KeyError(f"no {engine.name} artifact for batch size {batch_size}; converted: "
                       f"{sorted(manifest['artifacts'])} (rerun 03-convert with batch_sizes including it)")
    return engine.open(artifact)



# ---------------------------------------------------------------------------------------
# 04-infer



def outputs_dir(profile: str, backend: str) -> Path:
    return _artifacts(profile) / "outputs" / backend


def _outputs_key(profile: str, backend: str, manifest: dict) -> dict:
    """What saved outputs depend on: the inputs, the weights and the compiled artifacts.
    Resuming is only safe while all three are unchanged."""
    export = FILES.read(profile, "export.json", "02-export")
    artifacts = FILES.compiled(profile, backend)
    stamps = file_stamps(artifacts)
    return {"images": [[im["image_id"], im["path"]] for im in manifest["images"]], "dataset": manifest["dataset"],
            "weights": export["weights"]["sha256"], "artifacts": stamps}


def _prepare_outputs(profile: str, backend: str, manifest: dict, resume: bool) -> Path:
    """The outputs folder, emptied unless resuming outputs made from the same inputs and model."""
    return resumable_folder(outputs_dir(profile, backend), _outputs_key(profile, backend, manifest), resume=resume,
                            pattern="*.npz")


def infer(profile: str, backend: str, *, batch_size: int = 1, resume: bool = True,
          backend_options: dict | None = None) -> dict:
    """Run every preprocessed input through ``backend`` and save its six outputs per image
    (``outputs/<backend>/<index>.npz``). With ``resume``, images already saved are skipped, as
    long as the inputs, weights and compiled model are those they were made from.
    A last partial batch is padded for static-shape backends and the padding discarded."""
    manifest = load_manifest(profile)
    folder = _prepare_outputs(profile, backend, manifest, resume)
    todo = [im["index"] for im in manifest["images"] if not (folder / f"{im['index']}.npz").is_file()]
    session = open_session(profile, backend, batch_size, backend_options)
    start, calls = time.perf_counter(), 0
    with session:
        for first in tqdm(range(0, len(todo), batch_size), desc=f"infer {backend} bs{batch_size}"):
            chunk = todo[first:first + batch_size]
            batch = np.stack([read_input(profile, i) for i in chunk])
            if len(chunk) < batch_size and backend != "torch":
                batch = np.concatenate([batch, np.zeros((batch_size - len(chunk), *batch.shape[1:]), batch.dtype)])
            outputs = session.run({"image": batch})
            calls += 1
            for row, index in enumerate(chunk):
                save_npz_atomic(folder / f"{index}.npz", {k: v[row:row + 1] for k, v in outputs.items()})
        device_times = session.device_times_ms()
    seconds = time.perf_counter() - start
    return {"images": len(manifest["images"]), "computed": len(todo), "skipped": len(manifest["images"]) - len(todo),
            "batch_size": batch_size, "calls": calls, "seconds": round(seconds, 2),
            "device_time_ms_total": round(sum(device_times), 3) if device_times else None}


def load_outputs(profile: str, backend: str, index: int) -> list[np.ndarray]:
    path = outputs_dir(profile, backend) / f"{index}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved outputs; run 04-infer with backend {backend}")
    with np.load(path) as data:
        return [data[name] for name in OUTPUT_NAMES]


# ---------------------------------------------------------------------------------------
# 05-evaluate


def evaluate(profile: str, backend: str, *, reference: bool = True) -> dict:
    """Score the backend's saved outputs and the PyTorch reference on the same images with
    pycocotools (bbox and segm), and score the backend against the reference's detections
    (agreement). Host post-processing is the same code for both."""
    manifest = load_manifest(profile)
    model, weights = load_model(profile)
    samples = [{"image_id": im["image_id"], "height": im["height"], "width": im["width"]} for im in manifest["images"]]
    results: dict[str, list] = {backend: []}
    if reference and backend != "torch":
        results["torch"] = []
    for im, sample in zip(tqdm(manifest["images"], desc="evaluate"), samples):
        size = [(im["height"], im["width"])]
        results[backend].append(postprocess(model.head, load_outputs(profile, backend, im["index"]), size)[0])
        if "torch" in results and backend != "torch":
            with torch.inference_mode():
                outputs = model(torch.from_numpy(read_input(profile, im["index"])[None]))
            results["torch"].append(postprocess(model.head, list(outputs), size)[0])
    metrics = score_candidates(ground_truth_file(manifest), manifest["images"], results, backend=backend,
                               folder=_artifacts(profile) / "results")
    return {"metrics": metrics, "results": results, "weights": weights, "dataset": manifest["dataset"]}


def load_image(manifest: dict, index: int) -> np.ndarray:
    return read_bgr(manifest["images"][index]["path"])


# ---------------------------------------------------------------------------------------
# 06-benchmark


def benchmark(profile: str, backend: str, *, batch_sizes: list[int] = (1, 4, 8), iterations: int = 10,
              warmup: int = 2, end_to_end_images: int = 8, backend_options: dict | None = None) -> dict:
    """PyTorch eager against ONNX Runtime (and the chosen backend, if another), interleaved
    in one run: graph latency per batch size, then end-to-end per image at batch 1
    (read + preprocess + graph + host heads, NMS and masks)."""
    names = benchmark_candidates(backend)
    manifest = load_manifest(profile)
    model, _ = load_model(profile)
    graph_rows = []
    for bs in batch_sizes:
        sessions = {name: _bench_session(profile, name, bs, model, backend_options) for name in names}
        feeds = {"image": np.stack([read_input(profile, i % len(manifest["images"])) for i in range(bs)])}
        runners = {name: (lambda s=s: s.run(feeds)) for name, s in sessions.items()}
        device = {name: s.device_times_ms for name, s in sessions.items()}
        graph_rows += bench.benchmark(runners, batch_size=bs, warmup=warmup, iterations=iterations, device_times=device)
        for s in sessions.values():
            s.close()
    flops = graph_flops(onnx_path(profile))
    for row in graph_rows:
        row["gflop_per_s"] = flops * row["batch_size"] / row["mean_ms"] / 1e6
    images = manifest["images"][:max(1, end_to_end_images)]
    sessions = {name: _bench_session(profile, name, 1, model, backend_options) for name in names}
    runners = {name: _end_to_end(session, model, images) for name, session in sessions.items()}
    e2e_rows = bench.benchmark(runners, batch_size=1, warmup=min(warmup, 1), iterations=max(len(images), iterations))
    return {"graph": graph_rows, "end_to_end": e2e_rows, "candidates": names, "graph_gflop": flops / 1e9}


def _bench_session(profile: str, name: str, batch_size: int, model, backend_options):
    if name == "torch":
        return TorchSession(model, INPUT_NAMES, OUTPUT_NAMES)
    if name == "onnxruntime":
        path = next(iter(FILES.compiled(profile, "onnxruntime").values()), None) or onnx_path(profile)
        return OnnxRuntimeSession(path)
    return open_session(profile, name, batch_size, backend_options)


def _end_to_end(session, model, images: list[dict]):
    cycle = itertools.cycle(images)

    def run():
        im = next(cycle)
        batch = preprocess(read_bgr(im["path"]))[None]
        outputs = session.run({"image": batch})
        return postprocess(model.head, [outputs[n] for n in OUTPUT_NAMES], [(im["height"], im["width"])])

    return run


# ---------------------------------------------------------------------------------------
# Tables for the notebooks and the summary


def accuracy_rows(evaluation: dict, spec) -> list[dict]:
    """Measured COCO AP (x100) per scored candidate, then the published figure, labelled."""
    data = evaluation["dataset"]
    rows = []
    for name, metrics in evaluation["metrics"].items():
        if name.startswith("agreement"):
            continue
        rows.append({"source": "measured", "backend": name, "bbox mAP": 100 * metrics["bbox"]["AP"],
                     "segm mAP": 100 * metrics["segm"]["AP"], "weights": weights_label(evaluation["weights"]),
                     "data": f"{data['kind']}: {data['name']} ({data['images_with_annotations']} images)"})
    for pub in spec.published:
        if pub.unit == "mAP":
            rows.append({"source": "published", "backend": pub.device, "bbox mAP": None, "segm mAP": pub.value,
                         "weights": "official checkpoint", "data": f"{pub.data}; {pub.metric}; {pub.source}"})
    return rows


def speedup_rows(rows: list[dict], baseline: str = "torch") -> list[dict]:
    """Per batch size and candidate: baseline mean latency / candidate mean latency."""
    base = {r["batch_size"]: r["mean_ms"] for r in rows if r["candidate"] == baseline}
    return [{"candidate": r["candidate"], "batch_size": r["batch_size"], "speedup": base[r["batch_size"]] / r["mean_ms"],
             "versus": f"{baseline} eager"} for r in rows if r["candidate"] != baseline and r["batch_size"] in base]
