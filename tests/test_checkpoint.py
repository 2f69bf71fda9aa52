"""Strict loading of YolactEdge checkpoints in the official layout, and its errors."""

from __future__ import annotations

import pytest
import torch

from zoobook.checkpoints import CheckpointError
from zoobook.models.yolact_edge.checkpoint import (build, official_manifest, official_to_zoobook,
                                                   recipe_state_dict)
from zoobook.models.yolact_edge.network import YolactEdge


@pytest.fixture(scope="module")
def official_state():
    return recipe_state_dict()


def test_manifest_and_recipe_have_the_official_layout(official_state):
    manifest = official_manifest()
    assert len(manifest) == 354
    assert list(official_state) == [e["key"] for e in manifest]
    assert all(tuple(official_state[e["key"]].shape) == tuple(e["shape"]) for e in manifest)


def test_mapping_covers_every_key_of_the_model(official_state):
    mapped = official_to_zoobook(official_state)
    expected = YolactEdge().state_dict()
    assert set(mapped) == set(expected)
    assert mapped["fpn.lateral.c5.weight"].shape == (256, 2048, 1, 1)  # lat_layers.0 acts on C5
    assert mapped["fpn.output.p5.weight"] is official_state["fpn_phase_2.pred_layers.0.weight"]


def test_official_file_loads_strictly(tmp_path, official_state):
    path = tmp_path / "yolact_edge_resnet50_54_800000.pth"
    torch.save(official_state, path)
    model, provenance = build(path)
    assert provenance["kind"] == "official" and len(provenance["sha256"]) == 64
    assert torch.equal(model.head.cls.weight, official_state["prediction_layers.0.conf_layer.weight"])


def test_wrapped_fp16_dataparallel_and_yolact_style_keys_load(tmp_path, official_state):
    renamed = {}
    for key, value in official_state.items():
        key = key.replace("fpn_phase_1.", "fpn.").replace("fpn_phase_2.", "fpn.")
        renamed["module." + key] = value.half() if value.is_floating_point() else value
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": renamed}, path)
    model, _ = build(path)
    assert model.fpn.lateral["c3"].weight.dtype == torch.float32


def test_wrong_keys_fail_with_the_list(tmp_path, official_state):
    broken = dict(official_state)
    del broken["proto_net.10.weight"]
    broken["proto_net.12.weight"] = torch.zeros(1)
    broken["prediction_layers.0.bbox_layer.bias"] = torch.zeros(7)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError) as err:
        build(path)
    message = str(err.value)
    assert str(path) in message
    assert "missing keys: protonet.proto.weight" in message
    assert "as the official file names them: proto_net.10.weight" in message
    assert "unexpected keys: proto_net.12.weight" in message  # as the file spells it
    assert "prediction_layers.0.bbox_layer.bias (head.box.bias here): file (7,) vs model (12,)" in message


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth: checkpoint file not found"):
        build(tmp_path / "nothere.pth")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"this is not a zip archive or a pickle")
    with pytest.raises(CheckpointError, match="corrupt.pth: not a readable PyTorch checkpoint"):
        build(path)


def test_non_tensor_pickle_is_refused(tmp_path):
    path = tmp_path / "object.pth"
    torch.save({"epoch": 3, "note": "no tensors"}, path)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        build(path)
