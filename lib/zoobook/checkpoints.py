"""Reading checkpoints safely and loading them strictly.

Every model maps its official key layout onto its own module names with one pure function,
then calls :func:`load_strict`. Nothing is loaded leniently: a missing, unexpected or
mis-shaped key is a :class:`CheckpointMismatch` whose message gives the counts, the first
few keys as the file spells them, and which of the project's models the file looks like; the
full lists are its attributes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose keys do not match the model."""


#: Distinctive key prefixes of the official checkpoints of the project's models, as the files
#: spell them (``module.`` stripped): (what the file is, the model class it loads into,
#: prefixes). The manifests are in each model's ``assets/official_state_dict.json``.
KNOWN_LAYOUTS = (
    ("YolactEdge", "YolactEdge", ("backbone.layers.", "proto_net.", "prediction_layers.")),
    ("SiamMask (VOT, refine)", "SiamMask", ("features.features.", "rpn_model.", "mask_model.", "refine_model.")),
    ("SiamMask base (no refine module)", "SiamMask", ("features.features.", "rpn_model.", "mask_model.")),
    ("RetinaMask", "RetinaMask", ("backbone.body.", "backbone.fpn.", "rpn.head.", "mask.predictor.")),
    ("SeMask-FPN", "SeMaskFPN", ("backbone.patch_embed.", "backbone.layers.", "decode_head.")),
)


def guess_layout(keys: Iterable[str]) -> tuple[str, str] | None:
    """Which official checkpoint ``keys`` (as a file spells them) look like: ``(what the file
    is, model class)`` of the :data:`KNOWN_LAYOUTS` entry whose every prefix starts some key
    and whose prefixes cover at least half of the keys (the most specific such entry), else
    None."""
    keys = list(keys)
    best = None
    for label, model, prefixes in KNOWN_LAYOUTS:
        covered = sum(key.startswith(prefixes) for key in keys)
        if all(any(key.startswith(p) for key in keys) for p in prefixes) and 2 * covered >= len(keys):
            if best is None or len(prefixes) > best[0]:
                best = (len(prefixes), label, model)
    return best[1:] if best else None


class CheckpointMismatch(CheckpointError):
    """Keys of a checkpoint that do not fit the model.

    The message is short: the counts, the first few keys of each list and, when the file is
    another model's, which one it looks like. The full lists are attributes: ``missing`` (the
    model's names), ``missing_official`` (the same keys as an official file spells them),
    ``unexpected`` (as the file spells them), ``mismatched`` (``"key: file (shape) vs model
    (shape)"``); ``guess`` is what the file looks like (a :data:`KNOWN_LAYOUTS` label, or None).
    """

    SHOWN = 5  # keys of each list named in the message

    def __init__(self, source: str, model: str, file_keys: int, missing: list[str], missing_official: list[str],
                 unexpected: list[str], mismatched: list[str], guess: tuple[str, str] | None = None) -> None:
        self.source, self.model, self.file_keys = source, model, file_keys
        self.missing, self.missing_official = list(missing), list(missing_official)
        self.unexpected, self.mismatched = list(unexpected), list(mismatched)
        self.guess, self.guess_model = guess or (None, None)
        super().__init__(self._summary())

    def __reduce__(self):  # pickles (e.g. across processes) with its lists
        return type(self), (self.source, self.model, self.file_keys, self.missing, self.missing_official,
                            self.unexpected, self.mismatched, self.guess and (self.guess, self.guess_model))

    def details(self) -> dict:
        """Everything the message summarises, for a record."""
        return {"source": self.source, "model": self.model, "keys_in_file": self.file_keys, "guess": self.guess,
                "missing": self.missing, "missing_official": self.missing_official,
                "unexpected": self.unexpected, "mismatched": self.mismatched}

    def _summary(self) -> str:
        lists = {"missing keys": self.missing, "unexpected keys": self.unexpected,
                 "shape mismatches": self.mismatched}
        counts = ", ".join(f"{len(keys)} {title}" for title, keys in lists.items() if keys)
        lines = [f"{self.source}: checkpoint does not match the {self.model} model "
                 f"({counts}; {self.file_keys} keys in the file)"]
        if self.guess and self.guess_model != self.model:
            lines.append(f"  this looks like a {self.guess} checkpoint, not one for {self.model}")
        elif not self.guess and 2 * len(self.unexpected) >= self.file_keys:
            lines.append(f"  its keys look like none of: {', '.join(label for label, _, _ in KNOWN_LAYOUTS)}")
        for title, keys in lists.items():
            if keys:
                lines.append(f"  {len(keys)} {title}: {self._first(keys)}")
            if title == "missing keys" and self.missing_official[:self.SHOWN] != self.missing[:self.SHOWN]:
                lines.append(f"    as the official file names them: {self._first(self.missing_official)}")
        if any(len(keys) > self.SHOWN for keys in lists.values()):
            lines.append("  (the full lists: .missing, .missing_official, .unexpected, .mismatched of this error)")
        return "\n".join(lines)

    def _first(self, keys: list[str]) -> str:
        more = len(keys) - self.SHOWN
        return ", ".join(keys[:self.SHOWN]) + (f", ... (+{more} more)" if more > 0 else "")


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
                optional_suffixes: tuple[str, ...] = ("num_batches_tracked",),
                spelled: Callable[[], Mapping[str, str]] | None = None) -> list[str]:
    """Load ``state`` into ``model``; every key must match by name and shape.

    Keys ending in one of ``optional_suffixes`` may be absent (bookkeeping buffers); they
    keep the model's value and are returned so callers can report them. Floating tensors
    are cast to the model's dtype (official files may be fp16). ``spelled`` gives a map of this
    model's key names to the file's (or the official layout's) where they differ, for the
    :class:`CheckpointMismatch` raised when anything does not fit; it is called only then.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    skipped = [k for k in missing if k.endswith(optional_suffixes)]
    missing = [k for k in missing if k not in skipped]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        spelled = spelled() if spelled else {}

        def name(key: str) -> str:
            return spelled.get(key, key)

        mismatched = [name(k) + (f" ({k} here)" if name(k) != k else "")
                      + f": file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong]
        raise CheckpointMismatch(source, type(model).__name__, len(state), missing, [name(k) for k in missing],
                                 [name(k) for k in unexpected], mismatched, guess_layout(name(k) for k in state))
    merged = dict(expected)
    for key, value in state.items():
        target = expected[key]
        merged[key] = value.to(target.dtype) if value.is_floating_point() else value
    model.load_state_dict(merged, strict=True)
    return skipped


def key_spellings(model_keys: Iterable[str], file_keys: Iterable[str], mapping,
                  to_official=None) -> dict[str, str]:
    """{this model's key: the key as the file spells it, or as an official file would}, where
    they differ. ``mapping`` renames official keys to the model's and ``to_official`` (None:
    the same names) is its inverse; both are pure renamers of state dicts."""
    spelled = {}
    if to_official is not None:
        spelled.update({new: old for old, new in to_official({k: k for k in model_keys}).items()})
    spelled.update({new: old for new, old in mapping({k: k for k in file_keys}).items()})
    return {new: old for new, old in spelled.items() if new != old}


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
                 recipe, allow_recipe: bool, official_filename: str, recipe_note: str, to_official=None) -> dict:
    """Fill ``model`` from a checkpoint or the recipe, strictly, and return the provenance.

    ``weights`` is a checkpoint path; ``None`` uses ``default_path`` when it exists, else the
    recipe (a zero-argument function returning the official-layout state dict) when
    ``allow_recipe``. ``mapping`` turns official keys into the model's; ``to_official``
    (None: the names are the same) turns them back, to name missing keys as the official
    file does.
    """
    path = Path(weights) if weights else default_path
    if weights or path.is_file():
        state = read_state_dict(path)
        skipped = load_strict(model, mapping(state), source=str(path),
                              spelled=lambda: key_spellings(model.state_dict(), state, mapping, to_official))
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
