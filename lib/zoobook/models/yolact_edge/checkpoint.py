"""YolactEdge weights: the official key layout, strict loading, and the golden weight recipe.

The official file ``yolact_edge_resnet50_54_800000.pth`` is a plain ``torch.save`` of the
reference module's state dict (354 keys, listed in ``assets/official_state_dict.json``).
:func:`official_to_zoobook` maps those keys onto :class:`~.network.YolactEdge`; YOLACT-style
``fpn.*`` keys are accepted too (renamed as the reference's ``load_weights`` does).

Without the official file, the weights come from the recipe that produced the golden
vectors (``shared/reference/yolact_edge/golden/README.md``): synthetic, meaningless as a
detector, but bit-exact with the reference, so every backend can be checked against it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from zoobook.checkpoints import load_weights, recipe_from_manifest, recipe_gains
from zoobook.checkpoints import official_manifest as manifest_entries
from zoobook.models.yolact_edge.network import YolactEdge

OFFICIAL_FILENAME = "yolact_edge_resnet50_54_800000.pth"

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^fpn\.lat_layers\."), "fpn_phase_1.lat_layers."),  # YOLACT checkpoints
    (re.compile(r"^fpn\.(?!lat_layers)"), "fpn_phase_2."),
    (re.compile(r"^backbone\.layers\.(\d)\."), lambda m: f"backbone.layer{int(m[1]) + 1}."),
    (re.compile(r"^fpn_phase_1\.lat_layers\.(\d)\."), lambda m: f"fpn.lateral.{('c5', 'c4', 'c3')[int(m[1])]}."),
    (re.compile(r"^fpn_phase_2\.pred_layers\.(\d)\."), lambda m: f"fpn.output.{('p5', 'p4', 'p3')[int(m[1])]}."),
    (re.compile(r"^fpn_phase_2\.downsample_layers\.(\d)\."), lambda m: f"fpn.extra.{('p6', 'p7')[int(m[1])]}."),
    (re.compile(r"^proto_net\.(\d+)\."),
     lambda m: "protonet." + {"0": "conv1", "2": "conv2", "4": "conv3", "8": "conv4", "10": "proto"}.get(m[1], f"unknown{m[1]}") + "."),
    (re.compile(r"^prediction_layers\.0\.upfeature\.0\."), "head.upfeature."),
    (re.compile(r"^prediction_layers\.0\.bbox_layer\."), "head.box."),
    (re.compile(r"^prediction_layers\.0\.conf_layer\."), "head.cls."),
    (re.compile(r"^prediction_layers\.0\.mask_layer\."), "head.coef."),
    (re.compile(r"^semantic_seg_conv\."), "semantic_seg."),
]


def official_to_zoobook(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename official (or YOLACT-style) keys to this package's names. Pure; unknown keys pass
    through unchanged so that the strict load reports them."""
    mapped = {}
    for key, value in state.items():
        new = key
        for pattern, replacement in _RULES:
            new = pattern.sub(replacement, new, count=1)
        mapped[new] = value
    return mapped


_PACKAGE = "zoobook.models.yolact_edge"


def official_manifest() -> list[dict]:
    """The 354 entries (key, shape, dtype, role) of the official state dict, in file order."""
    return manifest_entries(_PACKAGE)


def zoobook_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`official_to_zoobook` on the official layout's keys (the rules
    renamed through the manifest); other keys pass through."""
    keys = [entry["key"] for entry in official_manifest()]
    official = {new: old for new, old in official_to_zoobook(dict(zip(keys, keys))).items()}
    return {official.get(key, key): value for key, value in state.items()}


def recipe_state_dict() -> dict[str, torch.Tensor]:
    """The golden weights in the official layout, rebuilt from the recipe (about 1 s)."""
    gains = recipe_gains(_PACKAGE)

    def formula(index, key, module, leaf, shape, is_bn):
        u = np.random.RandomState(index).random_sample(int(np.prod(shape)))
        if is_bn:
            return 0.5 + u if leaf == "weight" else (2 * u - 1) * 0.1
        if len(shape) == 4:
            return (2 * u - 1) * np.sqrt(6.0 / (shape[1] * shape[2] * shape[3])) * gains.get(module, 1.0)
        return (2 * u - 1) * 0.05 * gains.get(module, 1.0)

    return recipe_from_manifest(_PACKAGE, formula)


def default_weights_path() -> Path:
    from zoobook.paths import data_dir

    return data_dir() / "weights" / OFFICIAL_FILENAME


def build(weights: str | Path | None = None, *, allow_recipe: bool = True) -> tuple[YolactEdge, dict]:
    """Build the network in eval mode with weights, and say where they came from.

    ``weights``: an official checkpoint path; ``None`` uses ``data/weights/<official name>``
    when present, else (if ``allow_recipe``) the golden recipe. Returns ``(model, provenance)``
    with provenance ``{"kind": "official" | "recipe", "path", "sha256", "note"}``.
    """
    model = YolactEdge().eval()
    provenance = load_weights(model, weights, default_weights_path(), mapping=official_to_zoobook,
                              recipe=recipe_state_dict, allow_recipe=allow_recipe, to_official=zoobook_to_official,
                              official_filename=OFFICIAL_FILENAME,
                              recipe_note="synthetic golden-recipe weights (not trained): detections are "
                                          "meaningless as objects; backend agreement is what they check")
    return model, provenance
