"""RetinaMask weights: the official key layout, strict loading, and the golden weight recipe.

The reference saves ``{"model": state_dict, "optimizer", "scheduler", "iteration"}`` with
DistributedDataParallel's ``module.`` prefix; the Ascend checkpoint was trained with AMP O2
and is probably fp16. The 318 keys (``assets/official_state_dict.json``) are this package's
module names as they are; floating tensors are cast to fp32 on load.

Without a checkpoint the weights come from the golden recipe
(``shared/reference/retinamask/golden/README.md``): seeded by the CRC-32 of each key, drawn
in float64, cast to float32; the base anchors are the manifest's constants. Synthetic: they
detect nothing real, but reproduce the reference number for number.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from zoobook.checkpoints import load_weights, official_manifest, package_asset
from zoobook.models.retinamask.network import RetinaMask

_PACKAGE = "zoobook.models.retinamask"
OFFICIAL_FILENAME = "npu_8P_model_0020001.pth"
_GAINS = {"backbone.body.stem.conv1.weight": 0.02, "rpn.head.cls_logits.weight": 0.1,
          "rpn.head.bbox_pred.weight": 0.05, "mask.predictor.mask_fcn_logits.weight": 0.1}
_CENTRED = ("rpn.head.cls_logits.weight", "mask.predictor.mask_fcn_logits.weight")


def official_to_zoobook(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official names are this package's module names: nothing to rename."""
    return dict(state)


def _cell_anchor_values() -> dict[str, list]:
    import json

    return json.loads(package_asset(_PACKAGE, "official_state_dict.json").read_text())["cell_anchor_values"]


def _is_frozen_bn(module: str) -> bool:
    return module.rsplit(".", 1)[-1].startswith("bn") or module.endswith("downsample.1")


def recipe_state_dict() -> dict[str, torch.Tensor]:
    """The golden weights in the official layout."""
    anchors = _cell_anchor_values()
    state = {}
    for entry in official_manifest(_PACKAGE):
        key, shape = entry["key"], tuple(entry["shape"])
        module, leaf = key.rsplit(".", 1)
        if key in anchors:
            state[key] = torch.tensor(anchors[key], dtype=torch.float32)
            continue
        rs = np.random.RandomState(zlib.crc32(key.encode("utf-8")))
        if _is_frozen_bn(module):
            value = {"weight": lambda: rs.uniform(0.5, 1.0, shape), "bias": lambda: 0.1 * rs.standard_normal(shape),
                     "running_mean": lambda: 0.1 * rs.standard_normal(shape),
                     "running_var": lambda: rs.uniform(0.5, 2.0, shape)}[leaf]()
        elif leaf == "weight" and len(shape) == 4:
            value = rs.standard_normal(shape) * np.sqrt(2.0 / (shape[1] * shape[2] * shape[3])) * _GAINS.get(key, 1.0)
            if key in _CENTRED:
                value = value - value.mean(axis=(1, 2, 3), keepdims=True)
        elif leaf == "bias":
            value = 0.05 * rs.standard_normal(shape) - (3.0 if key == "rpn.head.cls_logits.bias" else 0.0)
        else:
            raise KeyError(f"{key}: no recipe rule")
        state[key] = torch.from_numpy(np.asarray(value, dtype=np.float32))
    return state


def default_weights_path() -> Path:
    from zoobook.paths import data_dir

    return data_dir() / "weights" / OFFICIAL_FILENAME


def build(weights: str | Path | None = None, *, allow_recipe: bool = True) -> tuple[RetinaMask, dict]:
    """Build RetinaMask in eval mode with weights and say where they came from: a checkpoint
    path, else ``data/weights/npu_8P_model_0020001.pth`` when present, else (if
    ``allow_recipe``) the golden recipe."""
    model = RetinaMask().eval()
    provenance = load_weights(model, weights, default_weights_path(), mapping=official_to_zoobook,
                              recipe=recipe_state_dict, allow_recipe=allow_recipe, official_filename=OFFICIAL_FILENAME,
                              recipe_note="synthetic golden-recipe weights (not trained): detections are not objects; "
                                          "agreement with the reference is what they check")
    return model, provenance
