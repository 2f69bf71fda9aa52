"""Model packages. Each exposes ``SPEC`` (a :class:`~zoobook.stages.spec.ModelSpec`) and
``PORT`` (its :class:`~zoobook.stages.port.Port`, in ``port.py``)."""

from __future__ import annotations

from importlib import import_module

from zoobook.stages import Port, Run
from zoobook.stages.spec import ModelSpec

MODELS = ("yolact_edge", "siammask", "retinamask", "semask")


def _package(name: str):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    return import_module(f"zoobook.models.{name}")


def get_spec(name: str) -> ModelSpec:
    return _package(name).SPEC


def get_port(name: str) -> Port:
    return import_module(f"zoobook.models.{_package(name).__name__.rsplit('.', 1)[1]}.port").PORT


def open_run(name: str, profile: str = "default") -> Run:
    """``Run(<name>'s port, profile)``: what a stage notebook starts from."""
    return Run(get_port(name), profile)
