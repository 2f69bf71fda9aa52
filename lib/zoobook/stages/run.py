"""A run: one model under one profile, with what its stages have left loaded once.

Every stage function receives a :class:`Run`. It owns the run's artifacts folder
(``runs/<profile>/<model>/artifacts/``) and reads the data manifest, the export record, the
compiled records and the network with its weights at most once each; a stage that writes one
of them updates it here too, so the next call sees the new one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoobook.atomic import write_json_atomic
from zoobook.paths import artifacts_dir, check_profile, model_run_dir

if TYPE_CHECKING:
    from zoobook.stages.port import Port

#: the files the generic stages share, relative to the artifacts folder
EXPORT_RECORD = "export.json"


def compiled_record(backend: str) -> str:
    return f"compiled/{backend}.json"


class Run:
    """``Run(port, profile)``: see the module's docstring. ``run.port`` holds the model's
    hooks, ``run.spec`` its :class:`~zoobook.stages.spec.ModelSpec`."""

    def __init__(self, port: Port, profile: str = "default") -> None:
        self.port = port
        self.spec = port.spec
        self.name = port.spec.name
        self.profile = check_profile(profile)
        self._json: dict[str, dict] = {}
        self._model: tuple[Any, dict] | None = None
        self._memo: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return f"Run({self.name!r}, profile={self.profile!r})"

    # folders and files -----------------------------------------------------------------

    @property
    def folder(self) -> Path:
        """``runs/<profile>/<model>/artifacts/`` (made on first use)."""
        return artifacts_dir(self.profile, self.name)

    @property
    def run_dir(self) -> Path:
        """``runs/<profile>/<model>/``: the executed notebooks and the stage records."""
        return model_run_dir(self.profile, self.name)

    def path(self, relative: str | Path) -> Path:
        return self.folder / relative

    def read_json(self, relative: str, stage: str) -> dict:
        """A JSON file ``stage`` wrote, read once; a clear error naming that stage when it is missing."""
        if relative not in self._json:
            path = self.path(relative)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not found; run stage {stage} of {self.name} first")
            self._json[relative] = json.loads(path.read_text())
        return self._json[relative]

    def write_json(self, relative: str, data: Any) -> Path:
        """Write ``data`` atomically under the artifacts folder and keep it as the current one."""
        path = write_json_atomic(self.path(relative), data)
        self._json[relative] = json.loads(path.read_text())
        return path

    def forget(self) -> None:
        """Drop what was loaded, so that the next access reads the files afresh."""
        self._json.clear()
        self._model = None
        self._memo.clear()

    def memo(self, key: Any, make):
        """``make()``, computed once per run and network (a port's inputs made with the
        network, a reference's outputs): kept until :meth:`forget` or :meth:`use_model`."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    # what the stages left ---------------------------------------------------------------

    @property
    def manifest(self) -> dict:
        """01-data's manifest (the data's provenance and what the inputs are)."""
        return self.read_json(self.port.manifest_file, "01-data")

    @property
    def dataset(self) -> dict:
        """The data's provenance, as 01-data recorded it."""
        return self.manifest["dataset"]

    @property
    def exported(self) -> dict:
        """02-export's record: ``weights``, ``opset``, ``graphs`` and the model's own keys."""
        return self.read_json(EXPORT_RECORD, "02-export")

    @property
    def weights(self) -> dict:
        """The provenance of the weights 02-export used."""
        return self.exported["weights"]

    def onnx(self, graph: str | None = None, batch_size: int | None = None) -> Path:
        """The exported ONNX file of ``graph`` (the model's only graph by default) that runs at
        ``batch_size``: the dynamic-batch file, or the one pinned to that batch; None for
        any (the first)."""
        files = self.exported["graphs"][self.graph_name(graph)]["onnx"]
        if batch_size is None:
            return Path(next(iter(files.values())))
        path = files.get("*") or files.get(str(batch_size))
        if path is None:
            raise KeyError(f"{self.name}: no {self.graph_name(graph)} graph for batch size {batch_size}; exported: "
                           f"{sorted(files, key=int)} (rerun 02-export with batch_sizes including it)")
        return Path(path)

    def graph_name(self, graph: str | None = None) -> str:
        if graph is not None:
            if graph not in self.spec.graphs:
                raise KeyError(f"{self.name} has no graph {graph!r}; graphs: {list(self.spec.graphs)}")
            return graph
        if len(self.spec.graphs) != 1:
            raise ValueError(f"{self.name} has several graphs ({list(self.spec.graphs)}): say which")
        return next(iter(self.spec.graphs))

    def exported_batch_sizes(self, graph: str | None = None) -> list[int] | None:
        """The batch sizes the graph was exported for; None for a dynamic batch."""
        files = self.exported["graphs"][self.graph_name(graph)]["onnx"]
        return None if "*" in files else sorted(int(bs) for bs in files)

    def compiled(self, backend: str) -> dict | None:
        """03-convert's record for ``backend``, or None where it has not compiled for it."""
        relative = compiled_record(backend)
        return self.read_json(relative, "03-convert") if self.path(relative).is_file() else None

    def compiled_files(self, backend: str) -> dict[str, str]:
        """{"<graph>@<batch>": path} of ``backend``'s compiled artifacts (empty where none):
        what results made with them depend on."""
        record = self.compiled(backend) or {"artifacts": {}}
        return {f"{graph}@{bs}": path for graph, by_batch in record["artifacts"].items()
                for bs, path in by_batch.items()}

    # the network -------------------------------------------------------------------------

    def model(self) -> tuple[Any, dict]:
        """The network with the weights 02-export used, and their provenance (built once)."""
        if self._model is None:
            weights = self.weights
            recipe = weights["kind"] == "recipe"
            self._model = self.port.build(None if recipe else weights["path"], allow_recipe=recipe)
            self._memo.clear()
        return self._model

    def use_model(self, model: Any, provenance: dict) -> None:
        """Keep ``model`` as this run's network (02-export, which built it, hands it on)."""
        self._model = (model, provenance)
        self._memo.clear()
