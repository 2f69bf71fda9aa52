"""VOT scoring against the reference evaluator's golden (tests/golden/siammask/eval, copied
unchanged from shared/reference/siammask/golden/eval) and hand-computed cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from zoobook.data.vot import read_json_index
from zoobook.metrics import vot

EVAL = Path(__file__).parent / "golden" / "siammask" / "eval"
RESULTS = EVAL / "results" / "Custom_mask_refine_synthetic"


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((EVAL / "expected.json").read_text())


@pytest.fixture(scope="module")
def index() -> dict:
    return read_json_index(EVAL / "data" / "VOT2016.json")


def test_golden_evaluation_is_reproduced_exactly(index, expected):
    scores = vot.evaluate_folder(index, RESULTS)
    assert scores["accuracy"] == expected["accuracy"]
    assert scores["robustness"] == expected["robustness_failures_per_100_frames"]
    assert scores["lost_number"] == expected["lost_number"]
    assert scores["eao"]["repo"] == expected["eao"]
    assert scores["eao"]["vot2016"] == expected["eao_if_interval_108_371_(pysot-toolkit_VOT2016)"]
    assert scores["per_video_accuracy"] == expected["per_video_accuracy"]
    assert scores["per_video_failures"] == expected["per_video_failures"]


@pytest.mark.parametrize("style", ["accuracy", "eao"])
def test_golden_per_frame_overlaps(index, expected, style):
    entry = index["seqC"]
    regions = vot.read_results(vot.results_path(RESULTS, "seqC"))
    if style == "accuracy":
        got = vot.trajectory_overlaps(regions, entry["gt_rect"], (640, 480), burnin=vot.BURNIN)
    else:
        got = vot.trajectory_overlaps(regions, entry["gt_rect"], (639, 479))
    want = np.array([math.nan if v is None else v for v in expected[f"per_frame_overlaps_seqC_{style}_style"]])
    np.testing.assert_array_equal(got, want)


def test_golden_polygon_cases(expected):
    for case in expected["polygon_overlap_cases_image_640x480"]:
        for key, bounds in (("overlap_bounds_w_h", (640, 480)), ("overlap_bounds_w1_h1", (639, 479)),
                            ("overlap_no_bounds", None)):
            assert vot.region_overlap(case["pred"], case["gt"], bounds) == case[key], (case, key)


def test_overlap_counts_pixels_inclusively():
    # two 100x50 boxes sharing half: 101x51 pixels each, 51x51 shared
    a, b = [10, 10, 110, 10, 110, 60, 10, 60], [60, 10, 160, 10, 160, 60, 60, 60]
    assert vot.region_overlap(a, b) == pytest.approx(51 * 51 / (2 * 101 * 51 - 51 * 51), rel=1e-7)
    # a box half outside the image: only the inside counts with bounds
    outside = [-20, -10, 50, -10, 50, 40, -20, 40]
    inside = [0, 0, 50, 0, 50, 40, 0, 40]
    assert vot.region_overlap(outside, inside, (640, 480)) == 1.0
    assert vot.region_overlap(outside, inside) == pytest.approx(51 * 41 / (71 * 51), rel=1e-7)
    assert math.isnan(vot.region_overlap([2], inside))
    assert vot.region_overlap([0, 0, 9, 0, 9, 9, 0, 9], [100, 100, 110, 100, 110, 110, 100, 110]) == 0.0


def test_rasterizer_fills_a_rotated_square():
    # a diamond with vertices on whole pixels: rows 1..9 filled symmetrically, apexes empty
    xs = np.array([5, 10, 5, 0], dtype=np.float32)
    ys = np.array([0, 5, 10, 5], dtype=np.float32)
    mask = vot.rasterize(xs, ys, 11, 11)
    assert not mask[0].any() and not mask[10].any()
    assert mask[5].sum() == 11 and mask[1].sum() == 3
    np.testing.assert_array_equal(mask, mask[::-1])


def test_expected_overlap_curve_by_hand():
    # no failure: [init, 1, 0.5] -> Phi(1) = 1, Phi(2) = 0.75
    curve = vot.expected_overlap_curve([(np.array([np.nan, 1.0, 0.5]), [])])
    np.testing.assert_allclose(curve, [1, 1, 0.75])
    # a failure at frame 1 (restart at 6): the first segment scores 0 after the failure
    overlaps = np.array([np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, 1.0])
    curve = vot.expected_overlap_curve([(overlaps, [1])])
    # segments: [0..6] -> zeros, padded with 0; [6..7] -> [0, 1], padded with NaN, so only
    # the failed segment is defined at L = 2
    np.testing.assert_allclose(curve[:3], [1, 0.5, 0])
    assert vot.eao_from_curve(np.array([1, 0.5, 0.25, 0.1]), (2, 3)) == pytest.approx(0.375)


def test_results_round_trip_and_errors(tmp_path):
    path = vot.write_results(tmp_path / "s" / "s_001.txt", [1, [1.23456, 2, 3, 4, 5, 6, 7, 8], 2, 0])
    assert path.read_text().splitlines() == ["1", "1.2346,2.0000,3.0000,4.0000,5.0000,6.0000,7.0000,8.0000", "2", "0"]
    assert vot.read_results(path)[1][0] == 1.2346
    path.write_text("1\n1,2,3\n")
    with pytest.raises(vot.ResultsFormatError, match=r"s_001.txt:2: expected a code 0/1/2, 4 or 8 numbers"):
        vot.read_results(path)
    path.write_text("1\nabc\n")
    with pytest.raises(vot.ResultsFormatError, match=r"s_001.txt:2: not a list"):
        vot.read_results(path)


def test_missing_or_short_results_are_named(index, tmp_path):
    with pytest.raises(FileNotFoundError, match="seqA_001.txt: tracker result file not found"):
        vot.evaluate_folder(index, tmp_path)
    with pytest.raises(vot.ResultsFormatError, match="sequence 'seqA': 3 result lines for 420 frames"):
        vot.evaluate(index, {name: [[1], [0], [0]] for name in index})
