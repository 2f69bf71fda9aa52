"""COCO bbox and segm AP with pycocotools, as an evaluator object.

``process(samples, results)`` takes the dataset's sample dicts and one
:class:`InstanceResult`-like object per sample (``boxes`` int pixel x1y1x2y2, ``classes``
0..79, ``scores``, ``masks`` [N, H, W] bool). Results are converted the way the reference's
``--output_coco_json`` writes them: COCO category ids through the label map, boxes as
``[x, y, w, h]`` rounded to 0.1, masks as RLE, detections with an empty box dropped.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np

from zoobook.data.coco_categories import COCO_CATEGORY_IDS
from zoobook.compare import AgreementLimit

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_coco_results(image_id: int, result, category_ids: list[int] = COCO_CATEGORY_IDS, *,
                    plus_one: bool | None = None) -> tuple[list, list]:
    """One image's result -> (bbox records, segm records) in COCO results format.

    ``plus_one`` None: integer boxes, empty ones dropped, w = x2 - x1 (YolactEdge's writer);
    True / False: float boxes kept as they are, w = x2 - x1 + 1 (maskrcnn-benchmark) or
    x2 - x1 (the RetinaMask port), computed in the boxes' precision as the references do:
    float32 (float64 boxes stay float64)."""
    from pycocotools import mask as mask_utils

    boxes, segms = [], []
    for i in range(len(result.scores)):
        if plus_one is None:
            x1, y1, x2, y2 = (int(v) for v in result.boxes[i])
            if (x2 - x1) * (y2 - y1) <= 0:
                continue
            bbox = [round(float(v) * 10) / 10 for v in (x1, y1, x2 - x1, y2 - y1)]
        else:
            x1, y1, x2, y2 = _box_in_its_precision(result.boxes[i])
            bbox = [float(v) for v in (x1, y1, x2 - x1 + int(plus_one), y2 - y1 + int(plus_one))]
        common = {"image_id": int(image_id), "category_id": int(category_ids[int(result.classes[i])]),
                  "score": float(result.scores[i])}
        boxes.append({**common, "bbox": bbox})
        rle = mask_utils.encode(np.asfortranarray(result.masks[i].astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        segms.append({**common, "segmentation": rle})
    return boxes, segms


def _box_in_its_precision(box) -> np.ndarray:
    """xyxy [4] as float64 when it is float64, else float32."""
    box = np.asarray(box)
    return box if box.dtype == np.float64 else box.astype(np.float32)


def results_as_ground_truth(images: list[dict], bbox_results: list[dict], segm_results: list[dict]) -> dict:
    """A COCO ground-truth dict whose objects are another model's detections (for agreement:
    a backend scored against the PyTorch reference). ``images``: ``{id, height, width,
    file_name}``. ``bbox_results`` and ``segm_results`` are parallel lists, as
    :func:`to_coco_results` returns them."""
    from pycocotools import mask as mask_utils

    annotations = []
    for i, (box, seg) in enumerate(zip(bbox_results, segm_results, strict=True)):
        annotations.append({"id": i + 1, "image_id": seg["image_id"], "category_id": seg["category_id"],
                            "bbox": box["bbox"], "segmentation": seg["segmentation"],
                            "area": float(mask_utils.area(seg["segmentation"])), "iscrowd": 0})
    categories = sorted({a["category_id"] for a in annotations} | set(COCO_CATEGORY_IDS))
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in categories]}


class CocoEvaluator:
    """pycocotools COCOeval for ``iou_types`` over the images processed so far."""

    def __init__(self, ground_truth: str | Path | dict, iou_types: tuple[str, ...] = ("bbox", "segm"), *,
                 plus_one: bool | None = None) -> None:
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            if isinstance(ground_truth, dict):
                self.coco = COCO()
                self.coco.dataset = copy.deepcopy(ground_truth)
                self.coco.createIndex()
            else:
                self.coco = COCO(str(ground_truth))
        self.iou_types, self.plus_one = iou_types, plus_one
        self.reset()

    def reset(self) -> None:
        self.results = {t: [] for t in ("bbox", "segm")}
        self.image_ids: list[int] = []

    def process(self, samples: list[dict], results: list) -> None:
        for sample, result in zip(samples, results, strict=True):
            boxes, segms = to_coco_results(sample["image_id"], result, plus_one=self.plus_one)
            self.add(sample["image_id"], boxes, segms)

    def add(self, image_id: int, bbox_results: list[dict], segm_results: list[dict]) -> None:
        self.image_ids.append(int(image_id))
        self.results["bbox"].extend(bbox_results)
        self.results["segm"].extend(segm_results)

    def evaluate(self) -> dict:
        """``{iou_type: {AP, AP50, ..., summary}}``; AP is 0.0 when there is no detection."""
        from pycocotools.cocoeval import COCOeval

        metrics = {}
        for iou_type in self.iou_types:
            detections = self.results[iou_type]
            if not detections:
                metrics[iou_type] = {name: 0.0 for name in STAT_NAMES} | {"detections": 0}
                continue
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                found = self.coco.loadRes(copy.deepcopy(detections))
                evaluator = COCOeval(self.coco, found, iou_type)
                evaluator.params.imgIds = sorted(set(self.image_ids))
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
            stats = [max(float(s), 0.0) if s != -1 else float("nan") for s in evaluator.stats]
            metrics[iou_type] = dict(zip(STAT_NAMES, stats)) | {"detections": len(detections),
                                                                 "summary": log.getvalue()}
        return metrics

    def dump(self, folder: str | Path, prefix: str = "") -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for iou_type, name in (("bbox", "bbox_detections.json"), ("segm", "mask_detections.json")):
            (folder / f"{prefix}{name}").write_text(json.dumps(self.results[iou_type]))


def coco_agreement(images: list[dict], reference: CocoEvaluator, candidate: list, samples: list[dict]) -> dict:
    """COCO AP of ``candidate`` results with the reference's detections taken as ground truth
    (``images``: ``{id, height, width, file_name}``). pycocotools scores an empty mask 0 even
    against an identical empty one, so segm AP here is below 1 wherever the reference has
    empty masks: read it beside :class:`~zoobook.metrics.agreement.AgreementEvaluator`."""
    truth = results_as_ground_truth(images, reference.results["bbox"], reference.results["segm"])
    if not truth["annotations"]:
        return {"note": "the reference made no detections"}
    evaluator = CocoEvaluator(truth, plus_one=reference.plus_one)
    evaluator.process(samples, candidate)
    return evaluator.evaluate()


def score_candidates(ground_truth: str | Path, images: list[dict], results: dict[str, list], *, backend: str,
                     folder: str | Path, plus_one: dict[str, bool | None] | None = None,
                     reference: str | None = None) -> dict:
    """Score each candidate's per-image results (``results[name]``, in the order of
    ``images``: dicts with image_id, height, width, file_name) with pycocotools, dumping the
    results files to ``folder/<name>/``; ``plus_one[name]`` picks its box convention (see
    :func:`to_coco_results`). With ``reference`` (the name of another scored candidate, the
    PyTorch reference), the backend's agreement with it is added: ``agreement`` (detections matched directly) and
    ``agreement_coco`` (COCO AP against the reference's detections)."""
    from zoobook.metrics.agreement import AgreementEvaluator

    samples = [{"image_id": im["image_id"], "height": im["height"], "width": im["width"]} for im in images]
    metrics, evaluators = {}, {}
    for name, found in results.items():
        evaluator = CocoEvaluator(ground_truth, plus_one=(plus_one or {}).get(name))
        evaluator.process(samples, found)
        evaluator.dump(Path(folder) / name.replace(", ", "-").replace(" ", "_"))
        metrics[name] = evaluator.evaluate()
        evaluators[name] = evaluator
    if reference is not None and reference != backend:
        truth_images = [{"id": im["image_id"], "height": im["height"], "width": im["width"],
                         "file_name": im["file_name"]} for im in images]
        metrics["agreement_coco"] = coco_agreement(truth_images, evaluators[reference], results[backend], samples)
        matcher = AgreementEvaluator()
        matcher.process(results[reference], results[backend])
        metrics["agreement"] = matcher.evaluate()
    return metrics


#: what an fp32 candidate's detections must reach against the PyTorch reference's on the same
#: images (the rows of :func:`agreement_rows`). The port's fp32 output tolerance (2e-3 absolute)
#: bounds the score difference; matching, IoUs and mask pixels allow for a near-tie flipping a
#: detection or a mask pixel at the 0.5 threshold. The COCO AP against the reference's detections
#: is shown unjudged: with recipe weights it counts empty masks as misses.
COCO_AGREEMENT_FP32 = (
    AgreementLimit("reference detections matched", at_least=0.99),
    AgreementLimit("backend detections matched", at_least=0.99),
    AgreementLimit("mean box IoU of matches", at_least=0.99),
    AgreementLimit("mean mask IoU of matches", at_least=0.99),
    AgreementLimit("largest score difference", at_most=2e-3),
    AgreementLimit("share of mask pixels differing", at_most=1e-3),
)

#: what the fp16 emulation (``onnxruntime-fp16``) must reach against the PyTorch reference. fp16
#: storage rounds every tensor to 11 significant bits (a relative step of 2^-11, about 5e-4), so
#: scores move by about 1e-3 of their logits' scale after a few dozen layers and more detections
#: and pixels sit on the other side of a threshold; the guides' fp16 .om results lie within a few
#: tenths of a point of the fp32 ones (YolactEdge: 27.96 mask mAP for the .om, about 28 for fp32).
#: Our limits, by that measure: 97 % of detections matched at close to the same box and mask, a
#: score difference of at most 2e-2, at most 1 % of the mask pixels differing.
COCO_AGREEMENT_FP16 = (
    AgreementLimit("reference detections matched", at_least=0.97),
    AgreementLimit("backend detections matched", at_least=0.97),
    AgreementLimit("mean box IoU of matches", at_least=0.97),
    AgreementLimit("mean mask IoU of matches", at_least=0.95),
    AgreementLimit("largest score difference", at_most=2e-2),
    AgreementLimit("share of mask pixels differing", at_most=1e-2),
)


def agreement_rows(evaluation: dict) -> list[dict]:
    """The backend's agreement with PyTorch (``evaluation["metrics"]`` of :func:`score_candidates`)
    as table rows; empty when PyTorch was not scored beside it."""
    metrics = evaluation["metrics"]
    if "agreement" not in metrics:
        return []
    match, coco = metrics["agreement"], metrics.get("agreement_coco", {})
    return [{"measure": "reference detections matched (recall)", "value": match["recall"]},
            {"measure": "backend detections matched (precision)", "value": match["precision"]},
            {"measure": "mean box IoU of matches", "value": match["mean_box_iou"]},
            {"measure": "mean mask IoU of matches (two empty masks agree)", "value": match["mean_mask_iou"]},
            {"measure": "largest score difference", "value": match["max_score_diff"]},
            {"measure": "share of mask pixels differing", "value": match["mask_pixels_differing"]},
            {"measure": "COCO bbox AP against the reference's detections", "value": coco.get("bbox", {}).get("AP")},
            {"measure": "COCO segm AP against the reference's detections (empty masks count as misses)",
             "value": coco.get("segm", {}).get("AP")}]


def record_metrics(evaluation: dict) -> dict:
    """The scores of :func:`score_candidates` for a stage record (pycocotools' text summary left out)."""
    out = {}
    for name, metrics in evaluation["metrics"].items():
        out[name] = dict(metrics) if name == "agreement" else {
            t: {k: v for k, v in m.items() if k != "summary"} if isinstance(m, dict) else m for t, m in metrics.items()}
    return out
