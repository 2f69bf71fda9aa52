"""VOT datasets (VOT2016 layout): a reader, the reference's JSON index, and a generator.

Layout (real VOT2016 under ``data/VOT2016/``)::

    list.txt                     sequence names, one per line
    <seq>/groundtruth.txt        one line per frame: 8 numbers (polygon x1,y1,...,x4,y4) or 4 (x,y,w,h)
    <seq>/00000001.jpg ...       frames (VOT2018 puts them in <seq>/color/)

Sample (``VotDataset[i]``): a :class:`VotSequence` with ``name``, ``frames`` (paths, sorted),
``groundtruth`` float64 [N, 8] polygons, ``width``, ``height``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from zoobook.data import read_json


class VotFormatError(ValueError):
    """A VOT file that does not follow the format; the message names the file and line."""


@dataclass
class VotSequence:
    name: str
    frames: list[Path]
    groundtruth: np.ndarray
    width: int
    height: int
    tags: dict[str, list[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)


def rect_to_polygon(x: float, y: float, w: float, h: float) -> list[float]:
    """The reference's 4 -> 8 conversion: corners (x, y), (x, y+h-1), (x+w-1, y+h-1), (x+w-1, y)."""
    return [x, y, x, y + h - 1, x + w - 1, y + h - 1, x + w - 1, y]


def read_groundtruth(path: str | Path) -> np.ndarray:
    """``groundtruth.txt`` -> float64 [N, 8] polygons (4-number lines converted). Every value
    must be a finite number: VOT2016 ground truth never holds NaN or inf (a target is always
    annotated), so one found there is a broken file, named with its line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: groundtruth file not found")
    polygons = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.replace("\t", ",").split(",")]
        except ValueError as err:
            raise VotFormatError(f"{path}:{lineno}: not a list of comma-separated numbers ({line.strip()!r})") from err
        bad = next((v for v in values if not math.isfinite(v)), None)
        if bad is not None:
            raise VotFormatError(f"{path}:{lineno}: {bad} is not a finite number ({line.strip()!r}); VOT ground "
                                 "truth holds finite coordinates only")
        if len(values) == 4:
            values = rect_to_polygon(*values)
        elif len(values) != 8:
            raise VotFormatError(f"{path}:{lineno}: expected 4 (x,y,w,h) or 8 (polygon) numbers, found {len(values)}")
        polygons.append(values)
    if not polygons:
        raise VotFormatError(f"{path}: no ground-truth lines")
    return np.asarray(polygons, dtype=np.float64)


def _frames(folder: Path) -> list[Path]:
    for candidate in (folder / "color", folder):
        frames = sorted(candidate.glob("*.jpg")) + sorted(candidate.glob("*.png"))
        if frames:
            return sorted(frames)
    return []


def read_sequence(root: str | Path, name: str) -> VotSequence:
    folder = Path(root) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: sequence folder not found (listed in list.txt)")
    groundtruth = read_groundtruth(folder / "groundtruth.txt")
    frames = _frames(folder)
    if len(frames) != len(groundtruth):
        missing = _first_gap(frames) if len(frames) < len(groundtruth) else None
        raise VotFormatError(f"{folder / 'groundtruth.txt'}: {len(groundtruth)} lines but {len(frames)} frames in "
                             f"{folder}" + (f" (frame {missing} is missing)" if missing else "") +
                             "; VOT needs one ground-truth line per frame")
    first = cv2.imread(str(frames[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise VotFormatError(f"{frames[0]}: not a readable image")
    return VotSequence(name, frames, groundtruth, first.shape[1], first.shape[0])


def _first_gap(frames: list[Path]) -> str | None:
    """The first missing name in a run of numbered frames (00000001.jpg, ...), if any."""
    numbers = [int(p.stem) for p in frames if p.stem.isdigit()]
    if not numbers or not frames:
        return None
    width, suffix = len(frames[0].stem), frames[0].suffix
    expected = range(numbers[0], numbers[0] + len(numbers) + 1)
    gap = next((n for n in expected if n not in set(numbers)), None)
    return f"{gap:0{width}d}{suffix}" if gap is not None else None


class VotDataset:
    """All sequences of ``list.txt`` under ``root`` (``limit`` keeps the first ones). An empty
    list, or a listed sequence without its folder, is an error here; :meth:`check` reads the
    sequences themselves."""

    def __init__(self, root: str | Path, *, limit: int | None = None) -> None:
        self.root = Path(root)
        listing = self.root / "list.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"{listing}: VOT sequence list not found")
        listed = [(lineno, n.strip()) for lineno, n in enumerate(listing.read_text().splitlines(), start=1)
                  if n.strip()]
        if not listed:
            raise VotFormatError(f"{listing}: names no sequences (expected one sequence folder name per line)")
        listed = listed[:limit] if limit else listed
        for lineno, name in listed:
            if not (self.root / name).is_dir():
                raise FileNotFoundError(f"{self.root / name}: sequence folder not found "
                                        f"(listed in {listing}, line {lineno})")
        self.names = [name for _, name in listed]
        self._cache: dict[str, VotSequence] = {}

    def check(self) -> VotDataset:
        """Read every sequence now (ground truth parsed, frames counted against it, first frame
        decoded), so a broken file is named before any work is done; returns the dataset."""
        for index in range(len(self)):
            self[index]
        return self

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> VotSequence:
        name = self.names[index]
        if name not in self._cache:
            self._cache[name] = read_sequence(self.root, name)
        return self._cache[name]


def write_json_index(dataset: VotDataset, path: str | Path) -> Path:
    """The reference's ``VOT2016.json`` index: per sequence video_dir, init_rect, img_names
    (relative to the dataset's parent folder), gt_rect, width, height and the tag lists."""
    index = {}
    for sequence in (dataset[i] for i in range(len(dataset))):
        relative = [str(p.relative_to(dataset.root.parent)) for p in sequence.frames]
        index[sequence.name] = {
            "video_dir": sequence.name, "init_rect": sequence.groundtruth[0].tolist(), "img_names": relative,
            "gt_rect": sequence.groundtruth.tolist(), "width": sequence.width, "height": sequence.height,
            **{tag: sequence.tags.get(tag, []) for tag in
               ("camera_motion", "illum_change", "motion_change", "size_change", "occlusion")}}
    from zoobook.atomic import write_json_atomic

    return write_json_atomic(path, index)


def read_json_index(path: str | Path) -> dict[str, dict]:
    """Read a ``VOT2016.json``-style index: {sequence: {video_dir, init_rect, img_names,
    gt_rect, width, height, tag lists}}."""
    path = Path(path)
    index = read_json(path, "VOT JSON index", VotFormatError)
    required = ("gt_rect", "width", "height", "img_names")
    for name, entry in index.items():
        missing = [k for k in required if k not in entry]
        if missing:
            raise VotFormatError(f"{path}: sequence {name!r} lacks {', '.join(missing)}")
    return index


def polygon_to_box(polygon: np.ndarray) -> tuple[float, float, float, float]:
    """The reference's initialisation box (centre x, centre y, w, h) from a 4-corner polygon:
    centre = mean of the corners; the bounding box scaled to keep the polygon's area, +1."""
    xs, ys = polygon[0::2], polygon[1::2]
    cx, cy = float(np.mean(xs)), float(np.mean(ys))
    x1, x2, y1, y2 = xs.min(), xs.max(), ys.min(), ys.max()
    a1 = np.linalg.norm(polygon[0:2] - polygon[2:4]) * np.linalg.norm(polygon[2:4] - polygon[4:6])
    a2 = (x2 - x1) * (y2 - y1)
    s = np.sqrt(a1 / a2)
    return cx, cy, float(s * (x2 - x1) + 1), float(s * (y2 - y1) + 1)


# ---------------------------------------------------------------------------------------
# Generator


def _rotated_rect(cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    return corners @ np.array([[c, s], [-s, c]]) + [cx, cy]


def write_synthetic_vot(root: str | Path, num_sequences: int = 3, num_frames: int = 60, *, seed: int = 0,
                        size: tuple[int, int] = (320, 240)) -> VotDataset:
    """Write a small VOT2016-format dataset: per sequence a textured rectangle that moves,
    turns and changes size over a noisy background, with its rotated-rectangle polygon as
    ground truth (8 numbers per line), ``list.txt`` and ``VOT2016.json``."""
    root = Path(root)
    rng = np.random.RandomState(seed)
    width, height = size
    names = [f"synthetic{k:02d}" for k in range(num_sequences)]
    for name in names:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        background = cv2.GaussianBlur(rng.randint(0, 256, (height, width, 3)).astype(np.uint8), (0, 0), 6)
        texture = rng.randint(0, 256, (3,))
        cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
        vx, vy, spin = rng.uniform(-2, 2), rng.uniform(-1.5, 1.5), rng.uniform(-0.03, 0.03)
        w, h, angle = rng.uniform(30, 60), rng.uniform(25, 50), rng.uniform(0, np.pi)
        lines = []
        for frame in range(num_frames):
            corners = _rotated_rect(cx, cy, w, h, angle)
            image = background.copy()
            cv2.fillPoly(image, [np.round(corners).astype(np.int32)], [int(v) for v in texture])
            cv2.imwrite(str(folder / f"{frame + 1:08d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            lines.append(",".join(f"{v:.2f}" for v in corners.ravel()))
            cx = float(np.clip(cx + vx, w / 2, width - w / 2))
            cy = float(np.clip(cy + vy, h / 2, height - h / 2))
            vx, vy = vx + rng.normal(0, 0.3), vy + rng.normal(0, 0.3)
            angle += spin
            w, h = w * rng.uniform(0.99, 1.01), h * rng.uniform(0.99, 1.01)
        (folder / "groundtruth.txt").write_text("\n".join(lines) + "\n")
    (root / "list.txt").write_text("\n".join(names) + "\n")
    dataset = VotDataset(root)
    write_json_index(dataset, root / "VOT2016.json")
    return dataset
