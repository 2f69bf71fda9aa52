"""Real weights and datasets dropped under data/ are picked up with no code change; the
full profile refuses to run without them."""

from __future__ import annotations

import pytest
import torch

from zoobook.data.coco import write_synthetic_coco
from zoobook.models import open_run
from zoobook.models.yolact_edge.checkpoint import OFFICIAL_FILENAME, build, recipe_state_dict
from zoobook.stages import steps


def test_full_profile_needs_real_coco():
    with pytest.raises(FileNotFoundError, match="coco/annotations/instances_val2017.json: real COCO val2017 not found"):
        steps.locate_data(open_run("yolact_edge", "full"), num_images=0, require_real=True)


def test_full_profile_needs_official_weights():
    with pytest.raises(FileNotFoundError, match=f"{OFFICIAL_FILENAME}: official weights not found"):
        build(None, allow_recipe=False)


def test_assets_under_data_are_used(monkeypatch, tmp_path):
    monkeypatch.setenv("ZOOBOOK_DATA", str(tmp_path))
    write_synthetic_coco(tmp_path / "coco", num_images=3, seed=5)  # stands in for real val2017
    (tmp_path / "weights").mkdir()
    torch.save(recipe_state_dict(), tmp_path / "weights" / OFFICIAL_FILENAME)
    dataset, provenance = steps.locate_data(open_run("yolact_edge", "full"), num_images=0, require_real=True)
    assert provenance["kind"] == "real" and len(dataset) == 3
    model, weights = build(None, allow_recipe=False)
    assert weights["kind"] == "official" and weights["path"].endswith(OFFICIAL_FILENAME)
