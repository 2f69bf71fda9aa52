"""YolactEdge's hooks over the shared stages (:mod:`zoobook.stages.steps`).

Its own artifacts under ``runs/<profile>/yolact_edge/artifacts/``: ``inputs/<index>.bin``
(the port's float32 [1, 3, 550, 550] layout), ``inputs/ids.json``, ``inputs/manifest.json``;
``yolact_edge.onnx`` (dynamic batch); ``outputs/<backend>/<index>.npz`` (the six outputs);
``results/<candidate>/*.json`` (COCO results files).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from zoobook import bench
from zoobook.atomic import write_json_atomic
from zoobook.bench import Budget
from zoobook.checkpoints import weights_label
from zoobook.compare import Tolerance, compare_with
from zoobook.data.coco import locate_coco
from zoobook.data.images import read_bgr
from zoobook.export import export_onnx, graph_flops
from zoobook.metrics.coco import score_candidates
from zoobook.models.yolact_edge import GRAPH, SPEC
from zoobook.models.yolact_edge.checkpoint import build
from zoobook.models.yolact_edge.postprocess import detections_to_results, postprocess
from zoobook.models.yolact_edge.preprocess import INPUT_SIZE, preprocess
from zoobook.pipeline import Deployment
from zoobook.stages import Port, Run, StageIO
from zoobook.stages.steps import load_outputs, open_session, reused

OUTPUT_NAMES = list(GRAPH.outputs)


class YolactEdgePort(Port):
    spec = SPEC
    data_files = ("inputs/*.bin", "inputs/ids.json")
    evaluate_files = ("results/*/*.json",)
    dataset_dir = "coco"
    weights_file = "yolact_edge_resnet50_54_800000.pth"
    #: fp32 tolerance of the six graph outputs (golden README: observed <= 7.4e-5 relative)
    tolerances = {"fp32": Tolerance(atol=2e-3, rtol=1e-4), "fp16": Tolerance()}

    def build(self, weights, *, allow_recipe):
        return build(weights, allow_recipe=allow_recipe)

    # 01-data

    def locate(self, run: Run, *, num_images: int = 24, require_real: bool = False, seed: int = 0):
        """Real COCO val2017 under ``data/coco`` when present, else a generated set in COCO's
        layout (:func:`zoobook.data.coco.locate_coco`). ``num_images`` 0 means all."""
        return locate_coco(run.profile, num_images=num_images, require_real=require_real, seed=seed)

    def prepare(self, run: Run, dataset, provenance: dict) -> dict:
        """Each image as the port writes it: float32 ``<index>.bin`` [1,3,550,550], plus
        ``ids.json``; the manifest holds the image sizes and the data's provenance."""
        folder = run.path("inputs")
        folder.mkdir(parents=True, exist_ok=True)
        images = []
        for index in tqdm(range(len(dataset)), desc="preprocess"):
            sample = dataset[index]
            preprocess(dataset.load_image(index))[None].tofile(folder / f"{index}.bin")
            images.append({"index": index, "image_id": sample["image_id"], "file_name": sample["file_name"],
                           "path": str(sample["path"]), "height": sample["height"], "width": sample["width"]})
        write_json_atomic(folder / "ids.json", [im["image_id"] for im in images])
        return {"dataset": provenance, "input_shape": [1, 3, INPUT_SIZE, INPUT_SIZE], "images": images}

    # 02-export and the inputs of every stage

    def export_graphs(self, run: Run, model, folder: Path, *, opset: int) -> dict:
        path = folder / "yolact_edge.onnx"
        example = torch.from_numpy(np.random.RandomState(0).standard_normal((1, 3, INPUT_SIZE, INPUT_SIZE))
                                   .astype(np.float32))
        summary = export_onnx(model, (example,), path, input_names=list(GRAPH.inputs), output_names=OUTPUT_NAMES,
                              opset=opset)
        return {"yolact_edge": {"*": summary}}

    def read_batch(self, run: Run, items: list[int]) -> dict[str, np.ndarray]:
        return {"image": np.stack([read_input(run, i) for i in items])}

    # 05-evaluate

    def score(self, run: Run, candidates: list[str], *, known: Mapping[str, list] | None = None) -> dict:
        """pycocotools (bbox and segm) on each candidate's detections: the backend's from its
        saved outputs, the reference's (PyTorch) computed here on the same inputs, or taken
        from ``known`` (an earlier evaluation's ``results`` of this run: the same network on the
        same images); and the backend's agreement with the reference. Host post-processing is
        the same code for both."""
        manifest = run.manifest
        model, weights = run.model()
        backend, *reference = candidates
        results: dict[str, list] = {name: [] for name in candidates}
        given = reused(known, reference, len(manifest["images"]))
        results.update(given)
        for im in tqdm(manifest["images"], desc="evaluate"):
            size = [(im["height"], im["width"])]
            outputs = load_outputs(run, backend, im["index"])
            results[backend].append(postprocess(model.head, [outputs[n] for n in OUTPUT_NAMES], size)[0])
            for name in (n for n in reference if n not in given):
                with torch.inference_mode():
                    outputs = model(torch.from_numpy(read_input(run, im["index"])[None]))
                results[name].append(postprocess(model.head, list(outputs), size)[0])
        metrics = score_candidates(Path(manifest["dataset"]["annotation_file"]), manifest["images"], results,
                                   backend=backend, folder=run.path("results"),
                                   reference=reference[0] if reference else None)
        return {"metrics": metrics, "results": results, "weights": weights, "dataset": manifest["dataset"]}

    # 06-benchmark

    def deployment(self, run: Run, backend: str, *, items: int, backend_options: dict | None = None) -> Deployment:
        """Per image: read the JPEG, preprocess, the cut graph, then the host's part: the
        prediction head (the layers the port leaves outside its graph), decoding, fast NMS and
        the masks at the image's size."""
        model, _ = run.model()
        images = run.manifest["images"][:items]
        session = open_session(run, backend, backend_options=backend_options, uncompiled=True)

        def read(im: dict):
            return read_bgr(im["path"]), (im["height"], im["width"])

        def prepare(read_out):
            image, size = read_out
            return {"image": preprocess(image)[None]}, size

        def graph(prepared):
            feeds, size = prepared
            return session.run(feeds), size

        def host(graph_out):
            outputs, size = graph_out
            with torch.inference_mode():
                return postprocess(model.head, [outputs[n] for n in OUTPUT_NAMES], [size])[0]

        return Deployment([("read", read), ("preprocess", prepare), ("graph", graph), ("postprocess", host)], images,
                          release=session.close)


    def benchmark_extra(self, run: Run, candidates: list[str], *, backend: str, graph_rows: list[dict],
                        budget: Budget, warmup: int, backend_options: dict, full_graph: bool = True) -> dict:
        """With ``full_graph``, what the port's cut costs (:func:`cut_cost`)."""
        return cut_cost(run, budget=budget, warmup=warmup) if full_graph else {}

    def stage_io(self, stage: str) -> StageIO:
        """As every port's, and 06-benchmark writes the whole network's graph."""
        io = super().stage_io(stage)
        return dataclasses.replace(io, writes=(*io.writes, FULL_GRAPH)) if stage == "06-benchmark" else io


PORT = YolactEdgePort()


def read_input(run: Run, index: int) -> np.ndarray:
    """Preprocessed input ``index`` as float32 [3, 550, 550]."""
    path = run.path("inputs") / f"{index}.bin"
    data = np.fromfile(path, dtype=np.float32)
    if data.size != 3 * INPUT_SIZE * INPUT_SIZE:
        raise ValueError(f"{path}: expected {3 * INPUT_SIZE ** 2} float32 values, found {data.size}")
    return data.reshape(3, INPUT_SIZE, INPUT_SIZE)


def load_image(run: Run, index: int) -> np.ndarray:
    return read_bgr(run.manifest["images"][index]["path"])


def accuracy_rows(evaluation: dict) -> list[dict]:
    """Measured COCO AP (x100) per scored candidate, then the published figure, labelled."""
    data = evaluation["dataset"]
    rows = []
    for name, metrics in evaluation["metrics"].items():
        if name.startswith("agreement"):
            continue
        rows.append({"source": "measured", "backend": name, "bbox mAP": 100 * metrics["bbox"]["AP"],
                     "segm mAP": 100 * metrics["segm"]["AP"], "weights": weights_label(evaluation["weights"]),
                     "data": f"{data['kind']}: {data['name']} ({data['images_with_annotations']} images)"})
    for pub in SPEC.published:
        if pub.unit == "mAP":
            rows.append({"source": "published", "backend": pub.device, "bbox mAP": None, "segm mAP": pub.value,
                         "weights": "official checkpoint", "data": f"{pub.data}; {pub.metric}; {pub.source}"})
    return rows


FULL_GRAPH = "benchmark/yolact_edge_full.onnx"  # apart from 02-export's *.onnx
FULL_OUTPUTS = ["loc", "conf", "coef", "prototypes"]


def cut_cost(run: Run, *, budget: Budget, warmup: int) -> dict[str, list[dict]]:
    """The port cuts the graph before the prediction head and runs the head on the host. Here
    the whole network is exported as one graph too (:class:`~.network.WholeNetwork`, written
    to ``benchmark/yolact_edge_full.onnx``; never used by the other stages), checked against PyTorch on
    the first data image, and both are timed in ONNX Runtime at batch 1 (interleaved), each
    with the host work that follows it on one thread: the head, decoding, NMS and masks after
    the cut; decoding, NMS and masks after the whole graph. ``cut``: one row per variant;
    ``cut_parity``: the whole graph's outputs against PyTorch."""
    from zoobook.backends import EMBEDDED_DEFAULT, get_backend
    from zoobook.pipeline import thread_count

    model, _ = run.model()
    image = read_input(run, 0)[None]
    path = run.path(FULL_GRAPH)
    export_onnx(model.whole(), (torch.from_numpy(image),), path, input_names=["image"], output_names=FULL_OUTPUTS,
                opset=run.exported["opset"])
    cut = open_session(run, EMBEDDED_DEFAULT, uncompiled=True)
    whole = get_backend(EMBEDDED_DEFAULT).open(path)
    feeds = {"image": image}
    with torch.inference_mode():
        reference = {k: v.numpy() for k, v in model.predict(torch.from_numpy(image)).items()}
    whole_out = whole.run(feeds)
    parity = compare_with({k: reference[k] for k in FULL_OUTPUTS}, whole_out, YolactEdgePort.tolerances["fp32"])
    size = [(run.manifest["images"][0]["height"], run.manifest["images"][0]["width"])]
    cut_out = [cut.run(feeds)[n] for n in OUTPUT_NAMES]
    graphs = {row["candidate"]: row for row in bench.benchmark({"cut": lambda: cut.run(feeds),
                                                                "whole": lambda: whole.run(feeds)},
                                                               batch_size=1, warmup=warmup, budget=budget)}
    with thread_count(1):
        hosts = {row["candidate"]: row for row in bench.benchmark(
            {"cut": lambda: postprocess(model.head, cut_out, size),
             "whole": lambda: detections_to_results(*(whole_out[n] for n in FULL_OUTPUTS), size)},
            batch_size=1, warmup=1, budget=budget)}
    gflop = {"cut": graph_flops(run.onnx()) / 1e9, "whole": graph_flops(path) / 1e9}
    labels = {"cut": "port's cut: graph, then the head on the host", "whole": "whole graph: the head inside"}
    rows = [{"candidate": labels[k], "graph_gflop": gflop[k], "graph_ms": graphs[k]["mean_ms"],
             "host_ms_1_thread": hosts[k]["mean_ms"], "total_ms": graphs[k]["mean_ms"] + hosts[k]["mean_ms"],
             "calls": graphs[k]["calls"]} for k in ("cut", "whole")]
    cut.close()
    whole.close()
    return {"cut": rows, "cut_parity": [{"graph": "whole", **row} for row in parity]}
