"""RetinaMask's host side (the port's post-processing and input tensor) against a verbatim
copy of the implementation it replaced: every returned array must be bit-identical (values
and dtypes) on seeded synthetic graph outputs built to hit the edge cases (exact score ties,
IoU exactly 0.4 in float32, fewer than 100 kept, boxes over the border, degenerate boxes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoobook.models.retinamask import postprocess as pp
from zoobook.models.retinamask.preprocess import PIXEL_MEAN_BGR, port_tensor
from zoobook.timing import recording

# ---------------------------------------------------------------------------------------
# The oracle: the pre-optimisation implementation that mirrors the port (postprocess.py as
# of 2f66af6), copied verbatim apart from names. Do not "fix" it: it is the specification.


def oracle_legacy_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def oracle_legacy_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, *, suppress_equal: bool = True,
                      order: torch.Tensor | None = None) -> torch.Tensor:
    if order is None:
        order = scores.argsort(descending=True, stable=True)
    iou = oracle_legacy_iou(boxes[order], boxes[order])
    over = iou >= threshold if suppress_equal else iou > threshold
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= over[i]
    return order[torch.tensor(keep, dtype=torch.long)]


def _oracle_expand(box: np.ndarray, scale: float) -> np.ndarray:
    half = (box[2:] - box[:2]) * 0.5 * scale
    centre = (box[2:] + box[:2]) * 0.5
    return np.concatenate([centre - half, centre + half])


def _oracle_port_float(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return values if values.dtype == np.float64 else values.astype(np.float32)


def _oracle_place(resized, x1, y1, x_end, y_end, image_hw):
    height, width = image_hw
    out = np.zeros((height, width), dtype=bool)
    x0, y0 = max(int(x1), 0), max(int(y1), 0)
    x_end, y_end = min(int(x_end), width), min(int(y_end), height)
    if x_end > x0 and y_end > y0:
        out[y0:y_end, x0:x_end] = resized[y0 - int(y1):y_end - int(y1), x0 - int(x1):x_end - int(x1)]
    return out


def oracle_paste_port(mask, box, image_hw, *, threshold=0.5, padding=1):
    import cv2

    side = mask.shape[-1]
    padded = np.pad(np.asarray(mask, np.float32).reshape(side, side), padding)
    wide = _oracle_expand(_oracle_port_float(box), (side + 2 * padding) / side)
    w, h = (round(float(v)) for v in np.maximum(wide[2:] - wide[:2] + 1, 1))
    x1, y1, x2, y2 = (round(float(v)) for v in wide)
    resized = cv2.resize(padded, (w, h), interpolation=cv2.INTER_LINEAR) > threshold
    return _oracle_place(resized, x1, y1, x2, y2, image_hw)


def oracle_port_postprocess(boxes, labels, scores, masks, *, ratio, image_hw, keep=100):
    boxes, labels = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels).reshape(-1)
    scores, masks = np.asarray(scores, np.float32).reshape(-1), np.asarray(masks).reshape(len(labels), 28, 28)
    offset = labels.astype(np.float32)[:, None] * (boxes.max() + 1)
    port_order = torch.from_numpy(np.argsort(scores)[::-1].copy())
    chosen = oracle_legacy_nms(torch.from_numpy(boxes + offset), torch.from_numpy(scores), 0.4,
                               suppress_equal=False, order=port_order).numpy()[:keep]
    height, width = image_hw
    scaled = boxes[chosen].astype(np.float32 if len(chosen) >= keep else np.float64) / ratio
    scaled[:, 0::2] = scaled[:, 0::2].clip(0, width)
    scaled[:, 1::2] = scaled[:, 1::2].clip(0, height)
    pasted = np.stack([oracle_paste_port(masks[i], b, image_hw) for i, b in zip(chosen, scaled)]) if len(chosen) \
        else np.zeros((0, height, width), bool)
    return {"boxes": scaled, "scores": scores[chosen], "labels": labels[chosen].astype(np.int64), "masks": pasted}


def oracle_port_tensor(resized_rgb, size=1344):
    bgr = (resized_rgb[:, :, ::-1].astype(np.float32) - PIXEL_MEAN_BGR).astype(np.float32)
    out = np.zeros((1, 3, size, size), np.float32)
    out[0, :, :bgr.shape[0], :bgr.shape[1]] = bgr.transpose(2, 0, 1)
    return out


# ---------------------------------------------------------------------------------------
# Synthetic graph outputs


def graph_outputs(seed: int, *, size: int = 1344, extent_hw: tuple[int, int] = (1008, 1344), objects: int = 150,
                  candidates: int = 1000, grid: float = 0.0, tie_fraction: float = 0.1,
                  degenerate: int = 0) -> dict[str, np.ndarray]:
    """What the port's graph returns, synthetically: ``candidates`` boxes xyxy float32 in the
    ``size`` input (objects inside the resized image ``extent_hw``, jittered copies of each,
    some under another class, clamped to [0, size] as the graph does), int32 labels 1..80,
    float32 scores sorted descending with a share of exact ties, float32 masks [N, 1, 28, 28].
    ``grid`` > 0 snaps corners to multiples of it (many exactly equal IoUs); ``degenerate``
    boxes get x2 < x1 or zero extent."""
    rng = np.random.default_rng(seed)
    eh, ew = extent_hw
    side = np.exp(rng.uniform(np.log(12), np.log(700), objects))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2), objects))
    w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
    cx, cy = rng.uniform(0, ew, objects), rng.uniform(0, eh, objects)
    obj_labels = rng.integers(1, 81, objects)
    owner = rng.integers(0, objects, candidates)
    jitter = rng.normal(0, 0.08, (candidates, 4)) * np.stack([w, h, w, h], 1)[owner]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)[owner] + jitter
    if grid:
        boxes = np.round(boxes / grid) * grid
    labels = np.where(rng.random(candidates) < 0.15, rng.integers(1, 81, candidates), obj_labels[owner])
    if degenerate:
        bad = rng.choice(candidates, degenerate, replace=False)
        boxes[bad[::2], 2] = boxes[bad[::2], 0] - rng.uniform(0, 3, len(bad[::2]))  # x2 < x1
        boxes[bad[1::2], 3] = boxes[bad[1::2], 1]  # zero height (+1: one pixel)
    boxes = np.clip(boxes, 0, size).astype(np.float32)
    scores = np.sort(rng.random(candidates).astype(np.float32))[::-1].copy()
    tied = rng.random(candidates) < tie_fraction
    scores[tied] = np.round(scores[tied], 2)  # exact ties among the rounded ones
    order = np.argsort(-scores, kind="stable")
    noise = rng.random((candidates, 1, 28, 28)).astype(np.float32)
    smooth = (noise + np.roll(noise, 1, -1) + np.roll(noise, 1, -2)) / 3
    return {"boxes": boxes[order], "labels": labels[order].astype(np.int32), "scores": scores[order],
            "masks": smooth[order].astype(np.float32)}


def assert_same(ours: dict, oracle: dict) -> None:
    assert ours.keys() == oracle.keys()
    for key, expected in oracle.items():
        assert ours[key].dtype == expected.dtype, key
        assert ours[key].shape == expected.shape, key
        np.testing.assert_array_equal(ours[key], expected, err_msg=key)


# ---------------------------------------------------------------------------------------
# The port's post-processing against the oracle

SCENARIOS = {
    # name: (graph_outputs arguments, image (H, W), keep)
    "coco_480x640": (dict(seed=1), (480, 640), 100),
    "coco_800x1200": (dict(seed=2, extent_hw=(896, 1344)), (800, 1200), 100),
    "portrait_640x427": (dict(seed=3, extent_hw=(1344, 896)), (640, 427), 100),
    "integer_grid_ties": (dict(seed=4, grid=8.0, tie_fraction=0.5), (480, 640), 100),
    "half_pixel_grid": (dict(seed=5, grid=0.5, objects=60), (480, 640), 100),
    "degenerate_boxes": (dict(seed=6, degenerate=300), (480, 640), 100),
    "fewer_than_kept_float64": (dict(seed=7, objects=20, candidates=90), (480, 640), 100),
    "keep_all_float64": (dict(seed=8), (480, 640), 1000),
    "keep_one": (dict(seed=9), (480, 640), 1),
    "all_scores_tied": (dict(seed=10), (480, 640), 100),  # all set to 0.5 below
    "few_objects_many_duplicates": (dict(seed=11, objects=12), (480, 640), 100),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_port_postprocess_equals_the_oracle(name):
    arguments, image_hw, keep = SCENARIOS[name]
    out = graph_outputs(**arguments)
    if name == "all_scores_tied":
        out["scores"][:] = np.float32(0.5)
    ratio = 1344 / max(image_hw)
    expected = oracle_port_postprocess(**out, ratio=ratio, image_hw=image_hw, keep=keep)
    assert_same(pp.port_postprocess(**out, ratio=ratio, image_hw=image_hw, keep=keep), expected)
    kept = len(expected["labels"])
    assert (expected["boxes"].dtype == np.float64) == (kept < keep)
    if name == "fewer_than_kept_float64":
        assert 0 < kept < keep
    if name.startswith("coco"):
        assert kept == keep and expected["masks"].any(axis=(1, 2)).all()


def test_the_scenarios_reach_the_edges():
    """The synthetic outputs do hit what they are for: exact score ties among the kept, boxes
    on and over the border, kept boxes of different classes on the same object."""
    out = graph_outputs(1)
    ratio, image_hw = 1344 / 640, (480, 640)
    found = oracle_port_postprocess(**out, ratio=ratio, image_hw=image_hw)
    assert len(np.unique(found["scores"])) < len(found["scores"])
    assert (found["boxes"][:, 0] == 0).any() and (found["boxes"][:, 2] == 640).any()
    assert (found["boxes"][:, 3] == 480).any()
    iou = oracle_legacy_iou(torch.from_numpy(found["boxes"]), torch.from_numpy(found["boxes"])).numpy()
    different = found["labels"][:, None] != found["labels"][None, :]
    assert (iou[different] > 0.4).any()


def test_nms_decisions_at_exactly_0_4():
    """Pairs whose float32 IoU is exactly float32(0.4) (the second box inside the first, +1
    sides: inter / union = 2/5 in several ways), and one a hair above: the port keeps the
    second box of an exact pair (IoU > 0.4 suppresses), the original drops it (>=)."""
    pairs = [([0, 0, 9, 9], [0, 0, 3, 9]),  # 40 / 100
             ([0, 0, 19, 9], [0, 0, 7, 9]),  # 80 / 200
             ([0, 0, 4, 9], [0, 0, 1, 9]),  # 20 / 50
             ([0, 0, 9, 9], [0, 0, 9, 3]),  # 40 / 100, along y
             ([0, 0, 9, 9], [0, 0, 3.0001, 9])]  # 40.001 / 100: a hair above
    for first, second in pairs:
        boxes = np.array([first, second], np.float32)
        iou = float(oracle_legacy_iou(torch.from_numpy(boxes[:1]), torch.from_numpy(boxes[1:])))
        assert iou >= np.float32(0.4)
        scores = torch.tensor([0.9, 0.8])
        for suppress_equal in (True, False):
            expected = oracle_legacy_nms(torch.from_numpy(boxes), scores, 0.4, suppress_equal=suppress_equal)
            assert pp.legacy_nms(torch.from_numpy(boxes), scores, 0.4, suppress_equal=suppress_equal).tolist() \
                == expected.tolist()
            exact = np.float32(iou) == np.float32(0.4)
            assert len(expected) == (2 if exact and not suppress_equal else 1)
    assert sum(np.float32(float(oracle_legacy_iou(torch.tensor([f], dtype=torch.float32),
                                                  torch.tensor([s], dtype=torch.float32)))) == np.float32(0.4)
               for f, s in pairs) == 4


def test_port_postprocess_at_exactly_0_4_through_the_class_offsets():
    """The same exact-0.4 pairs inside the port's offset boxes (label x (max + 1) added):
    integers stay exact, so the port keeps both boxes of each pair."""
    boxes = np.array([[100, 100, 109, 109], [100, 100, 103, 109],  # class 7: 40 / 100
                      [300, 200, 319, 209], [300, 200, 307, 209],  # class 2: 80 / 200
                      [500, 500, 509, 509], [500, 500, 503.01, 509]], np.float32)  # class 7: 40.1 / 100
    labels = np.array([7, 7, 2, 2, 7, 7], np.int32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], np.float32)
    masks = np.full((6, 1, 28, 28), 0.7, np.float32)
    args = dict(ratio=1.0, image_hw=(600, 600))
    expected = oracle_port_postprocess(boxes, labels, scores, masks, **args)
    assert expected["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    assert_same(pp.port_postprocess(boxes, labels, scores, masks, **args), expected)


@pytest.mark.parametrize("block", [1, 3, 64, 128, 5000])
@pytest.mark.parametrize("suppress_equal", [True, False])
def test_greedy_nms_equals_the_full_matrix_loop(monkeypatch, block, suppress_equal):
    """Any block size, both comparisons, stopping early at any limit: the same kept boxes."""
    monkeypatch.setattr(pp, "NMS_BLOCK", block)
    out = graph_outputs(12, grid=4.0, tie_fraction=0.3)
    boxes = torch.from_numpy(out["boxes"] + out["labels"][:, None].astype(np.float32) * 1345)
    scores = torch.from_numpy(out["scores"])
    expected = oracle_legacy_nms(boxes, scores, 0.4, suppress_equal=suppress_equal)
    assert torch.equal(pp.legacy_nms(boxes, scores, 0.4, suppress_equal=suppress_equal), expected)
    order = torch.from_numpy(np.argsort(out["scores"])[::-1].copy())
    expected = oracle_legacy_nms(boxes, scores, 0.4, suppress_equal=suppress_equal, order=order)
    for limit in (1, 2, 50, 100, len(expected) - 1, len(expected), 10_000):
        kept = pp.greedy_nms(boxes.numpy(), order.numpy(), 0.4, suppress_equal=suppress_equal, limit=limit)
        np.testing.assert_array_equal(order.numpy()[kept], expected.numpy()[:limit])


def test_legacy_nms_equals_the_oracle_on_degenerate_and_float64_boxes():
    rng = np.random.default_rng(13)
    boxes = rng.uniform(0, 50, (300, 4)).astype(np.float32)  # a quarter or so have x2 < x1 or y2 < y1
    boxes[::7, 2] = boxes[::7, 0] - 1  # zero width with +1
    boxes[::11, 2] = boxes[::11, 0] - 2  # negative area
    scores = torch.from_numpy(rng.random(300).astype(np.float32))
    for dtype in (torch.float32, torch.float64):
        for suppress_equal in (True, False):
            b = torch.from_numpy(boxes).to(dtype)
            assert torch.equal(pp.legacy_nms(b, scores, 0.4, suppress_equal=suppress_equal),
                               oracle_legacy_nms(b, scores, 0.4, suppress_equal=suppress_equal))


# ---------------------------------------------------------------------------------------
# The paste


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paste_port_masks_equals_the_oracle_one_by_one(dtype):
    """Boxes inside, across every border, far outside (empty window), sub-pixel, inverted,
    and on the float32 half-pixel ties of test_retinamask.PASTE_CASES."""
    rng = np.random.default_rng(14)
    height, width = 40, 60
    boxes = np.concatenate([rng.uniform(-20, 80, (200, 4)),
                            [[10.4, 5.3, 30.6, 20.2], [20.2, 10.2, 20.5, 10.5], [0.0, 0.0, 30.3, 20.9],
                             [45.2, 30.6, 60.0, 40.0], [0.0, 0.0, 60.0, 40.0], [0.6, 0.0, 3.4, 1.4000001],
                             [70, 50, 90, 60], [-30, -30, -5, -5], [5, 5, 5, 5], [30, 20, 10, 5]]]).astype(dtype)
    masks = rng.random((len(boxes), 28, 28)).astype(np.float32)
    expected = np.stack([oracle_paste_port(m, b, (height, width)) for m, b in zip(masks, boxes)])
    np.testing.assert_array_equal(pp.paste_port_masks(masks, boxes, (height, width)), expected)
    for m, b, e in zip(masks[-10:], boxes[-10:], expected[-10:]):
        np.testing.assert_array_equal(pp.paste_port(m[None], b, (height, width)), e)
    assert expected.any() and not expected[-3].any()


def test_paste_port_masks_threshold_padding_and_float64_maps():
    rng = np.random.default_rng(15)
    boxes = rng.uniform(0, 100, (40, 4)).astype(np.float32)
    boxes[:, 2:] += boxes[:, :2]
    masks = rng.random((40, 28, 28))  # float64 maps are cast to float32, as the port does
    for threshold, padding in [(0.5, 1), (0.3, 0), (0.8, 2)]:
        expected = np.stack([oracle_paste_port(m, b, (120, 90), threshold=threshold, padding=padding)
                             for m, b in zip(masks, boxes)])
        np.testing.assert_array_equal(pp.paste_port_masks(masks, boxes, (120, 90), threshold=threshold,
                                                          padding=padding), expected)


# ---------------------------------------------------------------------------------------
# The input tensor and the step timer


@pytest.mark.parametrize("hw, size", [((1008, 1344), 1344), ((37, 20), 64), ((64, 64), 64)])
def test_port_tensor_equals_the_oracle(hw, size):
    rng = np.random.default_rng(16)
    rgb = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    expected = oracle_port_tensor(rgb, size)
    ours = port_tensor(rgb, size)
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    np.testing.assert_array_equal(ours, expected)
    strided = np.asarray(rgb[:, ::-1])  # a non-contiguous view
    np.testing.assert_array_equal(port_tensor(strided, size), oracle_port_tensor(strided, size))
    as_float = rgb.astype(np.float32)  # the general path
    np.testing.assert_array_equal(port_tensor(as_float, size), oracle_port_tensor(as_float, size))


def test_port_tensor_covers_every_pixel_value():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([values, values.T, np.roll(values, 7)], axis=-1)  # each value once in each channel
    np.testing.assert_array_equal(port_tensor(rgb, 64), oracle_port_tensor(rgb, 64))


def test_host_steps_are_timed():
    out = graph_outputs(1)
    with recording() as clock:
        pp.port_postprocess(**out, ratio=1344 / 640, image_hw=(480, 640))
        port_tensor(np.zeros((48, 64, 3), np.uint8), 64)
    assert clock.calls == {"nms": 1, "boxes": 1, "masks": 1, "preprocess": 1}
    assert all(ms > 0 for ms in clock.ms.values())
