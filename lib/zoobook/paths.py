"""Where things live: the project root, real assets under ``data/``, runs under ``runs/``.

The root is ``$ZOOBOOK_ROOT`` when set, else the nearest folder above the working directory
(or above this package) holding ``_config.yml`` and ``notebooks/``. Runs are kept apart by
profile, so a smoke or synthetic run never overwrites a real one:
``runs/<profile>/<model>/<NN-stage>.{ipynb,json}`` and ``runs/<profile>/<model>/artifacts/``.
"""

from __future__ import annotations

import os
from pathlib import Path

PROFILES = ("smoke", "default", "full")


def _is_root(path: Path) -> bool:
    return (path / "_config.yml").is_file() and (path / "notebooks").is_dir()


def project_root() -> Path:
    env = os.environ.get("ZOOBOOK_ROOT")
    if env:
        return Path(env).resolve()
    for start in (Path.cwd().resolve(), Path(__file__).resolve().parent):
        for candidate in (start, *start.parents):
            if _is_root(candidate):
                return candidate
    raise RuntimeError("cannot find the Zoo Book project root (a folder with _config.yml and "
                       "notebooks/); set ZOOBOOK_ROOT")


def data_dir() -> Path:
    """Real weights and datasets dropped in by the user (never written by the code)."""
    return Path(os.environ.get("ZOOBOOK_DATA", project_root() / "data"))


def runs_dir() -> Path:
    return Path(os.environ.get("ZOOBOOK_RUNS", project_root() / "runs"))


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return profile


def model_run_dir(profile: str, model: str) -> Path:
    return runs_dir() / check_profile(profile) / model


def artifacts_dir(profile: str, model: str) -> Path:
    path = model_run_dir(profile, model) / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path
