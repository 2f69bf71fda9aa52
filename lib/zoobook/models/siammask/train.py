"""SiamMask base-stage training, on one process or many (``torchrun`` + DDP), one entry point.

    python -m zoobook.models.siammask.train --data DIR --out DIR [--preset reference] ...
    torchrun --nproc_per_node 2 -m zoobook.models.siammask.train --data DIR --out DIR ...

What it follows (FACTS.md sections 5 and 6.2):

* SGD (momentum 0.9, weight decay 1e-4), gradient norm clipped at 10, a step skipped when the
  loss is not finite or above 1e4;
* the learning rate set per epoch: a geometric warm-up from 0.001 to 0.005 over the first
  quarter of the epochs (5 of 20), then log-spaced from 0.005 down to the preset's end rate;
* the trunk frozen for the first half (adjust layer and heads train), then layer2 and layer3
  unfrozen at 0.1 x the rate with the optimiser rebuilt; the trunk's batch norm stays in eval
  mode throughout, the heads' in train mode;
* presets: ``reference`` (end rate 0.0025, loss weights 1 / 1.2 / 36, a global batch split
  over the processes) and ``ascend-port`` (end rate 0.0005, weights 1 / 1 / 32, the batch per
  device, mixed precision);
* on N processes each normalises its losses over its own share of the batch and DDP averages
  the gradients, as the reference's DataParallel averaged the per-GPU losses; a step is skipped
  on all processes or none; the log holds the mean over the processes;
* a checkpoint per epoch (``checkpoint_e<N>.pth``: the base model's official keys, optimiser,
  epoch, log), written atomically; ``--resume`` continues after the newest one exactly, since
  every sample is a function of (seed, epoch, index); a newest one that does not read (cut
  short in a copy, say) stops the run with an error naming it and the previous complete one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zoobook.checkpoints import key_spellings, load_strict
from zoobook.models.siammask.checkpoint import official_to_zoobook, zoobook_to_official
from zoobook.models.siammask.training import PORT_WEIGHTS, REFERENCE_WEIGHTS, LossWeights, total_loss

MAX_LOSS, CLIP_NORM = 1e4, 10.0


@dataclass(frozen=True)
class Preset:
    name: str
    epochs: int = 20
    batch_size: int = 64
    batch_per_device: bool = False  # False: batch_size is the global batch, split over processes
    start_lr: float = 0.001
    base_lr: float = 0.005
    end_lr: float = 0.0025
    warmup_fraction: float = 0.25  # 5 of 20 epochs
    unfreeze_fraction: float = 0.5  # epoch 10 of 20
    trunk_lr_mult: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weights: LossWeights = REFERENCE_WEIGHTS
    amp: bool = False
    pairs_per_epoch: int = 600_000


PRESETS = {
    "reference": Preset("reference"),
    "ascend-port": Preset("ascend-port", end_lr=0.0005, weights=PORT_WEIGHTS, batch_per_device=True, amp=True),
}


def lr_schedule(preset: Preset) -> list[float]:
    """The learning rate of each epoch."""
    warmup = int(round(preset.epochs * preset.warmup_fraction))
    ramp = [preset.start_lr * (preset.base_lr / preset.start_lr) ** (k / warmup) for k in range(warmup)]
    rest = preset.epochs - warmup
    decay = list(np.logspace(math.log10(preset.base_lr), math.log10(preset.end_lr), rest)) if rest > 1 else \
        [preset.base_lr] * rest
    return [float(v) for v in ramp + decay]


def unfreeze_epoch(preset: Preset) -> int:
    return int(preset.epochs * preset.unfreeze_fraction)


TRUNK_TRAINABLE = ("layer2", "layer3")


def set_trainable(model: nn.Module, trunk: bool) -> None:
    """Heads and adjust layer always train; the trunk's layer2 and layer3 only when ``trunk``."""
    for name, parameter in model.named_parameters():
        if name.startswith("backbone."):
            parameter.requires_grad = trunk and name.split(".")[1] in TRUNK_TRAINABLE
        else:
            parameter.requires_grad = True


def set_modes(model: nn.Module) -> None:
    """Train mode for the heads, eval mode for the whole trunk (its batch norm statistics stay fixed)."""
    model.train()
    module = model.module if hasattr(model, "module") else model
    module.backbone.eval()


def make_optimizer(model: nn.Module, preset: Preset, lr: float) -> torch.optim.SGD:
    groups = []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            trunk = ".backbone." in f".{name}"
            groups.append({"params": [parameter], "mult": preset.trunk_lr_mult if trunk else 1.0, "name": name})
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=preset.momentum, weight_decay=preset.weight_decay)
    set_lr(optimizer, lr)
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["mult"]


# ---------------------------------------------------------------------------------------


def load_pretrained_trunk(model: nn.Module, path: str | Path) -> dict:
    """The ImageNet ``resnet.model`` into the trunk: keys ``conv1.weight``, ``layer1.0...``
    (a ``module.`` or ``features.`` prefix allowed). Every trunk key must be there with its
    shape; extra keys (layer4, fc) are listed as unused."""
    from zoobook.checkpoints import CheckpointError, file_sha256, read_state_dict

    path = Path(path)
    state = read_state_dict(path)
    state = {k[len("features."):] if k.startswith("features.") else k: v for k, v in state.items()}
    trunk = model.backbone.state_dict()
    missing = sorted(k for k in trunk if k not in state and not k.endswith("num_batches_tracked"))
    wrong = sorted(k for k in trunk if k in state and tuple(state[k].shape) != tuple(trunk[k].shape))
    if missing or wrong:
        raise CheckpointError(f"{path}: not SiamMask's ResNet-50 trunk; missing keys: {missing[:10]}"
                              f"{' ...' if len(missing) > 10 else ''}; shape mismatches: {wrong[:10]}")
    model.backbone.load_state_dict({k: state[k].float() for k in trunk if k in state}, strict=False)
    unused = sorted({k.split(".")[0] for k in state if k not in trunk})
    return {"kind": "pretrained trunk", "path": str(path), "sha256": file_sha256(path), "unused": unused}


def _atomic_save(obj, path: Path) -> None:
    import io

    from zoobook.atomic import write_bytes_atomic

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def training_checkpoints(folder: str | Path) -> list[Path]:
    """The ``checkpoint_e<N>.pth`` files of ``folder``, oldest epoch first."""
    return sorted(Path(folder).glob("checkpoint_e*.pth"), key=lambda p: int(p.stem.split("_e")[1]))


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = training_checkpoints(folder)
    return found[-1] if found else None


def read_training_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by :func:`train`; a :class:`CheckpointError` naming the file when
    it is truncated, corrupt or not one."""
    from zoobook.checkpoints import CheckpointError

    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a cut or damaged file
        why = str(err).strip().split("\n")[0].split(". ")[0]  # torch's first sentence; the rest is advice
        raise CheckpointError(f"{path} ({path.stat().st_size} bytes): truncated or corrupt, not a readable "
                              f"training checkpoint ({type(err).__name__}{': ' + why if why else ''})") from err
    absent = [k for k in ("epoch", "state_dict", "optimizer", "log")
              if not isinstance(checkpoint, dict) or k not in checkpoint]
    if absent:
        raise CheckpointError(f"{path}: not a training checkpoint of this entry point (no {', '.join(absent)})")
    return checkpoint


def resume_point(folder: str | Path) -> tuple[Path, dict] | None:
    """The newest training checkpoint of ``folder`` and its content, None when there is none.

    When the newest does not read, the error names it and the previous complete checkpoint
    (the user deletes the broken file to resume from that one): resuming from an earlier
    epoch without a word would silently redo epochs the user believes done.
    """
    from zoobook.checkpoints import CheckpointError

    found = training_checkpoints(folder)
    if not found:
        return None
    try:
        return found[-1], read_training_checkpoint(found[-1])
    except CheckpointError as err:
        for previous in reversed(found[:-1]):
            try:
                epochs = read_training_checkpoint(previous)["epoch"] + 1
            except CheckpointError:
                continue
            raise CheckpointError(f"cannot resume: {err}; the previous complete checkpoint is {previous} "
                                  f"({epochs} epochs): delete {found[-1].name} to resume from it") from err
        raise CheckpointError(f"cannot resume: {err}; no earlier checkpoint in {Path(folder)} reads either: delete "
                              f"{found[-1].name} to train from the start") from err


# ---------------------------------------------------------------------------------------


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """From torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK): gloo on CPU, nccl on CUDA,
    hccl on Ascend NPUs. One process without it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed()
    import torch.distributed as dist

    backend = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}[device.type]
    dist.init_process_group(backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: this process's GPU, else its Ascend NPU (when ``torch_npu`` is installed),
    else the CPU; the device index is torchrun's LOCAL_RANK."""
    if name != "auto":
        return torch.device(name)
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        return torch.device("cuda", local)
    try:
        import torch_npu  # noqa: F401  (registers torch.npu)
    except ImportError:
        return torch.device("cpu")
    return torch.device("npu", local) if torch.npu.is_available() else torch.device("cpu")


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def train(data_root: str | Path, out: str | Path, *, preset: Preset, seed: int = 0, resume: bool = False,
          pretrained: str | Path | None = None, workers: int = 0, device: str = "auto",
          skip_iterations: int = 2, max_epochs: int | None = None, progress: bool = True) -> dict:
    """Train the base model; returns the log. ``max_epochs`` stops early (the schedule stays
    that of ``preset.epochs``), as an interrupted run would."""
    from tqdm import tqdm

    from zoobook.data.crop511 import BASE_SUBSETS, Crop511Subset
    from zoobook.models.siammask.checkpoint import build
    from zoobook.models.siammask.train_data import PairDataset

    torch.manual_seed(seed)
    out = Path(out)
    resumed = resume_point(out) if resume else None  # a broken checkpoint stops the run before any work
    dev = pick_device(device)
    dist_info = init_distributed(dev)
    out.mkdir(parents=True, exist_ok=True)
    subsets = [Crop511Subset(config, data_root) for config in BASE_SUBSETS
               if (Path(data_root) / config.crop_dir).is_dir()]
    if not subsets:
        raise FileNotFoundError(f"{data_root}: none of {[c.crop_dir for c in BASE_SUBSETS]} found")
    data = PairDataset(subsets, preset.pairs_per_epoch, seed=seed)
    if preset.batch_per_device:
        local_batch = preset.batch_size
    elif preset.batch_size % dist_info.world:
        raise ValueError(f"batch {preset.batch_size} does not split over {dist_info.world} processes")
    else:
        local_batch = preset.batch_size // dist_info.world
    sampler = torch.utils.data.distributed.DistributedSampler(
        data, num_replicas=dist_info.world, rank=dist_info.rank, shuffle=False, drop_last=True)
    loader = torch.utils.data.DataLoader(data, batch_size=local_batch, sampler=sampler, num_workers=workers,
                                         collate_fn=collate, drop_last=True)
    model, weights = build(None, refine=False)  # the recipe: a deterministic start
    weights = {**weights, "note": "initialised from the golden recipe"}
    if pretrained:
        weights = load_pretrained_trunk(model, pretrained)
    model.to(dev)
    schedule = lr_schedule(preset)
    log: dict = {"preset": _preset_dict(preset), "schedule": schedule, "world": dist_info.world,
                 "local_batch": local_batch, "global_batch": local_batch * dist_info.world, "device": str(dev),
                 "init": weights, "iterations": [], "epochs": []}
    start = 0
    if resumed:
        found, checkpoint = resumed
        load_strict(model, official_to_zoobook(checkpoint["state_dict"]), source=str(found),
                    spelled=lambda: key_spellings(model.state_dict(), checkpoint["state_dict"], official_to_zoobook,
                                                  zoobook_to_official))
        start, log = checkpoint["epoch"] + 1, json.loads(checkpoint["log"])
        log["resumed_from"] = str(found)
    scaler = torch.amp.GradScaler(dev.type, enabled=preset.amp and dev.type != "cpu")
    unfreeze = unfreeze_epoch(preset)
    optimizer = None
    if resumed and start != unfreeze:  # at the unfreeze epoch the loop builds a fresh optimiser, as a straight run
        set_trainable(model, trunk=start >= unfreeze)
        wrapped = _wrap(model, dist_info, dev)  # after set_trainable: DDP reduces the trainable parameters
        optimizer = make_optimizer(wrapped, preset, schedule[start])
        optimizer.load_state_dict(checkpoint["optimizer"])
    if resumed and "scaler" in checkpoint:
        scaler.load_state_dict(checkpoint["scaler"])
    stop = min(preset.epochs, max_epochs if max_epochs is not None else preset.epochs)
    for epoch in range(start, stop):
        if optimizer is None or epoch == unfreeze:
            set_trainable(model, trunk=epoch >= unfreeze)
            wrapped = _wrap(model, dist_info, dev)  # parameters to reduce change with the unfreeze
            optimizer = make_optimizer(wrapped, preset, schedule[epoch])
        set_lr(optimizer, schedule[epoch])
        set_modes(wrapped)
        data.set_epoch(epoch)
        sampler.set_epoch(epoch)
        times, sums, steps, skipped = [], {}, 0, 0
        tick = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch}", disable=not (progress and dist_info.main), leave=False)
        for batch in bar:
            parts = train_step(wrapped, optimizer, {k: v.to(dev) for k, v in batch.items()}, preset, scaler)
            now = time.perf_counter()
            if parts is None:
                skipped += 1
                tick = now
                continue
            parts = mean_over_processes(parts)
            steps += 1
            if steps > min(skip_iterations, len(loader) - 1):  # at least one timed step per epoch
                times.append(now - tick)
            tick = now
            for key, value in parts.items():
                if math.isfinite(value):  # mask IoU is undefined for a batch without a positive mask cell
                    total, count = sums.get(key, (0.0, 0))
                    sums[key] = (total + value, count + 1)
            if dist_info.main:
                log["iterations"].append({"epoch": epoch, "step": steps, "lr": schedule[epoch], **parts})
                bar.set_postfix(loss=f"{parts['loss']:.3f}")
        record = {"epoch": epoch, "lr": schedule[epoch], "steps": steps, "skipped": skipped,
                  "trunk_trainable": epoch >= unfreeze,
                  "samples_per_s": local_batch * dist_info.world / float(np.mean(times)) if times else None,
                  **{k: total / count for k, (total, count) in sums.items()}}
        if dist_info.main:
            log["epochs"].append(record)
            _atomic_save({"epoch": epoch, "arch": "Custom (siammask_base)",
                          "state_dict": zoobook_to_official(model.state_dict()), "optimizer": optimizer.state_dict(),
                          "log": json.dumps(log), **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {})},
                         out / f"checkpoint_e{epoch + 1}.pth")
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    if dist_info.main:
        (out / "train_log.json").write_text(json.dumps(log, indent=1))
    return log


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               preset: Preset, scaler: torch.amp.GradScaler | None = None) -> dict | None:
    """One SGD step on ``batch`` (this process's share under DDP, which averages the
    gradients); None when the loss is not finite or above 1e4 and the step is skipped. With
    ``preset.amp`` the forward runs in bfloat16 on a CPU and float16 elsewhere, where
    ``scaler`` scales the loss (the port used apex O1 with a loss scale of 128)."""
    device = batch["search"].device
    with torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16,
                        enabled=preset.amp):
        outputs = model(batch["template"], batch["search"])
    loss, parts = total_loss(tuple(o.float() for o in outputs[:3]), batch, preset.weights)
    optimizer.zero_grad(set_to_none=True)
    bad = torch.tensor(float(not math.isfinite(parts["loss"]) or parts["loss"] > MAX_LOSS))
    if _distributed():  # skip on every process or on none: a lone skip would stall the gradient exchange
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    if bad.item():
        return None
    trainable = [p for p in model.parameters() if p.requires_grad]
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(trainable, CLIP_NORM)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        nn.utils.clip_grad_norm_(trainable, CLIP_NORM)
        optimizer.step()
    return parts


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def mean_over_processes(parts: dict[str, float]) -> dict[str, float]:
    """The logged loss parts averaged over the processes (each process's value is its share
    of the batch; the step follows their mean), NaN parts (mask IoU with no positive mask
    cell) left out of the mean."""
    if not _distributed():
        return parts
    keys = sorted(parts)
    values = torch.tensor([parts[k] for k in keys], dtype=torch.float64)
    finite = torch.isfinite(values)
    totals = torch.stack([torch.where(finite, values, torch.zeros_like(values)), finite.double()])
    torch.distributed.all_reduce(totals)
    return {k: (t / c).item() if c else float("nan") for k, t, c in zip(keys, totals[0], totals[1])}


def _wrap(model: nn.Module, dist_info: Distributed, device: torch.device) -> nn.Module:
    if dist_info.world <= 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=None if device.type == "cpu" else [device.index])


def _preset_dict(preset: Preset) -> dict:
    return {**asdict(preset), "weights": asdict(preset.weights)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with <dataset>/crop511 and the annotation indexes")
    parser.add_argument("--out", required=True, help="folder for checkpoints and train_log.json")
    parser.add_argument("--preset", default="reference", choices=sorted(PRESETS))
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--pairs", type=int, help="pairs per epoch")
    parser.add_argument("--amp", choices=("on", "off"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pretrained", help="ImageNet resnet.model for the trunk (default data/weights/resnet.model "
                                             "if present)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-epochs", type=int)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    changes = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size,
                                 "pairs_per_epoch": args.pairs}.items() if v is not None}
    if args.amp:
        changes["amp"] = args.amp == "on"
    preset = replace(preset, **changes)
    pretrained = args.pretrained
    if pretrained is None:
        from zoobook.paths import data_dir

        default = data_dir() / "weights" / "resnet.model"
        pretrained = default if default.is_file() else None
    from zoobook.checkpoints import CheckpointError

    try:
        train(args.data, args.out, preset=preset, seed=args.seed, resume=args.resume, pretrained=pretrained,
              workers=args.workers, device=args.device, max_epochs=args.max_epochs)
    except CheckpointError as err:  # the message names the file and what to do: no traceback
        raise SystemExit(f"{parser.prog}: error: {err}") from err


if __name__ == "__main__":
    main()
