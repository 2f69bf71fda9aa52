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

import zlib
from pathlib import Path

import numpy as np
import torch

from zoobook.checkpoints import load_weights, recipe_from_manifest, recipe_gains
from zoobook.checkpoints import official_manifest as manifest_entries
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


def _rename(state: dict[str, torch.Tensor], prefixes, inner) -> dict[str, torch.Tensor]:
    """Each key with its first matching (old, new) prefix replaced and each inner (old, new)
    part replaced once; other keys pass through."""
    mapped = {}
    for key, value in state.items():
        for old, replacement in prefixes:
            if key.startswith(old):
                key = replacement + key[len(old):]
                break
        for old, replacement in inner:
            key = key.replace(old, replacement, 1)
        mapped[key] = value
    return mapped


def official_to_zoobook(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename reference keys to this package's names. Pure; unknown keys pass through so that
    the strict load reports them."""
    return _rename(state, _PREFIXES, _INNER)


def zoobook_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`official_to_zoobook`: this package's names back to the
    reference's (training checkpoints are saved in the reference's layout)."""
    return _rename(state, [(new, old) for old, new in _PREFIXES], [(new, old) for old, new in _INNER])


_PACKAGE = "zoobook.models.siammask"


def official_manifest() -> list[dict]:
    """The 356 entries (key, shape, dtype) of the sharp model's state dict, in file order."""
    return manifest_entries(_PACKAGE)


def recipe_state_dict() -> dict[str, torch.Tensor]:
    """The golden weights in the official layout (about 1 s)."""
    gains = recipe_gains(_PACKAGE)

    def formula(index, key, module, leaf, shape, is_bn):
        rs = np.random.RandomState(zlib.crc32(key.encode("utf-8")))
        if is_bn:
            return 0.5 + rs.random_sample(size=shape) if leaf == "weight" else 0.2 * rs.standard_normal(size=shape)
        if leaf == "weight":
            fan_in = shape[0] if module == "refine_model.deconv" else shape[1] * shape[2] * shape[3]
            return rs.standard_normal(size=shape) * (gains.get(module, 1.0) * np.sqrt(2.0 / fan_in))
        return 0.1 * rs.standard_normal(size=shape)

    return recipe_from_manifest(_PACKAGE, formula)


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

    def recipe() -> dict[str, torch.Tensor]:
        state = recipe_state_dict()
        return state if refine else {k: v for k, v in state.items() if not k.startswith("refine_model.")}

    provenance = load_weights(model, weights, default_weights_path(), mapping=official_to_zoobook, recipe=recipe,
                              to_official=zoobook_to_official, allow_recipe=allow_recipe,
                              official_filename=OFFICIAL_FILENAME,
                              recipe_note="synthetic golden-recipe weights (not trained): the tracker follows "
                                          "nothing real; agreement with the reference is what they check")
    return model, provenance
