"""SiamMask weights: the official key layout, strict loading, and the golden weight recipe.

``SiamMask_VOT.pth`` holds the sharp model's 356 keys (``assets/official_state_dict.json``),
possibly under a ``state_dict`` wrapper and with DataParallel's ``module.`` prefix; training
checkpoints (``{"epoch", "arch", "state_dict", "optimizer", ...}``) of the base model hold
the same keys without ``refine_model.*``. :func:`official_to_zoobook` maps either onto
:class:`~.network.SiamMask`; the load is strict (``num_batches_tracked`` may be absent).

Without the official file the weights come from the recipe of the golden vectors
(``shared/reference/siammask/golden/README.md``): He-normal convolutions seeded by the CRC-32
of each key, random BN affine parameters, stored BN statistics. Synthetic: they track nothing
real, but reproduce the reference number for number.
"""

from __future__ import annotations

import json
import zlib
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from zoobook.checkpoints import file_sha256, load_strict, read_state_dict, state_digest
from zoobook.models.siammask.network import SiamMask

OFFICIAL_FILENAME = "SiamMask_VOT.pth"

_PREFIXES = (
    ("features.features.", "backbone."),
    ("features.downsample.downsample.", "adjust."),
    ("rpn_model.cls.", "cls."),
    ("rpn_model.loc.", "loc."),
    ("mask_model.mask.", "mask."),
    ("refine_model.", "refine."),
)
_INNER = ((".conv_kernel.", ".kernel."), (".conv_search.", ".search."))


def official_to_zoobook(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename reference keys to this package's names. Pure; unknown keys pass through so that
    the strict load reports them."""
    mapped = {}
    for key, value in state.items():
        new = key
        for old, replacement in _PREFIXES:
            if new.startswith(old):
                new = replacement + new[len(old):]
                break
        for old, replacement in _INNER:
            new = new.replace(old, replacement, 1)
        mapped[new] = value
    return mapped


def load_official(model: SiamMask, path: str | Path) -> list[str]:
    """Load a reference checkpoint (inference or training) strictly; returns absent optional keys."""
    return load_strict(model, official_to_zoobook(read_state_dict(path)), source=str(path))


def _asset(name: str):
    return resources.files("zoobook.models.siammask") / "assets" / name


@lru_cache(maxsize=1)
def official_manifest() -> list[dict]:
    """The 356 entries (key, shape, dtype) of the sharp model's state dict, in file order."""
    return json.loads(_asset("official_state_dict.json").read_text())["entries"]


def recipe_state_dict() -> dict[str, torch.Tensor]:
    """The golden weights in the official layout (about 1 s)."""
    gains = json.loads(_asset("weights_recipe.json").read_text())["gains"]
    with _asset("bn_running_stats.npz").open("rb") as handle:
        bn_stats = dict(np.load(handle))
    entries = official_manifest()
    bn_modules = {e["key"].rsplit(".", 1)[0] for e in entries if e["key"].endswith(".running_mean")}
    state = {}
    for entry in entries:
        key, shape = entry["key"], tuple(entry["shape"])
        module, leaf = key.rsplit(".", 1)
        if leaf == "num_batches_tracked":
            state[key] = torch.tensor(0, dtype=torch.int64)
            continue
        if leaf in ("running_mean", "running_var"):
            state[key] = torch.from_numpy(bn_stats[key].astype(np.float32))
            continue
        rs = np.random.RandomState(zlib.crc32(key.encode("utf-8")))
        if module in bn_modules:
            value = 0.5 + rs.random_sample(size=shape) if leaf == "weight" else 0.2 * rs.standard_normal(size=shape)
        elif leaf == "weight":
            fan_in = shape[0] if module == "refine_model.deconv" else shape[1] * shape[2] * shape[3]
            value = rs.standard_normal(size=shape) * (gains.get(module, 1.0) * np.sqrt(2.0 / fan_in))
        else:
            value = 0.1 * rs.standard_normal(size=shape)
        state[key] = torch.from_numpy(np.asarray(value, dtype=np.float32).reshape(shape))
    return state


def default_weights_path() -> Path:
    from zoobook.paths import data_dir

    return data_dir() / "weights" / OFFICIAL_FILENAME


def build(weights: str | Path | None = None, *, allow_recipe: bool = True,
          refine: bool = True) -> tuple[SiamMask, dict]:
    """Build SiamMask in eval mode with weights and say where they came from.

    ``weights``: a checkpoint path (the official ``SiamMask_VOT.pth`` or a training
    checkpoint); ``None`` uses ``data/weights/SiamMask_VOT.pth`` when present, else (if
    ``allow_recipe``) the golden recipe. ``refine=False`` builds the base model.
    """
    model = SiamMask(refine=refine).eval()
    path = Path(weights) if weights else default_weights_path()
    if weights or path.is_file():
        skipped = load_official(model, path)
        provenance = {"kind": "official" if path.name == OFFICIAL_FILENAME else "checkpoint", "path": str(path),
                      "sha256": file_sha256(path),
                      "note": f"checkpoint {path.name}" + (f"; absent optional keys: {len(skipped)}" if skipped else "")}
    elif allow_recipe:
        state = recipe_state_dict()
        if not refine:
            state = {k: v for k, v in state.items() if not k.startswith("refine_model.")}
        load_strict(model, official_to_zoobook(state), source="recipe")
        provenance = {"kind": "recipe", "path": None, "sha256": state_digest(state),
                      "note": "synthetic golden-recipe weights (not trained): the tracker follows nothing "
                              "real; agreement with the reference is what they check"}
    else:
        raise FileNotFoundError(f"{path}: official SiamMask weights not found (this profile needs them)")
    return model, provenance
