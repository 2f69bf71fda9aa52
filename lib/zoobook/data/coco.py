"""COCO instances: a reader for ``instances_*.json`` + image folder, and a generator that
writes a small set in exactly that layout.

Sample dict (``CocoDataset[i]``)::

    {"image_id": int, "file_name": str, "path": Path, "height": int, "width": int,
     "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h],
                      "segmentation": polygons | RLE, "area", "iscrowd"}, ...]}

Real COCO val2017 is picked up from ``data/coco/annotations/instances_val2017.json`` with
images in ``data/coco/val2017/`` (or ``data/coco/images/``, the reference repo's folder).
Half of that (annotations without images, or images without annotations) is an error that
says which half is missing, never a silent switch to the generated set.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from zoobook.data import half_present, read_json
from zoobook.data.coco_categories import COCO_CATEGORIES
from zoobook.data.images import read_bgr

ANNOTATION_NAME = "instances_val2017.json"


class AnnotationError(ValueError):
    """A COCO annotation file that is missing, not JSON, or not in COCO's layout."""


def _load_json(path: Path) -> dict:
    data = read_json(path, "annotation file", AnnotationError)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object with images, annotations, categories")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise AnnotationError(f"{path}: not a COCO instances file, missing keys: {', '.join(missing)}")
    return data


def _require(path: Path, what: str, index: int, item: dict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in item]
    if missing:
        raise AnnotationError(f"{path}: {what}[{index}] lacks {', '.join(missing)}")


class CocoDataset:
    """COCO instances reader. ``only_annotated=True`` keeps, like the reference evaluation,
    only images with at least one annotation (4952 of the 5000 val2017 images)."""

    def __init__(self, annotation_file: str | Path, image_dir: str | Path, *, only_annotated: bool = True,
                 limit: int | None = None) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        data = _load_json(self.annotation_file)
        images = {}
        for i, image in enumerate(data["images"]):
            _require(self.annotation_file, "images", i, image, ("id", "file_name", "height", "width"))
            images[image["id"]] = image
        by_image = defaultdict(list)
        for i, ann in enumerate(data["annotations"]):
            _require(self.annotation_file, "annotations", i, ann, ("id", "image_id", "category_id", "bbox"))
            if ann["image_id"] not in images:
                raise AnnotationError(f"{self.annotation_file}: annotations[{i}] refers to unknown image_id {ann['image_id']}")
            by_image[ann["image_id"]].append(ann)
        if not images:
            raise AnnotationError(f"{self.annotation_file}: holds no images (its \"images\" list is empty)")
        self.categories = data["categories"]
        ids = sorted(i for i in images if by_image[i] or not only_annotated)
        if not ids:
            raise AnnotationError(f"{self.annotation_file}: none of its {len(images)} images has an annotation "
                                  "(only annotated images are used)")
        self.image_ids = ids[:limit] if limit else ids
        self._images, self._annotations = images, by_image

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict:
        image = self._images[self.image_ids[index]]
        return {"image_id": image["id"], "file_name": image["file_name"],
                "path": self.image_dir / image["file_name"], "height": image["height"],
                "width": image["width"], "annotations": list(self._annotations[image["id"]])}

    def missing_images(self) -> list[str]:
        """File names of this dataset's images that are not in ``image_dir`` (one listing of
        the folder, nothing decoded)."""
        present = set(os.listdir(self.image_dir)) if self.image_dir.is_dir() else set()
        names = (self._images[i]["file_name"] for i in self.image_ids)
        return [n for n in names if n not in present and not (self.image_dir / n).is_file()]

    def load_image(self, index: int) -> np.ndarray:
        """BGR uint8 image of sample ``index``; a clear error names a missing file."""
        sample = self[index]
        image = read_bgr(sample["path"])
        if image.shape[:2] != (sample["height"], sample["width"]):
            raise AnnotationError(f"{sample['path']}: image is {image.shape[1]}x{image.shape[0]} but "
                                  f"{self.annotation_file.name} says {sample['width']}x{sample['height']}")
        return image


def find_coco(data_root: str | Path) -> tuple[Path, Path] | None:
    """``(annotation_file, image_dir)`` of real COCO val2017 under ``data_root/coco``; None
    when neither is there. Only one of them there is a ``FileNotFoundError`` naming the other."""
    root = Path(data_root) / "coco"
    annotation = root / "annotations" / ANNOTATION_NAME
    image_dirs = [d for d in (root / "val2017", root / "images") if d.is_dir()]
    if annotation.is_file() and image_dirs:
        return annotation, image_dirs[0]
    if not annotation.is_file() and not image_dirs:
        return None
    if annotation.is_file():
        raise half_present(root / "val2017", "COCO images folder", f"{annotation} is there", root,
                           f"put the val2017 images in {root / 'val2017'} (or {root / 'images'})")
    raise half_present(annotation, "COCO annotation file", f"{image_dirs[0]} is there", root,
                       "put instances_val2017.json there")


# ---------------------------------------------------------------------------------------
# Generator


def _background(rng: np.random.RandomState, height: int, width: int) -> np.ndarray:
    corners = rng.randint(30, 226, size=(2, 2, 3)).astype(np.float32)
    field = cv2.resize(corners, (width, height), interpolation=cv2.INTER_LINEAR)
    noise = rng.normal(0, 8, size=(height, width, 3))
    return np.clip(field + noise, 0, 255).astype(np.uint8)


def _random_polygon(rng: np.random.RandomState, cx: float, cy: float, radius: float) -> np.ndarray:
    count = rng.randint(5, 11)
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    radii = radius * rng.uniform(0.55, 1.0, count)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)


def _synthetic_image(rng: np.random.RandomState, image_id: int, num_objects: int, first_ann_id: int):
    from pycocotools import mask as mask_utils

    height, width = int(rng.randint(360, 481)), int(rng.randint(480, 641))
    image = _background(rng, height, width)
    cols = max(1, int(np.ceil(np.sqrt(num_objects))))
    cells = rng.permutation(cols * cols)[:num_objects]
    annotations = []
    for n, cell in enumerate(cells):
        cell_w, cell_h = width / cols, height / cols
        radius = min(cell_w, cell_h) * rng.uniform(0.25, 0.45)
        cx = (cell % cols + 0.5) * cell_w + rng.uniform(-0.1, 0.1) * cell_w
        cy = (cell // cols + 0.5) * cell_h + rng.uniform(-0.1, 0.1) * cell_h
        polygon = _random_polygon(rng, cx, cy, radius)
        colour = [int(c) for c in rng.randint(0, 256, 3)]
        cv2.fillPoly(image, [np.round(polygon).astype(np.int32)], colour)
        flat = [round(float(v), 2) for v in polygon.ravel()]
        rle = mask_utils.merge(mask_utils.frPyObjects([flat], height, width))
        x0, y0 = polygon.min(0)
        x1, y1 = polygon.max(0)
        annotations.append({
            "id": first_ann_id + n, "image_id": image_id,
            "category_id": int(COCO_CATEGORIES[rng.randint(len(COCO_CATEGORIES))][0]),
            "segmentation": [flat], "area": float(mask_utils.area(rle)),
            "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
            "iscrowd": 0,
        })
    return image, annotations


def write_synthetic_coco(root: str | Path, num_images: int = 8, *, seed: int = 0,
                         max_objects: int = 4) -> Path:
    """Write ``root/annotations/instances_val2017.json`` and ``root/val2017/%012d.jpg``.

    Each image has 1..``max_objects`` filled random polygons of random COCO categories on a
    smooth noisy background, with their polygons as ground truth; when ``num_images >= 4``
    the last image has no objects (as 48 val2017 images have none). Returns the JSON path.
    """
    root = Path(root)
    image_dir = root / "val2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    images, annotations = [], []
    for index in range(num_images):
        image_id = index + 1
        empty = num_images >= 4 and index == num_images - 1
        count = 0 if empty else int(rng.randint(1, max_objects + 1))
        image, anns = _synthetic_image(rng, image_id, count, len(annotations) + 1)
        file_name = f"{image_id:012d}.jpg"
        cv2.imwrite(str(image_dir / file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": image_id, "file_name": file_name, "height": image.shape[0],
                       "width": image.shape[1], "license": 0})
        annotations.extend(anns)
    dataset = {
        "info": {"description": "Zoo Book synthetic COCO-format set (generated, not COCO)", "version": "1.0",
                 "year": 2026, "contributor": "zoobook.data.coco.write_synthetic_coco", "seed": seed},
        "licenses": [{"id": 0, "name": "generated", "url": ""}],
        "images": images, "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": ""} for cid, name in COCO_CATEGORIES],
    }
    from zoobook.atomic import write_json_atomic

    return write_json_atomic(root / "annotations" / ANNOTATION_NAME, dataset)


def _with_images(dataset: CocoDataset) -> CocoDataset:
    """``dataset``, once every image it uses is in its folder; else an error naming them."""
    missing = dataset.missing_images()
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise FileNotFoundError(f"{dataset.image_dir}: {len(missing)} of the {len(dataset)} images listed in "
                                f"{dataset.annotation_file} are missing ({shown})")
    return dataset


def locate_coco(profile: str, *, num_images: int = 24, require_real: bool = False,
                seed: int = 0) -> tuple[CocoDataset, dict]:
    """Real COCO val2017 under ``data/coco`` when present, else a generated set in COCO's
    layout under ``runs/<profile>/datasets/coco-synthetic-<n>-s<seed>`` (made once; models
    asking for other sizes get their own folder).
    ``num_images`` 0 means all. Every image used must be there; half a real set (see
    :func:`find_coco`) is an error. Returns the dataset and its provenance."""
    from zoobook.paths import data_dir, runs_dir
    from zoobook.resume import generated_once

    real = find_coco(data_dir())
    if real:
        dataset = _with_images(CocoDataset(*real, limit=num_images or None))
        return dataset, {"kind": "real", "name": "COCO val2017", "annotation_file": str(real[0]),
                         "images_with_annotations": len(dataset)}
    if require_real:
        raise FileNotFoundError(f"{data_dir() / 'coco/annotations/instances_val2017.json'}: real COCO val2017 "
                                "not found; this profile needs it (images in data/coco/val2017/)")
    root = runs_dir() / profile / "datasets" / f"coco-synthetic-{num_images}-s{seed}"
    meta = {"num_images": num_images + 1, "seed": seed}  # +1: the generator's last image is empty
    generated_once(root, meta, lambda: write_synthetic_coco(root, meta["num_images"], seed=seed))
    dataset = _with_images(CocoDataset(root / "annotations" / ANNOTATION_NAME, root / "val2017",
                                       limit=num_images or None))
    return dataset, {"kind": "synthetic", "name": "generated COCO-format set (random polygons)",
                     "annotation_file": str(dataset.annotation_file), "images_with_annotations": len(dataset),
                     "seed": seed}
