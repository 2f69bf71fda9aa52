"""YolactEdge's host side (decoding, fast NMS, mask assembly, preprocessing) against a
verbatim copy of the implementation it replaced: every returned array must be bit-identical
(values and dtypes) on seeded synthetic inputs built to hit the edge cases (exact score ties,
more than 200 candidates per class, fewer than 100 detections, boxes over the border, tiny and
inverted boxes, outputs smaller than the prototypes, non-square images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoobook.models.yolact_edge import postprocess as post
from zoobook.ops.boxes import decode_ssd

# ---------------------------------------------------------------------------------------
# The oracle: the pre-optimisation implementation (postprocess.py and ops/nms.py as of
# 2f66af6), which mirrors YOLACT's Detect / fast_nms (haotian-liu/yolact_edge
# layers/functions/detection.py: sort each class's scores, keep the top 200, IoU on the sorted
# boxes, triu_(diagonal=1), max(dim=1), keep <= threshold, then one global sort and the best
# 100) and its mask assembly (crop at prototype size, bilinear upsampling, > 0.5). Copied
# verbatim apart from names. Do not "fix" it: it is the specification.


def _reference_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    top_left = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    bottom_right = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area_a = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]))[..., :, None]
    area_b = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))[..., None, :]
    return inter / (area_a + area_b - inter)


def _reference_fast_nms(boxes, scores, *, iou_threshold=0.5, top_k=200):
    top_k = min(top_k, scores.shape[1])
    sorted_scores, order = scores.sort(dim=1, descending=True)
    order, sorted_scores = order[:, :top_k], sorted_scores[:, :top_k]
    iou = _reference_box_iou(boxes[order], boxes[order]).triu_(diagonal=1)
    max_overlap = iou.max(dim=1).values if top_k else iou.new_zeros(order.shape)
    keep = max_overlap <= iou_threshold
    classes = torch.arange(scores.shape[0], device=scores.device)[:, None].expand_as(order)
    return order[keep], classes[keep], sorted_scores[keep]


def _reference_detect(loc, conf_logits, coefs, prototypes, priors=None) -> post.Detections:
    priors = post.make_priors() if priors is None else priors
    boxes = decode_ssd(loc, priors)
    scores = F.softmax(conf_logits, dim=-1)[:, 1:].t()
    kept = scores.max(dim=0).values > post.CONF_THRESHOLD
    boxes, scores, coefs = boxes[kept], scores[:, kept], coefs[kept]
    if scores.shape[1] == 0:
        empty = boxes.new_zeros((0,))
        return post.Detections(boxes.new_zeros((0, 4)), empty.long(), empty, coefs, prototypes)
    index, classes, class_scores = _reference_fast_nms(boxes, scores, iou_threshold=post.NMS_THRESHOLD,
                                                       top_k=post.NMS_TOP_K)
    best = class_scores.argsort(descending=True)[:post.MAX_DETECTIONS]
    index = index[best]
    return post.Detections(boxes[index], classes[best], class_scores[best], coefs[index], prototypes)


def _reference_sanitize(a, b, size, padding=0):
    a, b = a * size, b * size
    low, high = torch.minimum(a, b), torch.maximum(a, b)
    return (low - padding).clamp(min=0), (high + padding).clamp(max=size)


def _reference_crop_masks(masks, boxes, padding=1):
    h, w, _ = masks.shape
    x1, x2 = _reference_sanitize(boxes[:, 0], boxes[:, 2], w, padding)
    y1, y2 = _reference_sanitize(boxes[:, 1], boxes[:, 3], h, padding)
    cols = torch.arange(w, dtype=masks.dtype)[None, :, None]
    rows = torch.arange(h, dtype=masks.dtype)[:, None, None]
    inside = (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
    return masks * inside


def _reference_assemble(det, height, width) -> post.InstanceResult:
    if len(det) == 0:
        return post.InstanceResult(np.zeros((0, 4), np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                                   np.zeros((0, height, width), bool))
    masks = torch.sigmoid(det.prototypes @ det.coefs.t())
    masks = _reference_crop_masks(masks, det.boxes).permute(2, 0, 1).contiguous()
    masks = F.interpolate(masks[None], (height, width), mode="bilinear", align_corners=False)[0]
    x1, x2 = _reference_sanitize(det.boxes[:, 0], det.boxes[:, 2], width)
    y1, y2 = _reference_sanitize(det.boxes[:, 1], det.boxes[:, 3], height)
    boxes = torch.stack([x1, y1, x2, y2], 1).long()
    return post.InstanceResult(boxes.numpy(), det.classes.numpy(), det.scores.numpy(),
                               (masks > post.MASK_THRESHOLD).numpy())


_REFERENCE_MEAN_BGR = np.array([103.94, 116.78, 123.68], dtype=np.float32)
_REFERENCE_STD_BGR = np.array([57.38, 57.12, 58.40], dtype=np.float32)


def _reference_preprocess(image_bgr: np.ndarray, size: int = 550) -> np.ndarray:
    import cv2

    resized = cv2.resize(image_bgr.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    normalised = (resized - _REFERENCE_MEAN_BGR) / _REFERENCE_STD_BGR
    return np.ascontiguousarray(normalised[:, :, ::-1].transpose(2, 0, 1))


# ---------------------------------------------------------------------------------------
# Helpers


def _assert_identical(actual, expected, what: str) -> None:
    """Same dtype, shape and bits (NaN payloads and signed zeros included)."""
    actual, expected = (t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in (actual, expected))
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if actual.dtype.kind == "f":
        actual, expected = actual.view(f"u{actual.itemsize}"), expected.view(f"u{expected.itemsize}")
    differ = int((actual != expected).sum())
    assert differ == 0, f"{what}: {differ} of {actual.size} elements differ"


def _assert_same_detections(actual: post.Detections, expected: post.Detections) -> None:
    for name in ("boxes", "classes", "scores", "coefs", "prototypes"):
        _assert_identical(getattr(actual, name), getattr(expected, name), name)


def _assert_same_results(actual: post.InstanceResult, expected: post.InstanceResult) -> None:
    for name in ("boxes", "classes", "scores", "masks"):
        _assert_identical(getattr(actual, name), getattr(expected, name), name)


class _Spy:
    """Counts the calls of a function while delegating to it."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture
def sorting_all(monkeypatch):
    """Spy on fast NMS's exact fallback (sorting every candidate score)."""
    from zoobook.ops import nms

    spy = _Spy(nms._fast_nms_best_sorting_all)
    monkeypatch.setattr(nms, "_fast_nms_best_sorting_all", spy)
    return spy


@pytest.fixture
def torch_upsampling(monkeypatch):
    """Spy on the mask path that upsamples whole images in torch."""
    spy = _Spy(post.crop_masks)
    monkeypatch.setattr(post, "crop_masks", spy)
    return spy


# ---------------------------------------------------------------------------------------
# Detection: decoding, fast NMS, the best 100


def _random_priors(g: torch.Generator, count: int) -> torch.Tensor:
    centres = torch.rand(count, 2, generator=g)
    sizes = 0.02 + 0.5 * torch.rand(count, 1, generator=g) ** 2
    return torch.cat([centres, sizes, sizes], 1)


def _graph_head(kind: str, seed: int, count: int = 3000):
    """Synthetic (loc, conf_logits, coefs, prototypes, priors) of one image; ``kind`` picks the
    score pattern."""
    g = torch.Generator().manual_seed(seed)
    priors = _random_priors(g, count)
    loc = 0.5 * torch.randn(count, 4, generator=g)
    conf = 2.0 * torch.randn(count, 81, generator=g)  # "clutter": nearly every prior a candidate
    if kind in ("objects", "crowded", "few", "none"):
        conf[:, 0] += 9.0  # background everywhere, then a few objects
        centres = torch.rand(12, 2, generator=g)
        for i, centre in enumerate(centres):
            near = ((priors[:, :2] - centre).abs().max(1).values < 0.08).nonzero()[:, 0]
            cls = 1 + int(torch.randint(0, 80, (1,), generator=g)) if i else 1
            conf[near, cls] += 9.0 + 3.0 * torch.rand(len(near), generator=g)
            priors[near, :2] = centre + 0.01 * torch.randn(len(near), 2, generator=g)
    if kind == "crowded":  # one class far above 200 candidates, spread out and overlapping
        conf[: count // 2, 7] += 9.0 + 2.0 * torch.rand(count // 2, generator=g)
    if kind == "saturated":  # scores of exactly 1.0 in overlapping boxes of one object
        conf[:40, 12] += 60.0
        priors[:40] = torch.tensor([0.5, 0.5, 0.3, 0.3]) + 0.01 * torch.rand(40, 4, generator=g)
    if kind == "few":  # one candidate: one detection per class, 80 in all
        conf[:, 0] += 30.0
        conf[:1, 5] += 45.0
    if kind == "none":
        conf[:, 0] += 30.0
    if kind == "quantised":  # equal logits within rows
        conf = (conf * 2).round() / 2
    if kind == "duplicated":  # a third of the priors score exactly like another: ties in every class
        source = torch.randint(0, count, (count // 3,), generator=g)
        conf[torch.randperm(count, generator=g)[: count // 3]] = conf[source]
    if kind == "low ties":  # ties only far below the 100 best
        low = conf[:, 1:] < 0
        conf[:, 1:][low] = -4.0
    if kind == "nan":
        conf[::97] = float("nan")
        loc[5::89, 2:] = float("inf")
    coefs = torch.randn(count, 32, generator=g)
    prototypes = torch.rand(138, 138, 32, generator=g)
    return loc, conf, coefs, prototypes, priors


@pytest.mark.parametrize("kind", ["clutter", "objects", "crowded", "saturated", "few", "none", "quantised",
                                  "duplicated", "low ties", "nan"])
@pytest.mark.parametrize("seed", [0, 1])
def test_detect_matches_reference(kind, seed, sorting_all):
    loc, conf, coefs, prototypes, priors = _graph_head(kind, seed)
    det = post.detect(loc, conf, coefs, prototypes, priors)
    _assert_same_detections(det, _reference_detect(loc, conf, coefs, prototypes, priors))
    assert len(det) == {"few": 80, "none": 0}.get(kind, 100)
    if kind == "saturated":
        assert int((F.softmax(conf, -1)[:, 12] == 1).sum()) > 1, "the scenario lost its ties"
    if kind in ("clutter", "objects", "crowded", "saturated", "low ties", "nan"):
        assert sorting_all.calls == 0, "the fast path should have decided these"


def test_detect_full_prior_set_matches_reference(recipe_model, golden_outputs):
    """The real 19248 priors and the recipe weights: 100 detections, no tie."""
    with torch.inference_mode():
        loc, conf, coefs = (t[0] for t in recipe_model.head([torch.from_numpy(o) for o in golden_outputs[1][:5]]))
    prototypes = torch.from_numpy(golden_outputs[1][5][0])
    det = post.detect(loc, conf, coefs, prototypes)
    assert len(det) == 100
    _assert_same_detections(det, _reference_detect(loc, conf, coefs, prototypes))


@pytest.mark.parametrize("seed", range(6))
def test_fast_nms_best_matches_fast_nms_and_global_sort(seed):
    """Random classes x boxes, with and without a score threshold, quantised scores included."""
    from zoobook.ops.nms import fast_nms_best

    g = torch.Generator().manual_seed(seed)
    classes, count = (3, 80, 5, 40, 80, 2)[seed], (500, 900, 60, 2000, 1000, 3000)[seed]
    corner = torch.rand(count, 2, generator=g)
    boxes = torch.cat([corner, corner + 0.3 * torch.rand(count, 2, generator=g)], 1)
    scores = torch.rand(classes, count, generator=g) ** 3
    if seed in (1, 4):
        scores = (scores * 64).round() / 64
    threshold = None if seed % 2 else 0.05
    kept = scores.amax(0) > threshold if threshold is not None else torch.ones(count, dtype=torch.bool)
    index, cls, score = _reference_fast_nms(boxes[kept], scores[:, kept], iou_threshold=0.5, top_k=200)
    best = score.argsort(descending=True)[:100]
    expected = (kept.nonzero()[:, 0][index[best]], cls[best], score[best])
    actual = fast_nms_best(boxes, scores, score_threshold=threshold, iou_threshold=0.5, top_k=200, max_detections=100)
    for a, e, name in zip(actual, expected, ("box index", "class", "score")):
        _assert_identical(a, e, name)


# ---------------------------------------------------------------------------------------
# Masks: crop, upsample, threshold


def _boxes(g: torch.Generator, n: int) -> torch.Tensor:
    """Relative x1y1x2y2 boxes: ordinary, over the border, tiny, inverted, empty, outside."""
    corner = 1.4 * torch.rand(n, 2, generator=g) - 0.2
    boxes = torch.cat([corner, corner + 0.6 * torch.rand(n, 2, generator=g) ** 2], 1)
    boxes[0::7, 2:] = boxes[0::7, :2] + 0.002  # tiny
    boxes[1::7] = boxes[1::7][:, [2, 3, 0, 1]]  # x1 > x2, y1 > y2
    boxes[2::7, 2] = boxes[2::7, 0]  # no width
    boxes[3::7] = torch.tensor([-0.3, -0.2, 1.3, 1.1])  # the whole image and more
    boxes[4::7, :2] += 1.5  # outside
    boxes[5::7] = torch.tensor([0.0, 0.0, 0.004, 1.0])  # along the left edge
    return boxes


def _detections(seed: int, n: int, sharpness: float = 3.0) -> post.Detections:
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(138, 138, 32, generator=g).clamp(min=0)  # ReLU'd, as the protonet's
    coefs = sharpness * torch.randn(n, 32, generator=g) / 32 ** 0.5
    if sharpness == 0:  # every mask exactly 0.5 before upsampling
        coefs.zero_()
    scores = torch.rand(n, generator=g).sort(descending=True).values
    return post.Detections(_boxes(g, n), torch.randint(0, 80, (n,), generator=g), scores, coefs, prototypes)


MASK_CASES = [  # (height, width, detections, sharpness)
    (480, 854, 60, 3.0),  # the tennis frames
    (854, 480, 30, 3.0),  # portrait
    (427, 640, 40, 1e-5),  # values within 1e-5 of 0.5 everywhere: torch's rounding decides
    (333, 500, 20, 0.0),  # exactly 0.5 before upsampling
    (138, 138, 20, 3.0),  # no resampling
    (100, 90, 30, 3.0),  # smaller than the prototypes
    (1, 300, 20, 3.0),
    (257, 1, 20, 3.0),
    (139, 137, 20, 3.0),
    (60, 50, 20, 3.0),  # height + width <= 128: torch's other kernel, upsampled whole
    (1000, 777, 8, 3.0),
    (480, 854, 1, 3.0),
    (480, 854, 2, 1e-6),
    (480, 854, 3, 1e-6),  # 3 channels: torch's channels-last kernel on one thread, upsampled whole
    (82, 123, 4, 1e-6),
]


@pytest.mark.parametrize("height, width, n, sharpness", MASK_CASES)
def test_assemble_matches_reference(height, width, n, sharpness, torch_upsampling):
    det = _detections(seed=height + width, n=n, sharpness=sharpness)
    _assert_same_results(post.assemble(det, height, width), _reference_assemble(det, height, width))
    whole_image = height + width <= 128 or n == 3 or post._bilinear_arithmetic() is None
    assert torch_upsampling.calls == int(whole_image)


@pytest.mark.parametrize("height, width, n, sharpness", [(480, 854, 30, 3.0), (480, 854, 3, 3.0), (97, 60, 5, 1e-6)])
def test_assemble_matches_reference_on_one_thread(height, width, n, sharpness):
    """As benchmarked: torch picks its kernels by thread count too (3 channels on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        det = _detections(seed=height * width, n=n, sharpness=sharpness)
        _assert_same_results(post.assemble(det, height, width), _reference_assemble(det, height, width))
    finally:
        torch.set_num_threads(threads)


def test_assemble_empty_and_not_finite(torch_upsampling):
    det = _detections(seed=3, n=12)
    empty = post.Detections(det.boxes[:0], det.classes[:0], det.scores[:0], det.coefs[:0], det.prototypes)
    _assert_same_results(post.assemble(empty, 480, 854), _reference_assemble(empty, 480, 854))
    det.boxes[3], det.boxes[6, 2], det.boxes[8, 0] = float("nan"), float("inf"), -float("inf")
    _assert_same_results(post.assemble(det, 480, 854), _reference_assemble(det, 480, 854))
    assert torch_upsampling.calls == 0
    det.coefs[4, 3] = float("nan")  # one NaN mask: torch upsamples the image, NaN stays False
    _assert_same_results(post.assemble(det, 480, 854), _reference_assemble(det, 480, 854))
    assert torch_upsampling.calls == 1


def test_bilinear_arithmetic_is_torchs():
    """The fast mask path's float32 sequence reproduces F.interpolate bit for bit, on sizes the
    probe did not see (up, down, mixed, unchanged, odd)."""
    fused = post._bilinear_arithmetic()
    if fused is None:
        pytest.skip("torch's bilinear arithmetic is neither fused nor plain here: masks use torch's whole-image path")
    planes = np.random.default_rng(7).random((4, 138, 138), dtype=np.float32)
    for size in [(480, 854), (77, 913), (138, 131), (1, 200), (301, 138), (129, 1)]:
        expected = F.interpolate(torch.from_numpy(planes)[None], size, mode="bilinear", align_corners=False)[0]
        _assert_identical(post._bilinear_full(planes, size, fused), expected, f"upsampled to {size}")


def test_fma_rounds_once():
    """The emulated fused multiply-add is correctly rounded, including where rounding through
    float64 would land on a float32 tie: 1 + 2**-24 + 2**-54 must round up to 1 + 2**-23."""
    from fractions import Fraction

    a = np.array([812825 * 2.0 ** -20], np.float32)  # a * b = 2**-24 * (1 + 2**-30)
    b = np.array([1321 * 2.0 ** -34], np.float32)
    one = np.ones(1, np.float32)
    assert post._fma(a, b, one)[0] == np.float32(1 + 2.0 ** -23)
    assert post._fma(-a, b, -one)[0] == np.float32(-1 - 2.0 ** -23)
    c = np.array([21483 * 2.0 ** -20], np.float32)  # c * d = 2**-24 * (1 - 2**-30): below the tie
    d = np.array([49981 * 2.0 ** -34], np.float32)
    assert post._fma(c, d, one)[0] == np.float32(1)

    rng = np.random.default_rng(0)
    x, y, z = (rng.standard_normal(3000).astype(np.float32) * np.float32(2) ** rng.integers(-30, 30, 3000)
               for _ in range(3))
    for got, xi, yi, zi in zip(post._fma(x, y, z), x, y, z):
        exact = Fraction(float(xi)) * Fraction(float(yi)) + Fraction(float(zi))
        below = np.float32(float(exact))
        candidates = [np.nextafter(below, np.float32(-np.inf)), below, np.nextafter(below, np.float32(np.inf))]
        distance = [abs(Fraction(float(c)) - exact) for c in candidates]
        best = min(distance)
        nearest = [c for c, d in zip(candidates, distance) if d == best]
        assert got in nearest and (len(nearest) == 1 or got.view(np.int32) % 2 == 0), (xi, yi, zi)


# ---------------------------------------------------------------------------------------
# Preprocessing, the whole host side, the step timer


@pytest.mark.parametrize("shape", [(480, 854, 3), (427, 640, 3), (550, 550, 3), (37, 1203, 3), (1, 1, 3)])
def test_preprocess_matches_reference(shape):
    from zoobook.models.yolact_edge.preprocess import preprocess

    image = np.random.default_rng(shape[0]).integers(0, 256, shape, dtype=np.uint8)
    out = preprocess(image)
    _assert_identical(out, _reference_preprocess(image), "input tensor")
    assert out.flags.c_contiguous


def test_postprocess_matches_reference_and_times_its_steps(recipe_model, golden_outputs, golden, golden_image_path):
    from zoobook.models.yolact_edge.preprocess import preprocess, read_bgr
    from zoobook.timing import recording

    h, w = (int(v) for v in golden["image_hw"])
    with recording() as clock:
        _assert_identical(preprocess(read_bgr(golden_image_path)), _reference_preprocess(read_bgr(golden_image_path)),
                          "input tensor")
        result = post.postprocess(recipe_model.head, golden_outputs[1], [(h, w)])[0]
    assert set(clock.ms) == {"preprocess", "head", "decode", "nms", "masks"}
    tensors = [torch.from_numpy(o) for o in golden_outputs[1]]
    with torch.no_grad():
        loc, conf, coefs = recipe_model.head(tensors[:5])
        det = _reference_detect(loc[0], conf[0], coefs[0], tensors[5][0])
    _assert_same_results(result, _reference_assemble(det, h, w))
