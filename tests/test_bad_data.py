"""Bad or half-present datasets (issue 12): 01-data's dataset location names the file (and
line or entry) and the problem before any work is done, and nothing a run wrote before is
overwritten. Each dataset is written in its real layout by the project's generator, then
broken the way a user's copy can be."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from zoobook.data.cityscapes import CityscapesFormatError, write_synthetic_cityscapes
from zoobook.data.coco import AnnotationError, write_synthetic_coco
from zoobook.data.vot import VotFormatError, read_groundtruth, write_synthetic_vot
from zoobook.models import open_run
from zoobook.stages import steps

COCO_MODELS = ("yolact_edge", "retinamask")


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    """An empty data folder and runs folder of this test only."""
    monkeypatch.setenv("ZOOBOOK_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("ZOOBOOK_RUNS", str(tmp_path / "runs"))
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def esc(path: Path) -> str:
    """``path`` as a literal in a ``match`` pattern."""
    return re.escape(str(path))


def locate(model: str, profile: str, **params):
    """01-data's dataset location for ``model`` (the stage's first call)."""
    return steps.locate_data(open_run(model, profile), **params)


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes and modification time."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def generated_anything(data: Path) -> bool:
    return (data.parent / "runs").exists() and any((data.parent / "runs").rglob("zoobook-generator.json"))


# ---------------------------------------------------------------------------------------
# VOT


@pytest.fixture
def vot(data) -> Path:
    """Real-layout VOT2016 under data/: 2 sequences of 8 frames, 8-number ground-truth lines."""
    write_synthetic_vot(data / "VOT2016", num_sequences=2, num_frames=8, seed=1)
    return data / "VOT2016"


def locate_vot(num_sequences: int = 0):
    return locate("siammask", "smoke", num_sequences=num_sequences, num_frames=4)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf"])
def test_non_finite_groundtruth_value_names_file_and_line(tmp_path, value):
    path = tmp_path / "groundtruth.txt"
    path.write_text(f"1,2,3,4,5,6,7,8\n1,2,{value},4,5,6,7,8\n")
    with pytest.raises(VotFormatError, match=rf"groundtruth.txt:2: {value.lower()} is not a finite number"):
        read_groundtruth(path)


def test_vot_nan_groundtruth_fails_01_data_before_anything_is_overwritten(vot):
    run = open_run("siammask", "smoke")
    dataset, provenance = locate_vot()
    steps.prepare_data(run, dataset, provenance, demo_frames=2)
    artifacts = run.folder
    before = snapshot(artifacts)
    assert {Path("manifest.json"), Path("VOT2016.json")} <= set(before)
    groundtruth = vot / dataset.names[1] / "groundtruth.txt"
    lines = groundtruth.read_text().splitlines()
    lines[4] = ",".join(["nan"] * 8)
    groundtruth.write_text("\n".join(lines) + "\n")
    with pytest.raises(VotFormatError, match=rf"{esc(groundtruth)}:5: nan is not a finite number"):
        locate_vot()
    assert snapshot(artifacts) == before


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_vot_empty_list_says_it_names_no_sequences(vot, text):
    (vot / "list.txt").write_text(text)
    with pytest.raises(VotFormatError, match=rf"{esc(vot / 'list.txt')}: names no sequences"):
        locate_vot()


def test_vot_listed_sequence_without_folder_names_list_line(vot):
    listing = vot / "list.txt"
    listing.write_text(listing.read_text() + "ghost\n")
    with pytest.raises(FileNotFoundError, match=rf"{esc(vot / 'ghost')}: sequence folder not found "
                                                rf"\(listed in {esc(listing)}, line 3\)"):
        locate_vot()


@pytest.mark.parametrize("broken", ["extra line", "missing frame"])
def test_vot_groundtruth_lines_differ_from_frames(vot, broken):
    folder = vot / "synthetic01"
    groundtruth = folder / "groundtruth.txt"
    if broken == "extra line":
        groundtruth.write_text(groundtruth.read_text() + "1,2,3,4\n")
        counts = "9 lines but 8 frames"
    else:
        (folder / "00000008.jpg").unlink()
        counts = "8 lines but 7 frames"
    with pytest.raises(VotFormatError, match=rf"{esc(groundtruth)}: {counts} in {esc(folder)}"
                                             r".*; VOT needs one ground-truth line per frame"):
        locate_vot()


def test_vot_folder_without_list_is_not_replaced_by_generated_data(vot, data):
    (vot / "list.txt").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{esc(vot / 'list.txt')}: VOT sequence list not found, "
                                                rf"though {esc(vot)} holds files; add list.txt .* move "
                                                rf"{esc(vot)} aside to use the generated set"):
        locate_vot(num_sequences=1)
    assert not generated_anything(data)


# ---------------------------------------------------------------------------------------
# COCO (YolactEdge and RetinaMask locate it through zoobook.data.coco.locate_coco)


@pytest.fixture
def coco(data) -> Path:
    """Real-layout COCO under data/coco: 4 images, the last without objects."""
    write_synthetic_coco(data / "coco", num_images=4, seed=0)
    return data / "coco"


@pytest.mark.parametrize("model", COCO_MODELS)
def test_coco_annotations_without_images_folder_refuse_synthetic_fallback(coco, data, model):
    shutil.rmtree(coco / "val2017")
    with pytest.raises(FileNotFoundError, match=rf"{esc(coco / 'val2017')}: COCO images folder not found, though "
                                                rf"{esc(coco / 'annotations/instances_val2017.json')} is there; .*"
                                                rf"or move {esc(coco)} aside to use the generated set"):
        locate(model, "default")
    assert not generated_anything(data)


@pytest.mark.parametrize("model", COCO_MODELS)
def test_coco_full_profile_names_the_missing_images_folder_not_the_annotation_file(coco, model):
    shutil.rmtree(coco / "val2017")
    with pytest.raises(FileNotFoundError) as error:
        locate(model, "full", num_images=0, require_real=True)
    message = str(error.value)
    assert message.startswith(f"{coco / 'val2017'}: COCO images folder not found"), message
    assert "instances_val2017.json: " not in message and "instances_val2017.json is there" in message


@pytest.mark.parametrize("model", COCO_MODELS)
def test_coco_images_without_annotation_file_name_it(coco, data, model):
    annotation = coco / "annotations" / "instances_val2017.json"
    annotation.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{esc(annotation)}: COCO annotation file not found, "
                                                rf"though {esc(coco / 'val2017')} is there"):
        locate(model, "default")
    assert not generated_anything(data)


def test_coco_missing_image_files_are_named_before_01_data_overwrites(coco):
    run = open_run("yolact_edge", "smoke")
    dataset, provenance = steps.locate_data(run, num_images=0)
    assert provenance["kind"] == "real" and len(dataset) == 3
    steps.prepare_data(run, dataset, provenance)
    inputs = run.folder / "inputs"
    before = snapshot(inputs)
    assert {Path("0.bin"), Path("ids.json"), Path("manifest.json")} <= set(before)
    for name in ("000000000001.jpg", "000000000003.jpg"):
        (coco / "val2017" / name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{esc(coco / 'val2017')}: 2 of the 3 images listed in "
                                                rf"{esc(coco / 'annotations/instances_val2017.json')} are missing "
                                                r"\(000000000001.jpg, 000000000003.jpg\)"):
        steps.locate_data(run, num_images=0)
    assert snapshot(inputs) == before


def _rewrite(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("model", COCO_MODELS)
def test_coco_annotation_file_with_no_images_says_so(coco, model):
    annotation = coco / "annotations" / "instances_val2017.json"
    _rewrite(annotation, images=[], annotations=[])
    with pytest.raises(AnnotationError, match=rf"{esc(annotation)}: holds no images "
                                              r"\(its \"images\" list is empty\)"):
        locate(model, "default")


def test_coco_annotation_file_with_no_annotated_image_says_so(coco):
    annotation = coco / "annotations" / "instances_val2017.json"
    _rewrite(annotation, annotations=[])
    with pytest.raises(AnnotationError, match=rf"{esc(annotation)}: none of its 4 images has an annotation"):
        locate("yolact_edge", "default")


# ---------------------------------------------------------------------------------------
# Cityscapes


@pytest.fixture
def cityscapes(data) -> Path:
    """Real-layout Cityscapes val under data/cityscapes: 2 small images with their label ids."""
    write_synthetic_cityscapes(data / "cityscapes", 2, size=(32, 64), seed=0)
    return data / "cityscapes"


def locate_cityscapes():
    return locate("semask", "smoke", num_images=0, size=(32, 64))


@pytest.mark.parametrize("absent, present", [("gtFine", "leftImg8bit"), ("leftImg8bit", "gtFine")])
def test_cityscapes_half_present_names_the_missing_folder(cityscapes, data, absent, present):
    shutil.rmtree(cityscapes / absent)
    with pytest.raises(FileNotFoundError, match=rf"{esc(cityscapes / absent / 'val')}: Cityscapes folder "
                                                rf"not found, though {esc(cityscapes / present / 'val')} is "
                                                rf"there; unpack {absent}_trainvaltest.zip into {esc(cityscapes)}"):
        locate_cityscapes()
    assert not generated_anything(data)


def test_cityscapes_image_without_label_file_is_named(cityscapes):
    label = sorted((cityscapes / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))[1]
    label.unlink()
    with pytest.raises(CityscapesFormatError, match=rf"{esc(label)}: label file missing for .*_leftImg8bit.png "
                                                    r"\(1 of the 2 images have none\)"):
        locate_cityscapes()
