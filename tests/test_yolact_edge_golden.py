"""YolactEdge against the reference's golden vectors (recipe weights; see tests/golden/)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zoobook.models.yolact_edge import postprocess as post
from zoobook.ops.boxes import decode_ssd

from .conftest import GOLDEN

# Tolerance for the six port outputs, from the golden README: |a - b| <= 2e-3 + 1e-4 |b|
ATOL, RTOL = 2e-3, 1e-4


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
    np.testing.assert_allclose(means, golden[f"output{k}_channel_mean"], atol=1e-4, rtol=1e-4)


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
    np.testing.assert_allclose(loc, golden["loc"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(conf[::step], golden["conf_logits_sub"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(coef[::step], golden["mask_coeffs_sub"], atol=1e-4, rtol=1e-4)


def test_fast_nms_detections_match(heads, golden_outputs, golden):
    loc, conf, coef = (h[0] for h in heads)
    det = post.detect(loc, conf, coef, torch.from_numpy(golden_outputs[1][5][0]))
    assert len(det) == 100
    # same (class, box, score) set; one adjacent score pair is 2.2e-6 apart and may swap
    ours = sorted(zip(det.classes.tolist(), det.scores.tolist()))
    ref = sorted(zip(golden["det_classes"].tolist(), golden["det_scores"].tolist()))
    assert [c for c, _ in ours] == [c for c, _ in ref]
    np.testing.assert_allclose([s for _, s in ours], [s for _, s in ref], atol=5e-5)
    order = np.lexsort((det.scores.numpy(), det.classes.numpy()))
    ref_order = np.lexsort((golden["det_scores"], golden["det_classes"]))
    np.testing.assert_allclose(det.boxes.numpy()[order], golden["det_boxes_rel"][ref_order], atol=1e-5)
    cropped = post.crop_masks(torch.sigmoid(det.prototypes @ det.coefs.t()), det.boxes).permute(2, 0, 1).numpy()
    np.testing.assert_allclose(cropped[:10], golden["masks138_cropped_first10"], atol=1e-5)
    np.testing.assert_allclose(cropped.sum(axis=(1, 2)), golden["masks138_cropped_sums"], rtol=1e-4)


def test_final_results_and_coco_json(recipe_model, golden_outputs, golden):
    from zoobook.metrics.coco import to_coco_results

    h, w = golden["image_hw"]
    result = post.postprocess(recipe_model.head, golden_outputs[1], [(int(h), int(w))])[0]
    np.testing.assert_array_equal(result.classes, golden["pp_classes"])
    np.testing.assert_allclose(result.scores, golden["pp_scores"], atol=5e-5)
    np.testing.assert_array_equal(result.boxes, golden["pp_boxes_xyxy"])
    masks = np.unpackbits(golden["pp_masks_packed"], axis=-1, count=int(w)).astype(bool)
    differing = (result.masks != masks).sum()
    assert differing <= 10, f"{differing} mask pixels differ (reference saw 2 of 27.3 M between backends)"
    boxes, segms = to_coco_results(0, result)
    reference = json.loads((GOLDEN / "coco_results_example.json").read_text())
    assert [(r["category_id"], r["bbox"]) for r in boxes] == [(r["category_id"], r["bbox"]) for r in reference["bbox"]]
    assert [r["segmentation"]["counts"] for r in segms] == [r["segmentation"]["counts"] for r in reference["segm"]]
