"""SiamMask's hooks over the shared stages (:mod:`zoobook.stages.steps`), and the tables its
notebooks show; the tracker on a run (engines, the supervised experiment, the trained base
model, the demo clip, lock-step) is ``tracking.py``.

Artifacts of a run live in ``runs/<profile>/siammask/artifacts/``::

    train/<N>p/, train/checkpoint.json             00-train (train_stage.py: runs, the checkpoint handed on)
    manifest.json, VOT2016.json                    01-data (dataset, demo clip, the evaluator's index)
    export.json, onnx/<graph>.onnx                 02-export (mask, refine, template, search)
    compiled/<backend>.json and its artifacts      03-convert
    results/<candidate>/<tracker>/baseline/...     04-infer (VOT result files, resumable per sequence)
    demo/<candidate>.npz                           04-infer (the demo clip's polygons and masks)
    scores/<candidate>.json                        05-evaluate

04-infer is tracking, not a batch loop: the port's ``infer`` runs the VOT supervised
experiment; 05-evaluate's ``score`` reads the result files alone, then compares the backend
with the PyTorch reference; 06-benchmark adds the whole tracker per frame to the graph timings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from zoobook import bench
from zoobook.bench import Budget
from zoobook.atomic import write_json_atomic
from zoobook.backends import FP16_EMULATION, REFERENCE, capabilities, with_reference
from zoobook.checkpoints import weights_label
from zoobook.compare import Tolerance
from zoobook.data import half_present
from zoobook.data.images import read_bgr
from zoobook.data.vot import VotDataset, read_json_index, write_json_index, write_synthetic_vot
from zoobook.metrics import vot
from zoobook.models.siammask import GRAPHS, SPEC, train_stage
from zoobook.models.siammask.checkpoint import OFFICIAL_FILENAME, build
from zoobook.models.siammask.export import export_graph, graph_module
from zoobook.models.siammask.tracker import SiamMaskTracker, TorchEngine
from zoobook.models.siammask.tracking import DEMO, MODES, TRAINED, demo_clip, demo_frames, lockstep, results_folder, \
    results_key, run_experiment, tracker_engine, tracking_loop, trained_checkpoint, trained_results_folder, \
    trained_weights, vot_dataset
from zoobook.paths import data_dir, runs_dir
from zoobook.pipeline import Deployment
from zoobook.resume import generated_once, resumable_folder
from zoobook.stages import Port, Run, StageIO


class SiamMaskPort(Port):
    spec = SPEC
    manifest_file = "manifest.json"
    data_files = ("VOT2016.json",)
    onnx_files = ("onnx/*.onnx",)
    output_files = "results/{backend}/*"
    evaluate_files = ("scores/*.json",)
    dataset_dir = "VOT2016"
    weights_file = OFFICIAL_FILENAME
    #: fp32 tolerance (golden README: |diff| <= 1e-3 on maps and logits, 5e-3 on corr_feature,
    #: values up to 81); an fp16 device is held to msit's thresholds alone
    tolerances = {"fp32": Tolerance(atol=5e-3, rtol=1e-4), "fp16": Tolerance()}

    def build(self, weights, *, allow_recipe):
        return build(weights, allow_recipe=allow_recipe)

    # 01-data

    def locate(self, run: Run, *, num_sequences: int = 3, num_frames: int = 60, require_real: bool = False,
               seed: int = 0) -> tuple[VotDataset, dict]:
        """Real VOT2016 under ``data/VOT2016`` when present (``num_sequences`` 0 = all 60), else
        a generated set in VOT2016's layout under ``runs/<profile>/datasets/vot-synthetic``.
        Every sequence used is read here, so a broken file is named before anything is written;
        a ``data/VOT2016`` folder without its ``list.txt`` is an error, not a reason to generate."""
        real = data_dir() / "VOT2016"
        if (real / "list.txt").is_file():
            dataset = VotDataset(real, limit=num_sequences or None).check()
            return dataset, {"kind": "real", "name": "VOT2016", "root": str(real), "sequences": len(dataset)}
        if real.is_dir() and any(real.iterdir()):
            raise half_present(real / "list.txt", "VOT sequence list", f"{real} holds files", real,
                               "add list.txt (one sequence folder name per line)")
        if require_real:
            raise FileNotFoundError(f"{real / 'list.txt'}: real VOT2016 not found; this profile needs it "
                                    "(sequence folders with groundtruth.txt beside list.txt)")
        root = runs_dir() / run.profile / "datasets" / "vot-synthetic" / "VOT2016"
        meta = {"num_sequences": num_sequences, "num_frames": num_frames, "seed": seed}
        generated_once(root, meta, lambda: write_synthetic_vot(root, num_sequences, num_frames, seed=seed))
        dataset = VotDataset(root).check()
        return dataset, {"kind": "synthetic", "name": "generated VOT2016-format set (moving, turning rectangles)",
                         "root": str(root), "sequences": len(dataset), "seed": seed}

    def prepare(self, run: Run, dataset: VotDataset, provenance: dict, *, demo_frames: int = 0) -> dict:
        """Write the evaluator's JSON index of the sequences; the manifest names it, the
        sequences and the demo clip (its first ``demo_frames`` frames, 0 for all)."""
        index_path = write_json_index(dataset, run.path("VOT2016.json"))
        sequences = [{"name": s.name, "frames": len(s), "width": s.width, "height": s.height}
                     for s in (dataset[i] for i in range(len(dataset)))]
        return {"dataset": {**provenance, "frames": sum(s["frames"] for s in sequences)},
                "index": str(index_path), "sequences": sequences, "demo": demo_clip(demo_frames)}

    # 02-export and the inputs of every graph check

    def export_graphs(self, run: Run, model, folder: Path, *, opset: int) -> dict[str, dict[str, dict]]:
        """The four graphs, static batch 1 (the port's mask and refine; the template-once
        split), under ``onnx/``."""
        return {name: {"1": export_graph(model, name, folder / "onnx" / f"{name}.onnx", opset=opset)}
                for name in tqdm(GRAPHS, desc="export")}

    def graph_module(self, run: Run, model, graph: str):
        return graph_module(model, graph)

    def feeds(self, run: Run, graph: str, batch_size: int) -> dict[str, np.ndarray]:
        """``graph``'s inputs as the tracker makes them on the demo clip (not the export's
        random examples), computed once per run and network: the template crop of frame 0,
        the search crop of frame 1, the kernels and the refine inputs at the chosen cell."""
        if batch_size != 1:
            raise ValueError(f"SiamMask's graphs take batch 1 only (the port's correlation reshapes fix it), "
                             f"not {batch_size}")
        return run.memo("tracker crops", lambda: _tracker_crops(run, run.model()[0]))[graph]

    # 04-infer: tracking

    def infer(self, run: Run, backend: str, *, batch_size: int = 1, resume: bool = True,
              backend_options: dict | None = None, reference: bool = True, mode: str = "split") -> dict:
        """Run the supervised experiment on every sequence with the backend (and the PyTorch
        reference), writing the reference's result files. With ``resume``, sequences whose
        file exists are kept, as long as data, weights and compiled model are unchanged.
        Returns per candidate the folder, the sequences run now (failures, frames, tracking
        time, fps), those skipped, and the mean fps."""
        if batch_size != 1:
            raise ValueError(f"a tracker sees one frame at a time: batch_size must be 1, not {batch_size}")
        dataset = vot_dataset(run)
        summary = {}
        for candidate in with_reference(backend, reference):
            folder = results_folder(run, candidate)
            resumable_folder(folder, results_key(run, candidate, mode), resume=resume, pattern="baseline/*/*_001.txt")
            tracker = SiamMaskTracker(tracker_engine(run, candidate, mode=mode, backend_options=backend_options))
            summary[candidate] = run_experiment(tracker, dataset, folder, resume=resume, desc=f"track {candidate}")
        return summary

    # 05-evaluate

    def score(self, run: Run, candidates: list[str], *, trained: bool = True, mode: str = "split",
              backend_options: dict | None = None) -> dict:
        """Score each candidate's result files alone (accuracy, robustness, EAO over both
        intervals), and the backend against the PyTorch reference: on the VOT runs, whether
        both wrote the same kind of line and the overlap of their regions; on the demo clip, in
        lock-step (:func:`lockstep`). With ``trained``, also the base model 00-train trained,
        where 04-infer tracked with it."""
        backend, *reference = candidates
        manifest = run.manifest
        index = read_json_index(manifest["index"])
        scores = {name: vot.evaluate_folder(index, results_folder(run, name)) for name in candidates}
        for name, score in scores.items():
            write_json_atomic(run.path("scores") / f"{name}.json", score)
        out = {"scores": scores, "dataset": manifest["dataset"], "weights": run.weights}
        if trained and (handed := trained_checkpoint(run)) is not None:
            base = trained_weights(run, handed)
            folder = trained_results_folder(run, base)
            if folder.is_dir():
                out["scores"][TRAINED] = vot.evaluate_folder(index, folder)
                out["trained_weights"] = base
        if reference:
            out["agreement"] = vot.results_agreement(index, results_folder(run, backend),
                                                     results_folder(run, reference[0]))
            out["lockstep"] = lockstep(run, backend, mode=mode, backend_options=backend_options)
        return out

    # 06-benchmark

    def deployment(self, run: Run, backend: str, *, items: int, backend_options: dict | None = None) -> Deployment:
        """Per frame of the demo clip: read the JPEG, then the tracker as the port deploys it
        (its mask graph, template and search, every frame, then refine), whose host steps
        (crop, decode, mask, paste, polygon) are marked inside; started on the first frame
        before each pass."""
        frames = run.manifest["demo"]["frames"]
        first = read_bgr(frames[0])
        engine = tracker_engine(run, backend, mode="port", backend_options=backend_options, uncompiled=True)
        tracker = SiamMaskTracker(engine)
        return Deployment([("read", read_bgr), ("track", tracker.track)], frames[1:1 + items], unit="frame",
                          reset=lambda: tracker.init(first, run.manifest["demo"]["box"]))

    def benchmark_extra(self, run: Run, candidates: list[str], *, backend: str, graph_rows: list[dict],
                        budget: Budget, warmup: int, backend_options: dict, tracker_frames: int = 20) -> dict:
        """The whole tracker per frame on the demo clip (crops, inference, decoding, mask paste
        and contour; frames decoded beforehand, as the reference's speed excludes image
        reading), the template-once split against the port's graph, interleaved."""
        frames = demo_frames(run)[:max(2, tracker_frames + 1)]
        engines = {}
        for name in candidates:
            # the reference's engine runs the template branch once whatever the mode
            for mode in ("split",) if capabilities(name).reference else MODES:
                label = f"{name} ({'template once' if mode == 'split' else 'port: template every frame'})"
                engines[label] = tracker_engine(run, name, mode=mode, backend_options=backend_options.get(name),
                                                uncompiled=True)
        runners = {label: tracking_loop(engine, frames, run.manifest["demo"]["box"])
                   for label, engine in engines.items()}
        rows = bench.benchmark(runners, batch_size=1, warmup=min(warmup, 1), budget=budget.at_least(len(frames) - 1))
        for row in rows:
            row["fps"] = row.pop("throughput")
        return {"tracker": rows, "derived": derived_rows(graph_rows)}

    # declarations

    def extra_stage_io(self) -> dict[str, StageIO]:
        """00-train, which hands a checkpoint to 04-infer and 05-evaluate; 01-data's demo clip;
        04-infer's result files and demo tracks (the reference's and the trained base model's
        beside the backend's)."""
        data = (self.manifest_file, *self.data_files)
        onnx = ("export.json", *self.onnx_files)
        compiled = ("compiled/{backend}.json", "compiled/{backend}/*")
        emulated = (f"compiled/{FP16_EMULATION}.json", f"compiled/{FP16_EMULATION}/*")  # 05-evaluate's lock-step
        trained = (train_stage.HANDOFF, "train/*p/*")
        results = ("results/{backend}/*", f"results/{REFERENCE}/*", f"results/{TRAINED}/*",
                   "demo/{backend}.npz", f"demo/{REFERENCE}.npz")
        return {
            "00-train": StageIO("00-train", writes=trained, inputs=(f"data/{train_stage.REAL_ROOT}",),
                                parameters=("preset", "processes", "epochs", "batch_size", "pairs", "videos",
                                            "frames", "require_real", "seed"), resumable=True, timed=True),
            "01-data": StageIO("01-data", writes=data, inputs=(f"data/{self.dataset_dir}", f"data/samples/{DEMO}"),
                               parameters=("num_sequences", "num_frames", "require_real", "seed", "demo_frames")),
            "04-infer": StageIO("04-infer", ("00-train", "01-data", "02-export", "03-convert"),
                                reads=(*data, *onnx, *compiled, *trained), writes=results,
                                parameters=("reference", "mode", "trained"), timed=True),
            "05-evaluate": StageIO("05-evaluate", ("00-train", "01-data", "02-export", "03-convert", "04-infer"),
                                   reads=(*data, *onnx, *compiled, *emulated, *trained, *results),
                                   writes=self.evaluate_files, inputs=(f"data/{self.dataset_dir}",),
                                   parameters=("reference", "mode", "trained", "fp16")),
        }


PORT = SiamMaskPort()


# ---------------------------------------------------------------------------------------
# The graphs' inputs, as the tracker makes them


class _Recorder:
    """An engine wrapper that keeps what the tracker feeds the graphs."""

    def __init__(self, engine) -> None:
        self.engine, self.feeds = engine, {}

    def set_template(self, template):
        self.feeds["template"] = template
        return self.engine.set_template(template)

    def search(self, search):
        self.feeds["search"] = search
        return self.engine.search(search)

    def refine(self, inputs):
        self.feeds["refine"] = inputs
        return self.engine.refine(inputs)


def _tracker_crops(run: Run, model) -> dict[str, dict[str, np.ndarray]]:
    """Each graph's inputs as the tracker makes them on the demo clip: the template crop of
    frame 0, the search crop of frame 1, the kernels and the refine inputs at the chosen cell."""
    frames = demo_frames(run, 2)
    recorder = _Recorder(TorchEngine(model))
    tracker = SiamMaskTracker(recorder)
    tracker.init(frames[0], run.manifest["demo"]["box"])
    tracker.track(frames[1])
    z, x = recorder.feeds["template"], recorder.feeds["search"]
    kernels = run.port.reference_session(run, "template").run({"template": z})
    return {"mask": {"template": z, "search": x}, "refine": recorder.feeds["refine"], "template": {"template": z},
            "search": {"search": x, **kernels}}


# ---------------------------------------------------------------------------------------
# Agreement with the reference and the tables 05-evaluate shows


def vot_rows(evaluation: dict) -> list[dict]:
    """Measured EAO (both intervals), accuracy and robustness per candidate, then the published figures."""
    data = evaluation["dataset"]
    rows = []
    for name, s in evaluation["scores"].items():
        trained = name == TRAINED
        weights = evaluation["trained_weights"]["note"] if trained else weights_label(evaluation["weights"])
        rows.append({"source": "measured", "backend": f"{REFERENCE}, base model (mask branch)" if trained else name,
                     "EAO [100,356]": s["eao"]["repo"],
                     "EAO [108,371]": s["eao"]["vot2016"], "accuracy": s["accuracy"], "robustness": s["robustness"],
                     "failures": s["lost_number"], "frames": s["frames"], "weights": weights,
                     "data": f"{data['kind']}: {data['name']} ({data['sequences']} sequence"
                             f"{'' if data['sequences'] == 1 else 's'})"})
    published: dict[str, dict] = {}
    for pub in SPEC.published:
        if pub.unit in ("EAO", "accuracy", "robustness"):
            row = published.setdefault(pub.device, {
                "source": "published", "backend": pub.device, "EAO [100,356]": None, "EAO [108,371]": None,
                "accuracy": None, "robustness": None, "failures": None, "frames": None,
                "weights": "official checkpoint", "data": f"{pub.data}; {pub.source}"})
            row["EAO [100,356]" if pub.unit == "EAO" else pub.unit] = pub.value
    rows += published.values()
    return rows


def lockstep_rows(d: dict) -> list[dict]:
    """:func:`~zoobook.models.siammask.tracking.lockstep`'s result as agreement rows."""
    return [{"measure": "demo clip, lock-step: frames where both chose the same anchor cell", "value": d["same_cell"]},
            {"measure": "demo clip, lock-step: largest box-centre difference (px)", "value": d["max_centre_difference_px"]},
            {"measure": "demo clip, lock-step: mean mask IoU", "value": d["mean_mask_iou"]},
            {"measure": "demo clip, lock-step: lowest mask IoU", "value": d["min_mask_iou"]}]


def agreement_rows(evaluation: dict) -> list[dict]:
    if "agreement" not in evaluation:
        return []
    a = evaluation["agreement"]
    return [*lockstep_rows(evaluation["lockstep"]),
            {"measure": "VOT, free-running: frames with the same kind of line (code or region)",
             "value": a["same_kind_of_line"]},
            {"measure": "VOT, free-running: mean overlap of the two regions where both tracked",
             "value": a["mean_region_overlap"]}]


def record_metrics(evaluation: dict) -> dict:
    out = {name: {k: v for k, v in s.items() if k != "curve"} for name, s in evaluation["scores"].items()}
    if "agreement" in evaluation:
        out["agreement"] = evaluation["agreement"]
        out["lockstep"] = {k: v for k, v in evaluation["lockstep"].items() if k != "mask_iou"}
    return out


# ---------------------------------------------------------------------------------------
# 06-benchmark's own rows


def derived_rows(graph_rows: list[dict]) -> list[dict]:
    """Per candidate, from 06-benchmark's graph timings: what the template-once split saves
    per frame, and model-only frame rates: 1000 / (mask + refine) and the port's parse.py
    formula (that value x 4)."""
    by = {(r["candidate"], r["graph"]): r["mean_ms"] for r in graph_rows}
    rows = []
    for name in dict.fromkeys(r["candidate"] for r in graph_rows):
        mask, refine, search = by[(name, "mask")], by[(name, "refine")], by[(name, "search")]
        rows.append({"candidate": name, "port mask graph (ms)": mask, "search graph (ms)": search,
                     "saved per frame (ms)": mask - search, "saved (%)": 100 * (mask - search) / mask,
                     "model-only FPS, 1000/(mask+refine)": 1000 / (mask + refine),
                     "port's formula, x4 (parse.py)": 4000 / (mask + refine)})
    return rows
