"""Reading checkpoints safely and loading them strictly.

Every model maps its official key layout onto its own module names with one pure function,
then calls :func:`load_strict`. Nothing is loaded leniently: a missing, unexpected or
mis-shaped key is a :class:`CheckpointError` that lists every offending key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
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
