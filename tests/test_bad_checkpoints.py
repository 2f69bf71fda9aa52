"""Bad inputs end in a short error naming the file and the problem, before any work: a
checkpoint of another model, ``--resume`` over a truncated training checkpoint, and the
ascend backend where no NPU is usable (driven with the FAKE Ascend tools of tests/fakes)."""

from __future__ import annotations

import io
import os
import stat
import sys
from importlib import import_module

import pytest
import torch

from zoobook.checkpoints import CheckpointError, guess_layout
from zoobook.models import MODELS



@pytest.fixture(scope="module")
def recipes() -> dict[str, dict[str, torch.Tensor]]:
    """Each model's golden-recipe weights in its official layout, plus SiamMask's base model
    (no ``refine_model.*``) as a training checkpoint holds it."""
    states = {m: import_module(f"zoobook.models.{m}.checkpoint").recipe_state_dict() for m in MODELS}
    states["siammask_base"] = {k: v for k, v in states["siammask"].items() if not k.startswith("refine_model.")}
    return states


def _build(model: str, path):
    return import_module(f"zoobook.models.{model}.checkpoint").build(path)


# ----------------------------------------------------------------------------- a checkpoint of another model


@pytest.mark.parametrize("file_of, loaded_as, looks_like, counts", [
    ("siammask", "yolact_edge", "SiamMask (VOT, refine)", "301 missing keys, 356 unexpected keys"),
    ("siammask_base", "retinamask", "SiamMask base (no refine module)", "318 missing keys, 324 unexpected keys"),
    ("semask", "siammask", "SeMask-FPN", "303 missing keys, 445 unexpected keys"),
    ("yolact_edge", "semask", "YolactEdge", "unexpected keys"),
    ("retinamask", "yolact_edge", "RetinaMask", "unexpected keys"),
])
def test_a_checkpoint_of_another_model_is_named_in_a_short_message(tmp_path, recipes, file_of, loaded_as,
                                                                    looks_like, counts):
    path = tmp_path / f"{file_of}.pth"
    torch.save({"state_dict": recipes[file_of]}, path)
    with pytest.raises(CheckpointError) as err:
        _build(loaded_as, path)
    message = str(err.value)
    assert message.startswith(f"{path}: checkpoint does not match the ") and counts in message
    assert f"this looks like a {looks_like} checkpoint, not one for" in message
    assert len(message) < 2000 and "... (+" in message  # the first few keys of each list, not all
    # the full lists stay on the exception, the unexpected ones as the file spells them
    assert err.value.unexpected == list(recipes[file_of])
    assert len(err.value.missing) == len(err.value.missing_official) > 100
    assert err.value.details()["guess"] == looks_like


@pytest.mark.parametrize("model", MODELS)
def test_every_model_has_a_known_layout_that_names_its_own_recipe(recipes, model):
    """Each model's official key layout is in KNOWN_LAYOUTS, so a wrong file can say whose it is."""
    guessed = guess_layout(recipes[model])
    assert guessed is not None and guessed[1] == type(_build(model, None)[0]).__name__


def test_missing_keys_are_also_named_as_the_official_file_spells_them(tmp_path, recipes):
    path = tmp_path / "semask.pth"
    torch.save(recipes["semask"], path)
    with pytest.raises(CheckpointError) as err:
        _build("siammask", path)
    # SiamMask renames features.features.* to backbone.*: both spellings are given
    assert "missing keys: backbone.conv1.weight" in str(err.value)
    assert "as the official file names them: features.features.conv1.weight" in str(err.value)
    assert "refine_model.deconv.weight" in err.value.missing_official
    assert "refine.deconv.weight" in err.value.missing
    path = tmp_path / "siammask.pth"
    torch.save(recipes["siammask"], path)
    with pytest.raises(CheckpointError) as err:
        _build("yolact_edge", path)
    assert "proto_net.10.weight" in err.value.missing_official  # YolactEdge's protonet.proto.weight


def test_the_right_model_with_other_keys_gets_no_guess(tmp_path, recipes):
    from zoobook.models.siammask.checkpoint import build

    path = tmp_path / "SiamMask_VOT.pth"
    torch.save(recipes["siammask"], path)
    with pytest.raises(CheckpointError) as err:
        build(path, refine=False)
    message = str(err.value)
    assert f"{path}: checkpoint does not match the SiamMask model (32 unexpected keys; 356 keys in the file)" in message
    assert "32 unexpected keys: refine_model.v0.0.weight" in message and "looks like" not in message


# ----------------------------------------------------------------------------- --resume over a truncated checkpoint


def _training_checkpoint(path, epoch: int, *, truncate: bool = False) -> None:
    """A file in the layout ``train`` writes (``truncate``: its first half, as a copy cut short)."""
    buffer = io.BytesIO()
    torch.save({"epoch": epoch, "arch": "Custom (siammask_base)", "state_dict": {"w": torch.arange(4096.0)},
                "optimizer": {"state": {}, "param_groups": []}, "log": "{}"}, buffer)
    data = buffer.getvalue()
    path.write_bytes(data[:len(data) // 2] if truncate else data)


def test_resume_over_a_truncated_checkpoint_names_it_and_the_previous_complete_one(tmp_path):
    from zoobook.models.siammask.train import PRESETS, main, train

    out = tmp_path / "run"
    out.mkdir()
    _training_checkpoint(out / "checkpoint_e1.pth", 0)
    _training_checkpoint(out / "checkpoint_e2.pth", 1)
    _training_checkpoint(out / "checkpoint_e3.pth", 2, truncate=True)
    with pytest.raises(CheckpointError) as err:  # before any work: the data folder does not even exist
        train(tmp_path / "no-data", out, preset=PRESETS["reference"], resume=True, progress=False)
    message = str(err.value)
    assert f"{out / 'checkpoint_e3.pth'} (" in message and "truncated or corrupt" in message
    assert len(message) < 800  # torch's reason in a sentence, not its paragraph of advice
    assert f"the previous complete checkpoint is {out / 'checkpoint_e2.pth'} (2 epochs)" in message
    assert "delete checkpoint_e3.pth to resume from it" in message
    with pytest.raises(SystemExit) as done:  # the command line: the message, no traceback
        main(["--data", str(tmp_path / "no-data"), "--out", str(out), "--resume"])
    assert "checkpoint_e3.pth" in str(done.value.code) and "truncated or corrupt" in str(done.value.code)


def test_a_run_cut_short_resumes_once_the_broken_checkpoint_is_deleted(tmp_path):
    """A real checkpoint of epoch 1 and a copy of it cut short as epoch 2: the error names
    both; deleting the broken one, as it says, resumes from the first (at the epoch where
    the trunk unfreezes, where the optimiser is rebuilt as in a straight run)."""
    from dataclasses import replace

    from zoobook.data.crop511 import BASE_SUBSETS, write_synthetic_crop511
    from zoobook.models.siammask.train import PRESETS, train, unfreeze_epoch

    data = tmp_path / "crop511"
    write_synthetic_crop511(data, BASE_SUBSETS[0], videos=2, frames=3, seed=0)
    preset = replace(PRESETS["reference"], epochs=2, batch_size=2, pairs_per_epoch=2)  # one step per epoch
    assert unfreeze_epoch(preset) == 1
    out = tmp_path / "run"
    train(data, out, preset=preset, progress=False, max_epochs=1)
    broken = out / "checkpoint_e2.pth"
    broken.write_bytes((out / "checkpoint_e1.pth").read_bytes()[:-4096])
    with pytest.raises(CheckpointError) as err:
        train(data, out, preset=preset, progress=False, resume=True)
    assert f"{broken} (" in str(err.value) and "truncated or corrupt" in str(err.value)
    assert f"the previous complete checkpoint is {out / 'checkpoint_e1.pth'} (1 epochs)" in str(err.value)
    broken.unlink()
    log = train(data, out, preset=preset, progress=False, resume=True)
    assert log["resumed_from"].endswith("checkpoint_e1.pth") and [e["epoch"] for e in log["epochs"]] == [0, 1]
    assert log["epochs"][1]["trunk_trainable"] and log["epochs"][1]["steps"] == 1


def test_resume_over_a_lone_truncated_checkpoint_says_to_start_again(tmp_path):
    from zoobook.models.siammask.train import PRESETS, train

    _training_checkpoint(tmp_path / "checkpoint_e1.pth", 0, truncate=True)
    with pytest.raises(CheckpointError, match=r"checkpoint_e1.pth \(\d+ bytes\): truncated or corrupt.*no earlier "
                                              r"checkpoint .* reads either: delete checkpoint_e1.pth to train from "
                                              r"the start"):
        train(tmp_path / "no-data", tmp_path, preset=PRESETS["reference"], resume=True, progress=False)


# ----------------------------------------------------------------------------- the ascend backend without an NPU


@pytest.fixture
def no_ais_bench(monkeypatch):
    monkeypatch.setitem(sys.modules, "ais_bench", None)  # import ais_bench -> ModuleNotFoundError


@pytest.fixture
def broken_ais_bench(monkeypatch, tmp_path):
    """An ``ais_bench`` that fails as the real one does without the CANN runtime."""
    package = tmp_path / "broken" / "ais_bench"
    (package / "infer").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "infer" / "__init__.py").write_text("")
    (package / "infer" / "interface.py").write_text(
        "raise OSError('libascendcl.so: cannot open shared object file: No such file or directory')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "broken"))
    for name in [m for m in sys.modules if m.startswith("ais_bench")]:
        monkeypatch.delitem(sys.modules, name)


def _path_with_npu_smi(monkeypatch, folder, script: str | None) -> None:
    """PATH with only ``folder`` in front of the system's tools; ``npu-smi`` there runs ``script``."""
    folder.mkdir(exist_ok=True)
    if script is not None:
        exe = folder / "npu-smi"
        exe.write_text(f"#!/bin/sh\n{script}\n")
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}/usr/bin{os.pathsep}/bin")


FAILING_NPU_SMI = "echo 'dcmi module initialize failed. ret is -8005'; exit 255"


def test_ascend_without_ais_bench_and_npu_smi_names_both(monkeypatch, tmp_path, no_ais_bench):
    from zoobook.backends import get_backend
    from zoobook.backends.ascend import AscendError

    _path_with_npu_smi(monkeypatch, tmp_path / "bin", None)
    with pytest.raises(AscendError) as err:
        get_backend("ascend", soc_version="Ascend310P3")
    message = str(err.value)
    assert "ais_bench does not import (ModuleNotFoundError: " in message
    assert "npu-smi is not on PATH" in message and "onnxruntime" in message


def test_ascend_with_a_broken_ais_bench_names_only_it(fake_ascend, broken_ais_bench):
    from zoobook.backends import get_backend
    from zoobook.backends.ascend import AscendError

    with pytest.raises(AscendError) as err:  # the FAKE npu-smi answers
        get_backend("ascend")
    message = str(err.value)
    assert "ais_bench does not import (OSError: libascendcl.so: cannot open shared object file" in message
    assert "npu-smi" not in message


def test_ascend_where_npu_smi_fails_names_it_with_its_output(monkeypatch, tmp_path, fake_ascend):
    from zoobook.backends import get_backend
    from zoobook.backends.ascend import AscendError

    _path_with_npu_smi(monkeypatch, tmp_path / "bin", FAILING_NPU_SMI)  # the FAKE ais_bench imports
    with pytest.raises(AscendError) as err:
        get_backend("ascend")
    message = str(err.value)
    assert "npu-smi info` failed (exit 255): dcmi module initialize failed. ret is -8005" in message
    assert "does not import" not in message


@pytest.mark.parametrize("script, said", [
    (None, "npu-smi is not on PATH"),
    (FAILING_NPU_SMI, "failed (exit 255): dcmi module initialize failed"),
])
def test_compiling_without_soc_version_says_why_no_device_named_the_chip(monkeypatch, tmp_path, script, said):
    from zoobook.backends.ascend import AscendBackend, AscendError

    _path_with_npu_smi(monkeypatch, tmp_path / "bin", script)
    with pytest.raises(AscendError) as err:
        AscendBackend().compile(tmp_path / "m.onnx", tmp_path, input_shapes={"image": [1, 3, 8, 8]})
    message = str(err.value)
    assert said in message and message.index(said) < message.index("soc_version is not set")


def test_opening_a_compiled_graph_without_ais_bench_names_the_file(tmp_path, no_ais_bench):
    from zoobook.backends.ascend import AscendBackend, AscendError

    with pytest.raises(AscendError, match=r"m_bs1.om: cannot run it, ais_bench does not import \(ModuleNotFoundError"):
        AscendBackend(soc_version="Ascend310P3").open(tmp_path / "m_bs1.om")
