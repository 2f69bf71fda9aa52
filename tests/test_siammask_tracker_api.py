"""SiamMask tracker: what a reviewer can inspect (margin, mean colour, debug crops and logits),
and the host arithmetic against the reference's (foolwood/SiamMask tools/test.py).

Most tests drive the tracker with the reference's own network outputs for frame 1 of the
tennis clip (tests/golden/siammask, full-resolution ``score`` and ``delta``), so they need no
network and check the host code alone. One test runs the recipe-weight network end to end.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from zoobook.models.siammask.checkpoint import build
from zoobook.models.siammask.tracker import (AnchorScores, SiamMaskTracker, TorchEngine, TrackDebug,
                                             TrackerConfig, crop_patch, paste_mask)

GOLDEN = Path(__file__).parent / "golden" / "siammask"
TENNIS = Path(__file__).parents[1] / "data" / "samples" / "tennis"
BOX = (300, 110, 165, 250)  # (x, y, w, h) on frame 0, as the goldens
SHAPES = {"f0": (1, 64, 125, 125), "f1": (1, 256, 63, 63), "f2": (1, 512, 31, 31), "corr_feature": (1, 256, 25, 25)}


class ReferenceOutputs:
    """An engine that answers every search with the reference's frame-1 outputs (score, delta;
    zero features; the refine logits of cell (12, 12)) and records what it was fed."""

    def __init__(self, mask: np.ndarray | None = None) -> None:
        with np.load(GOLDEN / "golden_trimmed.npz") as golden:
            self.outputs = {"score": golden["score_sub"], "delta": golden["delta_sub"]}
            self.refine_logits = golden["refine_12_12"]
        self.outputs.update({k: np.zeros(s, np.float32) for k, s in SHAPES.items()})
        if mask is not None:
            self.outputs["mask"] = mask
        self.fed: dict[str, np.ndarray] = {}

    def set_template(self, template: np.ndarray) -> None:
        self.fed["template"] = template

    def search(self, search: np.ndarray) -> dict[str, np.ndarray]:
        self.fed["search"] = search
        return self.outputs

    def refine(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.refine_logits


@pytest.fixture(scope="module")
def frames():
    return [cv2.imread(str(TENNIS / f"{i:05d}.jpg")) for i in range(3)]


@pytest.fixture(scope="module")
def trace():
    with np.load(GOLDEN / "tracker.npz") as data:
        return dict(data)


def test_debug_is_off_by_default_and_keeps_no_crops(frames):
    tracker = SiamMaskTracker(ReferenceOutputs())
    tracker.init(frames[0], BOX)
    result = tracker.track(frames[1])
    assert tracker.debug is False and tracker.template_crop is None and result.debug is None
    assert np.isfinite(result.margin)


def test_debug_keeps_crops_and_logits_as_documented(frames):
    engine = ReferenceOutputs()
    tracker = SiamMaskTracker(engine, debug=True)
    tracker.init(frames[0], BOX)
    result = tracker.track(frames[1])
    assert tracker.template_crop.dtype == np.float32 and tracker.template_crop.shape == (1, 3, 127, 127)
    assert tracker.template_crop is engine.fed["template"]
    debug = result.debug
    assert isinstance(debug, TrackDebug)
    assert debug.search_crop.dtype == np.float32 and debug.search_crop.shape == (1, 3, 255, 255)
    np.testing.assert_array_equal(debug.search_crop, engine.fed["search"])
    assert debug.scores.dtype == np.float32 and debug.scores.shape == (3125,)
    assert debug.penalised_scores.dtype == np.float64 and debug.penalised_scores.shape == (3125,)
    assert debug.mask_logits.dtype == np.float32 and debug.mask_logits.shape == (127, 127)
    np.testing.assert_array_equal(debug.mask_logits.ravel(), engine.refine_logits.ravel())
    # the reference's crop box for frame 1: side round(828.887) = 829 around (382.5, 235)
    assert debug.search_box == (382.5 - 829 / 2, 235.0 - 829 / 2, 829)
    assert debug.scores[np.argmax(debug.penalised_scores)] == np.float32(result.score)


def test_debug_mask_logits_without_refine_come_from_the_mask_branch(frames):
    mask = np.random.default_rng(0).standard_normal((1, 3969, 25, 25)).astype(np.float32)
    tracker = SiamMaskTracker(ReferenceOutputs(mask), TrackerConfig(out_size=63, refine=False), debug=True)
    tracker.init(frames[0], BOX)
    result = tracker.track(frames[1])
    row, col = result.cell
    assert result.debug.mask_logits.shape == (63, 63) and result.debug.mask_logits.dtype == np.float32
    np.testing.assert_array_equal(result.debug.mask_logits.ravel(), mask[0, :, row, col])


def _penalised_scores_float64(outputs: dict[str, np.ndarray], size: np.ndarray) -> np.ndarray:
    """An independent float64 re-computation from the score maps (reference tools/test.py)."""
    logits = outputs["score"][0].reshape(2, -1).astype(np.float64)
    score = 1 / (1 + np.exp(logits[0] - logits[1]))
    delta = outputs["delta"][0].reshape(4, 5, 25, 25).astype(np.float64)
    anchor_w = np.array([104, 88, 64, 40, 32.0])[:, None, None]  # ratios 0.33, 0.5, 1, 2, 3 at scale 8
    anchor_h = np.array([32, 40, 64, 80, 96.0])[:, None, None]
    w, h = np.exp(delta[2]) * anchor_w, np.exp(delta[3]) * anchor_h  # the penalties use sizes only

    def context(w, h):
        return np.sqrt((w + (w + h) / 2) * (h + (w + h) / 2))

    scale = 127 / context(*size)
    target = size * scale
    scale_change = context(w, h) / context(*target)
    ratio_change = (target[0] / target[1]) / (w / h)
    penalty = np.exp(-(np.maximum(ratio_change, 1 / ratio_change) * np.maximum(scale_change, 1 / scale_change) - 1)
                     * 0.04)
    window = np.outer(np.hanning(25), np.hanning(25))[None]
    return (penalty * score.reshape(5, 25, 25) * 0.58 + window * 0.42).ravel()


def test_margin_is_best_minus_second_best_of_independently_penalised_scores(frames):
    engine = ReferenceOutputs()
    tracker = SiamMaskTracker(engine, debug=True)
    tracker.init(frames[0], BOX)
    size_before = tracker.size.copy()
    result = tracker.track(frames[1])
    expected = _penalised_scores_float64(engine.outputs, size_before)
    # float32 decode/penalty (as the reference) against float64: agree within 1e-6
    np.testing.assert_allclose(result.debug.penalised_scores, expected, atol=1e-6, rtol=0)
    best = int(np.argmax(expected))
    assert result.cell == (best % 625 // 25, best % 25)
    top_two = np.sort(expected)[-2:]
    assert result.margin >= 0
    assert result.margin == pytest.approx(top_two[1] - top_two[0], abs=1e-6)
    ours = np.sort(result.debug.penalised_scores)[-2:]
    assert result.margin == ours[1] - ours[0]  # exactly, from the tracker's own penalised scores


def test_margin_is_zero_on_a_tie():
    def decoded(penalised):
        return AnchorScores(np.zeros(4, np.float32), np.zeros((4, 4), np.float32), np.ones(4, np.float32),
                            np.array(penalised))

    assert decoded([0.2, 0.7, 0.1, 0.7]).best == 1 and decoded([0.2, 0.7, 0.1, 0.7]).margin == 0.0
    assert decoded([0.2, 0.7, 0.1, 0.5]).margin == pytest.approx(0.2)


def test_mean_colour_is_the_float_mean_and_fill_its_uint8_truncation(frames):
    tracker = SiamMaskTracker(ReferenceOutputs(), debug=True)
    tracker.init(frames[0], BOX)
    colour = tracker.mean_colour
    assert colour.dtype == np.float64 and colour.shape == (3,)
    np.testing.assert_allclose(colour, frames[0].reshape(-1, 3).astype(np.float64).mean(0), rtol=0, atol=1e-9)
    # golden README: the frame-0 mean (B, G, R) = (96.948, 114.564, 141.783), written as (96, 114, 141)
    np.testing.assert_allclose(colour, [96.948, 114.564, 141.783], atol=1e-3)
    buffer = np.zeros((2, 2, 3), np.uint8)
    buffer[:] = colour  # how the reference's get_subwindow_tracking writes avg_chans into its uint8 image
    assert tracker.fill.dtype == np.uint8 and tracker.fill.tolist() == buffer[0, 0].tolist() == [96, 114, 141]
    # the frame-1 search window (829 px) runs past the top-left corner: padded with the fill
    search = tracker.track(frames[1]).debug.search_crop
    assert search[0, :, 0, 0].tolist() == [96.0, 114.0, 141.0]
    np.testing.assert_array_equal(crop_patch(frames[1], np.array([0.0, 0.0]), 4, 4, tracker.fill)[0, :, 0, 0],
                                  [96, 114, 141])


def test_one_step_from_the_reference_outputs_gives_the_reference_state(frames, trace):
    """The reference decodes the boxes and penalties in float32 and divides the chosen box by
    the scale in float32 (its arrays are float32; NumPy 1.x keeps float64 scalars from
    promoting them). Given the reference's network outputs for frame 1, the new state must be
    the reference's: x exactly (only float32 multiply/add/divide and float64 adds, no exp),
    the score and size within what one ulp of a float32 exp on another CPU could move them
    (here they agree bit for bit). y is clipped to 0 in this frame."""
    tracker = SiamMaskTracker(ReferenceOutputs())
    tracker.init(frames[0], BOX)
    result = tracker.track(frames[1])
    assert result.cell == tuple(trace["refine_pos"][0])
    assert result.centre[0] == trace["target_pos"][0][0]
    assert result.centre[1] == trace["target_pos"][0][1] == 0.0
    assert result.score == pytest.approx(trace["score"][0], abs=1.2e-7)  # one float32 ulp near 1
    np.testing.assert_allclose(result.size, trace["target_sz"][0], atol=2e-5, rtol=0)
    assert result.centre.dtype == result.size.dtype == np.float64


def test_clipped_state_stays_float64():
    frame = np.zeros((40, 40, 3), np.uint8)
    tracker = SiamMaskTracker(ReferenceOutputs())
    tracker.start(frame, (-1000.0, -1000.0), (100.0, 100.0))  # far off the frame, larger than it
    result = tracker.track(frame)
    assert result.centre.tolist() == [0.0, 0.0] and result.size.tolist() == [40.0, 40.0]  # clipped
    assert result.centre.dtype == result.size.dtype == np.float64


# cv2.warpAffine of OpenCV 4.9.0 (what the reference ran), with the reference's crop_back matrix,
# for the 5x5 map below pasted at window (-1.25, 0.6, 6.3) into a 6x8 frame (float32 values)
OPENCV4_PASTE = [
    -0.10653409361839294, -0.2816051244735718, -0.02503553032875061, -0.10049715638160706, -0.6830611228942871,
    -1.0, -1.0, -1.0, 0.7670454978942871, 0.4375, 0.5395951867103577, 0.6465731263160706, -0.3714488744735718,
    -1.0, -1.0, -1.0, 0.5056818127632141, 0.5726207494735718, 0.28409090638160706, 0.6732954382896423,
    -0.30539774894714355, -1.0, -1.0, -1.0, 0.11363636702299118, 0.6903409361839294, 0.4545454680919647,
    0.57421875, -0.38210225105285645, -1.0, -1.0, -1.0, 0.28977274894714355, 0.5549538135528564,
    0.5662286877632141, 0.3011363744735718, -0.5504261255264282, -1.0, -1.0, -1.0, 0.012784093618392944,
    -0.22407670319080353, 0.123046875, 0.020951688289642334, -0.6447088122367859, -1.0, -1.0, -1.0]


def test_paste_mask_is_bit_identical_to_opencv4_warp_affine():
    probabilities = (((np.arange(25).reshape(5, 5) * 7) % 11 + 0.5) / 11).astype(np.float32)
    pasted = paste_mask(probabilities, (-1.25, 0.6, 6.3), (6, 8))
    assert pasted.dtype == np.float32
    np.testing.assert_array_equal(pasted, np.array(OPENCV4_PASTE, np.float32).reshape(6, 8))


@pytest.fixture(scope="module")
def model():
    model, provenance = build(None)
    assert provenance["kind"] == "recipe"
    return model


class Recording(TorchEngine):
    def __init__(self, model) -> None:
        super().__init__(model)
        self.searches, self.refined = [], []

    def search(self, search):
        self.searches.append(search)
        return super().search(search)

    def refine(self, inputs):
        self.refined.append(super().refine(inputs))
        return self.refined[-1]


def test_debug_with_the_network_matches_what_the_engine_saw(model, frames):
    engine = Recording(model)
    tracker = SiamMaskTracker(engine, debug=True)
    tracker.init(frames[0], BOX)
    results = [tracker.track(frame) for frame in frames[1:]]
    for result, search, logits in zip(results, engine.searches, engine.refined):
        assert result.debug.search_crop is search
        np.testing.assert_array_equal(result.debug.mask_logits.ravel(), logits.ravel())
        assert 0 <= result.margin == np.diff(np.sort(result.debug.penalised_scores)[-2:])[0]
    # golden README: on this trace the best penalised score beats the runner-up by >= 2.6e-3
    assert min(r.margin for r in results) > 2.5e-3
