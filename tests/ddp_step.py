"""Run by tests/test_siammask_training.py, alone or under torchrun: one training step of the
SiamMask base model on this process's share of a fixed batch of 4 (all of it when alone), then
rank 0 saves the parameters. Batch norm is in eval mode: with batch statistics each process
normalises over its own samples (as each GPU did under the reference's DataParallel)."""

from __future__ import annotations

import sys

import numpy as np
import torch

from zoobook.models.siammask.checkpoint import build
from zoobook.models.siammask.train import PRESETS, _wrap, init_distributed, make_optimizer, set_trainable, train_step
from zoobook.models.siammask.training import anchor_targets


def fixed_batch() -> dict[str, torch.Tensor]:
    """Four different pairs whose targets have equal counts (the same box, the same draw of
    anchors), so per-process means and the whole batch's mean weigh samples alike."""
    g = torch.Generator().manual_seed(7)
    targets = anchor_targets(np.array([90.0, 100.0, 164.0, 154.0]), negative_pair=False,
                             rng=np.random.RandomState(0))
    batch = {k: torch.from_numpy(v)[None].repeat(4, *[1] * v.ndim) for k, v in targets.items() if k != "iou"}
    batch["template"] = torch.rand(4, 3, 127, 127, generator=g) * 255
    batch["search"] = torch.rand(4, 3, 255, 255, generator=g) * 255
    batch["mask_label"] = torch.where(torch.rand(4, 255, 255, generator=g) > 0.5, 1.0, -1.0)
    return batch


def main(out: str) -> None:
    info = init_distributed(torch.device("cpu"))
    model, _ = build(None, refine=False)
    set_trainable(model, trunk=True)
    model.eval()
    wrapped = _wrap(model, info, torch.device("cpu"))
    optimizer = make_optimizer(wrapped, PRESETS["reference"], 0.01)
    share = 4 // info.world
    batch = {k: v[info.rank * share:(info.rank + 1) * share] for k, v in fixed_batch().items()}
    assert train_step(wrapped, optimizer, batch, PRESETS["reference"]) is not None
    if info.main:
        torch.save(model.state_dict(), out)
    if info.world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
