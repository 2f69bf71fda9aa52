"""COCO reader, generator and pycocotools evaluation on generated data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from zoobook.data.coco import AnnotationError, CocoDataset, write_synthetic_coco
from zoobook.data.coco_categories import COCO_CATEGORY_IDS
from zoobook.metrics.coco import CocoEvaluator
from zoobook.models.yolact_edge.postprocess import InstanceResult


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    annotation = write_synthetic_coco(root, num_images=6, seed=3)
    return CocoDataset(annotation, root / "val2017")


def test_generator_writes_coco_layout(coco):
    data = json.loads(coco.annotation_file.read_text())
    assert {"images", "annotations", "categories", "info", "licenses"} <= set(data)
    assert len(data["images"]) == 6 and len(coco) == 5  # the last image has no objects
    assert [c["id"] for c in data["categories"]] == COCO_CATEGORY_IDS
    sample = coco[0]
    assert sample["path"].name == f"{sample['image_id']:012d}.jpg"
    image = coco.load_image(0)
    assert image.shape == (sample["height"], sample["width"], 3)
    ann = sample["annotations"][0]
    assert isinstance(ann["segmentation"], list) and ann["iscrowd"] == 0 and ann["area"] > 0


def test_all_images_when_not_only_annotated(coco):
    assert len(CocoDataset(coco.annotation_file, coco.image_dir, only_annotated=False)) == 6


def _perfect_results(coco, shift: float = 0.0):
    results = []
    for i in range(len(coco)):
        s = coco[i]
        boxes, classes, masks = [], [], []
        for ann in s["annotations"]:
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], s["height"], s["width"]))
            mask = mask_utils.decode(rle).astype(bool)
            x, y, w, h = ann["bbox"]
            dx = int(shift * w)
            boxes.append([int(x) + dx, int(y), int(np.ceil(x + w)) + dx, int(np.ceil(y + h))])
            masks.append(np.roll(mask, dx, axis=1))
            classes.append(COCO_CATEGORY_IDS.index(ann["category_id"]))
        results.append(InstanceResult(np.array(boxes), np.array(classes), np.ones(len(boxes), np.float32),
                                      np.array(masks)))
    return results


def test_float_boxes_are_written_in_their_own_precision():
    """maskrcnn-benchmark writes w = x2 - x1 + 1 in float32 (BoxList.convert), the RetinaMask
    port w = x2 - x1 in the boxes' dtype (float32; float64 when it padded its detections).
    float32(100.3) - float32(0.1) is 100.200005 in float32 but 100.20000305 in float64."""
    from zoobook.metrics.coco import to_coco_results

    box = np.array([[0.1, 0.2, 100.3, 50.7]], np.float32)
    one = InstanceResult(box, np.array([0]), np.array([0.5], np.float32), np.zeros((1, 4, 4), bool))
    for plus_one in (False, True):
        (record,), _ = to_coco_results(1, one, plus_one=plus_one)
        assert record["bbox"][2] == float(box[0, 2] - box[0, 0] + np.float32(plus_one)) != 100.2000030502677 + plus_one
        assert record["bbox"][:2] == [float(box[0, 0]), float(box[0, 1])]
    wide = InstanceResult(box.astype(np.float64), one.classes, one.scores, one.masks)
    (record,), _ = to_coco_results(1, wide, plus_one=False)
    assert record["bbox"][2] == float(box[0, 2]) - float(box[0, 0])


def test_perfect_predictions_score_one(coco):
    evaluator = CocoEvaluator(coco.annotation_file)
    evaluator.process([coco[i] for i in range(len(coco))], _perfect_results(coco))
    metrics = evaluator.evaluate()
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    assert metrics["bbox"]["AP"] > 0.95  # integer boxes lose a little at IoU 0.95


def test_perturbed_predictions_score_less(coco):
    evaluator = CocoEvaluator(coco.annotation_file)
    evaluator.process([coco[i] for i in range(len(coco))], _perfect_results(coco, shift=0.2))
    metrics = evaluator.evaluate()
    assert 0.0 < metrics["segm"]["AP"] < 0.9
    assert 0.0 < metrics["bbox"]["AP"] < 0.9
    evaluator.reset()
    assert evaluator.evaluate()["bbox"]["AP"] == 0.0


def test_malformed_annotation_json(tmp_path):
    path = tmp_path / "instances_val2017.json"
    path.write_text('{"images": [], "annotations": [,]}')
    with pytest.raises(AnnotationError, match=r"instances_val2017.json: malformed JSON at line 1, column 32: Expecting value"):
        CocoDataset(path, tmp_path)


def test_annotation_json_without_coco_keys(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"images": []}')
    with pytest.raises(AnnotationError, match="a.json: not a COCO instances file, missing keys: annotations, categories"):
        CocoDataset(path, tmp_path)


def test_annotation_with_unknown_image(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"images": [], "categories": [],
                                "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1]}]}))
    with pytest.raises(AnnotationError, match=r"annotations\[0\] refers to unknown image_id 7"):
        CocoDataset(path, tmp_path)


def test_missing_image_is_a_clear_error(coco, tmp_path):
    other = CocoDataset(coco.annotation_file, tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{other[0]['file_name']}: image file not found"):
        other.load_image(0)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_val2017.json: annotation file not found"):
        CocoDataset(tmp_path / "instances_val2017.json", tmp_path)
