"""YolactEdge against the reference's golden vectors (recipe weights; see tests/golden/)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zoobook.models.yolact_edge import postprocess as post
from zoobook.ops.boxes import decode_ssd

from .conftest import GOLDEN
from .tolerances import assert_close_to_scale

# Tolerance for the six port outputs, from the golden README: |a - b| <= 2e-3 + 1e-4 |b|
ATOL, RTOL = 2e-3, 1e-4
# Downstream of the network (channel means, head outputs, sigmoid masks), float32 noise from
# another CPU or thread count is a fraction of each tensor's peak: the README saw up to 7.4e-5
# of the peak between two correct backends, a wrong detail moves outputs by 1e-2 or more.
MEAN_REL, HEAD_REL = 1e-4, 5e-4
# Scores are softmax probabilities (slope at most 1/4) of logits that moved by up to 2.9e-4 on
# another CPU: 1e-4 holds them; the README's order-swapping near-tie is 2.2e-6.
SCORE_ATOL = 1e-4


def test_preprocessing_matches_reference(golden_outputs, golden):
    x, _ = golden_outputs
    np.testing.assert_allclose(x[0, :, ::11, ::11], golden["input_sub"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", range(6))
def test_port_outputs_match_golden(golden_outputs, golden, k):
    out = golden_outputs[1][k]
    step = int(golden[f"output{k}_step"])
    sub = out[..., ::step] if k == 5 else out[:, ::step]
    ref = golden[f"output{k}_sub"]
    assert sub.shape == ref.shape
    assert np.all(np.abs(sub - ref) <= ATOL + RTOL * np.abs(ref)), f"output{k}: max diff {np.abs(sub - ref).max()}"
    means = out.astype(np.float64).mean(axis=(0, 1, 2) if k == 5 else (0, 2, 3))
    assert_close_to_scale(means, golden[f"output{k}_channel_mean"], MEAN_REL, f"output{k} channel means",
                          scale=float(np.abs(ref).max()))


def test_port_output_shapes(golden_outputs):
    shapes = [o.shape for o in golden_outputs[1]]
    assert shapes == [(1, 256, 69, 69), (1, 256, 35, 35), (1, 256, 18, 18), (1, 256, 9, 9), (1, 256, 5, 5),
                      (1, 138, 138, 32)]


def test_priors_and_decoding(golden):
    priors = post.make_priors()
    np.testing.assert_array_equal(priors.numpy(), golden["priors"])
    decoded = decode_ssd(torch.from_numpy(golden["loc"]), priors)
    np.testing.assert_allclose(decoded.numpy(), golden["decoded_boxes"], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def heads(recipe_model, golden_outputs):
    with torch.inference_mode():
        return recipe_model.head([torch.from_numpy(o) for o in golden_outputs[1][:5]])


def test_head_outputs(heads, golden):
    loc, conf, coef = (h[0].numpy() for h in heads)
    step = int(golden["prior_step"])
    assert_close_to_scale(loc, golden["loc"], HEAD_REL, "loc")
    assert_close_to_scale(conf[::step], golden["conf_logits_sub"], HEAD_REL, "class logits")
    assert_close_to_scale(coef[::step], golden["mask_coeffs_sub"], HEAD_REL, "mask coefficients")


def _match_to_reference(det, golden) -> np.ndarray:
    """For each of our detections, the index of the reference's with the same class and the
    nearest box: near-tied scores may order the two lists differently."""
    boxes, ref_boxes = det.boxes.numpy(), golden["det_boxes_rel"]
    distance = np.abs(boxes[:, None] - ref_boxes[None]).max(-1)
    distance[det.classes.numpy()[:, None] != golden["det_classes"][None]] = np.inf
    match = distance.argmin(1)
    assert len(set(match.tolist())) == len(match) and np.isfinite(distance.min(1)).all()
    return match


def test_fast_nms_detections_match(heads, golden_outputs, golden):
    loc, conf, coef = (h[0] for h in heads)
    det = post.detect(loc, conf, coef, torch.from_numpy(golden_outputs[1][5][0]))
    assert len(det) == 100
    # same (class, box, score) set; one adjacent score pair is 2.2e-6 apart and may swap
    ours = sorted(zip(det.classes.tolist(), det.scores.tolist()))
    ref = sorted(zip(golden["det_classes"].tolist(), golden["det_scores"].tolist()))
    assert [c for c, _ in ours] == [c for c, _ in ref]
    np.testing.assert_allclose([s for _, s in ours], [s for _, s in ref], atol=SCORE_ATOL)
    match = _match_to_reference(det, golden)
    np.testing.assert_allclose(det.boxes.numpy(), golden["det_boxes_rel"][match], atol=1e-5)
    cropped = post.crop_masks(torch.sigmoid(det.prototypes @ det.coefs.t()), det.boxes).permute(2, 0, 1).numpy()
    first = [int(np.flatnonzero(match == k)[0]) for k in range(10)]
    assert_close_to_scale(cropped[first], golden["masks138_cropped_first10"], HEAD_REL, "cropped masks", scale=1.0)
    # a sum over a box averages the pixels' noise: 1e-3 of each sum
    np.testing.assert_allclose(cropped.sum(axis=(1, 2)), golden["masks138_cropped_sums"][match], rtol=1e-3)


def _same_detections(result, golden) -> np.ndarray:
    """The reference index of each final detection, matched by class and box; only near-tied
    scores (within SCORE_ATOL) may come in another order."""
    ref = {(int(c), tuple(b)): j for j, (c, b) in enumerate(zip(golden["pp_classes"], golden["pp_boxes_xyxy"].tolist()))}
    perm = np.array([ref[(int(c), tuple(b))] for c, b in zip(result.classes, np.asarray(result.boxes).tolist())])
    assert sorted(perm.tolist()) == list(range(len(golden["pp_classes"])))
    moved = np.flatnonzero(perm != np.arange(len(perm)))
    assert np.all(np.abs(golden["pp_scores"][moved] - golden["pp_scores"][perm[moved]]) <= SCORE_ATOL)
    return perm


def test_final_results_and_coco_json(recipe_model, golden_outputs, golden):
    from zoobook.metrics.coco import to_coco_results

    h, w = golden["image_hw"]
    result = post.postprocess(recipe_model.head, golden_outputs[1], [(int(h), int(w))])[0]
    perm = _same_detections(result, golden)
    np.testing.assert_allclose(result.scores, golden["pp_scores"][perm], atol=SCORE_ATOL)
    masks = np.unpackbits(golden["pp_masks_packed"], axis=-1, count=int(w)).astype(bool)[perm]
    differing = (result.masks != masks).sum()
    assert differing <= 10, f"{differing} mask pixels differ (reference saw 2 of 27.3 M between backends)"
    boxes, segms = to_coco_results(0, result)
    reference = json.loads((GOLDEN / "coco_results_example.json").read_text())
    assert [(r["category_id"], r["bbox"]) for r in boxes] == [(reference["bbox"][j]["category_id"],
                                                              reference["bbox"][j]["bbox"]) for j in perm]
    # the RLEs decode to our masks, and to the reference's up to the few pixels allowed above
    from pycocotools import mask as rle

    def decoded(entries):
        return np.stack([rle.decode({**e["segmentation"], "counts": e["segmentation"]["counts"].encode()})
                         for e in entries]).astype(bool)

    np.testing.assert_array_equal(decoded(segms), result.masks)
    assert (decoded(segms) != decoded([reference["segm"][j] for j in perm])).sum() <= 10
