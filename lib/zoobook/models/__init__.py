"""Model packages. Each exposes ``SPEC`` (a :class:`~zoobook.models.spec.ModelSpec`)."""

from __future__ import annotations

from importlib import import_module

from zoobook.models.spec import ModelSpec

MODELS = ("yolact_edge", "siammask", "retinamask", "semask")


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    return import_module(f"zoobook.models.{name}").SPEC
