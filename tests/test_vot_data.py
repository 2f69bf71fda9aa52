"""VOT reader, generator and JSON index, with the errors a user can hit."""

from __future__ import annotations

import numpy as np
import pytest

from zoobook.data.vot import (VotDataset, VotFormatError, polygon_to_box, read_groundtruth, read_json_index,
                              rect_to_polygon, write_synthetic_vot)


@pytest.fixture(scope="module")
def vot(tmp_path_factory):
    return write_synthetic_vot(tmp_path_factory.mktemp("vot") / "VOT2016", num_sequences=2, num_frames=12, seed=1)


def test_generator_writes_the_vot_layout(vot):
    assert len(vot) == 2 and (vot.root / "list.txt").read_text().split() == vot.names
    sequence = vot[0]
    assert len(sequence) == 12 and sequence.groundtruth.shape == (12, 8)
    assert (sequence.width, sequence.height) == (320, 240)
    assert sequence.frames[0].name == "00000001.jpg"
    index = read_json_index(vot.root / "VOT2016.json")
    assert index[sequence.name]["img_names"][0] == f"VOT2016/{sequence.name}/00000001.jpg"
    np.testing.assert_allclose(index[sequence.name]["gt_rect"], sequence.groundtruth)


def test_four_number_lines_become_polygons(tmp_path):
    path = tmp_path / "groundtruth.txt"
    path.write_text("10,20,30,40\n1,2,3,4,5,6,7,8\n")
    gt = read_groundtruth(path)
    assert gt[0].tolist() == rect_to_polygon(10, 20, 30, 40) == [10, 20, 10, 59, 39, 59, 39, 20]
    assert gt[1].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]


def test_a_line_with_five_numbers_names_file_and_line(tmp_path):
    path = tmp_path / "groundtruth.txt"
    path.write_text("1,2,3,4,5,6,7,8\n1,2,3,4,5\n")
    with pytest.raises(VotFormatError, match=r"groundtruth.txt:2: expected 4 \(x,y,w,h\) or 8 \(polygon\) numbers, found 5"):
        read_groundtruth(path)


def test_a_missing_frame_is_named(vot, tmp_path):
    import shutil

    root = tmp_path / "VOT2016"
    shutil.copytree(vot.root, root)
    name = vot.names[1]
    (root / name / "00000005.jpg").unlink()
    with pytest.raises(VotFormatError, match=r"groundtruth.txt: 12 lines but 11 frames .*frame 00000005.jpg is missing"):
        VotDataset(root)[1]


def test_missing_list_and_sequence(tmp_path):
    with pytest.raises(FileNotFoundError, match="list.txt: VOT sequence list not found"):
        VotDataset(tmp_path)
    (tmp_path / "list.txt").write_text("ghost\n")
    with pytest.raises(FileNotFoundError, match="ghost: sequence folder not found"):
        VotDataset(tmp_path)[0]


def test_polygon_to_box_keeps_the_area():
    polygon = np.array([10.0, 10.0, 50.0, 10.0, 50.0, 30.0, 10.0, 30.0])  # axis-aligned 40 x 20
    assert polygon_to_box(polygon) == pytest.approx((30.0, 20.0, 41.0, 21.0))


def test_reads_the_reference_json_index():
    from pathlib import Path

    index = read_json_index(Path(__file__).parent / "golden" / "siammask" / "eval" / "data" / "VOT2016.json")
    assert sorted(index) == ["seqA", "seqB", "seqC"]
    assert len(index["seqA"]["gt_rect"]) == 420 and len(index["seqA"]["gt_rect"][0]) == 8


def test_malformed_json_index(tmp_path):
    path = tmp_path / "VOT2016.json"
    path.write_text('{"seq": {"gt_rect": []}}')
    with pytest.raises(VotFormatError, match="sequence 'seq' lacks width, height, img_names"):
        read_json_index(path)
