"""RetinaMask's hooks over the shared stages (:mod:`zoobook.stages.steps`).

Its own artifacts under ``runs/<profile>/retinamask/artifacts/``::

    inputs/<index>.png, inputs/manifest.json   01-data (each image resized the port's way)
    retinamask.onnx                            02-export (static batch 1; export.json keeps top_k, input_size)
    compiled/retinamask_cast.onnx              03-convert, for ATC only (the RoIs through fp16), then its .om
    outputs/<backend>/<index>.npz              04-infer (the graph's four outputs, compressed)
    results/<candidate>/*.json                 05-evaluate (COCO results files)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch
from tqdm import tqdm

from zoobook.atomic import save_npz_atomic
from zoobook.checkpoints import weights_label
from zoobook.compare import Tolerance, detection_parity
from zoobook.data.coco import CocoDataset, locate_coco
from zoobook.data.images import read_bgr
from zoobook.metrics.coco import score_candidates
from zoobook.models.retinamask import GRAPH, SPEC
from zoobook.models.retinamask import postprocess as post
from zoobook.models.retinamask.checkpoint import OFFICIAL_FILENAME, build
from zoobook.models.retinamask.export import TOP_K, PortGraph, cast_roi_inputs_to_fp16, export_port_graph, graph_shapes
from zoobook.models.retinamask.preprocess import PORT_SIZE, original_tensor, port_resize, port_tensor
from zoobook.pipeline import Deployment
from zoobook.stages import Port, Run
from zoobook.stages.steps import load_outputs, open_session, reused

OUTPUT_NAMES = list(GRAPH.outputs)
CANDIDATE_ORIGINAL = "torch, original post-processing"
#: the graph rewrite a compiler needs before it compiles the port's graph, by compiler: ATC
#: typed the RoIs differently from the features (the port's ``cast_onnx.py``); ONNX
#: Runtime's ``RoiAlign`` wants one type, so it compiles the graph as exported
GRAPH_REWRITES = {"atc": cast_roi_inputs_to_fp16}


class RetinaMaskPort(Port):
    spec = SPEC
    data_files = ("inputs/*.png",)
    evaluate_files = ("results/*/*.json",)
    dataset_dir = "coco"
    weights_file = OFFICIAL_FILENAME
    #: the graph's outputs are a set of detections (see :func:`~zoobook.compare.detection_parity`):
    #: fp32 runs of the same graph match entries within 1 px, with ``|a - b| <= 2e-3 + 1e-4 |b|``
    #: on the sorted scores and the matched boxes (pixels up to the input size) and masks;
    #: fp16 (ATC) within 4 px, msit's thresholds only
    tolerances = {"fp32": Tolerance(atol=2e-3, rtol=1e-4, box_px=1.0), "fp16": Tolerance(box_px=4.0)}

    def build(self, weights, *, allow_recipe):
        return build(weights, allow_recipe=allow_recipe)

    # 01-data

    def locate(self, run: Run, *, num_images: int = 8, require_real: bool = False,
               seed: int = 0) -> tuple[CocoDataset, dict]:
        """Real COCO val2017 under ``data/coco`` when present, else a generated set in COCO's
        layout (:func:`zoobook.data.coco.locate_coco`). ``num_images`` 0 means all."""
        return locate_coco(run.profile, num_images=num_images, require_real=require_real, seed=seed)

    def prepare(self, run: Run, dataset: CocoDataset, provenance: dict, *, input_size: int = PORT_SIZE) -> dict:
        """Resize each image the port's way (PIL bilinear, long side to ``input_size``) and keep
        it as an 8-bit PNG; :func:`read_input` turns it into the port's float32 tensor (BGR minus
        the mean, zero-padded square). The tensor is a fixed function of that image, so the
        port's 22 MB ``.bin`` per image need not be stored (:func:`write_bin` writes one)."""
        folder = run.path("inputs")
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
        return {"dataset": provenance, "input_size": input_size, "input_shape": [1, 3, input_size, input_size],
                "images": images}

    # 02-export and the inputs of every stage

    def export_graphs(self, run: Run, model, folder: Path, *, opset: int, top_k: int = TOP_K) -> dict:
        """The port's graph (:class:`~zoobook.models.retinamask.export.PortGraph`) at the data's
        input size, cut at a global ``top_k``, static batch 1 as the port."""
        summary = export_port_graph(model, folder / "retinamask.onnx", size=run.manifest["input_size"], top_k=top_k,
                                    opset=opset)
        return {"retinamask": {"1": summary}}

    def export_extra(self, run: Run, *, top_k: int = TOP_K) -> dict:
        return {"top_k": top_k, "input_size": run.manifest["input_size"]}

    def expected_io(self, run: Run, graph: str, batch: str) -> dict:
        return graph_shapes(run.exported["input_size"], run.exported["top_k"])

    def graph_module(self, run: Run, model, graph: str):
        """The port's graph cut at the run's top-k."""
        return PortGraph(model, top_k=run.exported["top_k"])

    def read_batch(self, run: Run, items: list[int]) -> dict[str, np.ndarray]:
        return {"image": np.concatenate([read_input(run, i) for i in items])}

    def compare(self, graph: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                tolerance: Tolerance) -> list[dict]:
        """Sets of detections: the graph's top-k holds many near-equal scores that two correct
        backends may order differently (:func:`~zoobook.compare.detection_parity`)."""
        return detection_parity(reference, candidate, tolerance)

    # 03-convert

    def before_compile(self, run: Run, compiler: str, source: Path, folder: Path) -> tuple[Path, dict | None]:
        """For ATC, the graph with the RoIs of every ``RoiAlign`` cast to float16
        (:data:`GRAPH_REWRITES`); the note says where the casts went."""
        rewrite = GRAPH_REWRITES.get(compiler)
        if rewrite is None:
            return source, None
        target = Path(folder) / f"{Path(source).stem}_cast.onnx"
        return target, rewrite(source, target)

    # 04-infer

    def save_output(self, path: Path, outputs: dict[str, np.ndarray]) -> None:
        save_npz_atomic(path, outputs, compressed=True)

    def outputs_key(self, run: Run) -> dict:
        return {"input_size": run.manifest["input_size"], "top_k": run.exported["top_k"]}

    # 05-evaluate

    def score(self, run: Run, candidates: list[str], *, original: bool = True,
              known: Mapping[str, list] | None = None) -> dict:
        """Score with pycocotools (bbox, segm): the backend's saved outputs through the port's
        host side; the reference where asked for (PyTorch running the same graph on the same
        inputs, through the same host side, or its results taken from ``known``, an earlier
        evaluation's ``results`` of this run) and the backend's agreement with it; with
        ``original``, PyTorch through the original pipeline at its own scale (its COCO boxes
        with w = x2 - x1 + 1, as it writes them)."""
        manifest = run.manifest
        model, weights = run.model()
        backend, *reference = candidates
        given = reused(known, reference, len(manifest["images"]))
        sessions = {name: open_session(run, name) for name in reference if name not in given}
        results: dict[str, list] = {name: [] for name in candidates}
        results.update(given)
        if original:
            results[CANDIDATE_ORIGINAL] = []
        for im in tqdm(manifest["images"], desc="evaluate"):
            results[backend].append(port_result(load_outputs(run, backend, im["index"]), im))
            for name, session in sessions.items():
                results[name].append(port_result(session.run({"image": read_input(run, im["index"])}), im))
            if original:
                results[CANDIDATE_ORIGINAL].append(original_result(model, load_image(run, im["index"])))
        plus_one = {**{name: False for name in candidates}, CANDIDATE_ORIGINAL: True}
        metrics = score_candidates(Path(manifest["dataset"]["annotation_file"]), manifest["images"], results,
                                   backend=backend, folder=run.path("results"), plus_one=plus_one,
                                   reference=reference[0] if reference else None)
        return {"metrics": metrics, "results": results, "weights": weights, "dataset": manifest["dataset"],
                "input_size": manifest["input_size"], "top_k": run.exported["top_k"]}

    # 06-benchmark

    def deployment(self, run: Run, backend: str, *, items: int, backend_options: dict | None = None) -> Deployment:
        """Per image: read the JPEG, the port's resize and tensor, the graph, then the port's
        host side (NMS, rescale, the mask pastes)."""
        size = run.manifest["input_size"]
        session = open_session(run, backend, backend_options=backend_options, uncompiled=True)

        def read(im: dict):
            return np.ascontiguousarray(read_bgr(im["path"])[:, :, ::-1]), im

        def prepare(read_out):
            rgb, im = read_out
            resized, ratio = port_resize(rgb, size)
            return {"image": port_tensor(resized, size)}, {**im, "ratio": ratio}

        def graph(prepared):
            feeds, im = prepared
            return session.run(feeds), im

        return Deployment([("read", read), ("preprocess", prepare), ("graph", graph),
                           ("postprocess", lambda out: port_result(*out))], run.manifest["images"][:items],
                          release=session.close)


PORT = RetinaMaskPort()


# ---------------------------------------------------------------------------------------
# Inputs


def read_input(run: Run, index: int) -> np.ndarray:
    """The port's input tensor of image ``index``: float32 [1, 3, S, S]."""
    path = run.path("inputs") / f"{index}.png"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{path}: preprocessed image missing; rerun 01-data")
    return port_tensor(image[:, :, ::-1], run.manifest["input_size"])


def input_summary(run: Run, index: int = 0) -> dict:
    """What the port's tensor of one image looks like: shape, ratio, BGR means inside the image."""
    tensor, image = read_input(run, index), run.manifest["images"][index]
    h, w = image["resized_hw"]
    return {"images": len(run.manifest["images"]), "tensor": list(tensor.shape), "ratio": image["ratio"],
            "mean per channel (BGR, before padding)": tensor[0, :, :h, :w].mean(axis=(1, 2)).round(2).tolist()}


def write_bin(run: Run, index: int, path: str | Path) -> Path:
    """The port's ``.bin`` for ``ais_bench --input``: the raw float32 tensor."""
    read_input(run, index).tofile(path)
    return Path(path)


def load_image(run: Run, index: int) -> np.ndarray:
    """Image ``index`` as stored (uint8 BGR, full size)."""
    return read_bgr(run.manifest["images"][index]["path"])


# ---------------------------------------------------------------------------------------
# Host post-processing: the port's and the original's


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


def accuracy_rows(evaluation: dict) -> list[dict]:
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
    for pub in SPEC.published:
        if pub.unit in ("bbox AP", "segm AP"):
            row = published.setdefault(pub.device, {"source": "published", "candidate": pub.device, "bbox AP": None,
                                                    "segm AP": None, "weights": pub.metric, "conventions": "",
                                                    "data": f"{pub.data}; {pub.source}"})
            row[pub.unit] = pub.value
    return rows + list(published.values())

