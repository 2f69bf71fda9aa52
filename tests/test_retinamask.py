"""RetinaMask against the reference's golden vectors (tests/golden/retinamask, trimmed from
shared/reference/retinamask/golden by tests/golden/trim_retinamask.py), strict loading,
RoIAlign against ONNX Runtime, NMS and the port's post-processing on hand-made cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zoobook.checkpoints import CheckpointError
from zoobook.models.retinamask import postprocess as pp
from zoobook.models.retinamask.checkpoint import build, recipe_state_dict
from zoobook.models.retinamask.network import STRIDES, SIZES, legacy_cell_anchors, mask_levels
from zoobook.ops.roi_align import roi_align

GOLDEN = Path(__file__).parent / "golden" / "retinamask"


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN / "golden_trimmed.npz"))


@pytest.fixture(scope="module")
def recipe():
    return recipe_state_dict()


@pytest.fixture(scope="module")
def model():
    return build()[0]


@pytest.fixture(scope="module")
def outputs(model, golden):
    with torch.no_grad():
        x = torch.from_numpy(golden["input_tensor"])
        features, logits, deltas = model(x)
        body = model.backbone.body(x)
    return {"body": body, "features": features, "logits": logits, "deltas": deltas,
            "anchors": model.anchors(features)}


def _sorted(boxes, scores, labels):
    return np.lexsort((boxes[:, 1], boxes[:, 0], labels, -scores))


@pytest.fixture(scope="module")
def detections(model, golden, outputs):
    hw = tuple(int(v) for v in golden["image_size_hw"])
    with torch.no_grad():
        det = pp.original_detections(outputs["logits"], outputs["deltas"], outputs["anchors"], hw)
        order = torch.from_numpy(_sorted(det["boxes"].numpy(), det["scores"].numpy(), det["labels"].numpy()))
        boxes, labels = det["boxes"][order], det["labels"][order]
        probs = model.mask_probabilities(outputs["features"], boxes, labels)
    return {**det, "sorted_boxes": boxes, "sorted_labels": labels, "probs": probs, "hw": hw}


def test_recipe_matches_checksums(recipe):
    checksums = json.loads((GOLDEN / "weights_checksums.json").read_text())
    assert len(recipe) == len(checksums) == 318
    for key, expected in checksums.items():
        value = recipe[key].double()
        assert float(value.sum()) == pytest.approx(expected["sum"], rel=1e-9, abs=1e-9), key
        assert value.flatten()[:4].tolist() == pytest.approx(expected["first4"], rel=0, abs=0), key


def test_legacy_cell_anchors_equal_the_checkpoint_buffers(recipe):
    for level, (stride, size) in enumerate(zip(STRIDES, SIZES)):
        np.testing.assert_array_equal(legacy_cell_anchors(stride, size), recipe[f"rpn.anchor_generator.cell_anchors.{level}"])
    assert legacy_cell_anchors(8, 32)[3].tolist() == [-12, -12, 19, 19]  # the ratio-1 box of P3


@pytest.mark.parametrize("name", ["body_C3", "body_C4", "body_C5", "fpn_P3", "fpn_P4", "fpn_P5", "fpn_P6", "fpn_P7",
                                  "head_cls_logits_P3", "head_cls_logits_P5", "head_cls_logits_P7"])
def test_features_and_logits(outputs, golden, name):
    kind, level = name.rsplit("_", 1)
    index = int(level[1]) - 3
    value = {"body": outputs["body"], "fpn": outputs["features"], "head_cls_logits": outputs["logits"]}[kind][index]
    step = int(golden[f"{name}_step"])
    ref = golden[f"{name}_sub"]
    np.testing.assert_allclose(value[:, ::step].numpy(), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    means = value.double().mean(dim=(0, 2, 3)).numpy()
    np.testing.assert_allclose(means, golden[f"{name}_channel_mean"], rtol=0, atol=1e-5 * np.abs(ref).max())


def test_box_deltas_and_anchors(outputs, golden):
    for level in range(5):
        ref = golden[f"head_bbox_pred_P{level + 3}"]
        np.testing.assert_allclose(outputs["deltas"][level].numpy(), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
        np.testing.assert_array_equal(outputs["anchors"][level].numpy(), golden[f"anchors_P{level + 3}"])


@pytest.mark.parametrize("stage", ["post_nms", "final"])
def test_detections_as_sorted_sets(detections, golden, stage):
    key = "post_nms_" if stage == "post_nms" else ""
    boxes, scores, labels = (detections[key + k].numpy() for k in ("boxes", "scores", "labels"))
    order = _sorted(boxes, scores, labels)
    assert len(scores) == len(golden[f"{stage}_scores"]) == (100 if stage == "post_nms" else 50)
    np.testing.assert_array_equal(labels[order], golden[f"{stage}_labels"])
    np.testing.assert_allclose(scores[order], golden[f"{stage}_scores"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(boxes[order], golden[f"{stage}_boxes_xyxy"], rtol=0, atol=1e-3)


def test_masks_levels_paste_and_coco_boxes(model, detections, golden, outputs):
    np.testing.assert_allclose(detections["probs"].numpy(), golden["final_mask_prob"], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(mask_levels(detections["sorted_boxes"]).numpy(), golden["final_mask_pool_level"])
    with torch.no_grad():
        pooled = model.pool(outputs["features"], detections["sorted_boxes"][:2])
        static = model.mask_probabilities(outputs["features"], detections["sorted_boxes"], detections["sorted_labels"],
                                          static=True)
    step = int(golden["final_mask_pooled_first2_step"])
    np.testing.assert_allclose(pooled[:, ::step].numpy(), golden["final_mask_pooled_first2_sub"], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(static.numpy(), detections["probs"].numpy())  # the port's pooling, same values
    pasted = np.stack([pp.paste_original(p[0].numpy(), b.numpy(), detections["hw"])
                       for p, b in zip(detections["probs"], detections["sorted_boxes"])])
    shape = golden["final_masks_pasted_shape"]
    expected = np.unpackbits(golden["final_masks_pasted_packed"], axis=-1, count=int(shape[-1])).astype(bool)
    assert (pasted != expected).sum() <= 0.001 * expected.sum()
    np.testing.assert_allclose(pp.coco_xywh(detections["sorted_boxes"].numpy(), plus_one=True),
                               golden["final_boxes_coco_xywh"], rtol=0, atol=1e-3)


def test_mask_head_unit_boxes(model, outputs, golden):
    """Boxes on P3/P4/P5, far outside the map, sub-pixel, and at the 224-px level boundary."""
    boxes, labels = torch.from_numpy(golden["unit_boxes_xyxy"]), torch.from_numpy(golden["unit_labels"])
    np.testing.assert_array_equal(mask_levels(boxes).numpy(), golden["unit_pool_level"])
    with torch.no_grad():
        pooled = model.pool(outputs["features"], boxes)
        logits = model.mask_logits(pooled[:1])
        probs = model.mask_probabilities(outputs["features"], boxes, labels)
    step = int(golden["unit_pooled_step"])
    np.testing.assert_allclose(pooled[:, ::step].numpy(), golden["unit_pooled_sub"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(logits.numpy(), golden["unit_mask_logits_all_classes_first"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(probs.numpy(), golden["unit_mask_prob"], rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------
# Loading


def test_checkpoint_layouts_load_and_bad_keys_are_listed(tmp_path, recipe):
    wrapped = {"model": {f"module.{k}": v.half() if v.is_floating_point() else v for k, v in recipe.items()},
               "iteration": torch.tensor(20001)}
    path = tmp_path / "ckpt.pth"
    torch.save(wrapped, path)
    model, provenance = build(path)
    assert provenance["kind"] == "checkpoint" and model.rpn.head.cls_logits.weight.dtype == torch.float32
    assert torch.equal(model.rpn.head.cls_logits.weight, recipe["rpn.head.cls_logits.weight"].half().float())
    broken = dict(recipe)
    del broken["rpn.anchor_generator.cell_anchors.2"]
    broken["roi_heads.mask.predictor.mask_fcn_logits.weight"] = broken.pop("mask.predictor.mask_fcn_logits.weight")
    broken["rpn.head.bbox_pred.bias"] = torch.zeros(4)
    torch.save({"model": broken}, path)
    with pytest.raises(CheckpointError) as err:
        build(path)
    message = str(err.value)
    assert "missing keys: " in message and "rpn.anchor_generator.cell_anchors.2" in message
    assert "unexpected keys: roi_heads.mask.predictor.mask_fcn_logits.weight" in message
    assert "rpn.head.bbox_pred.bias: file (4,) vs model (36,)" in message


# ---------------------------------------------------------------------------------------
# RoIAlign and NMS


def _ort_roi_align(features, rois, opset):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    attrs = {"mode": "avg", "output_height": 14, "output_width": 14, "sampling_ratio": 2, "spatial_scale": 0.125}
    if opset >= 16:
        attrs["coordinate_transformation_mode"] = "output_half_pixel"
    node = helper.make_node("RoiAlign", ["x", "rois", "idx"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(features.shape)),
                                            helper.make_tensor_value_info("rois", TensorProto.FLOAT, [None, 4]),
                                            helper.make_tensor_value_info("idx", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": features, "rois": rois, "idx": np.zeros(len(rois), np.int64)})[0]


@pytest.mark.parametrize("opset", [11, 16])
def test_roi_align_matches_onnx_runtime(opset):
    rng = np.random.RandomState(0)
    features = rng.standard_normal((1, 8, 20, 24)).astype(np.float32)
    rois = np.array([[10, 20, 90, 140],       # inside
                     [-60, -40, 250, 220],    # reaching far outside the map
                     [-300, -300, -200, -250],  # entirely outside: zeros
                     [50.3, 40.7, 50.6, 41.0],  # sub-pixel
                     [185, 150, 191.9, 159.9],  # at the bottom-right border
                     [0.5, 0.25, 33.75, 17.5]], dtype=np.float32)
    ours = roi_align(torch.from_numpy(features), torch.from_numpy(rois), torch.zeros(len(rois)), 14, 0.125, 2).numpy()
    np.testing.assert_allclose(ours, _ort_roi_align(features, rois, opset), rtol=0, atol=1e-5)
    assert not ours[2].any()


def test_legacy_nms_conventions():
    # two 10x10 boxes (11x11 with +1) overlapping in 11x5 pixels: IoU = 55 / 187
    boxes = torch.tensor([[0, 0, 10, 10], [0, 6, 10, 16], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    iou = 55 / (2 * 121 - 55)
    assert float(pp.legacy_iou(boxes[:1], boxes[1:2])) == pytest.approx(iou)
    assert pp.legacy_nms(boxes, scores, iou - 1e-6).tolist() == [0, 2]
    equal = float(pp.legacy_iou(boxes[:1], boxes[1:2]))
    assert pp.legacy_nms(boxes, scores, equal).tolist() == [0, 2]  # the original: IoU >= thr suppresses
    assert pp.legacy_nms(boxes, scores, equal, suppress_equal=False).tolist() == [0, 1, 2]  # the port keeps it


def test_port_postprocess_on_a_hand_made_case():
    boxes = np.array([[100, 100, 300, 300], [110, 110, 310, 310], [100, 100, 300, 300], [600, 600, 700, 700]],
                     np.float32)
    labels = np.array([3, 3, 5, 3], np.int32)  # the same box under another class survives NMS
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    masks = np.ones((4, 1, 28, 28), np.float32)
    out = pp.port_postprocess(boxes, labels, scores, masks, ratio=2.0, image_hw=(320, 320))
    assert out["labels"].tolist() == [3, 5, 3] and out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6])
    np.testing.assert_array_equal(out["boxes"][0], [50, 50, 150, 150])
    np.testing.assert_array_equal(out["boxes"][2], [300, 300, 320, 320])  # clipped to W, H (not W - 1)
    assert out["masks"].shape == (3, 320, 320) and out["masks"][0, 100, 100] and not out["masks"][0, 200, 200]
    np.testing.assert_array_equal(pp.coco_xywh(out["boxes"][:1], plus_one=False), [[50, 50, 100, 100]])


def test_port_nms_visits_exact_ties_in_the_ports_order():
    """The port's np_nms orders boxes by ``np.argsort(scores)[::-1]``: exactly tied scores come
    in that (reversed) order, so of two overlapping boxes with the same score the port keeps
    the one that order puts first, not the first one in the list."""
    boxes = np.array([[100, 100, 300, 300], [110, 110, 310, 310]], np.float32)  # IoU 0.82 > 0.4
    scores = np.array([0.5, 0.5], np.float32)
    kept_by_port = int(np.argsort(scores)[::-1][0])
    if kept_by_port == 0:
        pytest.skip("this NumPy's argsort puts the tie the other way; the case cannot tell the orders apart")
    out = pp.port_postprocess(boxes, np.array([3, 3], np.int32), scores, np.ones((2, 1, 28, 28), np.float32),
                              ratio=1.0, image_hw=(400, 400))
    np.testing.assert_array_equal(out["boxes"], boxes[[kept_by_port]])


# ---------------------------------------------------------------------------------------
# The port's mask paste (tools/utils.py paste_mask_in_image @507c3754), boxes and input


def _checkerboard_resize(calls):
    """A stand-in for cv2.resize that records (src shape, dsize) and returns a [h, w]
    checkerboard, 1.0 where row + col is odd: the pasted pixels then show the resize size,
    the window and the offset into the resized map."""
    def resize(src, dsize, interpolation=None):
        calls.append((src.shape, src.dtype, dsize))
        w, h = dsize
        return (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(np.float32)
    return resize


# Image 40 x 60 (H x W). Each box is float32 xyxy. The port widens it by s = 30/28 about its
# centre: x1' = cx - (x2 - x1)/2 * s, x2' = cx + (x2 - x1)/2 * s (likewise y); the resize
# size is (round(x2' - x1' + 1), round(y2' - y1' + 1)) from the unrounded x1'..y2'; the
# window is [round(y1'), min(round(y2'), 40)) x [round(x1'), min(round(x2'), 60)), clipped
# at 0, and pixel (Y, X) takes the resized map at (Y - round(y1'), X - round(x1')).
# Python round is half to even. "old" is today's rounding of the corners first,
# size = round(x2') - round(x1') + 1.
PASTE_CASES = {
    # x: cx 20.5, half 10.1 * s = 10.8214 -> x1' 9.6786, x2' 31.3214, w = round(22.6429) = 23 (old 31 - 10 + 1 = 22)
    # y: cy 12.75, half 7.45 * s = 7.9821 -> y1' 4.7679, y2' 20.7321, h = round(16.9643) = 17
    "interior": ([10.4, 5.3, 30.6, 20.2], (23, 17), (10, 5, 31, 21)),
    # sub-pixel: x1' 20.1893, x2' 20.5107, w = round(1.3214) = 1 (old 21 - 20 + 1 = 2); y the same, 0.3 px
    "sub_pixel": ([20.2, 10.2, 20.5, 10.5], (1, 1), (20, 10, 21, 11)),
    # across the top-left border: x1' = 15.15 - 16.2321 = -1.0821 -> -1, x2' 31.3821 -> 31, w = round(33.4643) = 33;
    # y1' = 10.45 - 11.1964 = -0.7464 -> -1, y2' 21.6464 -> 22, h = round(23.3929) = 23 (old 22 + 1 + 1 = 24)
    "top_left": ([0.0, 0.0, 30.3, 20.9], (33, 23), (-1, -1, 31, 22)),
    # clipped to W, H as the port clips boxes: x1' 44.6714, x2' 60.5286 -> 61, window ends at min(61, 60);
    # w = round(16.8571) = 17; y1' 30.2643, y2' 40.3357 -> 40, h = round(11.0714) = 11
    "bottom_right": ([45.2, 30.6, 60.0, 40.0], (17, 11), (45, 30, 61, 40)),
    # the whole image: x1' -2.1429, x2' 62.1429, w = round(65.2857) = 65;
    # y1' -1.4286, y2' 41.4286, h = round(43.8571) = 44 (old 41 + 1 + 1 = 43)
    "whole_image": ([0.0, 0.0, 60.0, 40.0], (65, 44), (-2, -1, 62, 41)),
    # ties in float32: x1' is exactly 0.5 -> 0 and x2' exactly 3.5 -> 4 (half to even; float64 gives 0.50000002 -> 1);
    # y1' -0.05 -> 0, y2' 1.45 -> 1, and y2' - y1' + 1 is exactly 2.5 in float32 -> h = 2 (float64: 2.5000001 -> 3)
    "float32_ties": ([0.6, 0.0, 3.4, 1.4000001], (4, 2), (0, 0, 4, 1)),
}


@pytest.mark.parametrize("name", list(PASTE_CASES))
def test_paste_port_sizes_from_the_unrounded_box(monkeypatch, name):
    import cv2

    box, size, (x1, y1, x2, y2) = PASTE_CASES[name]
    calls = []
    monkeypatch.setattr(cv2, "resize", _checkerboard_resize(calls))
    pasted = pp.paste_port(np.full((1, 28, 28), 0.9, np.float32), np.array(box, np.float32), (40, 60))
    assert calls == [((30, 30), np.float32, size)]
    yy, xx = np.mgrid[:40, :60]
    window = (yy >= max(y1, 0)) & (yy < min(y2, 40)) & (xx >= max(x1, 0)) & (xx < min(x2, 60))
    np.testing.assert_array_equal(pasted, window & ((yy - y1 + xx - x1) % 2 == 1))


def _widened(boxes):
    """The port's 30/28 widening of float32 boxes [N, 4], in float32."""
    half = (boxes[:, 2:] - boxes[:, :2]) * np.float32(0.5) * np.float32(30 / 28)
    centre = (boxes[:, 2:] + boxes[:, :2]) * np.float32(0.5)
    return np.concatenate([centre - half, centre + half], axis=1)


def test_paste_port_on_the_golden_detections(monkeypatch, golden):
    """The golden's 50 final boxes have fractional corners: every resize size must be
    rint(x2' - x1' + 1) of the unrounded float32 widened box (np.rint: half to even, as
    Python round), the mask must be cv2's bilinear resize of the padded map to that size,
    thresholded, at the rint corners; and rounding the corners first changes many sizes."""
    import cv2

    boxes, probs = golden["final_boxes_xyxy"], golden["final_mask_prob"]
    height, width = (int(v) for v in golden["image_size_hw"])
    wide = _widened(boxes)
    sizes = np.rint(np.maximum(wide[:, 2:] - wide[:, :2] + 1, 1)).astype(int)
    corners = np.rint(wide).astype(int)
    assert (sizes != corners[:, 2:] - corners[:, :2] + 1).any(axis=1).sum() >= 20  # of 50
    pasted = np.stack([pp.paste_port(p, b, (height, width)) for p, b in zip(probs, boxes)])
    for mask, prob, (w, h), (x1, y1, x2, y2) in zip(pasted, probs, sizes, corners):
        resized = cv2.resize(np.pad(prob[0], 1), (int(w), int(h)), interpolation=cv2.INTER_LINEAR) > 0.5
        expected = np.zeros((height, width), bool)
        x0, y0, x_end, y_end = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        expected[y0:y_end, x0:x_end] = resized[y0 - y1:y_end - y1, x0 - x1:x_end - x1]
        np.testing.assert_array_equal(mask, expected)
    calls = []
    monkeypatch.setattr(cv2, "resize", _checkerboard_resize(calls))
    for prob, box in zip(probs, boxes):
        pp.paste_port(prob, box, (height, width))
    assert [c[2] for c in calls] == [tuple(int(v) for v in s) for s in sizes]


def test_port_boxes_turn_float64_when_nms_keeps_fewer_than_100():
    """The port pads to 100 with float64 zeros when NMS keeps fewer, so the kept boxes are
    divided by the ratio (and widened for the paste, and made xywh) in float64; with 100 or
    more kept they stay float32."""
    boxes = np.array([[100.3, 100.1, 300.7, 300.9], [600.2, 600.6, 700.4, 700.8]], np.float32)
    args = dict(labels=np.array([3, 3], np.int32), scores=np.array([0.9, 0.6], np.float32),
                masks=np.ones((2, 1, 28, 28), np.float32), ratio=1344 / 640, image_hw=(480, 640))
    few = pp.port_postprocess(boxes, **args)
    assert few["boxes"].dtype == np.float64
    np.testing.assert_array_equal(few["boxes"], boxes.astype(np.float64) / (1344 / 640))
    full = pp.port_postprocess(boxes, **args, keep=2)
    assert full["boxes"].dtype == np.float32
    np.testing.assert_array_equal(full["boxes"], boxes / np.float32(1344 / 640))
    assert (few["boxes"] != full["boxes"]).any()  # 1-ulp differences, as in the port
    xywh = pp.coco_xywh(few["boxes"], plus_one=False)
    assert xywh.dtype == np.float64 and xywh[0, 2] == few["boxes"][0, 2] - few["boxes"][0, 0]


def test_port_tensor_subtracts_the_mean_in_float64():
    """The port: float32 image minus the mean given as a Python list; NumPy computes that in
    float64 and stores float32. E.g. blue 40: float32(40 - 102.9801) = -62.9801, where the
    float32 subtraction 40 - float32(102.9801) gives -62.980103 (1 ulp off)."""
    from zoobook.models.retinamask.preprocess import port_tensor

    rgb = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    out = port_tensor(rgb, size=32)
    mean_bgr = np.array([102.9801, 115.9465, 122.7717])
    expected = (np.arange(256, dtype=np.float64).reshape(1, 16, 16) - mean_bgr[:, None, None]).astype(np.float32)
    np.testing.assert_array_equal(out[0, :, :16, :16], expected)
    assert out[0, 0, 2, 8] == np.float32(-62.9801) != np.float32(40) - np.float32(102.9801)
    assert out.dtype == np.float32 and not out[0, :, 16:].any() and not out[0, :, :, 16:].any()


def test_original_normalize_is_bit_exact_with_the_golden_input(golden):
    """maskrcnn-benchmark: ToTensor (/255, float32), BGR x255, F.normalize with a float32
    mean, zero pad to a multiple of 32: the golden input_tensor came from that on the
    unresized image."""
    from zoobook.models.retinamask.preprocess import original_normalize

    np.testing.assert_array_equal(original_normalize(golden["image_rgb_uint8"]), golden["input_tensor"])


# ---------------------------------------------------------------------------------------
# The port's graph


@pytest.fixture(scope="module")
def port_onnx(model, tmp_path_factory):
    from zoobook.models.retinamask.export import export_port_graph

    path = tmp_path_factory.mktemp("retinamask") / "port.onnx"
    summary = export_port_graph(model, path, size=256, top_k=50)
    return path, summary


def test_port_graph_exports_with_the_port_names_and_matches_pytorch(model, golden, port_onnx):
    from zoobook.backends.onnxruntime_backend import OnnxRuntimeSession
    from zoobook.export import onnx_io
    from zoobook.models.retinamask.export import PortGraph, graph_shapes

    path, summary = port_onnx
    assert onnx_io(path) == graph_shapes(256, 50) and "NonMaxSuppression" not in summary["op_types"]
    assert "RoiAlign" in summary["op_types"] and "TopK" in summary["op_types"]
    image = np.ascontiguousarray(golden["input_tensor"][:, :, :, 64:320])  # not the export's example
    with torch.no_grad():
        reference = [o.numpy() for o in PortGraph(model, top_k=50)(torch.from_numpy(image))]
    outputs = OnnxRuntimeSession(path).run({"image": image})
    assert outputs["labels"].dtype == np.int32
    np.testing.assert_array_equal(outputs["labels"], reference[1])
    for (name, value), ref in zip(outputs.items(), reference):
        np.testing.assert_allclose(value, ref, rtol=0, atol=1e-3 * max(1.0, np.abs(ref).max()), err_msg=name)
    assert (np.diff(outputs["scores"][0]) <= 0).all()  # one global top-k, sorted
    assert outputs["boxes"].min() >= 0 and outputs["boxes"].max() <= 256  # clamped to the input size


def test_port_top_k_then_host_nms_equals_the_original_path(model, golden):
    """FACTS.md section 2: the global top-k plus the port's host NMS keeps the detections the
    original per-level path keeps, when no 0.05 threshold or per-level cap bites."""
    from zoobook.models.retinamask.export import PortGraph

    image = torch.from_numpy(golden["input_tensor"])
    with torch.no_grad():
        boxes, labels, scores, _ = PortGraph(model, top_k=1000)(image)
        features, logits, deltas = model(image)
        original = pp.original_detections(logits, deltas, model.anchors(features), (256, 384))
    port = pp.port_postprocess(boxes[0].numpy(), labels[0].numpy(), scores[0].numpy(),
                               np.zeros((1000, 1, 28, 28), np.float32), ratio=1.0, image_hw=(256, 384))
    # the port clamps to the padded input, the original clips to the image: compare scores and labels
    top = np.argsort(-original["post_nms_scores"].numpy())[:50]
    np.testing.assert_allclose(port["scores"][:50], original["post_nms_scores"].numpy()[top], rtol=0, atol=1e-6)


def test_cast_rewrite_for_ascend(port_onnx, tmp_path):
    import onnx

    from zoobook.models.retinamask.export import cast_roi_inputs_to_fp16

    path, _ = port_onnx
    info = cast_roi_inputs_to_fp16(path, tmp_path / "cast.onnx")
    model = onnx.load(str(tmp_path / "cast.onnx"))
    onnx.checker.check_model(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    roi_aligns = [n for n in model.graph.node if n.op_type == "RoiAlign"]
    assert len(roi_aligns) == 3 and len(info["casts"]) == 3  # P3, P4, P5
    for node in roi_aligns:
        cast = producers[node.input[1]]
        assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT16
    original = onnx.load(str(path))
    assert sum(n.op_type == "Cast" for n in model.graph.node) == sum(n.op_type == "Cast" for n in original.graph.node) + 3
    assert [o.name for o in model.graph.output] == [o.name for o in original.graph.output]
