"""Cityscapes (fine annotations): a reader, the labelId -> trainId mapping, and a generator.

Layout (real Cityscapes under ``data/cityscapes/``)::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png    8-bit RGB, 2048 x 1024
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png     8-bit label ids

Ground truth is scored in trainIds: the 19 evaluated classes 0..18, every other label id
255 (ignored). This equals the ``*_labelTrainIds.png`` files cityscapesScripts writes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from zoobook.data import half_present

IGNORE = 255


@dataclass(frozen=True)
class CityscapesClass:
    train_id: int
    label_id: int
    name: str
    color: tuple[int, int, int]  # RGB


def _classes() -> tuple[CityscapesClass, ...]:
    text = (resources.files("zoobook.data") / "assets" / "cityscapes_classes.csv").read_text()
    return tuple(CityscapesClass(int(r["trainId"]), int(r["labelId"]), r["name"], (int(r["r"]), int(r["g"]), int(r["b"])))
                 for r in csv.DictReader(text.splitlines()))


CLASSES = _classes()
NUM_CLASSES = len(CLASSES)
#: label id (0..255) -> train id, 255 for every id that is not evaluated
LABEL_TO_TRAIN = np.full(256, IGNORE, dtype=np.uint8)
for _c in CLASSES:
    LABEL_TO_TRAIN[_c.label_id] = _c.train_id
#: train id -> RGB colour (255 -> black)
PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _c in CLASSES:
    PALETTE[_c.train_id] = _c.color


class CityscapesFormatError(ValueError):
    """A Cityscapes file that is missing or unreadable; the message names it."""


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    return LABEL_TO_TRAIN[label_ids]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """A class map (train ids) in the Cityscapes palette, RGB uint8."""
    return PALETTE[train_ids]


class CityscapesDataset:
    """The images of ``leftImg8bit/<split>`` with their ``gtFine`` label ids, sorted by city
    and name (``limit`` keeps the first ones). Every image must have its label file."""

    def __init__(self, root: str | Path, split: str = "val", *, limit: int | None = None) -> None:
        self.root, self.split = Path(root), split
        images_dir = self.root / "leftImg8bit" / split
        if not images_dir.is_dir():
            raise FileNotFoundError(f"{images_dir}: Cityscapes images folder not found")
        images = sorted(images_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise CityscapesFormatError(f"{images_dir}: no <city>/*_leftImg8bit.png images")
        self.images = images[:limit] if limit else images

    def __len__(self) -> int:
        return len(self.images)

    def check(self) -> CityscapesDataset:
        """Every image has its label file (looked up, nothing decoded), else an error naming the
        first one missing; returns the dataset."""
        unlabelled = [i for i in range(len(self)) if not self.label_path(i).is_file()]
        if unlabelled:
            first = unlabelled[0]
            raise CityscapesFormatError(f"{self.label_path(first)}: label file missing for {self.images[first]} "
                                        f"({len(unlabelled)} of the {len(self)} images have none)")
        return self

    def label_path(self, index: int) -> Path:
        image = self.images[index]
        stem = image.name[: -len("_leftImg8bit.png")]
        return self.root / "gtFine" / self.split / image.parent.name / f"{stem}_gtFine_labelIds.png"

    def __getitem__(self, index: int) -> dict:
        image = self.images[index]
        return {"index": index, "name": image.name[: -len("_leftImg8bit.png")], "city": image.parent.name,
                "image": image, "label": self.label_path(index)}

    def load_image(self, index: int) -> np.ndarray:
        """RGB uint8 [H, W, 3]."""
        path = self.images[index]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise CityscapesFormatError(f"{path}: not a readable image")
        return np.ascontiguousarray(bgr[:, :, ::-1])

    def load_label(self, index: int) -> np.ndarray:
        """Train ids uint8 [H, W] (255 = ignored)."""
        path = self.label_path(index)
        if not path.is_file():
            raise CityscapesFormatError(f"{path}: label file missing for {self.images[index]}")
        ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if ids is None or ids.ndim != 2:
            raise CityscapesFormatError(f"{path}: not a single-channel label image")
        return label_ids_to_train_ids(ids)


def find_cityscapes(data_root: str | Path) -> Path | None:
    """``data_root/cityscapes`` when it holds ``leftImg8bit/val`` and ``gtFine/val``; None when
    it holds neither. Only one of them there is an error naming the other."""
    root = Path(data_root) / "cityscapes"
    images, labels = root / "leftImg8bit" / "val", root / "gtFine" / "val"
    if images.is_dir() and labels.is_dir():
        return root
    if not images.is_dir() and not labels.is_dir():
        return None
    absent, present = (labels, images) if images.is_dir() else (images, labels)
    raise half_present(absent, "Cityscapes folder", f"{present} is there", root,
                       f"unpack {absent.parent.name}_trainvaltest.zip into {root}")


def write_synthetic_cityscapes(root: str | Path, num_images: int = 4, *, size: tuple[int, int] = (256, 512),
                               seed: int = 0) -> CityscapesDataset:
    """Write a small set in Cityscapes' val layout: each image is a street-like arrangement
    of class regions (sky, building, road, random objects) drawn in a noisy version of the
    class colours, with the label ids that produced it (including ids that are not
    evaluated, so the 255 mapping is exercised)."""
    root = Path(root)
    rng = np.random.RandomState(seed)
    height, width = size
    by_name = {c.name: c for c in CLASSES}
    ignored_ids = [0, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]
    for index in range(num_images):
        city = ("frankfurt", "lindau", "munster")[index % 3]
        labels = np.full((height, width), by_name["building"].label_id, np.uint8)
        horizon = int(height * rng.uniform(0.3, 0.45))
        labels[:horizon // 2] = by_name["sky"].label_id
        labels[int(height * rng.uniform(0.55, 0.7)):] = by_name["road"].label_id
        labels[int(height * 0.9):, : width // 5] = by_name["sidewalk"].label_id
        for _ in range(rng.randint(4, 9)):
            kind = CLASSES[rng.randint(0, NUM_CLASSES)] if rng.rand() > 0.2 else None
            label_id = kind.label_id if kind else ignored_ids[rng.randint(len(ignored_ids))]
            cx, cy = rng.randint(0, width), rng.randint(horizon // 2, height)
            w, h = rng.randint(width // 20, width // 6), rng.randint(height // 15, height // 4)
            cv2.rectangle(labels, (cx - w // 2, cy - h // 2), (cx + w // 2, cy + h // 2), int(label_id), -1)
        colour = PALETTE[label_ids_to_train_ids(labels)].astype(np.int16)
        colour[label_ids_to_train_ids(labels) == IGNORE] = (90, 90, 90)
        noise = rng.randint(-25, 26, size=colour.shape)
        image = np.clip(colour + noise, 0, 255).astype(np.uint8)
        stem = f"{city}_{index:06d}_000019"
        for sub, name, data in (("leftImg8bit", f"{stem}_leftImg8bit.png", image[:, :, ::-1]),
                                ("gtFine", f"{stem}_gtFine_labelIds.png", labels)):
            folder = root / sub / "val" / city
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / name), data)
    return CityscapesDataset(root)
