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


# ---------------------------------------------------------------------------------------
# Edge cases of the reference, derived by hand from utils/pysot/utils/src/region.c and
# utils/pysot/evaluation/eao_benchmark.py + utils/pysot/utils/statistics.py (foolwood/SiamMask
# @ 0eaac33). Curves are stored in float32, hence rtol 1e-6 on them.

SQUARE = [0, 0, 10, 0, 10, 10, 0, 10]  # 11 x 11 pixels


def test_overlap_is_zero_when_the_boxes_only_touch():
    # region.c returns 0 before rasterising when the float32 IoU of the two (floor/ceil)
    # boxes is <= 0: boxes [0, 10] and [10, 20] share the column x = 10 (11 pixels), yet
    # the box intersection has width 10 - 10 = 0.
    assert vot.region_overlap(SQUARE, [10, 0, 20, 0, 20, 10, 10, 10]) == 0.0
    # both regions left of the image: each box cut to the bounds has a negative width, so
    # the area ratio is < 1e-10 and the overlap is 0 (not NaN for two empty masks)
    left = [[-50, 0, -40, 0, -40, 10, -50, 10], [-30, 0, -20, 0, -20, 10, -30, 10]]
    assert vot.region_overlap(*left, (100, 80)) == 0.0


def test_overlap_rounds_vertices_like_c_round():
    # the largest float32 below 0.5 rounds to 0 with C round(); float32 |v| + 0.5 would be
    # the tie 1 - 2**-25, rounded to 1.0, and move the left edge to x = 1 (110 / 121 pixels)
    below_half = float(np.nextafter(np.float32(0.5), np.float32(0)))
    assert vot.region_overlap([below_half, 0, 10, 0, 10, 10, below_half, 10], SQUARE, (100, 80)) == 1.0
    # unbounded, region.c shifts by the union box's left (-1000) in float32 before rounding:
    # 1000.5 - 2**-14 + 1000 is the float32 tie between 2000.5 - 2**-13 and 2000.5 and goes
    # to 2000.5 (even), so the right edge is column 2001, not 2000: rows of 2002 vs 2001
    # pixels, 3 rows each -> 6003 / 6006 in float32.
    right = float(np.nextafter(np.float32(1000.5), np.float32(0)))
    a = [-1000, 0, right, 0, right, 2, -1000, 2]
    b = [-1000, 0, 1000, 0, 1000, 2, -1000, 2]
    assert vot.region_overlap(a, b) == float(np.float32(6003) / np.float32(6006))


def test_rasterizer_pairs_nodes_like_region_c():
    # an arrowhead (concave quad): top (5, 0), right (10, 10), notch (5, 4), left (0, 10).
    # Row 4 meets the edges at x = 3 (left side: 5 + 4/10 * -5), 5 and 5 (the notch, once
    # per edge) and 7 (right side: 10 + 6/10 * -5). region.c walks the sorted nodes
    # 3, 5, 5, 7 in pairs, skipping a node only when it equals the next: spans 3-5 and 5-7.
    xs = np.array([5, 10, 5, 0], dtype=np.float32)
    ys = np.array([0, 10, 4, 10], dtype=np.float32)
    mask = vot.rasterize(xs, ys, 11, 11)
    np.testing.assert_array_equal(np.flatnonzero(mask[4]), np.arange(3, 8))


def test_rasterizer_crossing_is_evaluated_in_double_like_region_c():
    # region.c (non-legacy path, the one the evaluator runs: no flag is ever set) takes
    # r = y_j - y_i and k = x_j - x_i as doubles and truncates
    # (double) x_i + (double) (y - y_i) / r * k. Edge (0, 0) -> (55, 11) at row 3:
    # 3 / 11 * 55 is 14.999999999999998 in double (-> 14) but 15.0 in float32 (-> 15).
    # The other edges meet row 3 at x = 0 (the vertical side); the bottom is horizontal.
    xs = np.array([55, 0, 0], dtype=np.float32)  # edge i runs from vertex i-1 to vertex i
    ys = np.array([11, 0, 11], dtype=np.float32)
    mask = vot.rasterize(xs, ys, 56, 12)
    np.testing.assert_array_equal(np.flatnonzero(mask[3]), np.arange(0, 15))


def test_eao_fragment_cut_at_the_sequence_end_weighs_less():
    # A: 10 frames, failure at 5 = len - 5, so its restart 10 = len is kept. Fragment
    # [0 .. 10] is cut to frames 0..9: [0, 1, 1, 1, 1, 0, 0, 0, 0, 0] (NaN -> 0), weight
    # sum(tag[0:11]) / (10 - 0 + 1) = 10/11; the last fragment [10:] is empty (never defined).
    # B: 10 frames, no failure, [NaN, 0.5 x 9], weight 1. Both are defined at every L >= 1:
    # Phi(L) = (10/11 * mean_A(L) + 0.5) / (10/11 + 1) = (10 mean_A(L) + 5.5) / 21, with
    # mean_A(L) = 1 for L <= 4 and 4 / L after. (Weight 1 would give 0.75 for L <= 4.)
    a = np.array([np.nan, 1, 1, 1, 1, np.nan, np.nan, np.nan, np.nan, np.nan])
    b = np.array([np.nan] + [0.5] * 9)
    curve = vot.expected_overlap_curve([(a, [5]), (b, [])])
    mean_a = [1, 1, 1, 1, 4 / 5, 4 / 6, 4 / 7, 4 / 8, 4 / 9]
    np.testing.assert_allclose(curve, [1] + [(10 * m + 5.5) / 21 for m in mean_a], rtol=1e-6)


def test_eao_failure_in_the_last_five_frames_has_no_restart():
    # A: 10 frames, failure at 7: restart 12 > 10 is dropped, so A is one last fragment
    # [0, 1, 1, 1, 1, 1, 1, 0, 0, 0] (the failure frames count 0), weight 10 / (10 + 1e-16)
    # = 1, padded with NaN: it stops counting after its end, unlike a cut fragment.
    # B: 12 frames, no failure, [NaN, 0.5 x 11]. Phi(L) = (mean_A(L) + 0.5) / 2 for L <= 9
    # (mean_A = 1 up to 6, then 6 / L), and 0.5 (B alone) for L = 10, 11.
    a = np.array([np.nan, 1, 1, 1, 1, 1, 1, np.nan, np.nan, np.nan])
    b = np.array([np.nan] + [0.5] * 11)
    curve = vot.expected_overlap_curve([(a, [7]), (b, [])])
    mean_a = [1] * 6 + [6 / 7, 6 / 8, 6 / 9]
    np.testing.assert_allclose(curve, [1] + [(m + 0.5) / 2 for m in mean_a] + [0.5, 0.5], rtol=1e-6)


def test_eao_with_a_sequence_shorter_than_the_interval():
    # A: 10 frames, no failure, [NaN, 0.75 x 9]. B: 7 frames, failure at 1, restart 6 <= 7:
    # fragment [0 .. 6] = 7 zeros padded with 0 (weight 7/7), last fragment [6:] = [0]
    # padded with NaN (never defined at L >= 1). C: 3 frames, no failure, [NaN, 0.25, 0.25],
    # NaN past its end. Phi(1) = Phi(2) = (0.75 + 0 + 0.25) / 3 = 1/3; Phi(3..9) =
    # (0.75 + 0) / 2 = 0.375 (C has ended, B's zeros still count).
    a = np.array([np.nan] + [0.75] * 9)
    b = np.full(7, np.nan)
    c = np.array([np.nan, 0.25, 0.25])
    curve = vot.expected_overlap_curve([(a, []), (b, [1]), (c, [])])
    np.testing.assert_allclose(curve, [1, 1 / 3, 1 / 3] + [0.375] * 7, rtol=1e-6)
    # lengths low..high inclusive = curve indices low-1 .. high-1
    assert vot.eao_from_curve(curve, (8, 10)) == 0.375
    assert vot.eao_from_curve(curve, (2, 10)) == pytest.approx((2 / 3 + 7 * 0.375) / 9, rel=1e-6)
    # every sequence shorter than the interval start: 0 / 0 in the reference
    assert math.isnan(vot.eao_from_curve(curve, (11, 20)))


def test_evaluate_takes_sequences_sorted_and_robustness_in_reference_order():
    # the reference iterates sorted names and computes (failures / frames) * 100:
    # 1 / 6 * 100 = 16.666666666666664, whereas 100 * 1 / 6 = 16.666666666666668
    gt = [SQUARE] * 3
    index = {name: {"gt_rect": gt, "width": 100, "height": 80} for name in ("b", "a")}
    results = {"b": [[1], [2], [0]], "a": [[1], SQUARE, SQUARE]}
    scores = vot.evaluate(index, results)
    assert scores["lost_number"] == 1 and scores["frames"] == 6
    assert scores["robustness"] == 1 / 6 * 100
    assert list(scores["per_video_accuracy"]) == ["a", "b"]
