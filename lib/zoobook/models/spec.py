"""What a model package tells the runner, the notebooks and the book about itself."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: input and output names with shapes (``"bs"`` = batch axis)."""

    inputs: dict[str, tuple]
    outputs: dict[str, tuple]

    def input_shapes(self, batch_size: int) -> dict[str, list[int]]:
        return {name: [batch_size if d == "bs" else int(d) for d in dims] for name, dims in self.inputs.items()}


@dataclass(frozen=True)
class Published:
    """A number from a porting guide or paper, always shown labelled as published."""

    metric: str
    value: float
    unit: str
    device: str
    source: str
    batch_size: int | None = None
    data: str = ""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    stages: tuple[str, ...]
    graphs: dict[str, GraphSpec]
    published: tuple[Published, ...]
    profiles: dict[str, dict[str, dict]] = field(default_factory=dict)
    reference: str = ""

    def stage_parameters(self, profile: str, stage: str) -> dict:
        """Parameters the runner injects for ``stage`` under ``profile`` (beyond profile and backend)."""
        return dict(self.profiles.get(profile, {}).get(stage, {}))

    def published_rows(self, unit: str) -> list[dict]:
        """The published figures in ``unit`` as table rows, each with its device and source."""
        return [{"metric": p.metric, "batch_size": p.batch_size, "value": p.value, "unit": p.unit, "device": p.device,
                 "source": p.source} for p in self.published if p.unit == unit]

    def resolve_stage(self, name: str) -> str:
        """Accept ``02-export``, ``export`` or ``02``."""
        for stage in self.stages:
            number, _, short = stage.partition("-")
            if name in (stage, short, number):
                return stage
        raise ValueError(f"{self.name} has no stage {name!r}; stages: {', '.join(self.stages)}")
