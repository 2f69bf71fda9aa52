"""SiamMask 00-train as library calls: the training data, runs on 1 and N processes through the
one entry point (``python -m zoobook.models.siammask.train``, under ``torchrun`` for N), and
what the notebook shows of them. Each takes the :class:`~zoobook.stages.Run` the notebook
opened (``open_run("siammask", profile)``).

Artifacts: ``runs/<profile>/siammask/artifacts/train/<N>p/`` (checkpoints, ``train_log.json``)
and ``train/checkpoint.json`` (:data:`HANDOFF`), the checkpoint handed to the inference stages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from zoobook.atomic import write_json_atomic
from zoobook.data.crop511 import BASE_SUBSETS, write_synthetic_crop511
from zoobook.resume import generated_once
from zoobook.stages import Run

REAL_ROOT = "siammask_train"  # data/siammask_train/<dataset>/crop511 and the indexes
#: the checkpoint 00-train hands to 04-infer and 05-evaluate, relative to the artifacts
HANDOFF = "train/checkpoint.json"


def training_data(run: Run, *, videos: int = 8, frames: int = 8, require_real: bool = False,
                  seed: int = 0) -> tuple[Path, dict]:
    """Real crop511 datasets under ``data/siammask_train`` when any is there, else a generated
    set of the four datasets in that layout under ``runs/<profile>/datasets/``."""
    from zoobook.data import shown_path
    from zoobook.paths import data_dir, runs_dir

    real = data_dir() / REAL_ROOT
    present = [c.name for c in BASE_SUBSETS if (real / c.crop_dir).is_dir()]
    if present:
        return real, {"kind": "real", "name": f"crop511 training sets: {', '.join(present)}", "root": shown_path(real)}
    if require_real:
        raise FileNotFoundError(f"{real}: no crop511 training set (<dataset>/crop511 with its index) found")
    root = runs_dir() / run.profile / "datasets" / f"siammask-crop511-{videos}x{frames}-s{seed}"
    meta = {"videos": videos, "frames": frames, "seed": seed}

    def generate():
        for k, config in enumerate(BASE_SUBSETS):
            write_synthetic_crop511(root, config, videos=videos, frames=frames, seed=seed * 10 + k)

    generated_once(root, meta, generate)
    return root, {"kind": "synthetic", "name": "generated crop511 sets (ytb_vos, vid, coco, det layouts; "
                                               "textured shapes)", "root": shown_path(root), "videos_per_set": videos,
                  "seed": seed}


def handoff_path(run: Run) -> Path:
    """Where 00-train names the checkpoint the tracking stages take."""
    return run.path(HANDOFF)


def handed_over(run: Run) -> dict | None:
    """What 00-train handed over, None when it has not run."""
    path = handoff_path(run)
    return json.loads(path.read_text()) if path.is_file() else None


def run_folder(run: Run, processes: int) -> Path:
    return run.path("train") / f"{processes}p"


def run_training(run: Run, data_root: str | Path, *, processes: int = 1, preset: str = "reference",
                 epochs: int = 4, batch_size: int = 8, pairs: int = 64, seed: int = 0, amp: bool | None = None,
                 resume: bool = False) -> dict:
    """Train with ``processes`` processes (one: plain Python; more: torchrun with gloo on a
    CPU), the CPU's cores shared among them; returns the run's log."""
    out = run_folder(run, processes)
    if out.exists() and not resume:
        shutil.rmtree(out)
    args = ["-m", "zoobook.models.siammask.train", "--data", str(data_root), "--out", str(out), "--preset", preset,
            "--epochs", str(epochs), "--batch-size", str(batch_size), "--pairs", str(pairs), "--seed", str(seed)]
    if amp is not None:
        args += ["--amp", "on" if amp else "off"]
    if resume:
        args.append("--resume")
    launcher = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // processes))}
    done = subprocess.run(launcher + args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"training on {processes} process(es) failed (exit {done.returncode}): "
                           f"{' '.join(launcher + args)}\n{tail}")
    return json.loads((out / "train_log.json").read_text())


def throughput_rows(logs: dict[int, dict]) -> list[dict]:
    """Per run: processes, batch, and training samples per second (all processes together;
    the first iterations of each epoch left out, as the port's figure leaves out 100), over
    all epochs and apart for the epochs with the trunk frozen and training; the first and the
    last epoch's mean loss."""
    rows = []
    for processes, log in logs.items():
        def mean_rate(epochs):
            rates = [e["samples_per_s"] for e in epochs if e["samples_per_s"]]
            return sum(rates) / len(rates) if rates else None

        epochs = log["epochs"]
        rows.append({"processes": processes, "global_batch": log["global_batch"], "per_process": log["local_batch"],
                     "epochs": len(epochs), "samples_per_s": mean_rate(epochs),
                     "samples_per_s_trunk_frozen": mean_rate([e for e in epochs if not e["trunk_trainable"]]),
                     "samples_per_s_trunk_training": mean_rate([e for e in epochs if e["trunk_trainable"]]),
                     "first_loss": epochs[0]["loss"], "final_loss": epochs[-1]["loss"], "device": log["device"]})
    return rows


def epoch_rows(logs: dict[int, dict], parts: tuple[str, ...] = ("loss", "cls", "loc", "mask", "iou_mean")) -> list[dict]:
    """Per run and epoch: learning rate, whether the trunk trained, each loss part's mean over
    the epoch's steps and samples per second."""
    return [{"processes": processes, "epoch": e["epoch"] + 1, "lr": e["lr"], "trunk": e["trunk_trainable"],
             **{part: e[part] for part in parts}, "samples_per_s": e["samples_per_s"]}
            for processes, log in logs.items() for e in log["epochs"]]


def hand_off(run: Run, processes: int, data: dict) -> dict:
    """Name the last checkpoint of the ``processes`` run as the one the inference stages take."""
    from zoobook.models.siammask.train import latest_checkpoint

    folder = run_folder(run, processes)
    checkpoint = latest_checkpoint(folder)
    if checkpoint is None:
        raise FileNotFoundError(f"{folder}: no checkpoint; the training did not finish")
    log = json.loads((folder / "train_log.json").read_text())
    record = {"checkpoint": str(checkpoint), "processes": processes, "epochs": len(log["epochs"]),
              "preset": log["preset"]["name"], "data": data}
    write_json_atomic(handoff_path(run), record)
    return record


def pair_pictures(data_root: str | Path, *, count: int = 4, seed: int = 0):
    """The first training pairs as the network gets them: the template, the search crop with
    its target box, and the search's mask label (white: object; grey: no mask for this pair)."""
    import cv2
    import numpy as np

    from zoobook.data.crop511 import Crop511Subset
    from zoobook.models.siammask.train_data import PairDataset

    subsets = [Crop511Subset(c, data_root) for c in BASE_SUBSETS if (Path(data_root) / c.crop_dir).is_dir()]
    data = PairDataset(subsets, count, seed=seed)
    rows, names = [], []
    for index in range(count):
        sample = data[index]
        template, search = (np.clip(sample[k].numpy().transpose(1, 2, 0), 0, 255).astype(np.uint8)[:, :, ::-1]
                            for k in ("template", "search"))
        search = np.ascontiguousarray(search)
        x1, y1, x2, y2 = (int(round(float(v))) for v in sample["box"])
        cv2.rectangle(search, (x1, y1), (x2, y2), (255, 220, 0), 2)
        label = sample["mask_label"].numpy()
        mask = np.full(label.shape, 128, np.uint8) if not label.any() else ((label > 0) * 255).astype(np.uint8)
        rows.append([cv2.resize(template, (255, 255), interpolation=cv2.INTER_NEAREST), search,
                     np.repeat(mask[..., None], 3, axis=2)])
        names.append("negative pair" if bool(sample["negative"]) else "positive pair")
    return rows, ["template (127, shown enlarged)", "search (255) and target box", "mask label"], names
