"""SiamMask base-stage training pairs from crop511 datasets (FACTS.md section 5.1).

A pair is a template crop (127) and a search crop (255) of the same track, at most
``frame_range`` annotated frames apart; with probability 0.2 the search shows a random object
of a random dataset instead (a negative pair). Each crop is cut from the 511 crop around its
centre, shifted and scaled at random, warped, colour-jittered and (search only) sometimes
motion-blurred; with probability 0.25 the whole pair is turned grey. The search crop's target
box, anchor targets and mask label (+1 object, -1 elsewhere) follow the same warp.

Every sample is a function of (seed, epoch, index) alone, so a resumed run or a run split over
several processes sees exactly the samples a single uninterrupted process would.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from zoobook.data.crop511 import Crop511Subset
from zoobook.models.siammask.training import anchor_targets, training_anchors


@dataclass(frozen=True)
class Augment:
    """Output side, random shift (px) and per-axis scale of the cut, and motion-blur probability."""

    size: int
    shift: float
    scale: float
    blur: float = 0.0


TEMPLATE = Augment(127, 4, 0.05)
SEARCH = Augment(255, 64, 0.18, 0.18)
GRAY, NEGATIVE = 0.25, 0.2
#: a fixed PCA lighting basis: AlexNet's ImageNet RGB eigenvectors scaled by the eigenvalues
#: (0-255 scale) and a 0.1 standard deviation; the reference uses a fixed matrix of the same
#: kind (its values are not reproduced here)
_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
_EIGVAL = np.array([55.46, 4.794, 1.148])
COLOUR_BASIS = _EIGVEC * _EIGVAL * 0.1


def sample_rng(seed: int, epoch: int, index: int) -> np.random.RandomState:
    return np.random.RandomState(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def cut(image: np.ndarray, box: np.ndarray, mask: np.ndarray | None, config: Augment,
        rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Cut ``config.size`` x ``config.size`` out of the crop around its centre, with a random
    per-axis scale (1 + U(-scale, scale)) and shift (U(-shift, shift), kept inside the image);
    returns the warped image (float32), the box in it and the warped mask."""
    h, w = image.shape[:2]
    cx, cy = (w - 1) / 2, (h - 1) / 2
    side_x = (config.size - 1) * (1 + rng.uniform(-config.scale, config.scale))
    side_y = (config.size - 1) * (1 + rng.uniform(-config.scale, config.scale))
    x1, y1 = cx - side_x / 2, cy - side_y / 2
    dx = float(np.clip(rng.uniform(-config.shift, config.shift), -x1, w - 1 - (x1 + side_x)))
    dy = float(np.clip(rng.uniform(-config.shift, config.shift), -y1, h - 1 - (y1 + side_y)))
    x1, y1 = x1 + dx, y1 + dy
    ax, ay = (config.size - 1) / side_x, (config.size - 1) / side_y
    warp = np.array([[ax, 0, -x1 * ax], [0, ay, -y1 * ay]])
    out = cv2.warpAffine(image, warp, (config.size, config.size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)).astype(np.float32)
    new_box = np.array([(box[0] - x1) * ax, (box[1] - y1) * ay, (box[2] - x1) * ax, (box[3] - y1) * ay])
    if mask is not None:
        mask = cv2.warpAffine(mask, warp, (config.size, config.size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out, new_box, mask


def colour_jitter(image: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Subtract a random lighting offset (the basis times N(0, 1)^3, RGB reversed for BGR); no clipping."""
    offset = COLOUR_BASIS @ rng.standard_normal(3)
    return image - offset[::-1].astype(np.float32)


def motion_blur(image: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """A cross-shaped kernel of odd size 2 round(N(0, 1)) + 1 (at most 45): its centre row
    weighs wx / size and its centre column (1 - wx) / size; skipped when the size is not
    positive and, again, half of the time."""
    size = 2 * int(round(rng.standard_normal())) + 1
    if size <= 1 or size > 45 or rng.rand() < 0.5:
        return image
    kernel = np.zeros((size, size), np.float32)
    wx = rng.rand()
    kernel[size // 2, :] = wx / size
    kernel[:, size // 2] += (1 - wx) / size
    return cv2.filter2D(image, -1, kernel)


def augment(image: np.ndarray, box: np.ndarray, mask: np.ndarray | None, config: Augment, gray: bool,
            rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if gray:
        image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    out, box, mask = cut(image, box, mask, config, rng)
    out = colour_jitter(out, rng)
    if config.blur and rng.rand() < config.blur:
        out = motion_blur(out, rng)
    return out, box, mask


class PairDataset(torch.utils.data.Dataset):
    """``num`` training pairs per epoch over ``subsets``: each subset contributes ``num_use``
    video indices per pass (all once for -1, repeated and reshuffled otherwise), concatenated,
    shuffled with the fixed ``shuffle_seed`` and cut or cycled to ``num``."""

    def __init__(self, subsets: list[Crop511Subset], num: int, *, seed: int = 0, shuffle_seed: int = 123456,
                 negative: float = NEGATIVE, template: Augment = TEMPLATE, search: Augment = SEARCH) -> None:
        if not subsets:
            raise ValueError("no training dataset")
        self.subsets, self.num, self.seed = subsets, num, seed
        self.negative, self.template, self.search = negative, template, search
        self.epoch = 0
        shuffle = np.random.RandomState(shuffle_seed)
        picks = []
        for s, subset in enumerate(subsets):
            count = len(subset) if subset.config.num_use < 0 else subset.config.num_use
            videos = np.concatenate([shuffle.permutation(len(subset)) for _ in range(-(-count // len(subset)))])[:count]
            picks += [(s, int(v)) for v in videos]
        order = shuffle.permutation(len(picks))
        self.picks = [picks[i] for i in np.resize(order, num)]
        self.anchors = training_anchors()

    def __len__(self) -> int:
        return self.num

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = sample_rng(self.seed, self.epoch, index)
        s, video = self.picks[index]
        subset = self.subsets[s]
        track, template_frame, search_frame = subset.pick_pair(video, rng)
        negative = rng.rand() < self.negative
        gray = rng.rand() < GRAY
        template, template_box, _ = subset.load(track, template_frame, mask=False)
        if negative:
            other = self.subsets[rng.randint(len(self.subsets))]
            search_subset, (search_track, search_frame) = other, other.pick_any(rng)
        else:
            search_subset, search_track = subset, track
        search, search_box, mask = search_subset.load(search_track, search_frame, mask=not negative)
        template, _, _ = augment(template, template_box, None, self.template, gray, rng)
        search, box, mask = augment(search, search_box, mask, self.search, gray, rng)
        targets = anchor_targets(box, negative_pair=negative, rng=rng, anchors=self.anchors)
        has_mask = mask is not None
        mask_label = np.where(mask > 0.5, 1.0, -1.0).astype(np.float32) if has_mask \
            else np.zeros((self.search.size, self.search.size), np.float32)
        if not has_mask:
            targets["mask_weight"][:] = 0
        return {"template": torch.from_numpy(np.ascontiguousarray(template.transpose(2, 0, 1))),
                "search": torch.from_numpy(np.ascontiguousarray(search.transpose(2, 0, 1))),
                "label": torch.from_numpy(targets["label"]), "delta": torch.from_numpy(targets["delta"]),
                "delta_weight": torch.from_numpy(targets["delta_weight"]),
                "mask_weight": torch.from_numpy(targets["mask_weight"]), "mask_label": torch.from_numpy(mask_label),
                "box": torch.from_numpy(box.astype(np.float32)), "negative": torch.tensor(negative)}
