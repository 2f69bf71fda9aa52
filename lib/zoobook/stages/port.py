"""A model's port: the hooks the generic stages (:mod:`zoobook.stages.steps`) call for what
differs between models. A model package subclasses :class:`Port` once (``port.py``) and
exposes an instance as ``PORT``; everything else about a stage is shared.

Hooks a port must give (``NotImplementedError`` otherwise):

- ``build(weights, allow_recipe)``: the network in eval mode and its weights' provenance;
- ``locate(run, **params)``: the dataset (real under ``data/`` or generated) and its
  provenance; ``prepare(run, dataset, provenance, **params)``: check and preprocess it,
  return the manifest (01-data writes it);
- ``export_graphs(run, model, folder, *, opset, **params)``: write the ONNX graph(s) and
  return ``{graph: {batch: summary}}``, ``batch`` ``"*"`` for a dynamic batch axis, else the
  static batch the file takes, each summary holding ``path``;
- ``score(run, candidates, **params)``: 05-evaluate for ``candidates`` (the backend, then
  the reference where asked for).

Hooks with a default that fits most graphs:

- ``feeds(run, graph, batch_size)``: named inputs of ``graph`` made from the run's data, for
  parity checks and timing (``read_batch`` of the first items, cycled to fill the batch);
- ``graph_module(run, model, graph)``: the ``nn.Module`` that is ``graph`` (the model itself);
- ``expected_io(run, graph, batch)``: the I/O the exported file must have (from the spec);
- ``reference_outputs(run, graph, feeds)``: PyTorch on ``feeds``;
- ``compare(graph, reference, candidate, tolerance)``: tensor parity rows (msit metrics);
- ``before_compile(run, compiler, source, folder)``: a graph rewrite a compiler needs;
- the batched 04-infer: ``items(run)``, ``item_name(run, item)``, ``read_batch(run, items)``,
  ``save_output(path, outputs)`` with ``output_suffix``, and ``outputs_key(run)``;
  a port whose inference is not a batch loop (a tracker) gives ``infer(run, backend, ...)``
  instead;
- 06-benchmark: ``benchmark_graphs``; ``deployment(run, backend, *, items, backend_options)``,
  the port's per-item loop (read, preprocess, graph, host steps) that the host figures time;
  ``benchmark_extra(run, candidates, *, backend, graph_rows, budget, warmup, backend_options,
  **params)`` for model-specific tables (``backend_options``: {candidate: its options}).

Class attributes: ``spec``; ``manifest_file`` (01-data's manifest, relative to the
artifacts); ``data_files``, ``onnx_files``, ``output_files``, ``evaluate_files`` (glob
patterns of what 01-data, 02-export, 04-infer and 05-evaluate write, for the stage
declarations); ``tolerances`` (numeric precision -> :class:`~zoobook.compare.Tolerance`);
``backend_defaults`` (backend name -> constructor options this model needs, e.g. ONNX
Runtime without its memory pattern for large activations); ``isolated`` (run each timed
candidate of 06-benchmark in a process of its own, and by default each graph run of 02-export's
and 03-convert's parity checks, see ``isolate_checks``: for graphs whose memory one process should
not accumulate, and to report each one's peak).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zoobook.backends import FP16_EMULATION
from zoobook.compare import Tolerance, compare_with
from zoobook.stages.spec import ModelSpec, StageIO


class Port:
    spec: ModelSpec
    manifest_file: str = "inputs/manifest.json"
    data_files: tuple[str, ...] = ()
    onnx_files: tuple[str, ...] = ("*.onnx",)
    output_files: str = "outputs/{backend}/*"
    output_suffix: str = ".npz"
    evaluate_files: tuple[str, ...] = ()
    #: real assets this model reads when present, relative to ``data/``
    dataset_dir: str = ""
    weights_file: str = ""
    tolerances: dict[str, Tolerance] = {"fp32": Tolerance(atol=1e-3, rtol=1e-4), "fp16": Tolerance()}
    backend_defaults: dict[str, dict] = {}
    #: graphs 06-benchmark times (all by default)
    benchmark_graphs: tuple[str, ...] | None = None
    #: graph runs (parity, timing) each in a process of its own, with its memory peak
    isolated: bool = False

    def isolate_checks(self, run) -> bool:
        """Whether each graph run of 02-export's and 03-convert's parity checks takes a process of
        its own: ``isolated``, unless the port knows the run's inputs are small enough to share one."""
        return self.isolated

    # weights and data --------------------------------------------------------------------

    def build(self, weights: str | Path | None, *, allow_recipe: bool) -> tuple[Any, dict]:
        raise NotImplementedError

    def locate(self, run, **params) -> tuple[Any, dict]:
        raise NotImplementedError

    def prepare(self, run, dataset, provenance: dict, **params) -> dict:
        raise NotImplementedError

    # 02-export ----------------------------------------------------------------------------

    def export_graphs(self, run, model, folder: Path, *, opset: int, **params) -> dict[str, dict[str, dict]]:
        raise NotImplementedError

    def export_extra(self, run, **params) -> dict:
        """Keys the model adds to the export record (e.g. a top-k the graph was cut at)."""
        return {}

    def graph_module(self, run, model, graph: str):
        """The ``nn.Module`` that is ``graph``, built on ``model`` (the run's network)."""
        return model

    def expected_io(self, run, graph: str, batch: str) -> dict:
        return self.spec.graphs[graph].io(None if batch == "*" else int(batch))

    def feeds(self, run, graph: str, batch_size: int) -> dict[str, np.ndarray]:
        """Distinct data items to fill a batch (cycled when the set is smaller), so that a
        graph that mixed up its batch would show."""
        items = self.items(run)
        return self.read_batch(run, [items[i % len(items)] for i in range(batch_size)])

    def reference_session(self, run, graph: str):
        """PyTorch running ``graph`` with the run's network (a :class:`~zoobook.backends.Session`)."""
        from zoobook.backends.torch_backend import TorchSession

        spec = self.spec.graphs[graph]
        return TorchSession(self.graph_module(run, run.model()[0], graph), list(spec.inputs), list(spec.outputs))

    def reference_outputs(self, run, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.reference_session(run, graph).run(feeds)

    def compare(self, graph: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                tolerance: Tolerance) -> list[dict]:
        return compare_with(reference, candidate, tolerance)

    def tolerance(self, precision: str) -> Tolerance:
        """The tolerance of a backend computing in ``precision`` against fp32 ONNX."""
        return self.tolerances.get(precision, Tolerance())

    # 03-convert ---------------------------------------------------------------------------

    def before_compile(self, run, compiler: str, source: Path, folder: Path) -> tuple[Path, dict | None]:
        """The graph ``compiler`` compiles instead of ``source``, and a note of what was
        rewritten (None: ``source`` as it is)."""
        return source, None

    # 04-infer (the batched loop) ---------------------------------------------------------

    def items(self, run) -> list[int]:
        return [im["index"] for im in run.manifest["images"]]

    def item_name(self, run, item: int) -> str:
        return str(item)

    def read_batch(self, run, items: list[int]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def save_output(self, path: Path, outputs: dict[str, np.ndarray]) -> None:
        from zoobook.atomic import save_npz_atomic

        save_npz_atomic(path, outputs)

    def outputs_key(self, run) -> dict:
        """What saved outputs depend on besides the items, the data, the weights and the
        compiled artifacts (e.g. an input size)."""
        return {}

    # 06-benchmark -------------------------------------------------------------------------

    def deployment(self, run, backend: str, *, items: int, backend_options: dict | None = None):
        """What a deployment of the port does per item, for 06-benchmark's host figures: a
        :class:`~zoobook.pipeline.Deployment` whose stages read an item, preprocess it, run the
        graph (the stage named ``graph``) on ``backend`` and do the host's part, over the
        first ``items`` items of the run's data."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its deployment")

    def benchmark_extra(self, run, candidates: list[str], *, backend: str, graph_rows: list[dict], budget,
                        warmup: int, backend_options: dict, **params) -> dict[str, list[dict]]:
        """Tables 06-benchmark adds to the graph timings (``graph_rows``) and the deployment's:
        a tracker's, derived figures. ``budget``: the :class:`~zoobook.bench.Budget` of each
        timing; ``backend_options``: {candidate: its constructor options or None}."""
        return {}

    # declarations -------------------------------------------------------------------------

    def stage_io(self, stage: str) -> StageIO:
        """What ``stage`` reads and writes (:class:`~zoobook.stages.spec.StageIO`)."""
        data = (self.manifest_file, *self.data_files)
        onnx = ("export.json", *self.onnx_files)
        compiled = ("compiled/{backend}.json", "compiled/{backend}/*")
        emulated = (f"compiled/{FP16_EMULATION}.json", f"compiled/{FP16_EMULATION}/*")  # 03-convert's fp16 candidate
        outputs = (self.output_files,)
        emulated_outputs = (self.output_files.replace("{backend}", FP16_EMULATION),)  # 04-infer's fp16 candidate
        dataset = (f"data/{self.dataset_dir}",) if self.dataset_dir else ()
        weights = (f"data/weights/{self.weights_file}",) if self.weights_file else ()
        io = {
            "01-data": StageIO("01-data", writes=data, inputs=dataset),
            "02-export": StageIO("02-export", ("01-data",), reads=data, writes=onnx, inputs=weights),
            "03-convert": StageIO("03-convert", ("01-data", "02-export"), reads=(*data, *onnx),
                                  writes=tuple(dict.fromkeys((*compiled, *emulated)))),
            "04-infer": StageIO("04-infer", ("01-data", "02-export", "03-convert"),
                                reads=tuple(dict.fromkeys((*data, *onnx, *compiled, *emulated))),
                                writes=tuple(dict.fromkeys((*outputs, *emulated_outputs))), resumable=True,
                                timed=True),
            "05-evaluate": StageIO("05-evaluate", ("01-data", "02-export", "04-infer"),
                                   reads=tuple(dict.fromkeys((*data, *onnx, *outputs, *emulated_outputs))),
                                   writes=self.evaluate_files, inputs=dataset),
            "06-benchmark": StageIO("06-benchmark", ("01-data", "02-export", "03-convert"),
                                    reads=(*data, *onnx, *compiled), timed=True),
        }
        io.update(self.extra_stage_io())
        if stage not in io:
            raise KeyError(f"{self.spec.name} declares nothing for stage {stage}")
        return io[stage]

    def extra_stage_io(self) -> dict[str, StageIO]:
        """Declarations of stages beyond the common six, or that differ from them."""
        return {}
