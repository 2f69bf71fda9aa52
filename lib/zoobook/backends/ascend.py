"""Ascend NPU: ATC compiles ONNX to ``.om``; ``ais_bench``'s ``InferSession`` runs it.

Coded against the documented interfaces (shared/reference/ascend.md): ``atc --framework=5
--model --output --input_format --input_shape --soc_version [--precision_mode]
[--dynamic_batch_size]`` and ``ais_bench.infer.interface.InferSession(device_id, model_path)``
with ``infer(feeds, mode=...)``, ``summary().exec_time_list``, ``reset_summaryinfo()`` and
``free_resource()``. soc_version, precision mode and batch profiles are parameters: nothing
about the chip is hard-coded. The test suite drives this module with a fake ``atc`` and a fake
``ais_bench`` (tests/fakes), never with a real NPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from zoobook.backends.base import Backend, Session

PRECISION_MODES = ("force_fp16", "allow_fp32_to_fp16", "allow_mix_precision", "must_keep_origin_dtype",
                   "force_fp32")


class AscendError(RuntimeError):
    pass


def _npu_smi() -> tuple[str | None, str | None]:
    """``(output of npu-smi info, None)``, or ``(None, why no device answered)``."""
    exe = shutil.which("npu-smi")
    if exe is None:
        return None, "npu-smi is not on PATH"
    try:
        done = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return None, f"`{exe} info` did not answer within 20 s"
    except OSError as err:
        return None, f"`{exe} info` did not start ({err})"
    if done.returncode != 0:
        said = " ".join(f"{done.stdout}\n{done.stderr}".split())[-300:] or "no output"
        return None, f"`{exe} info` failed (exit {done.returncode}): {said}"
    return done.stdout, None


def npu_smi_info() -> str | None:
    """Output of ``npu-smi info`` or ``None`` when no device answers."""
    return _npu_smi()[0]


def _ais_bench_problem() -> str | None:
    try:
        import ais_bench.infer.interface  # noqa: F401
    except Exception as err:  # ImportError, or the ACL library it loads failing (OSError and others)
        return f"ais_bench does not import ({type(err).__name__}: {err})"
    return None


def unavailable_reason() -> str | None:
    """Why this machine cannot run the Ascend backend, None when it can: ``ais_bench`` does
    not import and/or ``npu-smi info`` does not answer, each with its error or output."""
    problems = [p for p in (_ais_bench_problem(), _npu_smi()[1]) if p]
    return "; ".join(problems) or None


def require_npu() -> None:
    """An :class:`AscendError` saying plainly what is missing where no NPU can be used."""
    reason = unavailable_reason()
    if reason:
        raise AscendError(f"the ascend backend needs an Ascend NPU and none is usable here: {reason}. Install "
                          "the CANN toolkit and ais_bench and source set_env.sh, or choose another backend "
                          "(onnxruntime, torch)")


def detect_soc_version() -> str | None:
    """The chip name from ``npu-smi info`` (e.g. ``310P3``) as ATC wants it (``Ascend310P3``)."""
    info = npu_smi_info() or ""
    match = re.search(r"\b(310P?\d?|310B\d?|910[A-Z]?\d?)\b", info)
    return f"Ascend{match[1]}" if match else None


def atc_command(onnx_path: Path, output: Path, *, input_shapes: dict[str, list[int]], soc_version: str,
                precision_mode: str | None = None, input_format: str = "NCHW",
                dynamic_batch_sizes: list[int] | None = None, extra_args: list[str] | None = None) -> list[str]:
    """The ATC command line for one conversion (no chip defaults are assumed)."""
    shapes = ";".join(f"{name}:{','.join(str(d) for d in dims)}" for name, dims in input_shapes.items())
    command = ["atc", "--framework=5", f"--model={onnx_path}", f"--output={output}",
               f"--input_format={input_format}", f"--input_shape={shapes}",
               f"--soc_version={soc_version}", "--log=error"]
    if precision_mode:
        if precision_mode not in PRECISION_MODES:
            raise ValueError(f"unknown precision_mode {precision_mode!r}; choose one of {PRECISION_MODES}")
        command.append(f"--precision_mode={precision_mode}")
    if dynamic_batch_sizes:
        if not 2 <= len(dynamic_batch_sizes) <= 100:
            raise ValueError("ATC --dynamic_batch_size takes 2 to 100 profiles")
        command.append(f"--dynamic_batch_size={','.join(str(b) for b in dynamic_batch_sizes)}")
    return command + list(extra_args or [])


class AscendSession(Session):
    backend = "ascend"

    def __init__(self, om_path: str | Path, *, device_id: int = 0, mode: str = "static") -> None:
        problem = _ais_bench_problem()
        if problem:
            raise AscendError(f"{om_path}: cannot run it, {problem}")
        from ais_bench.infer.interface import InferSession

        self.path = Path(om_path)
        self.mode = mode
        self._session = InferSession(device_id, str(om_path))
        self.input_names = [t.name for t in self._session.get_inputs()]
        self.output_names = [t.name for t in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.infer([np.ascontiguousarray(feeds[n]) for n in self.input_names], mode=self.mode)
        return dict(zip(self.output_names, outputs))

    def device_times_ms(self, reset: bool = True) -> list[float]:
        times = [float(t) for t in self._session.summary().exec_time_list]
        if reset:
            self._session.reset_summaryinfo()
        return times

    def close(self) -> None:
        self._session.free_resource()
        finalize = getattr(self._session, "finalize", None)
        if finalize:
            finalize()


class AscendBackend(Backend):
    name = "ascend"

    def __init__(self, soc_version: str | None = None, precision_mode: str | None = None,
                 device_id: int = 0, dynamic_batch_sizes: list[int] | None = None,
                 atc_extra_args: list[str] | None = None) -> None:
        self.soc_version = soc_version
        self.precision_mode = precision_mode
        self.device_id = device_id
        self.dynamic_batch_sizes = dynamic_batch_sizes
        self.atc_extra_args = atc_extra_args

    @classmethod
    def available(cls) -> bool:
        """``ais_bench`` imports and ``npu-smi info`` answers; the import is tried first, so a
        machine without ``ais_bench`` never waits on ``npu-smi``."""
        return _ais_bench_problem() is None and npu_smi_info() is not None

    @classmethod
    def require_device(cls) -> None:
        require_npu()

    def compile(self, onnx_path: str | Path, out_dir: str | Path, *, input_shapes: dict[str, list[int]],
                name: str | None = None) -> Path:
        soc = self.soc_version or detect_soc_version()
        if not soc:
            said = _npu_smi()[1] or "npu-smi info names no chip"
            raise AscendError(f"no Ascend device to ask for the chip ({said}), and soc_version is not set; "
                              "pass soc_version='Ascend310P3' (for example)")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = out_dir / (name or Path(onnx_path).stem)
        command = atc_command(Path(onnx_path), stem, input_shapes=input_shapes, soc_version=soc,
                              precision_mode=self.precision_mode, dynamic_batch_sizes=self.dynamic_batch_sizes,
                              extra_args=self.atc_extra_args)
        if shutil.which("atc") is None:
            raise AscendError("atc not found on PATH (source the CANN set_env.sh first)")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise AscendError(f"ATC failed ({done.returncode}) for {onnx_path}:\n{done.stdout}\n{done.stderr}")
        produced = sorted(out_dir.glob(f"{stem.name}*.om"))
        if not produced:
            raise AscendError(f"ATC reported success but wrote no {stem}*.om")
        return produced[0]

    def open(self, artifact: str | Path) -> AscendSession:
        return AscendSession(artifact, device_id=self.device_id,
                             mode="dynbatch" if self.dynamic_batch_sizes else "static")

    def device(self) -> dict:
        return {"backend": self.name, "kind": "npu", "name": self.soc_version or detect_soc_version(),
                "device_id": self.device_id, "precision_mode": self.precision_mode or "ATC default"}
