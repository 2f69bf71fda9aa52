"""The stage protocol: a model is a small port over one shared pipeline.

- :mod:`zoobook.stages.spec`: what a model declares (graphs, published figures, profiles,
  the record sections the book shows, what each stage reads and writes);
- :mod:`zoobook.stages.run`: :class:`Run`, one model under one profile, with what its stages
  left loaded once;
- :mod:`zoobook.stages.port`: :class:`Port`, the hooks a model gives;
- :mod:`zoobook.stages.steps`: the stages themselves, written once.

Layering: models import this package; this package imports backends, I/O and metrics, never
a model (a :class:`Run` is given its port).
"""

from zoobook.stages.port import Port
from zoobook.stages.run import Run
from zoobook.stages.spec import GraphSpec, ModelSpec, Published, Section, StageIO

__all__ = ["GraphSpec", "ModelSpec", "Port", "Published", "Run", "Section", "StageIO"]
