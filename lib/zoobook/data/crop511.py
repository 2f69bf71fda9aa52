"""SiamMask's crop511 training layout (YouTube-VOS, ImageNet VID, COCO, ImageNet DET).

Each dataset's ``par_crop.py 511`` cuts, for every annotated object in every frame, a
511 x 511 crop centred on the box centre, side s_z x 511 / 127 where s_z is the context size
(context 0.5), so the object sits at (255, 255) at the template's scale. Layout::

    <root>/crop511/<video>/<frame:06d>.<track:02d>.x.jpg     the crop
    <root>/crop511/<video>/<frame:06d>.<track:02d>.m.png     its mask (COCO, YouTube-VOS)
    <root>/<annotation>.json   {video: {track "00": {frame "000000": [x1, y1, x2, y2]}}}

Boxes in the index are in the original image's pixels; only their width and height matter
here (the object's box in the crop follows from them). Boxes of zero width or height are
dropped, then tracks and videos left empty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

CONTEXT = 0.5
EXEMPLAR, CROP = 127, 511


class Crop511Error(ValueError):
    """A crop511 dataset that is not in the expected layout; the message names the file."""


@dataclass(frozen=True)
class SubsetConfig:
    """One dataset of the training mix: where it is, how many videos it contributes per
    pass (``num_use``, -1 for each once), how far apart template and search frames may be,
    and whether it has masks."""

    name: str
    annotation: str
    num_use: int
    frame_range: int
    masks: bool
    crop_dir: str = "crop511"


#: the siammask_base config's four datasets (paths relative to ``data/siammask_train``)
BASE_SUBSETS = (
    SubsetConfig("ytb_vos", "ytb_vos/train.json", 200_000, 20, True, "ytb_vos/crop511"),
    SubsetConfig("vid", "vid/train.json", 200_000, 100, False, "vid/crop511"),
    SubsetConfig("coco", "coco/train2017.json", -1, 1, True, "coco/crop511"),
    SubsetConfig("det", "det/train.json", 100_000, 1, False, "det/crop511"),
)


@dataclass
class Track:
    video: str
    track: str
    frames: list[str]
    boxes: dict[str, list[float]] = field(repr=False)


def _is_box(value) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)


def read_index(path: str | Path) -> list[Track]:
    """The tracks of an annotation file, frames sorted; malformed entries are an error that
    names the file and the entry."""
    path = Path(path)
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise Crop511Error(f"{path}: annotation index not found") from None
    except json.JSONDecodeError as err:
        raise Crop511Error(f"{path}: not valid JSON ({err})") from None
    if not isinstance(index, dict):
        raise Crop511Error(f"{path}: expected {{video: {{track: {{frame: [x1, y1, x2, y2]}}}}}}, got a "
                           f"{type(index).__name__}")
    tracks = []
    for video, objects in index.items():
        if not isinstance(objects, dict):
            raise Crop511Error(f"{path}: video {video!r} must map track ids to frames")
        for track, frames in objects.items():
            if not isinstance(frames, dict):
                raise Crop511Error(f"{path}: {video!r} track {track!r} must map frame ids to boxes")
            boxes = {}
            for frame, box in frames.items():
                if not _is_box(box):
                    raise Crop511Error(f"{path}: {video!r} track {track!r} frame {frame!r}: expected "
                                       f"[x1, y1, x2, y2], got {box!r}")
                if box[2] > box[0] and box[3] > box[1]:
                    boxes[frame] = [float(v) for v in box]
            if boxes:
                tracks.append(Track(video, track, sorted(boxes), boxes))
    if not tracks:
        raise Crop511Error(f"{path}: no track with a non-empty box")
    return tracks


def target_size(box: list[float]) -> tuple[float, float]:
    """The object's (w, h) in the 511 crop: (w, h) x 127 / s_z, s_z = sqrt((w + p)(h + p)),
    p = 0.5 (w + h)."""
    w, h = box[2] - box[0], box[3] - box[1]
    pad = CONTEXT * (w + h)
    scale = EXEMPLAR / np.sqrt((w + pad) * (h + pad))
    return w * scale, h * scale


class Crop511Subset:
    """One dataset in crop511 layout under ``root``, read through its annotation index."""

    def __init__(self, config: SubsetConfig, root: str | Path) -> None:
        self.config, self.root = config, Path(root)
        self.crops = self.root / config.crop_dir
        if not self.crops.is_dir():
            raise Crop511Error(f"{self.crops}: crop folder of {config.name} not found")
        self.index_path = self.root / config.annotation
        self.tracks = read_index(self.index_path)
        self.videos: dict[str, list[int]] = {}
        for i, track in enumerate(self.tracks):
            self.videos.setdefault(track.video, []).append(i)
        self.video_names = list(self.videos)

    def __len__(self) -> int:
        return len(self.video_names)

    def crop_path(self, video: str, track: str, frame: str, kind: str = "x") -> Path:
        return self.crops / video / f"{int(frame):06d}.{int(track):02d}.{kind}.{'jpg' if kind == 'x' else 'png'}"

    def pick_pair(self, video_index: int, rng: np.random.RandomState) -> tuple[Track, str, str]:
        """A random track of the video, a template frame and a search frame at most
        ``frame_range`` positions away in its sorted annotated frames."""
        tracks = self.videos[self.video_names[video_index]]
        track = self.tracks[tracks[rng.randint(len(tracks))]]
        t = rng.randint(len(track.frames))
        low, high = max(t - self.config.frame_range, 0), min(t + self.config.frame_range, len(track.frames) - 1) + 1
        return track, track.frames[t], track.frames[rng.randint(low, high)]

    def pick_any(self, rng: np.random.RandomState) -> tuple[Track, str]:
        track = self.tracks[rng.randint(len(self.tracks))]
        return track, track.frames[rng.randint(len(track.frames))]

    def load(self, track: Track, frame: str, *, mask: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The crop (BGR uint8 511 x 511), the object's box in it (x1, y1, x2, y2) and, with
        ``mask`` and a dataset that has masks, its mask (float32 0/1)."""
        path = self.crop_path(track.video, track.track, frame)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            folder = path.parent
            raise Crop511Error(f"{path}: crop missing or unreadable" + ("" if folder.is_dir() else
                                                                       f" (folder {folder} not found)"))
        w, h = target_size(track.boxes[frame])
        centre = (image.shape[1] - 1) / 2, (image.shape[0] - 1) / 2
        box = np.array([centre[0] - w / 2, centre[1] - h / 2, centre[0] + w / 2, centre[1] + h / 2])
        found = None
        if mask and self.config.masks:
            mask_path = self.crop_path(track.video, track.track, frame, "m")
            found = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if found is None:
                raise Crop511Error(f"{mask_path}: mask missing or unreadable")
            found = (found > 127).astype(np.float32)
        return image, box, found


def write_synthetic_crop511(root: str | Path, config: SubsetConfig, *, videos: int = 4, frames: int = 6,
                            seed: int = 0) -> Path:
    """A small dataset in crop511 layout: each video follows one synthetic object (an ellipse
    or a rectangle with a textured fill) on a textured background as its box drifts and
    changes size; every frame is written as the 511 crop ``par_crop`` would make (object
    centred at the template's scale), with its mask where the subset has masks, and the
    original-image boxes in the index."""
    root = Path(root)
    rng = np.random.RandomState(seed)
    index: dict[str, dict] = {}
    for v in range(videos):
        video = f"{'train/' if config.name == 'ytb_vos' else ''}{config.name}_{v:04d}"
        folder = root / config.crop_dir / video
        folder.mkdir(parents=True, exist_ok=True)
        colour, background = rng.randint(0, 256, 3), rng.randint(0, 256, 3)
        ellipse = rng.rand() < 0.5
        w, h = rng.uniform(40, 200), rng.uniform(40, 200)
        x, y = rng.uniform(0, 400), rng.uniform(0, 300)
        boxes = {}
        for f in range(frames if config.frame_range > 1 else 1):
            w, h = w * rng.uniform(0.92, 1.08), h * rng.uniform(0.92, 1.08)
            x, y = x + rng.uniform(-10, 10), y + rng.uniform(-10, 10)
            frame = f"{f:06d}"
            boxes[frame] = [round(x, 2), round(y, 2), round(x + w, 2), round(y + h, 2)]
            crop, mask = _draw_crop(rng, target_size(boxes[frame]), colour, background, ellipse)
            cv2.imwrite(str(folder / f"{frame}.00.x.jpg"), crop)
            if config.masks:
                cv2.imwrite(str(folder / f"{frame}.00.m.png"), mask * 255)
        index[video] = {"00": boxes}
    path = root / config.annotation
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(index))
    return path


def _draw_crop(rng, size: tuple[float, float], colour, background, ellipse: bool) -> tuple[np.ndarray, np.ndarray]:
    noise = rng.randint(-30, 31, (CROP, CROP, 3))
    crop = np.clip(background + noise, 0, 255).astype(np.uint8)
    mask = np.zeros((CROP, CROP), np.uint8)
    centre, (w, h) = (CROP - 1) / 2, size
    if ellipse:
        cv2.ellipse(mask, (int(round(centre)), int(round(centre))), (int(round(w / 2)), int(round(h / 2))), 0, 0, 360,
                    1, -1)
    else:
        cv2.rectangle(mask, (int(round(centre - w / 2)), int(round(centre - h / 2))),
                      (int(round(centre + w / 2)), int(round(centre + h / 2))), 1, -1)
    stripes = (np.arange(CROP)[None, :] // 6 % 2 * 40 - 20)[..., None]
    texture = np.clip(colour + stripes + rng.randint(-15, 16, (CROP, CROP, 3)), 0, 255).astype(np.uint8)
    crop[mask > 0] = texture[mask > 0]
    return crop, mask
