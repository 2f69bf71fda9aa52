"""SeMask's input side (reading the PNG, mmseg's Normalize with to_rgb, the NCHW batch)
against a verbatim copy of the implementation it replaced: the arrays must be bit-identical
(values, dtypes, layout) for every uint8 value in every channel, on random images and
batches, strided inputs, other dtypes, and through the port's ``read_image`` /
``input_tensor`` on PNGs at and away from the graph's input size."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from zoobook.data.images import lookup_planes
from zoobook.models.semask.export import MEAN_RGB, STD_RGB, normalize
from zoobook.models.semask.port import input_tensor, read_image
from zoobook.timing import recording

# ---------------------------------------------------------------------------------------
# The oracle: the pre-optimisation implementation (lib/zoobook/models/semask/export.py
# ``normalize`` and port.py ``read_image`` / ``input_tensor`` as of 2f66af6), copied verbatim
# apart from names. Do not "fix" it: it is the specification.


def oracle_normalize(rgb: np.ndarray) -> np.ndarray:
    batch = rgb[None] if rgb.ndim == 3 else rgb
    centred = (batch.astype(np.float64) - MEAN_RGB.astype(np.float64)).astype(np.float32)
    x = (centred.astype(np.float64) * (1 / STD_RGB.astype(np.float64))).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def oracle_read_image(run, index: int) -> np.ndarray:
    path = run.manifest["images"][index]["image"]
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{path}: image missing or unreadable; rerun 01-data")
    height, width = run.manifest["input_size"]
    if bgr.shape[:2] != (height, width):
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def oracle_input_tensor(run, indices: list[int]) -> np.ndarray:
    return np.concatenate([oracle_normalize(oracle_read_image(run, i)) for i in indices])


def assert_identical(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape, (got.dtype, got.shape, expected.shape)
    assert got.flags.c_contiguous
    assert got.tobytes() == expected.tobytes(), f"{np.sum(got != expected)} values differ"


# ---------------------------------------------------------------------------------------
# normalize


def test_every_value_in_every_channel():
    values = np.arange(256, dtype=np.uint8)
    rgb = np.stack([values, values[::-1], np.roll(values, 7)], axis=-1).reshape(16, 16, 3)
    assert_identical(normalize(rgb), oracle_normalize(rgb))
    every = np.repeat(values[None, :, None], 3, axis=2)  # [1, 256, 3]: each value in each channel
    assert_identical(normalize(every), oracle_normalize(every))


@pytest.mark.parametrize("shape", [(1, 1, 3), (37, 53, 3), (2, 64, 96, 3), (1, 256, 512, 3)])
def test_random_images_and_batches(shape):
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    assert_identical(normalize(rgb), oracle_normalize(rgb))


def test_bgr_with_to_rgb_is_the_flipped_image():
    bgr = np.random.default_rng(1).integers(0, 256, (3, 40, 70, 3), dtype=np.uint8)
    assert_identical(normalize(bgr, to_rgb=True), oracle_normalize(np.ascontiguousarray(bgr[..., ::-1])))
    assert_identical(normalize(bgr[0], to_rgb=True), oracle_normalize(bgr[0, :, :, ::-1]))


def test_strided_inputs():
    base = np.random.default_rng(2).integers(0, 256, (60, 90, 4), dtype=np.uint8)
    for view in (base[:, :, ::-1][:, :, :3], base[::2, 1::3, :3], base[:, :, :3].transpose(1, 0, 2)):
        assert_identical(normalize(view), oracle_normalize(view))


def test_writes_into_out_and_returns_it():
    rgb = np.random.default_rng(3).integers(0, 256, (2, 24, 32, 3), dtype=np.uint8)
    out = np.full((3, 3, 24, 32), np.nan, np.float32)
    assert normalize(rgb[1], out=out[1:2]) is not None
    assert_identical(out[1:2].copy(), oracle_normalize(rgb[1]))
    assert np.isnan(out[0]).all() and np.isnan(out[2]).all()
    assert normalize(rgb, out=out[:2]).base is out


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_other_dtypes_are_computed_as_before(dtype):
    values = np.random.default_rng(4).uniform(-20, 300, (2, 9, 11, 3))
    image = values.astype(dtype)
    assert_identical(normalize(image), oracle_normalize(image))


def test_lookup_planes_checks_its_arguments():
    image = np.zeros((4, 5, 3), np.uint8)
    tables = np.zeros((3, 256), np.float32)
    with pytest.raises(ValueError, match="uint8"):
        lookup_planes(image.astype(np.float32), tables, np.empty((3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        lookup_planes(image, tables, np.empty((3, 5, 4), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        lookup_planes(image, tables, np.empty((3, 4, 5), np.float64))


# ---------------------------------------------------------------------------------------
# read_image and input_tensor on PNGs


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("semask_pngs")
    rng = np.random.default_rng(5)
    paths = []
    for k, (h, w) in enumerate([(64, 128), (64, 128), (50, 70)]):  # the last one is resized on reading
        smooth = cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h))
        image = np.clip(smooth.astype(np.int16) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"image{k}.png"
        cv2.imwrite(str(path), image)
        paths.append(str(path))
    return paths


def _run(paths, size=(64, 128)):
    return SimpleNamespace(manifest={"input_size": list(size), "images": [{"image": p} for p in paths]})


@pytest.mark.parametrize("size", [(64, 128), (32, 96)])
def test_read_image_and_input_tensor_are_bit_identical(pngs, size):
    run = _run(pngs, size)
    for i in range(len(pngs)):
        assert_identical(read_image(run, i), oracle_read_image(run, i))
        bgr = read_image(run, i, rgb=False)
        assert_identical(bgr, np.ascontiguousarray(oracle_read_image(run, i)[:, :, ::-1]))
    assert_identical(input_tensor(run, [0, 1, 2, 0]), oracle_input_tensor(run, [0, 1, 2, 0]))
    assert_identical(input_tensor(run, [2]), oracle_input_tensor(run, [2]))


def test_reading_marks_read_and_preprocess(pngs):
    with recording() as clock:
        input_tensor(_run(pngs), [0, 2])
    assert set(clock.ms) == {"read", "preprocess"} and clock.calls["read"] == 2


def test_a_missing_image_is_named(tmp_path):
    missing = str(tmp_path / "gone.png")
    with pytest.raises(FileNotFoundError, match="gone.png: image missing or unreadable"):
        input_tensor(_run([missing]), [0])
