"""SeMask-FPN weights: the official key layout, strict loading, and the golden weight recipe.

The mmseg checkpoint holds ``{"state_dict", "meta", ...}`` (perhaps ``module.`` prefixes);
its 445 keys (``assets/official_state_dict.json``) are this package's module names as they
are. ``meta`` (class names, palette) is not tensors: the file is read with
``weights_only=True`` and only ``state_dict`` is kept.

Without a checkpoint the weights come from the golden recipe
(``shared/reference/semask/golden/README.md``): one standard-normal draw per key, seeded by
the CRC-32 of the key, shaped by a rule on the key's ending. Synthetic: they segment nothing
real, but reproduce the reference number for number.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from zoobook.checkpoints import load_weights, official_manifest
from zoobook.models.semask.network import SeMaskFPN, relative_position_index

_PACKAGE = "zoobook.models.semask"
OFFICIAL_FILENAME = "semfpn_semask_swin_small_cityscapes.pth"


def official_to_zoobook(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official names are this package's module names: nothing to rename."""
    return dict(state)


def _value(key: str, shape: tuple[int, ...]) -> np.ndarray:
    n = np.random.RandomState(zlib.crc32(key.encode("utf-8"))).standard_normal(size=shape)
    if key.endswith("running_var"):
        return 1 + 0.25 * np.abs(n)
    if key.endswith("running_mean"):
        return 0.1 * n
    if key.endswith("gamma"):
        return 0.5 + 0.1 * n
    if key.endswith("relative_position_bias_table"):
        return 0.5 * n
    if key.endswith("weight"):
        return n / np.sqrt(np.prod(shape[1:])) if len(shape) >= 2 else 1 + 0.1 * n
    if key.endswith("bias"):
        return 0.1 * n
    raise KeyError(f"{key}: no recipe rule")


def recipe_state_dict() -> dict[str, torch.Tensor]:
    """The golden weights in the official layout."""
    state = {}
    for entry in official_manifest(_PACKAGE):
        key, shape = entry["key"], tuple(entry["shape"])
        if key.endswith("relative_position_index"):
            state[key] = relative_position_index()
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0, dtype=torch.int64)
        else:
            state[key] = torch.from_numpy(np.asarray(_value(key, shape), dtype=np.float32))
    return state


def default_weights_path() -> Path:
    from zoobook.paths import data_dir

    return data_dir() / "weights" / OFFICIAL_FILENAME


def build(weights: str | Path | None = None, *, allow_recipe: bool = True) -> tuple[SeMaskFPN, dict]:
    """Build SeMask-FPN in eval mode with weights and say where they came from."""
    model = SeMaskFPN().eval()
    provenance = load_weights(model, weights, default_weights_path(), mapping=official_to_zoobook,
                              recipe=recipe_state_dict, allow_recipe=allow_recipe, official_filename=OFFICIAL_FILENAME,
                              recipe_note="synthetic golden-recipe weights (not trained): the class maps are not "
                                          "scenes; agreement with the reference is what they check")
    return model, provenance
