"""SeMask-FPN against the reference's golden vectors (tests/golden/semask, trimmed from
shared/reference/semask/golden by tests/golden/trim_semask.py) and strict loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zoobook.checkpoints import CheckpointError
from zoobook.models.semask.checkpoint import build, recipe_state_dict
from zoobook.models.semask.network import relative_position_index, shift_mask

from .tolerances import assert_close_to_scale

GOLDEN = Path(__file__).parent / "golden" / "semask"
# golden README: fp32 logits within 1e-4, or 1e-4 relative; channel means within 1e-4 of the peak
REL, MEAN_REL = 1e-4, 1e-4
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


@pytest.fixture(scope="module")
def recipe():
    return recipe_state_dict()


@pytest.fixture(scope="module")
def model():
    return build()[0]


def _input(golden) -> torch.Tensor:
    """The golden input, rebuilt as its README says: float32((RGB u8 as float64 - mean) / std), NCHW."""
    x = ((golden["image_rgb_u8"].astype(np.float64) - MEAN) / STD).astype(np.float32).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


@pytest.fixture(scope="module", params=["golden_1x3x256x512", "golden_2x3x128x256"])
def run(request, model):
    golden = dict(np.load(GOLDEN / f"{request.param}_trimmed.npz"))
    x = _input(golden)
    with torch.no_grad():
        features, semantic = model.backbone(x)
        logits = model.decode_head(features)
        pred = model(x)
        upsampled = torch.nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return golden, features, semantic, logits, upsampled, pred


def test_recipe_matches_checksums(recipe):
    checksums = json.loads((GOLDEN / "weights_checksums.json").read_text())
    assert len(recipe) == len(checksums) == 445
    for key, expected in checksums.items():
        value = recipe[key].double()
        assert float(value.sum()) == pytest.approx(expected["sum"], rel=1e-9, abs=1e-9), key
        assert value.flatten()[:4].tolist() == expected["first"], key


def test_features_and_semantic_maps(run):
    golden, features, semantic, *_ = run
    for i in range(4):
        step = int(golden[f"feat{i}_step"])
        scale = max(1.0, float(np.abs(golden[f"feat{i}_sub"]).max()))
        assert_close_to_scale(features[i][:, ::step].numpy(), golden[f"feat{i}_sub"], REL, f"feat{i}", scale=scale)
        assert_close_to_scale(features[i].double().mean(dim=(0, 2, 3)).numpy(), golden[f"feat{i}_channel_mean"],
                              MEAN_REL, f"feat{i} channel means", scale=scale)
        assert_close_to_scale(semantic[i].numpy(), golden[f"sem{i}"], REL, f"sem{i}",
                              scale=max(1.0, float(np.abs(golden[f"sem{i}"]).max())))


def test_logits_and_class_map(run):
    golden, _, _, logits, upsampled, pred = run
    scale = max(1.0, float(np.abs(golden["seg_logits_q"]).max()))
    assert_close_to_scale(logits.numpy(), golden["seg_logits_q"], REL, "logits", scale=scale)
    assert_close_to_scale(upsampled[:, :, ::8].numpy(), golden["logits_rows_sub"], REL, "upsampled logits", scale=scale)
    assert pred.dtype == torch.int64
    assert (pred.numpy() == golden["pred"]).mean() >= 0.999


def test_window_helpers_by_hand():
    index = relative_position_index()
    assert index[0, 0] == 6 * 13 + 6 and index[0, 48] == 0 and index[48, 0] == 168
    mask = shift_mask(14, 14)  # 2 x 2 windows; only the last row and column of windows see regions
    assert mask.shape == (4, 49, 49) and not mask[0].any()
    assert set(mask[3].unique().tolist()) == {-100.0, 0.0}
    # in the bottom-right window, token (0,0) is in region 4 and token (6,6) in region 8
    assert mask[3, 0, 48] == -100 and mask[3, 0, 1] == 0


def test_strict_loading(tmp_path, recipe):
    path = tmp_path / "semask.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in recipe.items()}}, path)
    assert build(path)[1]["kind"] == "checkpoint"
    broken = dict(recipe)
    broken["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 96, 1, 1)
    del broken["backbone.layers.2.semantic_layer.class_injection.0.gamma"]
    torch.save({"state_dict": broken}, path)
    with pytest.raises(CheckpointError, match="missing keys: backbone.layers.2.semantic_layer.class_injection.0.gamma"):
        build(path)


def test_export_matches_pytorch_on_another_input(model, tmp_path):
    """Exported at 64 x 128 (not the goldens' size), traced at batch 1 and pinned to batch 2;
    ONNX Runtime against PyTorch on two different generated street scenes (not the export's
    zeros): logits-level agreement shows as class maps equal on at least 99.9 % of pixels,
    and no shape arithmetic is left in the static graph."""
    from zoobook.backends.onnxruntime_backend import OnnxRuntimeSession
    from zoobook.data.cityscapes import write_synthetic_cityscapes
    from zoobook.export import onnx_io
    from zoobook.models.semask.export import export_graphs, graph_shapes, normalize

    summary = export_graphs(model, tmp_path, batch_sizes=[2], size=(64, 128))[2]
    assert onnx_io(tmp_path / "semask_bs2.onnx") == graph_shapes(2, (64, 128))
    assert "ArgMax" in summary["op_types"] and not {"ScatterND", "Shape"} & set(summary["op_types"])
    assert not (tmp_path / "semask_dynamic.onnx").exists()
    data = write_synthetic_cityscapes(tmp_path / "cityscapes", 2, size=(64, 128), seed=3)
    x = normalize(np.stack([data.load_image(0), data.load_image(1)]))
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = OnnxRuntimeSession(tmp_path / "semask_bs2.onnx").run({"image": x})["output"]
    assert got.dtype == np.int64 and got.shape == (2, 64, 128)
    assert (got == expected).mean() >= 0.999


def test_class_map_parity_is_a_share_of_equal_pixels():
    """The port compares class maps as a share of equal pixels, 99.9 % for fp32 and 99 % for
    a device in reduced precision (arg-max near-ties may flip)."""
    from zoobook.models.semask.port import PORT

    def parity(reference, candidate, precision="fp32"):
        (row,) = PORT.compare("semask", {"output": reference}, {"output": candidate}, PORT.tolerance(precision))
        return row

    reference = np.zeros((2, 10, 100), np.int64)
    candidate = reference.copy()
    candidate[1, 0, :1] = 3  # 1 pixel of 2000
    row = parity(reference, candidate)
    assert row["differing_pixels"] == 1 and row["agreement"] == 1 - 1 / 2000 and row["passed"]
    assert row["min_agreement"] == 0.999
    candidate[1, 0, :5] = 3
    assert not parity(reference, candidate)["passed"] and parity(reference, candidate, "fp16")["passed"]
    assert not parity(reference, candidate[:1], "fp16")["passed"]  # batch mixed up or lost


def test_pixel_agreement_counts_every_pixel_over_the_set_and_keeps_the_worst_image():
    from zoobook.metrics.segmentation import PixelAgreement

    agreement = PixelAgreement()
    a = np.zeros((4, 5), np.uint8)
    b = a.copy()
    b[0, :2] = 255  # an ignored label still counts: two predictions are compared, not the truth
    agreement.update(a, a)
    agreement.update(a, b)
    assert agreement.result() == {"pixels": 40, "equal": 38, "share": 38 / 40, "worst_image": 18 / 20}
    with pytest.raises(ValueError, match="differ in shape"):
        agreement.update(a, b[:2])
    assert PixelAgreement().result()["share"] is None


def test_memory_fit_extrapolates_a_straight_line():
    from zoobook.bench import memory_fit

    rows = [{"candidate": "a", "batch_size": bs, "peak_rss_mb": 500 + 300 * bs} for bs in (1, 4, 8)]
    rows += [{"candidate": "flat", "batch_size": bs, "peak_rss_mb": 500.0} for bs in (1, 2, 4)]
    # a peak that creeps up by kilobytes (allocator noise) is flat too: under 1 MiB per image
    rows += [{"candidate": "creep", "batch_size": bs, "peak_rss_mb": 500.0 + 0.01 * bs} for bs in (1, 2, 4)]
    (fit,) = memory_fit(rows)
    assert fit["candidate"] == "a" and fit["MiB_per_image"] == pytest.approx(300)
    assert fit["predicted_peak_at_16_MiB"] == pytest.approx(500 + 300 * 16)
