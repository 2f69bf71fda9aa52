"""SiamMask training pieces: the crop511 reader and generator, anchor targets on hand-made
boxes, each loss against a value computed by hand, and the training pairs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from zoobook.data.crop511 import BASE_SUBSETS, Crop511Error, Crop511Subset, read_index, target_size, \
    write_synthetic_crop511
from zoobook.models.siammask import training as T


# ----------------------------------------------------------------------------- anchors


def test_training_anchors_are_the_tracker_grid_on_the_search_crop():
    anchors = T.training_anchors()
    assert anchors.shape == (5, 25, 25, 4)
    assert anchors[2, 12, 12].tolist() == [95, 95, 159, 159]  # 64 x 64 at the crop centre 127
    assert anchors[0, 0, 0].tolist() == [31 - 52, 31 - 16, 31 + 52, 31 + 16]  # 104 x 32 at (31, 31)
    assert anchors[4, 24, 3].tolist() == [55 - 16, 223 - 48, 55 + 16, 223 + 48]  # 32 x 96 at (55, 223)


def test_anchor_targets_on_a_box_equal_to_the_central_anchor():
    rng = np.random.RandomState(0)
    box = np.array([95.0, 95.0, 159.0, 159.0])
    t = T.anchor_targets(box, negative_pair=False, rng=rng)
    # IoU 1 at the centre; 8 px off: 56*64 / (2*64*64 - 56*64) = 0.778 > 0.6; 16 px off: exactly 0.6, ignored
    assert t["iou"][2, 12, 12] == pytest.approx(1.0)
    assert t["iou"][2, 12, 13] == pytest.approx(3584 / 4608)
    assert t["iou"][2, 12, 14] == pytest.approx(0.6)
    assert t["label"][2, 12, 12] == 1 and t["label"][2, 12, 13] == 1 and t["label"][2, 12, 14] == -1
    positives, negatives = (t["label"] == 1).sum(), (t["label"] == 0).sum()
    assert positives == (t["iou"] > 0.6).sum() <= 16 and positives + negatives == 64
    assert np.all(t["iou"][t["label"] == 0] < 0.3)
    assert t["delta"][:, 2, 12, 12].tolist() == [0, 0, 0, 0]
    assert t["delta_weight"].sum() == pytest.approx(1.0)
    assert t["delta_weight"][2, 12, 12] == pytest.approx(1 / positives)
    assert t["mask_weight"][12, 12] == 1 and t["mask_weight"].sum() == (t["label"] == 1).any(axis=0).sum()


def test_anchor_targets_deltas_of_a_shifted_and_scaled_box():
    box = np.array([99.0, 95.0, 163.0, 159.0 + 64.0])  # centre +4 in x, +32 in y; 64 x 128
    t = T.anchor_targets(box, negative_pair=False, rng=np.random.RandomState(0))
    assert t["delta"][:, 2, 12, 12] == pytest.approx([4 / 64, 32 / 64, 0.0, math.log(2)])


def test_anchor_targets_keep_at_most_16_positives_at_random():
    box = np.array([90.0, 100.0, 164.0, 154.0])  # 74 x 54 at the centre: 18 anchors above 0.6
    t = T.anchor_targets(box, negative_pair=False, rng=np.random.RandomState(1))
    u = T.anchor_targets(box, negative_pair=False, rng=np.random.RandomState(2))
    assert (t["iou"] > 0.6).sum() == 18
    assert (t["label"] == 1).sum() == 16 == (u["label"] == 1).sum() and (t["label"] == 0).sum() == 48
    assert not np.array_equal(t["label"], u["label"])  # which 16: random
    assert np.all(t["iou"][t["label"] == 1] > 0.6)


def test_anchor_targets_of_a_negative_pair_come_from_the_central_cells():
    t = T.anchor_targets(np.array([95.0, 95.0, 159.0, 159.0]), negative_pair=True, rng=np.random.RandomState(0))
    assert set(np.unique(t["label"])) == {-1, 0} and (t["label"] == 0).sum() == 16
    rows, cols = np.nonzero((t["label"] == 0).any(axis=0))
    assert rows.min() >= 9 and rows.max() <= 15 and cols.min() >= 9 and cols.max() <= 15
    assert t["delta_weight"].sum() == 0 and t["mask_weight"].sum() == 0


# ----------------------------------------------------------------------------- losses


def test_classification_loss_by_hand():
    score = torch.zeros(1, 10, 1, 1)
    score[0, 0], score[0, 5] = 0.5, 2.0  # anchor 0: bg 0.5, fg 2.0 -> positive
    score[0, 1], score[0, 6] = 1.0, -1.0  # anchor 1: bg 1.0, fg -1.0 -> negative
    label = torch.tensor([1, 0, -1, -1, -1]).view(1, 5, 1, 1)
    pos = -(2.0 - math.log(math.exp(0.5) + math.exp(2.0)))
    neg = -(1.0 - math.log(math.exp(1.0) + math.exp(-1.0)))
    assert float(T.classification_loss(score, label)) == pytest.approx(0.5 * pos + 0.5 * neg)
    only_negatives = torch.tensor([-1, 0, -1, -1, -1]).view(1, 5, 1, 1)
    assert float(T.classification_loss(score, only_negatives)) == pytest.approx(0.5 * neg)


def test_box_loss_is_plain_l1_weighted_and_divided_by_the_batch():
    delta = torch.zeros(2, 20, 1, 1)
    target = torch.zeros(2, 4, 5, 1, 1)
    target[0, :, 3] = torch.tensor([0.1, -0.2, 2.0, 0.0]).view(4, 1, 1)  # |err| sums to 2.3 (no smooth-L1 at 2.0)
    target[1, :, 0] = torch.tensor([1.0, 1.0, 1.0, 1.0]).view(4, 1, 1)
    weight = torch.zeros(2, 5, 1, 1)
    weight[0, 3], weight[1, 0], weight[1, 1] = 1.0, 0.5, 0.5
    assert float(T.box_loss(delta, target, weight)) == pytest.approx((2.3 + 0.5 * 4.0) / 2)


def test_mask_loss_by_hand_inside_and_at_the_padded_border():
    logits = torch.zeros(1, 3969, 25, 25)
    logits[0, :, 12, 12], logits[0, :, 0, 0] = 1.5, -0.5
    labels = torch.ones(1, 255, 255)
    labels[0, 64:191, 64:128] = -1  # the left half (64 of 127 columns) of cell (12, 12)'s window
    weight = torch.zeros(1, 25, 25)
    weight[0, 12, 12] = 1
    loss, iou = T.mask_loss(logits, labels, weight)
    expected = (64 * math.log1p(math.exp(1.5)) + 63 * math.log1p(math.exp(-1.5))) / 127
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert iou["iou_mean"] == pytest.approx(63 / 127)  # predicted all object; 63 columns are
    weight[0, 12, 12], weight[0, 0, 0] = 0, 1  # cell (0, 0): window from (-32, -32), 32 rows and columns padded
    loss, _ = T.mask_loss(logits, torch.ones(1, 255, 255), weight)
    inside = 95 * 95 / 127 ** 2
    assert float(loss) == pytest.approx(inside * math.log1p(math.exp(0.5)) + (1 - inside) * math.log(2), rel=1e-6)


def test_mask_windows_read_at_stride_8_from_minus_32():
    labels = torch.zeros(2, 255, 255)
    labels[1, 8 * 6 - 32 + 5, 8 * 7 - 32 + 9] = 1  # pixel (5, 9) of cell (row 6, col 7) of sample 1
    window = T.mask_windows(labels, torch.tensor([[1, 6]]), torch.tensor([7]))
    assert window.shape == (1, 127, 127) and window[0, 5, 9] == 1 and window.sum() == 1


def test_total_loss_weights_are_the_named_presets():
    assert (T.REFERENCE_WEIGHTS.cls, T.REFERENCE_WEIGHTS.loc, T.REFERENCE_WEIGHTS.mask) == (1.0, 1.2, 36.0)
    assert (T.PORT_WEIGHTS.cls, T.PORT_WEIGHTS.loc, T.PORT_WEIGHTS.mask) == (1.0, 1.0, 32.0)
    score, delta, mask = torch.randn(1, 10, 25, 25), torch.randn(1, 20, 25, 25), torch.randn(1, 3969, 25, 25)
    t = T.anchor_targets(np.array([95.0, 95.0, 159.0, 159.0]), negative_pair=False, rng=np.random.RandomState(0))
    targets = {k: torch.from_numpy(v)[None] for k, v in t.items()}
    targets["mask_label"] = torch.ones(1, 255, 255)
    total, parts = T.total_loss((score, delta, mask), targets, T.PORT_WEIGHTS)
    assert float(total) == pytest.approx(parts["cls"] + parts["loc"] + 32 * parts["mask"], rel=1e-6)


# ----------------------------------------------------------------------------- crop511


@pytest.fixture(scope="module")
def crop_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("crop511")
    for config in BASE_SUBSETS:
        write_synthetic_crop511(root, config, videos=3, frames=4, seed=len(config.name))
    return root


def test_generated_crops_read_back_in_the_layout(crop_root):
    ytb = Crop511Subset(BASE_SUBSETS[0], crop_root)
    assert len(ytb) == 3 and ytb.video_names[0].startswith("train/")
    track = ytb.tracks[0]
    assert track.frames == ["000000", "000001", "000002", "000003"]
    assert ytb.crop_path(track.video, track.track, "000002").name == "000002.00.x.jpg"
    image, box, mask = ytb.load(track, "000002", mask=True)
    assert image.shape == (511, 511, 3) and mask.shape == (511, 511)
    w, h = target_size(track.boxes["000002"])
    assert box == pytest.approx([255 - w / 2, 255 - h / 2, 255 + w / 2, 255 + h / 2])
    ys, xs = np.nonzero(mask)
    assert xs.min() == pytest.approx(box[0], abs=2) and ys.max() == pytest.approx(box[3], abs=2)
    vid = Crop511Subset(BASE_SUBSETS[1], crop_root)
    assert vid.load(vid.tracks[0], vid.tracks[0].frames[0], mask=True)[2] is None  # VID has no masks
    coco = Crop511Subset(BASE_SUBSETS[2], crop_root)
    assert all(t.frames == ["000000"] for t in coco.tracks)  # images: one frame per object


def test_target_size_is_the_template_scale():
    w, h = target_size([10, 20, 110, 70])  # 100 x 50, context 75: s_z = sqrt(175 * 125)
    assert (w, h) == pytest.approx((100 * 127 / math.sqrt(175 * 125), 50 * 127 / math.sqrt(175 * 125)))


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "expected {video"),
    ("{not json", "not valid JSON"),
    ('{"v": [1, 2]}', "video 'v' must map track ids"),
    ('{"v": {"00": {"000000": [1, 2, 3]}}}', "'v' track '00' frame '000000': expected \\[x1, y1, x2, y2\\]"),
    ('{"v": {"00": {"000000": [5, 5, 5, 9]}}}', "no track with a non-empty box"),
])
def test_malformed_index_is_named(tmp_path, content, message):
    path = tmp_path / "train.json"
    path.write_text(content)
    with pytest.raises(Crop511Error, match=f"{path}: .*{message}|{path}: {message}"):
        read_index(path)


def test_zero_size_boxes_are_dropped(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"v": {"00": {"000000": [0, 0, 0, 5], "000001": [0, 0, 4, 5]}}}))
    (track,) = read_index(path)
    assert track.frames == ["000001"]


def test_missing_crop_folder_and_crop_file_are_named(crop_root, tmp_path):
    with pytest.raises(Crop511Error, match=f"{tmp_path / 'ytb_vos' / 'crop511'}: crop folder of ytb_vos not found"):
        Crop511Subset(BASE_SUBSETS[0], tmp_path)
    det = Crop511Subset(BASE_SUBSETS[3], crop_root)
    track = det.tracks[0]
    path = det.crop_path(track.video, track.track, track.frames[0])
    path.rename(path.with_suffix(".bak"))
    try:
        with pytest.raises(Crop511Error, match=f"{path}: crop missing"):
            det.load(track, track.frames[0], mask=False)
    finally:
        path.with_suffix(".bak").rename(path)


# ----------------------------------------------------------------------------- pairs


def test_pairs_are_a_function_of_seed_epoch_and_index(crop_root):
    from zoobook.models.siammask.train_data import PairDataset

    subsets = [Crop511Subset(c, crop_root) for c in BASE_SUBSETS]
    data = PairDataset(subsets, 12, seed=5)
    again = PairDataset(subsets, 12, seed=5)
    first, second = data[3], again[3]
    assert all(torch.equal(first[k], second[k]) for k in first)
    data.set_epoch(1)
    assert not torch.equal(data[3]["search"], first["search"])
    assert first["template"].shape == (3, 127, 127) and first["search"].shape == (3, 255, 255)
    assert first["mask_label"].shape == (255, 255)
    samples = [again[i] for i in range(12)]
    for s in samples:
        if s["negative"]:
            assert not (s["label"] == 1).any() and s["mask_weight"].sum() == 0
        else:
            assert (s["label"] == 1).any()  # the target is centred at the template's scale: anchors fit it
    assert any(s["mask_weight"].sum() > 0 for s in samples)


# ----------------------------------------------------------------------------- schedule and training


def test_reference_schedule_values():
    from zoobook.models.siammask.train import PRESETS, lr_schedule, unfreeze_epoch

    reference = lr_schedule(PRESETS["reference"])
    assert len(reference) == 20 and unfreeze_epoch(PRESETS["reference"]) == 10
    assert reference[:5] == pytest.approx([0.001 * 5 ** (k / 5) for k in range(5)])
    assert reference[5] == pytest.approx(0.005) and reference[6] == pytest.approx(0.005 * 0.5 ** (1 / 14))
    assert reference[-1] == pytest.approx(0.0025)
    assert lr_schedule(PRESETS["ascend-port"])[-1] == pytest.approx(0.0005)
    assert PRESETS["ascend-port"].batch_per_device and not PRESETS["reference"].batch_per_device


def test_trunk_frozen_then_layer2_and_layer3_at_a_tenth(tmp_path):
    from zoobook.models.siammask.network import SiamMask
    from zoobook.models.siammask.train import PRESETS, make_optimizer, set_modes, set_trainable

    model = SiamMask(refine=False)
    set_trainable(model, trunk=False)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("backbone."))
    set_trainable(model, trunk=True)
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad}
    assert trainable == {"layer2", "layer3"}
    optimizer = make_optimizer(model, PRESETS["reference"], 0.01)
    lrs = {g["name"].split(".")[0]: g["lr"] for g in optimizer.param_groups}
    assert lrs["backbone"] == pytest.approx(0.001) and lrs["cls"] == lrs["adjust"] == lrs["mask"] == 0.01
    set_modes(model)
    assert not model.backbone.training and not model.backbone.layer3[0].bn1.training
    assert model.adjust[1].training and model.cls.head[1].training


def test_official_names_round_trip():
    from zoobook.models.siammask.checkpoint import official_to_zoobook
    from zoobook.models.siammask.network import SiamMask
    from zoobook.models.siammask.train import zoobook_to_official

    state = SiamMask(refine=False).state_dict()
    official = zoobook_to_official(state)
    assert "features.features.layer3.5.bn3.running_var" in official
    assert "rpn_model.cls.conv_kernel.0.weight" in official and "mask_model.mask.head.3.weight" in official
    assert list(official_to_zoobook(official)) == list(state)
    from zoobook.models.siammask.checkpoint import official_manifest

    base_keys = {e["key"] for e in official_manifest() if not e["key"].startswith("refine_model.")}
    assert set(official) == base_keys  # the base checkpoint's layout: the sharp model's keys without refine


def _torchrun(*args: str, processes: int = 2) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_one_ddp_step_on_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    """2 gloo processes with 2 pairs each against one process with all 4: gradients are
    averaged over the processes, so the parameters after the step agree to float32 rounding
    (sums taken in another order): within 1e-6 absolute."""
    from . import ddp_step

    ddp_step.main(str(tmp_path / "single.pt"))
    _torchrun(str(Path(ddp_step.__file__)), str(tmp_path / "ddp.pt"))
    single, ddp = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    from zoobook.models.siammask.checkpoint import build

    start = build(None, refine=False)[0].state_dict()
    moved = [k for k in single if not torch.equal(single[k], start[k])]
    assert any(k.startswith("backbone.layer3") for k in moved) and any(k.startswith("mask.") for k in moved)
    assert not any(k.startswith("backbone.layer1") for k in moved)  # frozen
    for key in single:
        assert torch.allclose(single[key].float(), ddp[key].float(), rtol=0, atol=1e-6), key


@pytest.fixture(scope="module")
def tiny_preset():
    from dataclasses import replace

    from zoobook.models.siammask.train import PRESETS

    # 3 epochs: warm-up 1, trunk unfrozen from epoch 1; 2 steps of 2 pairs per epoch
    return replace(PRESETS["reference"], epochs=3, batch_size=2, pairs_per_epoch=4)


def test_resuming_from_a_checkpoint_continues_exactly(crop_root, tmp_path, tiny_preset):
    from zoobook.models.siammask.train import train

    straight = train(crop_root, tmp_path / "straight", preset=tiny_preset, progress=False)
    train(crop_root, tmp_path / "resumed", preset=tiny_preset, progress=False, max_epochs=2)  # stopped after 2
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint_e*.pth")) == [
        "checkpoint_e1.pth", "checkpoint_e2.pth"]
    resumed = train(crop_root, tmp_path / "resumed", preset=tiny_preset, progress=False, resume=True)
    assert resumed["resumed_from"].endswith("checkpoint_e2.pth")
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in straight["epochs"]]
    a = torch.load(tmp_path / "straight" / "checkpoint_e3.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "checkpoint_e3.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e["trunk_trainable"] for e in straight["epochs"]] == [False, True, True]


def test_the_same_entry_point_runs_on_two_processes(crop_root, tmp_path):
    _torchrun("-m", "zoobook.models.siammask.train", "--data", str(crop_root), "--out", str(tmp_path),
              "--epochs", "1", "--batch-size", "4", "--pairs", "8")
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["world"] == 2 and log["local_batch"] == 2 and log["global_batch"] == 4
    assert log["epochs"][0]["steps"] == 2 and (tmp_path / "checkpoint_e1.pth").is_file()


def test_a_training_checkpoint_loads_into_the_base_model(crop_root, tmp_path, tiny_preset):
    from dataclasses import replace

    from zoobook.models.siammask.checkpoint import build
    from zoobook.models.siammask.train import train

    train(crop_root, tmp_path, preset=replace(tiny_preset, epochs=1), progress=False)
    model, provenance = build(tmp_path / "checkpoint_e1.pth", refine=False)
    assert provenance["kind"] == "checkpoint" and provenance["path"].endswith("checkpoint_e1.pth")


# ----------------------------------------------------------------------------- pretrained trunk, mixed precision


def _resnet_model(path: Path, *, drop: str | None = None, reshape: str | None = None) -> dict:
    """A stand-in for the authors' ImageNet ``resnet.model``: SiamMask's trunk keys with
    values other than the recipe's, plus the layer4 and fc keys the file also carries."""
    from zoobook.models.siammask.network import SiamMask

    g = torch.Generator().manual_seed(3)
    state = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in SiamMask(refine=False).backbone.state_dict().items()}
    state["layer4.0.conv1.weight"] = torch.zeros(512, 1024, 1, 1)
    state["fc.weight"] = torch.zeros(1000, 2048)
    if drop:
        del state[drop]
    if reshape:
        state[reshape] = torch.zeros(1, 1, 1, 1)
    torch.save(state, path)
    return state


def test_the_imagenet_trunk_file_loads_into_the_trunk_only(tmp_path):
    from zoobook.models.siammask.network import SiamMask
    from zoobook.models.siammask.train import load_pretrained_trunk

    state = _resnet_model(tmp_path / "resnet.model")
    model = SiamMask(refine=False)
    heads = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    provenance = load_pretrained_trunk(model, tmp_path / "resnet.model")
    assert provenance["kind"] == "pretrained trunk" and provenance["unused"] == ["fc", "layer4"]
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(torch.equal(v, heads[k]) for k, v in model.state_dict().items() if k in heads)


@pytest.mark.parametrize("change, named", [
    (dict(drop="layer3.5.bn3.running_var"), "missing keys: ['layer3.5.bn3.running_var']"),
    (dict(reshape="layer2.0.downsample.0.weight"), "shape mismatches: ['layer2.0.downsample.0.weight']"),
])
def test_a_trunk_file_that_does_not_fit_is_an_error_naming_the_keys(tmp_path, change, named):
    from zoobook.checkpoints import CheckpointError
    from zoobook.models.siammask.network import SiamMask
    from zoobook.models.siammask.train import load_pretrained_trunk

    _resnet_model(tmp_path / "resnet.model", **change)
    with pytest.raises(CheckpointError) as err:
        load_pretrained_trunk(SiamMask(refine=False), tmp_path / "resnet.model")
    assert str(tmp_path / "resnet.model") in str(err.value) and named in str(err.value)


def test_training_starts_from_data_weights_resnet_model_when_present(crop_root, tmp_path, monkeypatch):
    from zoobook.models.siammask.train import main

    (tmp_path / "data" / "weights").mkdir(parents=True)
    _resnet_model(tmp_path / "data" / "weights" / "resnet.model")
    monkeypatch.setenv("ZOOBOOK_DATA", str(tmp_path / "data"))
    main(["--data", str(crop_root), "--out", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "2",
          "--pairs", "2"])
    init = json.loads((tmp_path / "out" / "train_log.json").read_text())["init"]
    assert init["kind"] == "pretrained trunk" and init["path"] == str(tmp_path / "data" / "weights" / "resnet.model")


def _one_step(preset, scaler=None):
    from tests.ddp_step import fixed_batch
    from zoobook.models.siammask.checkpoint import build
    from zoobook.models.siammask.train import make_optimizer, set_trainable, train_step

    model, _ = build(None, refine=False)
    set_trainable(model, trunk=False)
    model.eval()
    optimizer = make_optimizer(model, preset, 0.01)
    parts = train_step(model, optimizer, fixed_batch(), preset, scaler)
    return parts, model.state_dict()


def test_a_scaled_loss_is_unscaled_before_clipping():
    """The port's loss scale (128) must not change the step: gradients are unscaled before
    they are clipped to norm 10. The batch's gradient norm is above 10 / 128, so clipping the
    scaled gradients would have shrunk this step."""
    from tests.ddp_step import fixed_batch
    from zoobook.models.siammask.checkpoint import build
    from zoobook.models.siammask.train import CLIP_NORM, PRESETS, set_trainable
    from zoobook.models.siammask.training import total_loss

    model, _ = build(None, refine=False)
    set_trainable(model, trunk=False)
    model.eval()
    batch = fixed_batch()
    total_loss(model(batch["template"], batch["search"])[:3], batch, PRESETS["reference"].weights)[0].backward()
    norm = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm()
    assert norm > CLIP_NORM / 128

    plain_parts, plain = _one_step(PRESETS["reference"])
    scaled_parts, scaled = _one_step(PRESETS["reference"], torch.amp.GradScaler("cpu", init_scale=128.0))
    assert scaled_parts["loss"] == plain_parts["loss"]
    for key in plain:
        assert torch.allclose(plain[key], scaled[key], rtol=0, atol=1e-7), key


def test_mixed_precision_runs_the_forward_in_bfloat16_on_a_cpu():
    from dataclasses import replace

    from zoobook.models.siammask.train import PRESETS

    full_parts, _ = _one_step(PRESETS["reference"])
    amp_parts, amp = _one_step(replace(PRESETS["reference"], amp=True))
    assert math.isfinite(amp_parts["loss"]) and all(torch.isfinite(v).all() for v in amp.values())
    assert amp_parts["loss"] != full_parts["loss"]  # the forward did run in lower precision
    assert amp_parts["loss"] == pytest.approx(full_parts["loss"], rel=0.05)
