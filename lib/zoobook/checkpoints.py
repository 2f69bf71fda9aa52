"""Reading checkpoints safely and loading them strictly.

Every model maps its official key layout onto its own module names with one pure function,
then calls :func:`load_strict`. Nothing is loaded leniently: a missing, unexpected or
mis-shaped key is a :class:`CheckpointError` that lists every offending key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose keys do not match the model."""


def read_state_dict(path: str | Path, *, wrappers: Iterable[str] = ("state_dict", "model"),
                    strip_prefixes: Iterable[str] = ("module.",)) -> dict[str, torch.Tensor]:
    """Read a ``torch.save``'d state dict with ``weights_only=True``.

    Unwraps the first of ``wrappers`` found at the top level (e.g. ``{"model": sd}``) and
    strips ``strip_prefixes`` (DataParallel's ``module.``) from every key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if isinstance(obj, Mapping):
        for name in wrappers:
            if name in obj and isinstance(obj[name], Mapping):
                obj = obj[name]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        for prefix in strip_prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str,
                optional_suffixes: tuple[str, ...] = ("num_batches_tracked",)) -> list[str]:
    """Load ``state`` into ``model``; every key must match by name and shape.

    Keys ending in one of ``optional_suffixes`` may be absent (bookkeeping buffers); they
    keep the model's value and are returned so callers can report them. Floating tensors
    are cast to the model's dtype (official files may be fp16).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    skipped = [k for k in missing if k.endswith(optional_suffixes)]
    missing = [k for k in missing if k not in skipped]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        lines = [f"{source}: checkpoint does not match the model"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", mismatched)):
            if keys:
                lines.append(f"  {len(keys)} {title}: " + ", ".join(keys))
        raise CheckpointError("\n".join(lines))
    merged = dict(expected)
    for key, value in state.items():
        target = expected[key]
        merged[key] = value.to(target.dtype) if value.is_floating_point() else value
    model.load_state_dict(merged, strict=True)
    return skipped


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names and raw bytes in key order: identifies in-memory (recipe) weights."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_asset(package: str, name: str):
    """A file shipped in ``<package>/assets/`` (manifests, BN statistics, recipe gains)."""
    from importlib import resources

    return resources.files(package) / "assets" / name


@lru_cache(maxsize=8)
def official_manifest(package: str) -> list[dict]:
    """Entries (key, shape, dtype) of a model's official state dict, in file order, from its
    ``assets/official_state_dict.json`` (read once per process)."""
    import json

    return json.loads(package_asset(package, "official_state_dict.json").read_text())["entries"]


def recipe_gains(package: str) -> dict[str, float]:
    """Per-module gains of a model's golden weight recipe (``assets/weights_recipe.json``)."""
    import json

    return json.loads(package_asset(package, "weights_recipe.json").read_text())["gains"]


def load_weights(model: nn.Module, weights: str | Path | None, default_path: Path, *, mapping,
                 recipe, allow_recipe: bool, official_filename: str, recipe_note: str) -> dict:
    """Fill ``model`` from a checkpoint or the recipe, strictly, and return the provenance.

    ``weights`` is a checkpoint path; ``None`` uses ``default_path`` when it exists, else the
    recipe (a zero-argument function returning the official-layout state dict) when
    ``allow_recipe``. ``mapping`` turns official keys into the model's.
    """
    path = Path(weights) if weights else default_path
    if weights or path.is_file():
        skipped = load_strict(model, mapping(read_state_dict(path)), source=str(path))
        return {"kind": "official" if path.name == official_filename else "checkpoint", "path": str(path),
                "sha256": file_sha256(path),
                "note": f"checkpoint {path.name}" + (f"; absent optional keys: {len(skipped)}" if skipped else "")}
    if not allow_recipe:
        raise FileNotFoundError(f"{path}: official weights not found (this profile needs them)")
    state = recipe()
    load_strict(model, mapping(state), source="recipe")
    return {"kind": "recipe", "path": None, "sha256": state_digest(state), "note": recipe_note}


def recipe_from_manifest(package: str, formula) -> dict[str, torch.Tensor]:
    """Rebuild golden-recipe weights: walk the official manifest of ``package`` in file order;
    ``num_batches_tracked`` is 0, BN running statistics come from ``assets/bn_running_stats.npz``,
    and every other entry is ``formula(index, key, module, leaf, shape, is_bn)`` (a float64
    array), cast to float32."""
    import numpy as np

    with package_asset(package, "bn_running_stats.npz").open("rb") as handle:
        bn_stats = dict(np.load(handle))
    entries = official_manifest(package)
    bn_modules = {e["key"].rsplit(".", 1)[0] for e in entries if e["key"].endswith(".running_mean")}
    state = {}
    for index, entry in enumerate(entries):
        key, shape = entry["key"], tuple(entry["shape"])
        module, leaf = key.rsplit(".", 1)
        if leaf == "num_batches_tracked":
            state[key] = torch.tensor(0, dtype=torch.int64)
        elif leaf in ("running_mean", "running_var"):
            state[key] = torch.from_numpy(bn_stats[key].astype(np.float32).reshape(shape))
        else:
            value = formula(index, key, module, leaf, shape, module in bn_modules)
            state[key] = torch.from_numpy(np.asarray(value, dtype=np.float32).reshape(shape))
    return state


def weights_label(provenance: dict) -> str:
    """A short label of a weights provenance for tables: official checkpoint, recipe or checkpoint."""
    return {"official": "official checkpoint", "recipe": "recipe (synthetic)"}.get(provenance["kind"], provenance["kind"])
