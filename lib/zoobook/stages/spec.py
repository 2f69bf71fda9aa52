"""What a model tells the runner, the notebooks and the book about itself: its graphs, its
published figures, its profiles, the record sections the book shows (a typed contract), and
what each of its stages reads and writes."""

from __future__ import annotations

from dataclasses import dataclass, field

from zoobook.compare import AgreementLimit


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: input and output names with shapes (``"bs"`` = batch axis)."""

    inputs: dict[str, tuple]
    outputs: dict[str, tuple]

    def input_shapes(self, batch_size: int) -> dict[str, list[int]]:
        return {name: [batch_size if d == "bs" else int(d) for d in dims] for name, dims in self.inputs.items()}

    def io(self, batch_size: int | None = None) -> dict[str, dict[str, list]]:
        """Names and shapes as :func:`zoobook.export.onnx_io` reads them from a graph file:
        ``"bs"`` kept for a dynamic batch (``batch_size`` None), else pinned to it."""
        def dims(shape):
            return [d if d != "bs" or batch_size is None else batch_size for d in shape]

        return {"inputs": {k: dims(v) for k, v in self.inputs.items()},
                "outputs": {k: dims(v) for k, v in self.outputs.items()}}


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
class DeviceTime:
    """The device's time per item (image, frame) that a porting guide's speed figure implies,
    and how it follows from that figure: what 06-benchmark sets beside the host's time."""

    ms: float
    basis: str

    @classmethod
    def from_fps(cls, fps: float, basis: str, *, per_item: float = 1.0) -> DeviceTime:
        """``per_item`` calls of a graph published at ``fps`` calls per second make one item."""
        return cls(per_item * 1000.0 / fps, basis)


# ---------------------------------------------------------------------------------------
# The record's tables: a declared contract


@dataclass(frozen=True)
class SectionKind:
    """A kind of table a stage records: the columns every row must carry, and the columns
    the book shows (where some row has them), in order; () shows every column."""

    required: tuple[str, ...]
    columns: tuple[str, ...] = ()
    digits: int = 4


SECTION_KINDS: dict[str, SectionKind] = {
    "parity": SectionKind(("passed",), ("graph", "output", "shape", "matched", "agreement", "differing_pixels",
                                        "cosine", "max_abs", "max_rel", "rel_euclidean", "rmse", "tolerance",
                                        "passed")),
    "accuracy": SectionKind(("source",)),
    "agreement": SectionKind(("measure", "value"), ("measure", "value", "limit", "passed")),
    "speed": SectionKind(("candidate", "mean_ms"), ("graph", "candidate", "batch_size", "calls", "mean_ms", "p50_ms",
                                                    "p90_ms", "p99_ms", "throughput", "fps", "gflop_per_s",
                                                    "device_mean_ms", "rss_loaded_mb", "peak_rss_mb"), digits=2),
    "derived": SectionKind(("candidate",), digits=2),
    "memory": SectionKind(("candidate",), digits=1),
    "failures": SectionKind(("error",)),
    "training": SectionKind((), digits=3),
    "host": SectionKind(("threads", "host_ms"), digits=2),
    "bound": SectionKind(("threads", "host_ms", "device_ms"), ("threads", "host_ms", "device_ms", "overlapped_fps",
                                                               "sequential_fps", "bottleneck", "device"), digits=2),
    "pipeline": SectionKind(("loop", "mean_ms"), ("backend", "loop", "calls", "mean_ms", "throughput", "bound_fps",
                                                  "speedup", "same_outputs", "threads", "note"), digits=2),
    "published": SectionKind(("value",), digits=4),
    "locate": SectionKind(("node", "cosine", "passed"), ("graph", "index", "node", "op_type", "cosine", "max_abs", "max_rel",
                                                       "nonfinite", "passed", "first"), digits=6),
    "rounds": SectionKind(("keep_dtype", "failing"), ("graph", "keep_dtype", "operators", "failing", "first_divergence",
                                                       "lowest_cosine"), digits=6),
}


@dataclass(frozen=True)
class Section:
    """One table of one stage's record, as the book shows it: ``stage``'s record
    ``tables[table]``, of kind ``kind`` (see :data:`SECTION_KINDS`), under ``title``, with
    ``note`` beneath the title, its numbers to ``digits`` decimals (the kind's by default)."""

    stage: str
    table: str
    kind: str
    title: str
    note: str = ""
    digits: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SECTION_KINDS:
            raise ValueError(f"section {self.table!r}: unknown kind {self.kind!r}; kinds: {', '.join(SECTION_KINDS)}")

    def check(self, rows: list[dict]) -> list[dict]:
        """``rows`` if each has the kind's required columns, else an error naming the first
        row that lacks one."""
        required = SECTION_KINDS[self.kind].required
        for number, row in enumerate(rows):
            missing = [c for c in required if c not in row]
            if missing:
                raise ValueError(f"table {self.table!r} ({self.kind}) of {self.stage}: row {number} lacks {missing}")
        return rows

    @property
    def decimals(self) -> int:
        return SECTION_KINDS[self.kind].digits if self.digits is None else self.digits

    def columns(self, rows: list[dict]) -> list[str] | None:
        """The kind's columns that some row has, in order; None for every column."""
        wanted = SECTION_KINDS[self.kind].columns
        return [c for c in wanted if any(c in r for r in rows)] if wanted else None


#: the parity sections every model shows: 02-export's and 03-convert's
PARITY_SECTIONS = (
    Section("02-export", "parity", "parity", "Export: ONNX Runtime against PyTorch"),
    Section("03-convert", "parity", "parity", "Convert: compiled model against ONNX"),
    Section("03-convert", "parity_fp16", "parity", "Convert: the fp16 emulation against ONNX",
            "onnxruntime-fp16: fp16 storage emulated on the CPU, not an NPU measurement (see Methods)."),
    Section("03-convert", "locate", "locate", "fp16 emulation, per operator: the first divergence and the lowest cosines",
            "Where the fp16 parity failed, or when asked (-p locate=true)."),
    Section("03-convert", "locate_rounds", "rounds", "fp16 emulation: operator types kept in fp32, round by round",
            "The last list that leaves no operator failing is the suggested ATC --keep_dtype."),
)
#: 05-evaluate's task metric beside the published one, and the agreement with the reference
SCORE_SECTIONS = (
    Section("05-evaluate", "accuracy", "accuracy", "Accuracy: measured and published"),
    Section("05-evaluate", "agreement", "agreement", "Agreement with the PyTorch reference"),
    Section("05-evaluate", "agreement_fp16", "agreement", "Agreement of the fp16 emulation with the PyTorch reference",
            "Judged against the model's fp16 limits (see Methods); a CPU emulation, not an NPU measurement."),
)
#: the porting guide's speed figures, as 06-benchmark records them beside its own
PUBLISHED_SPEED = Section("06-benchmark", "published", "published", "Published speed (not measured here)", digits=2)
#: 06-benchmark's deployment: where the host's time goes, the bound it sets with the published
#: device, the pipelined loop, and the harness's own overhead
HOST_SECTIONS = (
    Section("06-benchmark", "host", "host", "Where the time goes per item",
            "Milliseconds per item of each stage and host step, each exclusive (a stage's figure leaves out the "
            "steps named within it); `graph` ran on this machine's backend, `host_ms` is all the rest."),
    Section("06-benchmark", "deployment", "bound", "Deployment bound: this host with the published device",
            "1000 / max(host, device) with host and device overlapped; 1000 / (host + device) one after the other."),
    Section("06-benchmark", "pipeline", "pipeline", "Sequential against pipelined loop",
            "The same items through both loops; `same_outputs`: the pipelined loop's results equal the sequential "
            "ones. With a device stand-in, the graph is replaced by a wait of the published device time (handing on "
            "the real graph's outputs), and `bound_fps` is the deployment bound the loop should approach."),
    Section("06-benchmark", "harness", "derived", "Harness overhead",
            "The benchmark's timing of ONNX Runtime against a bare `InferenceSession.run` loop, batch 1."),
)
#: what a model shows unless it declares its own sections
COMMON_SECTIONS = (
    *PARITY_SECTIONS, *SCORE_SECTIONS,
    Section("06-benchmark", "graph", "speed", "Speed of the graph", "Latency per call (one batch), warm-up excluded."),
    *HOST_SECTIONS,
    PUBLISHED_SPEED,
)


# ---------------------------------------------------------------------------------------
# What each stage reads and writes


@dataclass(frozen=True)
class StageIO:
    """What a stage depends on and what it leaves: ``upstream`` stages whose results it
    uses; ``reads`` and ``writes``, paths (glob patterns) under the run's artifacts folder,
    ``{backend}`` standing for the stage's backend; ``inputs``, paths outside the run
    (relative to the project: real data and weights under ``data/``); ``parameters``, the
    names of its notebook's parameters that change its result; ``resumable``, whether it keeps
    its finished items across an interruption (an interrupted run resumes them) rather than
    being undone as a whole; ``timed``, whether its figures include speeds, so that the runner
    starts nothing beside it (:mod:`zoobook.warm`)."""

    stage: str
    upstream: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    parameters: tuple[str, ...] = ()
    resumable: bool = False
    timed: bool = False

    def paths(self, backend: str) -> dict[str, list[str]]:
        """``reads`` and ``writes`` with ``{backend}`` filled in."""
        return {"reads": [p.format(backend=backend) for p in self.reads],
                "writes": [p.format(backend=backend) for p in self.writes]}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    stages: tuple[str, ...]
    graphs: dict[str, GraphSpec]
    published: tuple[Published, ...] = ()
    profiles: dict[str, dict[str, dict]] = field(default_factory=dict)
    reference: str = ""
    #: the record sections the book shows, in order (the common ones by default)
    sections: tuple[Section, ...] = COMMON_SECTIONS
    #: the published device time per item, for 06-benchmark's deployment bound (None: none published)
    device_time: DeviceTime | None = None
    #: the task metrics the at-a-glance matrix shows, as columns of 05-evaluate's accuracy table
    task_metrics: tuple[str, ...] = ()
    #: what 05-evaluate's agreement with the reference must reach, per precision of the candidate
    agreement_limits: dict[str, tuple[AgreementLimit, ...]] = field(default_factory=dict)

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

    def section(self, stage: str, table: str) -> Section:
        """The declared section of ``stage``'s table ``table``; an error if none is declared."""
        for s in self.sections:
            if (s.stage, s.table) == (stage, table):
                return s
        raise KeyError(f"{self.name} declares no section {table!r} for {stage}; declared: "
                       f"{[(s.stage, s.table) for s in self.sections]}")
