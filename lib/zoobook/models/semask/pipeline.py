"""The SeMask-FPN stages as library calls; the notebooks narrate and call these.

Artifacts of a run live in ``runs/<profile>/semask/artifacts/``::

    inputs/manifest.json                         01-data (images, labels, input size)
    export.json, semask_bs<N>.onnx               02-export (one static graph per batch size)
    compiled/<backend>.json and its artifacts    03-convert (one per batch size)
    outputs/<backend>/<name>.png                 04-infer (class maps, resumable)
    evaluation.json                              05-evaluate (confusion matrices)

The input tensor is a fixed function of the image (RGB, ImageNet mean and std on the 0-255
scale, NCHW float32), so it is built when needed rather than stored; ``write_bin`` writes the
port's ``.bin`` for ``ais_bench`` on the command line.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from zoobook import bench
from zoobook.artifacts import Artifacts
from zoobook.backends import benchmark_candidates, get_backend, with_reference
from zoobook.backends import resolve as resolve_backend
from zoobook.backends.onnxruntime_backend import OnnxRuntimeSession
from zoobook.backends.torch_backend import TorchSession
from zoobook.checkpoints import weights_label
from zoobook.data.cityscapes import CLASSES, IGNORE, NUM_CLASSES, CityscapesDataset, find_cityscapes, \
    label_ids_to_train_ids, write_synthetic_cityscapes
from zoobook.export import graph_flops, onnx_io
from zoobook.metrics.segmentation import ConfusionMatrix
from zoobook.models.semask import GRAPH
from zoobook.models.semask.checkpoint import build
from zoobook.models.semask.export import PORT_SIZE, export_graphs, graph_shapes, normalize
from zoobook.atomic import write_bytes_atomic, write_json_atomic
from zoobook.resume import file_stamps, generated_once, resumable_folder

MODEL = "semask"
FILES = Artifacts(MODEL)
_artifacts = FILES.folder
INPUT_NAMES, OUTPUT_NAMES = list(GRAPH.inputs), list(GRAPH.outputs)
#: class maps of two fp32 runs must agree on this share of pixels: arg-max near-ties (about
#: 0.2 % of pixels have a top-2 margin below 1e-3, FACTS.md) may flip; the logits themselves
#: are checked to 1e-4 against the goldens in the tests
MIN_AGREEMENT_CPU = 0.999
#: and for a device computing in reduced precision (ATC's default fp16 on Ascend)
MIN_AGREEMENT_DEVICE = 0.99
#: ONNX Runtime without its memory pattern: planned on the first run, it is allocated beside
#: the arena's blocks on the next, which nearly doubles the peak (measured while writing this,
#: ONNX Runtime 1.31 on 2 CPU cores at 1024 x 2048: 3.4 instead of 1.9 GB per image) for no
#: gain in speed
ORT_OPTIONS = {"memory_pattern": False}


def _engine(backend: str, options: dict | None = None):
    name = resolve_backend(backend)
    return get_backend(name, **{**(ORT_OPTIONS if name == "onnxruntime" else {}), **(options or {})})


# ---------------------------------------------------------------------------------------
# 01-data


def locate_dataset(profile: str, *, num_images: int = 4, size: tuple[int, int] = PORT_SIZE,
                   require_real: bool = False, seed: int = 0) -> tuple[CityscapesDataset, dict]:
    """Real Cityscapes val under ``data/cityscapes`` when present, else a generated set in
    its layout under ``runs/<profile>/datasets/cityscapes-synthetic-<n>-<H>x<W>-s<seed>``
    (made once). ``num_images`` 0 means all. Half a real set (images without ``gtFine`` or the
    reverse, or an image without its label file) is an error naming what is missing
    (:func:`~zoobook.data.cityscapes.find_cityscapes`, ``CityscapesDataset.check``).
    Returns the dataset and its provenance."""
    from zoobook.paths import data_dir, runs_dir

    real = find_cityscapes(data_dir())
    if real:
        dataset = CityscapesDataset(real, "val", limit=num_images or None).check()
        return dataset, {"kind": "real", "name": "Cityscapes val (gtFine)", "root": str(real), "count": len(dataset)}
    if require_real:
        raise FileNotFoundError(f"{data_dir() / 'cityscapes/leftImg8bit/val'}: real Cityscapes not found; this "
                                "profile needs it (with gtFine/val beside it)")
    count = num_images or 4
    height, width = size
    root = runs_dir() / profile / "datasets" / f"cityscapes-synthetic-{count}-{height}x{width}-s{seed}"
    meta = {"num_images": count, "size": [height, width], "seed": seed}
    generated_once(root, meta, lambda: write_synthetic_cityscapes(root, count, size=(height, width), seed=seed))
    dataset = CityscapesDataset(root, "val")
    return dataset, {"kind": "synthetic", "name": "generated Cityscapes-layout set (street-like class regions)",
                     "root": str(root), "count": len(dataset), "seed": seed}


def prepare(profile: str, dataset: CityscapesDataset, provenance: dict, *,
            input_size: tuple[int, int] = PORT_SIZE) -> dict:
    """Check every image and label, count the ground truth's pixels per class, and write the
    manifest the later stages read. Images of another size than ``input_size`` are resized
    to it (bilinear) on reading and the class maps back to the label's size (nearest); the
    port's Cityscapes images are 1024 x 2048 and need neither."""
    height, width = (int(v) for v in input_size)
    if height % 32 or width % 32:
        raise ValueError(f"input size {input_size} must be a multiple of 32 on both sides")
    folder = _artifacts(profile) / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    images, class_pixels, resized = [], np.zeros(NUM_CLASSES + 1, np.int64), 0
    for index in tqdm(range(len(dataset)), desc="check"):
        sample = dataset[index]
        label = dataset.load_label(index)
        shape = _image_hw(sample["image"])
        if shape != label.shape:
            raise ValueError(f"{sample['image']}: image {shape} and label {label.shape} differ in size")
        resized += shape != (height, width)
        class_pixels += np.bincount(np.minimum(label.ravel(), NUM_CLASSES), minlength=NUM_CLASSES + 1)
        images.append({"index": index, "name": sample["name"], "city": sample["city"], "image": str(sample["image"]),
                       "label": str(sample["label"]), "height": shape[0], "width": shape[1]})
    manifest = {"dataset": provenance, "input_size": [height, width], "resized_images": resized, "images": images,
                "class_pixels": {**{c.name: int(class_pixels[c.train_id]) for c in CLASSES},
                                 "ignored (255)": int(class_pixels[NUM_CLASSES])}}
    write_json_atomic(folder / "manifest.json", manifest)
    return manifest


def _image_hw(path: Path) -> tuple[int, int]:
    """An image's (height, width) from its header, without decoding it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None


def data_pictures(profile: str, count: int = 3) -> tuple[list[list[np.ndarray]], list[str], list[str]]:
    """The first ``count`` images beside their ground truth in the Cityscapes palette."""
    from zoobook.data.cityscapes import colorize

    manifest = load_manifest(profile)
    shown = manifest["images"][:count]
    rows = [[cv2.imread(im["image"], cv2.IMREAD_COLOR)[:, :, ::-1], colorize(read_label(manifest, im["index"]))]
            for im in shown]
    return rows, ["image", "ground truth (train ids; black: ignored)"], [im["name"] for im in shown]


def palette_legend() -> dict[str, np.ndarray]:
    return {c.name: np.asarray(c.color) for c in CLASSES}


def class_pixel_rows(manifest: dict) -> list[dict]:
    total = sum(manifest["class_pixels"].values())
    return [{"class": name, "pixels": count, "share": count / total}
            for name, count in manifest["class_pixels"].items()]


def load_manifest(profile: str) -> dict:
    return FILES.read(profile, "inputs/manifest.json", "01-data")


def read_image(manifest: dict, index: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] at the input size (mmseg reads BGR with OpenCV and converts)."""
    path = manifest["images"][index]["image"]
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{path}: image missing or unreadable; rerun 01-data")
    height, width = manifest["input_size"]
    if bgr.shape[:2] != (height, width):
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def read_label(manifest: dict, index: int) -> np.ndarray:
    """Train ids uint8 [H, W] at the label's own size (255 = ignored)."""
    path = manifest["images"][index]["label"]
    ids = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if ids is None or ids.ndim != 2:
        raise FileNotFoundError(f"{path}: label missing or not single-channel; rerun 01-data")
    return label_ids_to_train_ids(ids)


def read_batch(manifest: dict, indices: list[int]) -> np.ndarray:
    """The port's input for ``indices``: float32 [len(indices), 3, H, W]."""
    return np.concatenate([normalize(read_image(manifest, i)) for i in indices])


def write_bin(profile: str, index: int, path: str | Path) -> Path:
    """The port's ``.bin`` for ``ais_bench --input``: the raw float32 [1, 3, H, W] tensor."""
    read_batch(load_manifest(profile), [index]).tofile(path)
    return Path(path)


# ---------------------------------------------------------------------------------------
# 02-export


def load_model(profile: str) -> tuple[torch.nn.Module, dict]:
    weights = FILES.read(profile, "export.json", "02-export")["weights"]
    recipe = weights["kind"] == "recipe"
    return build(None if recipe else weights["path"], allow_recipe=recipe)


def class_map_parity(reference: np.ndarray, candidate: np.ndarray, *, min_agreement: float, graph: str = "") -> dict:
    """Two class maps of the same images: the share of equal pixels, and whether it reaches
    ``min_agreement`` (arg-max near-ties may flip; an element-wise equality test would be wrong)."""
    if reference.shape != candidate.shape:
        return {"graph": graph, "output": "output", "shape": list(candidate.shape), "agreement": 0.0,
                "differing_pixels": None, "passed": False, "note": f"shape differs from {list(reference.shape)}"}
    equal = reference == candidate
    return {"graph": graph, "output": "output", "shape": list(reference.shape), "agreement": float(equal.mean()),
            "differing_pixels": int(equal.size - equal.sum()), "min_agreement": min_agreement,
            "passed": bool(equal.mean() >= min_agreement)}


def _samples(manifest: dict, batch_size: int) -> list[int]:
    """Distinct data images to fill a batch (cycled when the set is smaller)."""
    return [i % len(manifest["images"]) for i in range(batch_size)]


def export(profile: str, *, batch_sizes: list[int] = (1, 4, 8), opset: int = 11, weights: str | None = None,
           require_official: bool = False) -> dict:
    """Build, load weights, and export one static graph per batch size at the data's input
    size (traced once, the batch pinned per graph, simplified, checked). Each graph runs in
    ONNX Runtime on a batch of distinct data images and its class maps are compared with
    PyTorch's, image by image, so a graph that mixed up the batch would show."""
    manifest = load_manifest(profile)
    size = tuple(manifest["input_size"])
    model, provenance = build(weights, allow_recipe=not require_official)
    exported_graphs = export_graphs(model, _artifacts(profile), batch_sizes=list(batch_sizes), size=size, opset=opset)
    reference: dict[int, np.ndarray] = {}
    graphs, parity = {}, []
    for bs, summary in tqdm(exported_graphs.items(), desc="parity"):
        path = Path(summary["path"])
        io, expected = onnx_io(path), graph_shapes(bs, size)
        if io != expected:
            raise AssertionError(f"{path}: graph I/O {io} differs from {expected}")
        indices = _samples(manifest, bs)
        for i in sorted(set(indices) - set(reference)):
            with torch.inference_mode():
                reference[i] = model(torch.from_numpy(read_batch(manifest, [i]))).numpy()[0]
        candidate = graph_class_maps(profile, "onnx", str(path), indices)
        parity.append(class_map_parity(np.stack([reference[i] for i in indices]), candidate,
                                       min_agreement=MIN_AGREEMENT_CPU, graph=f"batch {bs}"))
        graphs[str(bs)] = {"onnx": str(path), **{k: v for k, v in summary.items() if k != "path"}}
    write_json_atomic(_artifacts(profile) / "export.json",
                      {"weights": provenance, "input_size": list(size), "opset": opset, "graphs": graphs})
    return {"graphs": graphs, "io": onnx_io(graphs[str(batch_sizes[0])]["onnx"]), "parity": parity,
            "weights": provenance}


def exported(profile: str) -> dict:
    return FILES.read(profile, "export.json", "02-export")


def onnx_path(profile: str, batch_size: int) -> Path:
    graphs = exported(profile)["graphs"]
    if str(batch_size) not in graphs:
        raise KeyError(f"no graph for batch size {batch_size}; exported: {sorted(graphs, key=int)} "
                       "(rerun 02-export with batch_sizes including it)")
    return Path(graphs[str(batch_size)]["onnx"])


def exported_batch_sizes(profile: str) -> list[int]:
    return sorted(int(bs) for bs in exported(profile)["graphs"])


# ---------------------------------------------------------------------------------------
# 03-convert


def convert(profile: str, backend: str = "auto", *, batch_sizes: list[int] | None = None,
            backend_options: dict | None = None) -> dict:
    """Compile each exported graph for ``backend`` (ONNX Runtime's offline optimisation, or
    ATC at ``image:bs,3,H,W`` on Ascend), then compare each compiled graph's class maps with
    plain ONNX Runtime running the exported graph on the same data images."""
    engine = _engine(backend, backend_options)
    manifest = load_manifest(profile)
    batch_sizes = list(batch_sizes or exported_batch_sizes(profile))
    folder = _artifacts(profile) / "compiled"
    artifacts: dict[str, str] = {}
    if engine.name in ("onnxruntime", "ascend"):
        for bs in tqdm(batch_sizes, desc=f"compile {engine.name}"):
            shapes = graph_shapes(bs, tuple(manifest["input_size"]))["inputs"]
            artifacts[str(bs)] = str(engine.compile(onnx_path(profile, bs), folder, input_shapes=shapes,
                                                    name=f"{MODEL}_bs{bs}"))
    record = {"backend": engine.name, "options": backend_options or {}, "device": engine.device(),
              "artifacts": artifacts}
    write_json_atomic(folder / f"{engine.name}.json", record)
    cpu = engine.name == "onnxruntime"
    parity = []
    for bs, artifact in artifacts.items():
        indices = _samples(manifest, int(bs))
        reference = graph_class_maps(profile, "onnx", str(onnx_path(profile, int(bs))), indices)
        candidate = graph_class_maps(profile, engine.name, artifact, indices, backend_options)
        parity.append(class_map_parity(reference, candidate, graph=f"batch {bs}",
                                       min_agreement=MIN_AGREEMENT_CPU if cpu else MIN_AGREEMENT_DEVICE))
    return {**record, "parity": parity}


def _class_maps_worker(profile: str, kind: str, artifact: str, indices: list[int], options: dict | None) -> np.ndarray:
    manifest = load_manifest(profile)
    if kind == "onnx":
        session = OnnxRuntimeSession(artifact, optimization="disable", **ORT_OPTIONS)
    else:
        session = _engine(kind, options).open(artifact)
    with session:
        return session.run({"image": read_batch(manifest, indices)})["output"].astype(np.uint8)


def graph_class_maps(profile: str, kind: str, artifact: str, indices: list[int],
                     options: dict | None = None) -> np.ndarray:
    """The class maps of data images ``indices`` from one graph, run in a process of its own
    (``kind`` "onnx": the exported graph in plain ONNX Runtime; else a backend and its
    compiled artifact). ONNX Runtime's memory grows with the batch (about 2 GB per image at
    1024 x 2048 on a CPU); a separate process gives it all back before the next graph runs."""
    return bench.run_isolated(_class_maps_worker, profile, kind, artifact, list(indices), options)[0]


def open_session(profile: str, backend: str, batch_size: int = 1, backend_options: dict | None = None, model=None):
    """The eager model for ``torch`` (any batch), else the artifact compiled for ``batch_size``."""
    if backend == "torch":
        model = model if model is not None else load_model(profile)[0]
        return TorchSession(model, INPUT_NAMES, OUTPUT_NAMES)
    engine = _engine(backend, backend_options)
    artifacts = FILES.read(profile, f"compiled/{engine.name}.json", "03-convert")["artifacts"]
    if str(batch_size) not in artifacts:
        raise KeyError(f"no {engine.name} artifact for batch size {batch_size}; compiled: "
                       f"{sorted(artifacts, key=int)} (rerun 02-export and 03-convert with it)")
    return engine.open(artifacts[str(batch_size)])


# ---------------------------------------------------------------------------------------
# 04-infer


def outputs_dir(profile: str, backend: str) -> Path:
    return _artifacts(profile) / "outputs" / backend


def _outputs_key(profile: str, backend: str, manifest: dict) -> dict:
    export = exported(profile)
    return {"images": [im["image"] for im in manifest["images"]], "dataset": manifest["dataset"],
            "input_size": manifest["input_size"], "weights": export["weights"]["sha256"],
            "artifacts": file_stamps(FILES.compiled(profile, backend)) if backend != "torch" else {}}


def infer(profile: str, backend: str, *, batch_size: int = 1, resume: bool = True,
          backend_options: dict | None = None) -> dict:
    """Run the graph over the set in batches and keep each class map as an 8-bit PNG
    (``outputs/<backend>/<name>.png``); resumable while data, weights and compiled graphs
    are unchanged. A last partial batch is padded with copies for the static graphs and the
    copies' maps discarded."""
    manifest = load_manifest(profile)
    folder = resumable_folder(outputs_dir(profile, backend), _outputs_key(profile, backend, manifest), resume=resume,
                              pattern="*.png")
    todo = [im["index"] for im in manifest["images"] if not (folder / f"{im['name']}.png").is_file()]
    start, calls = time.perf_counter(), 0
    with open_session(profile, backend, batch_size, backend_options) as session:
        for first in tqdm(range(0, len(todo), batch_size), desc=f"infer {backend} bs{batch_size}"):
            chunk = todo[first:first + batch_size]
            padded = chunk + [chunk[-1]] * (batch_size - len(chunk)) if backend != "torch" else chunk
            maps = session.run({"image": read_batch(manifest, padded)})["output"]
            calls += 1
            for index, class_map in zip(chunk, maps):
                _write_png_atomic(folder / f"{manifest['images'][index]['name']}.png", class_map.astype(np.uint8))
        device_times = session.device_times_ms()
    return {"images": len(manifest["images"]), "computed": len(todo), "skipped": len(manifest["images"]) - len(todo),
            "batch_size": batch_size, "calls": calls, "seconds": round(time.perf_counter() - start, 2),
            "device_time_ms_total": round(sum(device_times), 3) if device_times else None}


def _write_png_atomic(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    write_bytes_atomic(path, data.tobytes())


def load_prediction(profile: str, backend: str, manifest: dict, index: int) -> np.ndarray:
    """The saved class map of image ``index`` at the label's size (nearest when resized)."""
    image = manifest["images"][index]
    path = outputs_dir(profile, backend) / f"{image['name']}.png"
    class_map = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if class_map is None:
        raise FileNotFoundError(f"{path}: no saved class map; run 04-infer with backend {backend}")
    if class_map.shape != (image["height"], image["width"]):
        class_map = cv2.resize(class_map, (image["width"], image["height"]), interpolation=cv2.INTER_NEAREST)
    return class_map


# ---------------------------------------------------------------------------------------
# 05-evaluate


def evaluate(profile: str, backend: str, *, reference: bool = True) -> dict:
    """Accumulate a confusion matrix over the whole set for the backend's class maps and,
    with ``reference``, for PyTorch's on the same images (run here through 04-infer's
    resumable path if not saved yet); and the backend's pixel agreement with PyTorch."""
    manifest = load_manifest(profile)
    candidates = with_reference(backend, reference)
    if "torch" in candidates and backend != "torch":
        infer(profile, "torch")
    matrices = {name: ConfusionMatrix(NUM_CLASSES, IGNORE) for name in candidates}
    equal, pixels, per_image = 0, 0, []
    for im in tqdm(manifest["images"], desc="evaluate"):
        label = read_label(manifest, im["index"])
        maps = {name: load_prediction(profile, name, manifest, im["index"]) for name in candidates}
        for name, class_map in maps.items():
            matrices[name].update(class_map, label)
        if len(maps) > 1:
            same = int((maps[backend] == maps["torch"]).sum())
            equal, pixels = equal + same, pixels + label.size
            per_image.append(same / label.size)
    evaluation = {"candidates": candidates, "scores": {name: m.scores() for name, m in matrices.items()},
                  "confusion": {name: m.matrix.tolist() for name, m in matrices.items()},
                  "agreement": {"pixels": pixels, "equal": equal, "share": equal / pixels if pixels else None,
                                "worst_image": min(per_image) if per_image else None},
                  "weights": exported(profile)["weights"], "dataset": manifest["dataset"],
                  "input_size": manifest["input_size"], "images": len(manifest["images"])}
    write_json_atomic(_artifacts(profile) / "evaluation.json", evaluation)
    return evaluation


def accuracy_rows(evaluation: dict, spec) -> list[dict]:
    """mIoU, mAcc and aAcc (x 100, as mmseg prints them) per measured candidate, then the
    published figures with their provenance."""
    data = evaluation["dataset"]
    rows = [{"source": "measured", "candidate": name, "mIoU": 100 * s["mIoU"], "mAcc": 100 * s["mAcc"],
             "aAcc": 100 * s["aAcc"], "weights": weights_label(evaluation["weights"]),
             "data": f"{data['kind']}: {data['name']} ({evaluation['images']} images, "
                     f"input {evaluation['input_size'][0]}x{evaluation['input_size'][1]})"}
            for name, s in evaluation["scores"].items()]
    rows += [{"source": "published", "candidate": pub.device, "mIoU": pub.value, "weights": pub.metric,
              "data": f"{pub.data}; {pub.source}"} for pub in spec.published if pub.unit == "mIoU"]
    return rows


def class_rows(evaluation: dict) -> list[dict]:
    """Per class: the ground truth's pixels and those the first candidate predicts (both on
    counted pixels), then IoU and accuracy (x 100) of each candidate."""
    rows = []
    first = evaluation["candidates"][0]
    matrix = np.asarray(evaluation["confusion"][first])
    for c in CLASSES:
        row = {"class": c.name, "gt_pixels": int(matrix[c.train_id].sum()),
               f"predicted_pixels {first}": int(matrix[:, c.train_id].sum())}
        for name in evaluation["candidates"]:
            s = evaluation["scores"][name]
            row[f"IoU {name}"] = 100 * s["IoU"][c.train_id]
            row[f"Acc {name}"] = 100 * s["Acc"][c.train_id]
        rows.append(row)
    return rows


def agreement_rows(evaluation: dict) -> list[dict]:
    agreement = evaluation["agreement"]
    if not agreement["pixels"]:
        return []
    backend = evaluation["candidates"][0]
    return [{"measure": f"pixels where {backend} and torch give the same class", "value": agreement["share"]},
            {"measure": "the same, worst image", "value": agreement["worst_image"]},
            {"measure": "mIoU difference (points)",
             "value": 100 * (evaluation["scores"][backend]["mIoU"] - evaluation["scores"]["torch"]["mIoU"])}]


def record_metrics(evaluation: dict) -> dict:
    metrics = {f"{name}_{key}": scores[key] for name, scores in evaluation["scores"].items()
               for key in ("mIoU", "mAcc", "aAcc")}
    if evaluation["agreement"]["pixels"]:
        metrics["pixel_agreement_with_torch"] = evaluation["agreement"]["share"]
    return metrics


def picture_rows(profile: str, evaluation: dict, count: int = 3) -> tuple[list[list[np.ndarray]], list[str], list[str]]:
    """Images, ground truth and each candidate's class map (in the Cityscapes palette) for
    the first ``count`` images; with two candidates also where they differ (white)."""
    from zoobook.data.cityscapes import colorize

    manifest = load_manifest(profile)
    candidates = evaluation["candidates"]
    columns = ["image", "ground truth", *candidates] + (["differs from torch"] if len(candidates) > 1 else [])
    rows, names = [], []
    for im in manifest["images"][:count]:
        original = cv2.imread(im["image"], cv2.IMREAD_COLOR)[:, :, ::-1]
        maps = [load_prediction(profile, name, manifest, im["index"]) for name in candidates]
        row = [original, colorize(read_label(manifest, im["index"])), *(colorize(m) for m in maps)]
        if len(maps) > 1:
            row.append(np.repeat(((maps[0] != maps[1]) * 255).astype(np.uint8)[..., None], 3, axis=2))
        rows.append(row)
        names.append(im["name"])
    return rows, columns, names


# ---------------------------------------------------------------------------------------
# 06-benchmark


def _bench_worker(profile: str, candidate: str, batch_size: int, iterations: int, warmup: int,
                  backend_options: dict | None) -> dict:
    """One candidate at one batch size, timed in a process of its own (see :func:`benchmark`)."""
    torch.set_grad_enabled(False)
    manifest = load_manifest(profile)
    feeds = {"image": read_batch(manifest, _samples(manifest, batch_size))}
    before = bench.resident_mb()
    if candidate == "onnxruntime" and str(batch_size) not in FILES.compiled(profile, "onnxruntime"):
        session = OnnxRuntimeSession(onnx_path(profile, batch_size), **ORT_OPTIONS)  # not compiled: as exported
    else:
        session = open_session(profile, candidate, batch_size, backend_options)
    loaded = bench.resident_mb()
    peak_is_run = bench.reset_peak_resident()
    rows = bench.benchmark({candidate: lambda: session.run(feeds)}, batch_size=batch_size, warmup=warmup,
                           iterations=iterations, device_times={candidate: session.device_times_ms}, progress=False)
    session.close()
    return {**rows[0], "rss_before_load_mb": before, "rss_loaded_mb": loaded,
            "peak": "during the calls" if peak_is_run else "of the process (loading included)"}


def benchmark(profile: str, backend: str, *, batch_sizes: list[int] | None = None, iterations: int = 2,
              warmup: int = 1, backend_options: dict | None = None) -> dict:
    """PyTorch eager and ONNX Runtime (and the backend, if another) at each batch size. Each
    (candidate, batch size) runs in a fresh process, which loads the model, runs ``warmup``
    untimed and ``iterations`` timed calls, and reports its resident memory once loaded and
    its peak during the calls: what a machine must hold to run that batch. A process killed
    (for memory, most likely) is reported in ``failures`` and the others go on. Calls take
    seconds each, so running candidates one after another (not interleaved) costs little
    accuracy. Also: the host's read + normalise per image, the graph's counted GFLOP, and a
    linear fit of peak memory over batch size."""
    names = benchmark_candidates(backend)
    available = exported_batch_sizes(profile)
    batch_sizes = list(batch_sizes or available)
    flops = graph_flops(onnx_path(profile, available[0])) / available[0]  # per image
    rows, failures = [], []
    for bs in tqdm(batch_sizes, desc="batch sizes"):
        for name in names:
            try:
                row, peak = bench.run_isolated(_bench_worker, profile, name, bs, iterations, warmup,
                                               backend_options if name == backend else None)
            except bench.IsolatedRunFailed as err:
                failures.append({"candidate": name, "batch_size": bs, "error": str(err)})
                continue
            rows.append({**row, "peak_rss_mb": peak, "run_mb": peak - row["rss_loaded_mb"],
                         "gflop_per_s": flops * bs / row["mean_ms"] / 1e6})
    manifest = load_manifest(profile)
    cycle = iter(np.resize(np.arange(len(manifest["images"])), 1000))
    host = bench.benchmark({"read PNG + normalise": lambda: read_batch(manifest, [next(cycle)])}, batch_size=1,
                           warmup=1, iterations=max(3, min(len(manifest["images"]), 10)))
    return {"graph": rows, "failures": failures, "host": host, "memory": memory_fit(rows),
            "graph_gflop": flops / 1e9, "candidates": names, "input_size": manifest["input_size"]}


FLAT_MIB_PER_IMAGE = 1.0  # a fitted growth below this is noise in the peak: nothing to extrapolate


def memory_fit(rows: list[dict], at: int = 16) -> list[dict]:
    """Per candidate measured at two or more batch sizes: peak memory = a + b x batch, fitted
    by least squares, and what it predicts at batch ``at`` (where the port ran out of memory).
    A candidate whose peak grows by less than ``FLAT_MIB_PER_IMAGE`` per image is flat (small
    inputs, or a peak set by something else) and gets no fit."""
    fits = []
    for name in dict.fromkeys(r["candidate"] for r in rows):
        points = sorted((r["batch_size"], r["peak_rss_mb"]) for r in rows if r["candidate"] == name)
        if len({bs for bs, _ in points}) < 2:
            continue
        slope, intercept = np.polyfit(*zip(*points), 1)
        if slope < FLAT_MIB_PER_IMAGE:
            continue
        fits.append({"candidate": name, "MiB_per_image": float(slope), "MiB_fixed": float(intercept),
                     f"predicted_peak_at_{at}_MiB": float(intercept + slope * at),
                     "basis": f"linear fit over batch {', '.join(str(bs) for bs, _ in points)} (extrapolated)"})
    return fits
