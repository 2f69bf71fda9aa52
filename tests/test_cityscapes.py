"""Cityscapes reader, label mapping, generator, and the confusion-matrix scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zoobook.data.cityscapes import (CLASSES, IGNORE, CityscapesDataset, CityscapesFormatError, colorize,
                                     label_ids_to_train_ids, write_synthetic_cityscapes)
from zoobook.metrics.segmentation import ConfusionMatrix


def test_label_mapping_follows_cityscapes():
    assert len(CLASSES) == 19 and CLASSES[0].name == "road" and CLASSES[18].name == "bicycle"
    ids = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33])
    np.testing.assert_array_equal(label_ids_to_train_ids(ids), np.arange(19))
    for ignored in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 255):
        assert label_ids_to_train_ids(np.array([ignored]))[0] == IGNORE
    assert colorize(np.array([[0, 255]])).tolist() == [[[128, 64, 128], [0, 0, 0]]]


def test_generator_writes_the_layout_and_the_reader_reads_it(tmp_path):
    dataset = write_synthetic_cityscapes(tmp_path / "cityscapes", 3, size=(64, 128), seed=1)
    assert len(dataset) == 3 and dataset[0]["city"] == "frankfurt"
    assert dataset.images[0].name.endswith("_leftImg8bit.png")
    assert dataset.label_path(0).name.endswith("_gtFine_labelIds.png") and dataset.label_path(0).is_file()
    image, label = dataset.load_image(0), dataset.load_label(0)
    assert image.shape == (64, 128, 3) and image.dtype == np.uint8 and label.shape == (64, 128)
    assert set(np.unique(label)) <= set(range(19)) | {IGNORE}


def test_a_missing_label_file_is_named(tmp_path):
    dataset = write_synthetic_cityscapes(tmp_path / "cityscapes", 2, size=(32, 64))
    dataset.label_path(1).unlink()
    with pytest.raises(CityscapesFormatError, match=r"gtFine_labelIds.png: label file missing for .*leftImg8bit.png"):
        CityscapesDataset(dataset.root).load_label(1)
    with pytest.raises(FileNotFoundError, match="Cityscapes images folder not found"):
        CityscapesDataset(tmp_path / "nowhere")


def test_confusion_matrix_by_hand():
    cm = ConfusionMatrix(3)
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm.update(pred, gt)
    cm.update(np.array([[1]]), np.array([[1]]))  # accumulated over images, not averaged
    scores = cm.scores()
    # class 0: I 1, gt 2, pred 2 -> 1/3; class 1: I 3, gt 3, pred 4 -> 3/4; class 2: I 1, gt 2, pred 1 -> 1/2
    assert scores["IoU"] == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert scores["mIoU"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert scores["aAcc"] == pytest.approx(5 / 7) and scores["pixels"] == 7
    assert scores["Acc"] == pytest.approx([1 / 2, 1, 1 / 2])
    empty = ConfusionMatrix(3)
    empty.update(np.array([0]), np.array([0]))
    assert math.isnan(empty.scores()["IoU"][1]) and empty.scores()["mIoU"] == 1.0  # absent classes are skipped
    with pytest.raises(ValueError, match="differ in shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
