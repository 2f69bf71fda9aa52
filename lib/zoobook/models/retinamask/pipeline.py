"""The RetinaMask stages as library calls; the notebooks narrate and call these.

Artifacts of a run live in ``runs/<profile>/retinamask/artifacts/``::

    inputs/<index>.png, manifest.json            01-data (each image resized the port's way)
    export.json, retinamask.onnx                 02-export
    compiled/<backend>.json and its artifacts    03-convert (Ascend: the Cast-rewritten graph, then ATC)
    outputs/<backend>/<index>.npz                04-infer (the graph's four outputs, resumable)
    results/<candidate>/*.json                   05-evaluate (COCO results files)
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
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
from zoobook.compare import compare_tensors
from zoobook.data.coco import CocoDataset, locate_coco
from zoobook.data.images import read_bgr
from zoobook.export import graph_flops, onnx_io
from zoobook.metrics.coco import agreement_rows, record_metrics, score_candidates  # noqa: F401 (notebooks)
from zoobook.models.retinamask import GRAPH
from zoobook.models.retinamask import postprocess as post
from zoobook.models.retinamask.checkpoint import build
from zoobook.models.retinamask.export import PortGraph, cast_roi_inputs_to_fp16, export_port_graph, graph_shapes
from zoobook.models.retinamask.preprocess import original_tensor, port_resize, port_tensor
from zoobook.atomic import save_npz_atomic, write_json_atomic
from zoobook.resume import file_stamps, resumable_folder

MODEL = "retinamask"
FILES = Artifacts(MODEL)
_artifacts = FILES.folder
INPUT_NAMES, OUTPUT_NAMES = list(GRAPH.inputs), list(GRAPH.outputs)
#: fp32 tolerance of the four outputs (boxes are pixels up to the input size)
ATOL, RTOL = 2e-3, 1e-4
CANDIDATE_ORIGINAL = "torch, original post-processing"


# ---------------------------------------------------------------------------------------
# 01-data


def locate_dataset(profile: str, *, num_images: int = 8, require_real: bool = False,
                   seed: int = 0) -> tuple[CocoDataset, dict]:
    """Real COCO val2017 under ``data/coco`` when present, else a generated set in COCO's layout."""
    return locate_coco(profile, num_images=num_images, require_real=require_real, seed=seed)


def preprocess_dataset(profile: str, dataset: CocoDataset, provenance: dict, *, input_size: int = 1344) -> dict:
    """Resize each image the port's way (PIL bilinear, long side to ``input_size``) and keep
    it as an 8-bit PNG; :func:`read_input` turns it into the port's float32 tensor (BGR minus
    the mean, zero-padded square). The tensor is a fixed function of that image, so the
    port's 22 MB ``.bin`` per image need not be stored (``write_bin`` writes one)."""
    folder = _artifacts(profile) / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for index in tqdm(range(len(dataset)), desc="preprocess"):
        sample = dataset[index]
        rgb = dataset.load_image(index)[:, :, ::-1]
        resized, ratio = port_resize(np.ascontiguousarray(rgb), input_size)
        cv2.imwrite(str(folder / f"{index}.png"), resized[:, :, ::-1])
        images.append({"index": index, "image_id": sample["image_id"], "file_name": sample["file_name"],
                       "path": str(sample["path"]), "height": sample["height"], "width": sample["width"],
                       "ratio": ratio, "resized_hw": list(resized.shape[:2])})
    manifest = {"dataset": provenance, "input_size": input_size, "input_shape": [1, 3, input_size, input_size],
                "images": images}
    write_json_atomic(folder / "manifest.json", manifest)
    return manifest


def load_manifest(profile: str) -> dict:
    return FILES.read(profile, "inputs/manifest.json", "01-data")


def read_input(profile: str, index: int, manifest: dict | None = None) -> np.ndarray:
    """The port's input tensor of image ``index``: float32 [1, 3, S, S]."""
    manifest = manifest or load_manifest(profile)
    path = _artifacts(profile) / "inputs" / f"{index}.png"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{path}: preprocessed image missing; rerun 01-data")
    return port_tensor(image[:, :, ::-1], manifest["input_size"])


def input_summary(profile: str, manifest: dict, index: int = 0) -> dict:
    """What the port's tensor of one image looks like: shape, ratio, BGR means inside the image."""
    tensor, image = read_input(profile, index, manifest), manifest["images"][index]
    h, w = image["resized_hw"]
    return {"images": len(manifest["images"]), "tensor": list(tensor.shape), "ratio": image["ratio"],
            "mean per channel (BGR, before padding)": tensor[0, :, :h, :w].mean(axis=(1, 2)).round(2).tolist()}


def write_bin(profile: str, index: int, path: str | Path) -> Path:
    """The port's ``.bin`` for ``ais_bench --input``: the raw float32 tensor."""
    read_input(profile, index).tofile(path)
    return Path(path)


def ground_truth_file(manifest: dict) -> Path:
    return Path(manifest["dataset"]["annotation_file"])


def load_image(manifest: dict, index: int) -> np.ndarray:
    return read_bgr(manifest["images"][index]["path"])


# ---------------------------------------------------------------------------------------
# 02-export


def load_model(profile: str) -> tuple[torch.nn.Module, dict]:
    weights = FILES.read(profile, "export.json", "02-export")["weights"]
    recipe = weights["kind"] == "recipe"
    return build(None if recipe else weights["path"], allow_recipe=recipe)


def exported_top_k(profile: str) -> int:
    return FILES.read(profile, "export.json", "02-export")["top_k"]


def export(profile: str, *, opset: int = 11, top_k: int = 1000, weights: str | None = None,
           require_official: bool = False, parity_index: int = 0) -> dict:
    """Build, load weights, export the port's graph at the data's input size, simplify,
    check, and compare ONNX Runtime with PyTorch on a data image."""
    manifest = load_manifest(profile)
    model, provenance = build(weights, allow_recipe=not require_official)
    path = _artifacts(profile) / f"{MODEL}.onnx"
    summary = export_port_graph(model, path, size=manifest["input_size"], top_k=top_k, opset=opset)
    io = onnx_io(path)
    expected = graph_shapes(manifest["input_size"], top_k)
    if io != expected:
        raise AssertionError(f"{path}: graph I/O {io} differs from {expected}")
    feeds = {"image": read_input(profile, parity_index, manifest)}
    reference = TorchSession(PortGraph(model, top_k=top_k), INPUT_NAMES, OUTPUT_NAMES).run(feeds)
    candidate = OnnxRuntimeSession(path, optimization="disable").run(feeds)
    parity = detection_parity(reference, candidate)
    write_json_atomic(_artifacts(profile) / "export.json", {"onnx": str(path), "weights": provenance, "top_k": top_k,
                                                            **summary})
    return {"summary": summary, "io": io, "parity": parity, "weights": provenance}


def onnx_path(profile: str) -> Path:
    return Path(FILES.read(profile, "export.json", "02-export")["onnx"])


def detection_parity(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], *, cpu: bool = True) -> list[dict]:
    """Compare two runs of the graph. Its top-k holds many near-equal scores, so two correct
    backends may order (or, at the k-th place, choose) entries differently: element-wise
    comparison would be wrong. Instead: the sorted scores element-wise; then each reference
    entry is matched to a candidate entry of the same label whose box is within ``1`` px
    (``4`` off CPU), and boxes and masks are compared over the matches; at least 99 % of
    entries must match."""
    tolerance = {"atol": ATOL, "rtol": RTOL} if cpu else {"atol": None, "rtol": 0.0}
    ref = {k: v.reshape(v.shape[1:]) for k, v in reference.items()}
    cand = {k: v.reshape(v.shape[1:]) for k, v in candidate.items()}
    rows = [{"output": "scores (sorted)", **compare_tensors(np.sort(ref["scores"]), np.sort(cand["scores"]), **tolerance)}]
    close = (np.abs(ref["boxes"][:, None, :] - cand["boxes"][None, :, :]).max(-1) <= (1.0 if cpu else 4.0)) \
        & (ref["labels"][:, None] == cand["labels"][None, :])
    taken = np.zeros(len(cand["labels"]), bool)
    pairs = []
    for i in range(len(ref["labels"])):
        options = np.flatnonzero(close[i] & ~taken)
        if options.size:
            taken[options[0]] = True
            pairs.append((i, options[0]))
    matched = len(pairs) / max(len(ref["labels"]), 1)
    rows.append({"output": "(label, box) entries matched", "shape": [len(ref["labels"])], "matched": matched,
                 "passed": matched >= 0.99})
    if pairs:
        i, j = map(np.array, zip(*pairs))
        for name in ("boxes", "masks"):
            rows.append({"output": f"{name} (matched)", **compare_tensors(ref[name][i], cand[name][j], **tolerance)})
    return rows


# ---------------------------------------------------------------------------------------
# 03-convert


def convert(profile: str, backend: str = "auto", *, backend_options: dict | None = None,
            parity_index: int = 0) -> dict:
    """Compile the graph for ``backend``: ONNX Runtime's offline optimisation of the uncast
    graph, or on Ascend the Cast rewrite (RoIs through fp16, as the port) and then ATC.
    Then compare with plain ONNX Runtime on the exported graph."""
    engine = get_backend(backend, **(backend_options or {}))
    source = onnx_path(profile)
    folder = _artifacts(profile) / "compiled"
    manifest = load_manifest(profile)
    artifacts, rewrite = {}, None
    if engine.name == "onnxruntime":
        artifacts["graph"] = str(engine.compile(source, folder))
    elif engine.name == "ascend":
        cast = folder / f"{MODEL}_cast.onnx"
        folder.mkdir(parents=True, exist_ok=True)
        rewrite = cast_roi_inputs_to_fp16(source, cast)
        artifacts["graph"] = str(engine.compile(cast, folder, input_shapes={"image": manifest["input_shape"]},
                                                name=f"{MODEL}_bs1"))
    record = {"backend": engine.name, "options": backend_options or {}, "device": engine.device(),
              "artifacts": artifacts, "cast_rewrite": rewrite}
    write_json_atomic(folder / f"{engine.name}.json", record)
    parity = []
    if artifacts:
        feeds = {"image": read_input(profile, parity_index, manifest)}
        reference = OnnxRuntimeSession(source, optimization="disable").run(feeds)
        with engine.open(artifacts["graph"]) as session:
            candidate = session.run(feeds)
        parity = detection_parity(reference, candidate, cpu=engine.name == "onnxruntime")
    return {**record, "parity": parity}


def open_session(profile: str, backend: str, backend_options: dict | None = None, model=None):
    """The eager graph for ``torch``, else the compiled artifact."""
    if backend == "torch":
        model = model if model is not None else load_model(profile)[0]
        return TorchSession(PortGraph(model, top_k=exported_top_k(profile)), INPUT_NAMES, OUTPUT_NAMES)
    engine = get_backend(backend, **(backend_options or {}))
    return engine.open(FILES.read(profile, f"compiled/{engine.name}.json", "03-convert")["artifacts"]["graph"])


# ---------------------------------------------------------------------------------------
# 04-infer


def outputs_dir(profile: str, backend: str) -> Path:
    return _artifacts(profile) / "outputs" / backend


def _outputs_key(profile: str, backend: str, manifest: dict) -> dict:
    export = FILES.read(profile, "export.json", "02-export")
    artifacts = FILES.compiled(profile, backend)
    return {"images": [[im["image_id"], im["path"]] for im in manifest["images"]], "dataset": manifest["dataset"],
            "input_size": manifest["input_size"], "weights": export["weights"]["sha256"], "top_k": export["top_k"],
            "artifacts": file_stamps(artifacts)}


def infer(profile: str, backend: str, *, resume: bool = True, backend_options: dict | None = None) -> dict:
    """Run the graph on every image (batch 1, as the port) and save its four outputs
    (``outputs/<backend>/<index>.npz``); resumable while inputs, weights and model are unchanged."""
    manifest = load_manifest(profile)
    folder = resumable_folder(outputs_dir(profile, backend), _outputs_key(profile, backend, manifest), resume=resume,
                              pattern="*.npz")
    todo = [im["index"] for im in manifest["images"] if not (folder / f"{im['index']}.npz").is_file()]
    start = time.perf_counter()
    with open_session(profile, backend, backend_options) as session:
        for index in tqdm(todo, desc=f"infer {backend}"):
            outputs = session.run({"image": read_input(profile, index, manifest)})
            save_npz_atomic(folder / f"{index}.npz", outputs, compressed=True)
        device_times = session.device_times_ms()
    return {"images": len(manifest["images"]), "computed": len(todo), "skipped": len(manifest["images"]) - len(todo),
            "seconds": round(time.perf_counter() - start, 2),
            "device_time_ms_total": round(sum(device_times), 3) if device_times else None}



def load_outputs(profile: str, backend: str, index: int) -> dict[str, np.ndarray]:
    path = outputs_dir(profile, backend) / f"{index}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved outputs; run 04-infer with backend {backend}")
    with np.load(path) as data:
        return {name: data[name] for name in OUTPUT_NAMES}


# ---------------------------------------------------------------------------------------
# 05-evaluate


def port_result(outputs: dict[str, np.ndarray], image: dict) -> SimpleNamespace:
    """The port's host side on one image's graph outputs -> boxes, classes 0..79, scores, masks."""
    found = post.port_postprocess(outputs["boxes"], outputs["labels"], outputs["scores"], outputs["masks"],
                                  ratio=image["ratio"], image_hw=(image["height"], image["width"]))
    return SimpleNamespace(boxes=found["boxes"], classes=found["labels"] - 1, scores=found["scores"],
                           masks=found["masks"])


def original_result(model, bgr: np.ndarray) -> SimpleNamespace:
    """The original pipeline in PyTorch: its own test scale (800 / 1333, padded to 32), the
    per-level post-processing (50 returned), boxes back with separate x and y ratios, masks
    pasted the PIL way."""
    tensor, (h, w) = original_tensor(np.ascontiguousarray(bgr[:, :, ::-1]))
    with torch.inference_mode():
        features, logits, deltas = model(torch.from_numpy(tensor))
        found = post.original_detections(logits, deltas, model.anchors(features), (h, w))
        probs = model.mask_probabilities(features, found["boxes"], found["labels"]).numpy()
    height, width = bgr.shape[:2]
    boxes = found["boxes"].numpy() * np.array([width / w, height / h] * 2, np.float32)
    masks = np.stack([post.paste_original(p[0], b, (height, width)) for p, b in zip(probs, boxes)]) if len(boxes) \
        else np.zeros((0, height, width), bool)
    return SimpleNamespace(boxes=boxes, classes=found["labels"].numpy() - 1, scores=found["scores"].numpy(),
                           masks=masks)


def evaluate(profile: str, backend: str, *, reference: bool = True, original: bool = True) -> dict:
    """Score with pycocotools (bbox, segm): the backend's saved outputs through the port's
    host side; with ``reference``, PyTorch running the same graph on the same inputs, and
    the backend's agreement with it; with ``original``, PyTorch through the original
    pipeline at its own scale (its COCO boxes with w = x2 - x1 + 1, as it writes them)."""
    manifest = load_manifest(profile)
    model, weights = load_model(profile)
    results: dict[str, list] = {backend: []}
    if reference and backend != "torch":
        results["torch"] = []
    if original:
        results[CANDIDATE_ORIGINAL] = []
    graph = PortGraph(model, top_k=exported_top_k(profile)).eval()
    for im in tqdm(manifest["images"], desc="evaluate"):
        results[backend].append(port_result(load_outputs(profile, backend, im["index"]), im))
        if "torch" in results and backend != "torch":
            with torch.inference_mode():
                outs = graph(torch.from_numpy(read_input(profile, im["index"], manifest)))
            results["torch"].append(port_result(dict(zip(OUTPUT_NAMES, (o.numpy() for o in outs))), im))
        if original:
            results[CANDIDATE_ORIGINAL].append(original_result(model, load_image(manifest, im["index"])))
    metrics = score_candidates(ground_truth_file(manifest), manifest["images"], results, backend=backend,
                               folder=_artifacts(profile) / "results",
                               plus_one={CANDIDATE_ORIGINAL: True, backend: False, "torch": False})
    return {"metrics": metrics, "results": results, "weights": weights, "dataset": manifest["dataset"],
            "input_size": manifest["input_size"], "top_k": exported_top_k(profile)}


def accuracy_rows(evaluation: dict, spec) -> list[dict]:
    """Measured COCO AP per candidate (fractions, as the port reports them), then the published figures."""
    data = evaluation["dataset"]
    rows = []
    for name, metrics in evaluation["metrics"].items():
        if name.startswith("agreement"):
            continue
        rows.append({"source": "measured", "candidate": name, "bbox AP": metrics["bbox"]["AP"],
                     "segm AP": metrics["segm"]["AP"], "weights": weights_label(evaluation["weights"]),
                     "conventions": "original (800/1333, per level, 50 kept, +1)" if name == CANDIDATE_ORIGINAL
                     else f"port ({evaluation['input_size']}, global top-{evaluation['top_k']}, host NMS, 100 kept)",
                     "data": f"{data['kind']}: {data['name']} ({data['images_with_annotations']} images)"})
    published: dict[str, dict] = {}
    for pub in spec.published:
        if pub.unit in ("bbox AP", "segm AP"):
            row = published.setdefault(pub.device, {"source": "published", "candidate": pub.device, "bbox AP": None,
                                                    "segm AP": None, "weights": pub.metric, "conventions": "",
                                                    "data": f"{pub.data}; {pub.source}"})
            row[pub.unit] = pub.value
    return rows + list(published.values())


# ---------------------------------------------------------------------------------------
# 06-benchmark


def benchmark(profile: str, backend: str, *, iterations: int = 5, warmup: int = 1, images: int = 3,
              backend_options: dict | None = None) -> dict:
    """PyTorch eager against ONNX Runtime (and the backend, if another), interleaved, batch 1:
    the graph alone; the port's host post-processing alone (NMS, rescale, 100 mask pastes);
    and end to end per image (read, resize, tensor, graph, host side)."""
    names = benchmark_candidates(backend)
    manifest = load_manifest(profile)
    model, _ = load_model(profile)
    sessions = {name: _bench_session(profile, name, model, backend_options) for name in names}
    feeds = {"image": read_input(profile, 0, manifest)}
    runners = {name: (lambda s=s: s.run(feeds)) for name, s in sessions.items()}
    device = {name: s.device_times_ms for name, s in sessions.items()}
    graph_rows = bench.benchmark(runners, batch_size=1, warmup=warmup, iterations=iterations, device_times=device)
    flops = graph_flops(onnx_path(profile))
    for row in graph_rows:
        row["gflop_per_s"] = flops / row["mean_ms"] / 1e6
    chosen = manifest["images"][:max(1, images)]
    saved = [_graph_outputs(profile, backend, im, manifest, sessions["onnxruntime"]) for im in chosen]
    cycle = itertools.cycle(zip(saved, chosen))
    host_rows = bench.benchmark({"host post-processing": lambda: port_result(*next(cycle))}, batch_size=1,
                                warmup=1, iterations=max(iterations, len(chosen)))
    e2e = {name: _end_to_end(session, manifest, chosen) for name, session in sessions.items()}
    e2e_rows = bench.benchmark(e2e, batch_size=1, warmup=min(warmup, 1), iterations=max(iterations, len(chosen)))
    for s in sessions.values():
        s.close()
    return {"graph": graph_rows, "host": host_rows, "end_to_end": e2e_rows, "candidates": names,
            "graph_gflop": flops / 1e9}


def _graph_outputs(profile: str, backend: str, image: dict, manifest: dict, session) -> dict[str, np.ndarray]:
    """The graph's outputs for one image: those 04-infer saved for ``backend``, else a fresh run."""
    if (outputs_dir(profile, backend) / f"{image['index']}.npz").is_file():
        return load_outputs(profile, backend, image["index"])
    return session.run({"image": read_input(profile, image["index"], manifest)})


def _bench_session(profile: str, name: str, model, backend_options):
    if name == "onnxruntime":
        return OnnxRuntimeSession(FILES.compiled(profile, "onnxruntime").get("graph") or onnx_path(profile))
    return open_session(profile, name, backend_options, model=model)


def _end_to_end(session, manifest: dict, images: list[dict]):
    cycle = itertools.cycle(images)
    size = manifest["input_size"]

    def run():
        im = next(cycle)
        rgb = np.ascontiguousarray(read_bgr(im["path"])[:, :, ::-1])
        resized, ratio = port_resize(rgb, size)
        outputs = session.run({"image": port_tensor(resized, size)})
        return port_result(outputs, {**im, "ratio": ratio})

    return run
