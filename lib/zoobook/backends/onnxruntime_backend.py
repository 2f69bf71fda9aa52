"""ONNX Runtime on CPU (the embedded default). "Compiling" saves the graph after ORT's
portable (extended) optimisations, so the optimised model can be inspected and compared.

Thread-pool spinning is off by default: after each run ORT's idle threads would otherwise
keep spinning for a while, taking the cores from the host work that follows (our
post-processing) and from the other candidates of an interleaved benchmark; on a 2-core
machine that costs the next piece of work more than spinning saves ORT. ``spinning=True``
turns it back on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoobook.backends.base import Backend, Session

LEVELS = ("disable", "basic", "extended", "all")


def _level(name: str):
    import onnxruntime as ort

    return {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[name]


class OnnxRuntimeSession(Session):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int | None = None, optimization: str = "all",
                 providers: list[str] | None = None, spinning: bool = False, memory_pattern: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = _level(optimization)
        # the pattern planned on the first run is allocated beside the arena's blocks on the
        # next: about twice the peak for large activations (see the SeMask port)
        options.enable_mem_pattern = memory_pattern
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self._session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self.output_names, {n: feeds[n] for n in self.input_names})
        return dict(zip(self.output_names, outputs))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, threads: int | None = None, optimization: str = "all",
                 compile_optimization: str = "extended", spinning: bool = False, memory_pattern: bool = True) -> None:
        for level in (optimization, compile_optimization):
            if level not in LEVELS:
                raise ValueError(f"unknown ONNX Runtime optimisation level {level!r}; choose one of {LEVELS}")
        self.threads, self.optimization, self.compile_optimization = threads, optimization, compile_optimization
        self.spinning, self.memory_pattern = spinning, memory_pattern

    def compile(self, onnx_path: str | Path, out_dir: str | Path, *, input_shapes=None, name: str | None = None) -> Path:
        import onnxruntime as ort

        out = Path(out_dir) / f"{name or Path(onnx_path).stem}.ort-opt.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        options = ort.SessionOptions()
        options.graph_optimization_level = _level(self.compile_optimization)
        options.optimized_model_filepath = str(out)
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        return out

    def open(self, artifact: str | Path) -> OnnxRuntimeSession:
        return OnnxRuntimeSession(artifact, threads=self.threads, optimization=self.optimization,
                                  spinning=self.spinning, memory_pattern=self.memory_pattern)

    def device(self) -> dict:
        import onnxruntime as ort

        return {**super().device(), "runtime": f"onnxruntime {ort.__version__}",
                "optimization": self.optimization, "threads": self.threads, "spinning": self.spinning,
                "memory_pattern": self.memory_pattern}
