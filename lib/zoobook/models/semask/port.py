"""SeMask-FPN's hooks over the shared stages (:mod:`zoobook.stages.steps`).

Its own artifacts under ``runs/<profile>/semask/artifacts/``::

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

import hashlib
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from zoobook.atomic import write_bytes_atomic
from zoobook.backends import FP16_EMULATION, REFERENCE
from zoobook.checkpoints import weights_label
from zoobook.compare import Tolerance, class_map_parity
from zoobook.data.cityscapes import CLASSES, IGNORE, NUM_CLASSES, CityscapesDataset, colorize, find_cityscapes, \
    label_ids_to_train_ids, write_synthetic_cityscapes
from zoobook.metrics.segmentation import ConfusionMatrix, PixelAgreement
from zoobook.models.semask import SPEC
from zoobook.models.semask.checkpoint import OFFICIAL_FILENAME, build
from zoobook.models.semask.export import PORT_SIZE, export_graphs, graph_shapes, normalize
from zoobook.pipeline import Deployment
from zoobook.resume import generated_once
from zoobook.stages import Port, Run, steps
from zoobook.stages.steps import open_session
from zoobook.timing import timed

EVALUATION = "evaluation.json"
#: the fp16 emulation's, scored beside the backend by 05-evaluate
EMULATED_EVALUATION = f"evaluation-{FP16_EMULATION}.json"


class SeMaskPort(Port):
    spec = SPEC
    #: 05-evaluate runs the reference through 04-infer's resumable loop: its class maps too
    evaluate_files = (EVALUATION, EMULATED_EVALUATION, f"outputs/{REFERENCE}/*.png")
    output_files = "outputs/{backend}/*.png"
    output_suffix = ".png"
    dataset_dir = "cityscapes"
    weights_file = OFFICIAL_FILENAME
    tolerances = {
        #: class maps of two fp32 runs must agree on this share of pixels: arg-max near-ties (about
        #: 0.2 % of pixels have a top-2 margin below 1e-3, FACTS.md) may flip; the logits themselves
        #: are checked to 1e-4 against the goldens in the tests
        "fp32": Tolerance(min_agreement=0.999),
        #: and for a device computing in reduced precision (ATC's default fp16 on Ascend)
        "fp16": Tolerance(min_agreement=0.99),
    }
    #: ONNX Runtime without its memory pattern: planned on the first run, it is allocated beside
    #: the arena's blocks on the next, which nearly doubles the peak (measured while writing this,
    #: ONNX Runtime 1.31 on 2 CPU cores at 1024 x 2048: 3.4 instead of 1.9 GB per image) for no
    #: gain in speed
    backend_defaults = {"onnxruntime": {"memory_pattern": False}}
    #: each (candidate, batch size) of 06-benchmark, and each graph run of 02-export's and
    #: 03-convert's checks above ``CHECKS_IN_PROCESS_PIXELS``, in a process of its own: ONNX
    #: Runtime's memory grows with the batch (about 2 GB per image at 1024 x 2048 on a CPU), a
    #: separate process gives it all back before the next one runs, and its peak is what a machine
    #: must hold to run that batch. A call at that size takes seconds, so running candidates one
    #: after another (not interleaved) costs little accuracy
    isolated = True
    #: inputs up to this many pixels (256 x 512, a sixteenth of the port's) keep the checks' graph
    #: runs in this process: batch 8 peaks near 1.5 GB there (06-benchmark's records), and a fresh
    #: process costs more than such a run (interpreter, imports and session, about 4 s on 2 cores)
    CHECKS_IN_PROCESS_PIXELS = 256 * 512

    def build(self, weights, *, allow_recipe):
        return build(weights, allow_recipe=allow_recipe)

    def isolate_checks(self, run: Run) -> bool:
        height, width = input_size(run)
        return height * width > self.CHECKS_IN_PROCESS_PIXELS

    # 01-data

    def locate(self, run: Run, *, num_images: int = 4, size: tuple[int, int] = PORT_SIZE,
               require_real: bool = False, seed: int = 0) -> tuple[CityscapesDataset, dict]:
        """Real Cityscapes val under ``data/cityscapes`` when present, else a generated set in
        its layout under ``runs/<profile>/datasets/cityscapes-synthetic-<n>-<H>x<W>-s<seed>``
        (made once). ``num_images`` 0 means all. Half a real set (images without ``gtFine`` or
        the reverse, or an image without its label file) is an error naming what is missing
        (:func:`~zoobook.data.cityscapes.find_cityscapes`, ``CityscapesDataset.check``).
        Returns the dataset and its provenance."""
        from zoobook.data import shown_path
        from zoobook.paths import data_dir, runs_dir

        real = find_cityscapes(data_dir())
        if real:
            dataset = CityscapesDataset(real, "val", limit=num_images or None).check()
            return dataset, {"kind": "real", "name": "Cityscapes val (gtFine)", "root": shown_path(real),
                             "count": len(dataset)}
        if require_real:
            raise FileNotFoundError(f"{data_dir() / 'cityscapes/leftImg8bit/val'}: real Cityscapes not found; this "
                                    "profile needs it (with gtFine/val beside it)")
        count = num_images or 4
        height, width = size
        root = runs_dir() / run.profile / "datasets" / f"cityscapes-synthetic-{count}-{height}x{width}-s{seed}"
        meta = {"num_images": count, "size": [height, width], "seed": seed}
        generated_once(root, meta, lambda: write_synthetic_cityscapes(root, count, size=(height, width), seed=seed))
        dataset = CityscapesDataset(root, "val")
        return dataset, {"kind": "synthetic", "name": "generated Cityscapes-layout set (street-like class regions)",
                         "root": shown_path(root), "count": len(dataset), "seed": seed}

    def prepare(self, run: Run, dataset: CityscapesDataset, provenance: dict, *,
                input_size: tuple[int, int] = PORT_SIZE) -> dict:
        """Check every image and label, count the ground truth's pixels per class, and return
        the manifest the later stages read. Images of another size than ``input_size`` are
        resized to it (bilinear) on reading and the class maps back to the label's size
        (nearest); the port's Cityscapes images are 1024 x 2048 and need neither."""
        height, width = (int(v) for v in input_size)
        if height % 32 or width % 32:
            raise ValueError(f"input size {input_size} must be a multiple of 32 on both sides")
        images, class_pixels, resized = [], np.zeros(NUM_CLASSES + 1, np.int64), 0
        for index in tqdm(range(len(dataset)), desc="check"):
            sample = dataset[index]
            label = dataset.load_label(index)
            shape = _image_hw(sample["image"])
            if shape != label.shape:
                raise ValueError(f"{sample['image']}: image {shape} and label {label.shape} differ in size")
            resized += shape != (height, width)
            class_pixels += np.bincount(np.minimum(label.ravel(), NUM_CLASSES), minlength=NUM_CLASSES + 1)
            images.append({"index": index, "name": sample["name"], "city": sample["city"],
                           "image": str(sample["image"]), "label": str(sample["label"]), "height": shape[0],
                           "width": shape[1]})
        return {"dataset": provenance, "input_size": [height, width], "resized_images": resized, "images": images,
                "class_pixels": {**{c.name: int(class_pixels[c.train_id]) for c in CLASSES},
                                 "ignored (255)": int(class_pixels[NUM_CLASSES])}}

    # 02-export and the inputs of every stage

    def export_graphs(self, run: Run, model, folder: Path, *, opset: int,
                      batch_sizes: list[int] = (1, 4, 8)) -> dict:
        """One static graph per batch size at the data's input size (traced once, the batch
        pinned per graph, simplified, checked: :func:`~zoobook.models.semask.export.export_graphs`)."""
        graphs = export_graphs(model, folder, batch_sizes=list(batch_sizes), size=input_size(run), opset=opset)
        return {"semask": {str(bs): summary for bs, summary in graphs.items()}}

    def export_extra(self, run: Run, **params) -> dict:
        return {"input_size": list(input_size(run))}

    def expected_io(self, run: Run, graph: str, batch: str) -> dict:
        return graph_shapes(int(batch), input_size(run))

    def read_batch(self, run: Run, items: list[int]) -> dict[str, np.ndarray]:
        return {"image": input_tensor(run, items)}

    def reference_outputs(self, run: Run, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """PyTorch's class maps of ``feeds``, one image at a time (a batch of 8 at 1024 x 2048
        in PyTorch needs too much memory), each image's map computed once per run and network
        and kept: the graphs of every batch size are checked on the same data images."""
        model, _ = run.model()
        cache = run.memo("reference class maps", dict)
        maps = []
        for image in feeds["image"]:
            key = hashlib.sha1(np.ascontiguousarray(image)).hexdigest()
            if key not in cache:
                with torch.inference_mode():
                    cache[key] = model(torch.from_numpy(np.ascontiguousarray(image[None]))).numpy()[0]
            maps.append(cache[key])
        return {"output": np.stack(maps)}

    def compare(self, graph: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                tolerance: Tolerance) -> list[dict]:
        """Class maps (the arg-max is inside the graph): the share of equal pixels, image by
        image of the batch, so a graph that mixed up the batch would show."""
        return [class_map_parity(reference["output"], candidate["output"], tolerance)]

    # 04-infer: each class map an 8-bit PNG named by its image

    def item_name(self, run: Run, item: int) -> str:
        return run.manifest["images"][item]["name"]

    def save_output(self, path: Path, outputs: dict[str, np.ndarray]) -> None:
        _write_png_atomic(path, outputs["output"][0].astype(np.uint8))

    def outputs_key(self, run: Run) -> dict:
        return {"input_size": run.manifest["input_size"]}

    # 05-evaluate

    def score(self, run: Run, candidates: list[str]) -> dict:
        """Accumulate a confusion matrix over the whole set for the backend's class maps and,
        with the reference, for PyTorch's on the same images (run here through 04-infer's
        resumable path if not saved yet); and the backend's pixel agreement with PyTorch.
        Writes ``evaluation.json`` (the fp16 emulation's: ``evaluation-onnxruntime-fp16.json``)."""
        backend, *reference = candidates
        for name in reference:
            steps.infer(run, name)
        manifest = run.manifest
        matrices = {name: ConfusionMatrix(NUM_CLASSES, IGNORE) for name in candidates}
        agreement = PixelAgreement()
        for im in tqdm(manifest["images"], desc="evaluate"):
            label = read_label(run, im["index"])
            maps = {name: load_prediction(run, name, im["index"]) for name in candidates}
            for name, class_map in maps.items():
                matrices[name].update(class_map, label)
            if reference:
                agreement.update(maps[backend], maps[reference[0]])
        evaluation = {"candidates": candidates, "scores": {name: m.scores() for name, m in matrices.items()},
                      "confusion": {name: m.matrix.tolist() for name, m in matrices.items()},
                      "agreement": agreement.result(),
                      "weights": run.weights, "dataset": manifest["dataset"], "input_size": manifest["input_size"],
                      "images": len(manifest["images"])}
        run.write_json(EMULATED_EVALUATION if backend == FP16_EMULATION else EVALUATION, evaluation)
        return evaluation

    # 06-benchmark

    def deployment(self, run: Run, backend: str, *, items: int, backend_options: dict | None = None) -> Deployment:
        """Per image: read the PNG (resized to the graph's input where it differs), normalise,
        the graph (the arg-max inside), and encode the class map as the PNG 04-infer saves."""
        session = open_session(run, backend, backend_options=backend_options, uncompiled=True)

        def encode(outputs: dict[str, np.ndarray]) -> bytes:
            with timed("encode"):
                _, data = cv2.imencode(".png", outputs["output"][0].astype(np.uint8))
            return data.tobytes()

        return Deployment([("read", lambda i: read_image(run, i)), ("preprocess", lambda rgb: {"image": normalize(rgb)}),
                           ("graph", session.run), ("postprocess", encode)],
                          list(range(min(items, len(run.manifest["images"])))), release=session.close)


PORT = SeMaskPort()


# ---------------------------------------------------------------------------------------
# Reading the data


def input_size(run: Run) -> tuple[int, int]:
    """The graph's input (height, width), as 01-data chose it."""
    height, width = run.manifest["input_size"]
    return int(height), int(width)


def _image_hw(path: Path) -> tuple[int, int]:
    """An image's (height, width) from its header, without decoding it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None


def read_image(run: Run, index: int, *, rgb: bool = True) -> np.ndarray:
    """RGB uint8 [H, W, 3] at the input size (mmseg reads BGR with OpenCV and converts);
    BGR, as read, with ``rgb=False``."""
    path = run.manifest["images"][index]["image"]
    with timed("read"):
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{path}: image missing or unreadable; rerun 01-data")
    with timed("preprocess"):
        height, width = input_size(run)
        if bgr.shape[:2] != (height, width):
            bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if rgb else bgr


def read_label(run: Run, index: int) -> np.ndarray:
    """Train ids uint8 [H, W] at the label's own size (255 = ignored)."""
    path = run.manifest["images"][index]["label"]
    ids = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if ids is None or ids.ndim != 2:
        raise FileNotFoundError(f"{path}: label missing or not single-channel; rerun 01-data")
    return label_ids_to_train_ids(ids)


def input_tensor(run: Run, indices: list[int]) -> np.ndarray:
    """The port's input for data images ``indices``: float32 [len(indices), 3, H, W]. Each
    image is read as BGR and normalised straight into its slot (mmseg's ``to_rgb``)."""
    height, width = input_size(run)
    batch = np.empty((len(indices), 3, height, width), np.float32)
    for slot, index in enumerate(indices):
        bgr = read_image(run, index, rgb=False)
        with timed("preprocess"):
            normalize(bgr, to_rgb=True, out=batch[slot:slot + 1])
    return batch


def write_bin(run: Run, index: int, path: str | Path) -> Path:
    """The port's ``.bin`` for ``ais_bench --input``: the raw float32 [1, 3, H, W] tensor."""
    input_tensor(run, [index]).tofile(path)
    return Path(path)


def _write_png_atomic(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    write_bytes_atomic(path, data.tobytes())


def load_prediction(run: Run, backend: str, index: int) -> np.ndarray:
    """The class map 04-infer saved for image ``index``, at the label's size (nearest when
    resized)."""
    image = run.manifest["images"][index]
    path = steps.output_path(run, backend, index)
    class_map = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if class_map is None:
        raise FileNotFoundError(f"{path}: no saved class map; run 04-infer with backend {backend}")
    if class_map.shape != (image["height"], image["width"]):
        class_map = cv2.resize(class_map, (image["width"], image["height"]), interpolation=cv2.INTER_NEAREST)
    return class_map


# ---------------------------------------------------------------------------------------
# Tables and pictures


def palette_legend() -> dict[str, np.ndarray]:
    return {c.name: np.asarray(c.color) for c in CLASSES}


def class_pixel_rows(manifest: dict) -> list[dict]:
    """The ground truth's pixels per class (the metric's denominators), from 01-data's manifest."""
    total = sum(manifest["class_pixels"].values())
    return [{"class": name, "pixels": count, "share": count / total}
            for name, count in manifest["class_pixels"].items()]


def data_pictures(run: Run, count: int = 3) -> tuple[list[list[np.ndarray]], list[str], list[str]]:
    """The first ``count`` images beside their ground truth in the Cityscapes palette."""
    shown = run.manifest["images"][:count]
    rows = [[cv2.imread(im["image"], cv2.IMREAD_COLOR)[:, :, ::-1], colorize(read_label(run, im["index"]))]
            for im in shown]
    return rows, ["image", "ground truth (train ids; black: ignored)"], [im["name"] for im in shown]


def accuracy_rows(evaluation: dict) -> list[dict]:
    """mIoU, mAcc and aAcc (x 100, as mmseg prints them) per measured candidate, then the
    published figures with their provenance."""
    data = evaluation["dataset"]
    rows = [{"source": "measured", "candidate": name, "mIoU": 100 * s["mIoU"], "mAcc": 100 * s["mAcc"],
             "aAcc": 100 * s["aAcc"], "weights": weights_label(evaluation["weights"]),
             "data": f"{data['kind']}: {data['name']} ({evaluation['images']} images, "
                     f"input {evaluation['input_size'][0]}x{evaluation['input_size'][1]})"}
            for name, s in evaluation["scores"].items()]
    rows += [{"source": "published", "candidate": pub.device, "mIoU": pub.value, "weights": pub.metric,
              "data": f"{pub.data}; {pub.source}"} for pub in SPEC.published if pub.unit == "mIoU"]
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
    """The backend against the reference: pixels of the same class, overall and on the worst
    image, and the difference in mIoU."""
    agreement = evaluation["agreement"]
    if not agreement["pixels"]:
        return []
    backend, reference = evaluation["candidates"][:2]
    return [{"measure": f"pixels where {backend} and {reference} give the same class", "value": agreement["share"]},
            {"measure": "the same, worst image", "value": agreement["worst_image"]},
            {"measure": "mIoU difference (points)",
             "value": 100 * (evaluation["scores"][backend]["mIoU"] - evaluation["scores"][reference]["mIoU"])}]


def record_metrics(evaluation: dict) -> dict:
    metrics = {f"{name}_{key}": scores[key] for name, scores in evaluation["scores"].items()
               for key in ("mIoU", "mAcc", "aAcc")}
    if evaluation["agreement"]["pixels"]:
        metrics[f"pixel_agreement_with_{evaluation['candidates'][1]}"] = evaluation["agreement"]["share"]
    return metrics


def picture_rows(run: Run, evaluation: dict, count: int = 3) -> tuple[list[list[np.ndarray]], list[str], list[str]]:
    """Images, ground truth and each candidate's class map (in the Cityscapes palette) for
    the first ``count`` images; with two candidates also where they differ (white)."""
    candidates = evaluation["candidates"]
    columns = ["image", "ground truth", *candidates] + ([f"differs from {candidates[1]}"] if len(candidates) > 1
                                                         else [])
    rows, names = [], []
    for im in run.manifest["images"][:count]:
        original = cv2.imread(im["image"], cv2.IMREAD_COLOR)[:, :, ::-1]
        maps = [load_prediction(run, name, im["index"]) for name in candidates]
        row = [original, colorize(read_label(run, im["index"])), *(colorize(m) for m in maps)]
        if len(maps) > 1:
            row.append(np.repeat(((maps[0] != maps[1]) * 255).astype(np.uint8)[..., None], 3, axis=2))
        rows.append(row)
        names.append(im["name"])
    return rows, columns, names
