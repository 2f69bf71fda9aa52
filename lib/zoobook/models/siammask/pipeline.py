"""The SiamMask stages as library calls; the notebooks narrate and call these.

Artifacts of a run live in ``runs/<profile>/siammask/artifacts/``::

    manifest.json, VOT2016.json                    01-data (dataset, demo clip, the evaluator's index)
    export.json, onnx/<graph>.onnx                 02-export (mask, refine, template, search)
    compiled/<backend>.json and its artifacts      03-convert
    results/<candidate>/<tracker>/baseline/...     04-infer (VOT result files, resumable per sequence)
    demo/<candidate>.npz                           04-infer (the demo clip's polygons and masks)
    scores/<candidate>.json                        05-evaluate
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from zoobook import bench
from zoobook.artifacts import Artifacts
from zoobook.backends import benchmark_candidates, get_backend, with_reference
from zoobook.backends import resolve as resolve_backend  # noqa: F401 (the notebooks call it)
from zoobook.backends.onnxruntime_backend import OnnxRuntimeSession
from zoobook.backends.torch_backend import TorchSession
from zoobook.checkpoints import weights_label
from zoobook.compare import compare_outputs
from zoobook.data import half_present
from zoobook.data.images import read_bgr
from zoobook.data.vot import VotDataset, read_json_index, write_json_index, write_synthetic_vot
from zoobook.export import onnx_io
from zoobook.metrics import vot
from zoobook.models.siammask import GRAPHS
from zoobook.models.siammask.checkpoint import build
from zoobook.models.siammask import train_stage
from zoobook.models.siammask.experiment import run_sequence
from zoobook.models.siammask.export import export_graph, graph_module
from zoobook.models.siammask.tracker import SessionEngine, SiamMaskTracker, TorchEngine, TrackerConfig
from zoobook.paths import data_dir, project_root, runs_dir
from zoobook.atomic import write_json_atomic
from zoobook.resume import file_stamps, generated_once, resumable_folder

MODEL = "siammask"
#: fp32 tolerance (golden README: |diff| <= 1e-3 on maps and logits, 5e-3 on corr_feature, values up to 81)
ATOL, RTOL = 5e-3, 1e-4
DEMO = "tennis"


FILES = Artifacts(MODEL)
_artifacts = FILES.folder



# ---------------------------------------------------------------------------------------
# 01-data


def locate_dataset(profile: str, *, num_sequences: int = 3, num_frames: int = 60, require_real: bool = False,
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
    root = runs_dir() / profile / "datasets" / "vot-synthetic" / "VOT2016"
    meta = {"num_sequences": num_sequences, "num_frames": num_frames, "seed": seed}
    generated_once(root, meta, lambda: write_synthetic_vot(root, num_sequences, num_frames, seed=seed))
    dataset = VotDataset(root).check()
    return dataset, {"kind": "synthetic", "name": "generated VOT2016-format set (moving, turning rectangles)",
                     "root": str(root), "sequences": len(dataset), "seed": seed}


def demo_clip(frames: int = 0) -> dict:
    """The shipped tennis clip (data/samples/tennis, MIT licence) and its first-frame box."""
    folder = project_root() / "data" / "samples" / DEMO
    paths = sorted(folder.glob("*.jpg"))
    if not paths:
        raise FileNotFoundError(f"{folder}: the demo clip's frames are missing")
    box_file = folder / "box.txt"
    try:
        box = [float(v) for v in box_file.read_text().split(",")]
    except (OSError, ValueError) as err:
        raise ValueError(f"{box_file}: expected 'x,y,w,h' of the target in the first frame") from err
    if len(box) != 4:
        raise ValueError(f"{box_file}: expected 4 numbers (x,y,w,h), found {len(box)}")
    paths = paths[:frames] if frames else paths
    return {"name": DEMO, "frames": [str(p) for p in paths], "box": box}


def prepare(profile: str, dataset: VotDataset, provenance: dict, *, demo_frames: int = 0) -> dict:
    """Write the evaluator's JSON index of the sequences and the run's manifest."""
    index_path = write_json_index(dataset, _artifacts(profile) / "VOT2016.json")
    sequences = [{"name": s.name, "frames": len(s), "width": s.width, "height": s.height}
                 for s in (dataset[i] for i in range(len(dataset)))]
    manifest = {"dataset": {**provenance, "frames": sum(s["frames"] for s in sequences)},
                "index": str(index_path), "sequences": sequences, "demo": demo_clip(demo_frames)}
    write_json_atomic(_artifacts(profile) / "manifest.json", manifest)
    return manifest


def load_manifest(profile: str) -> dict:
    return FILES.read(profile, "manifest.json", "01-data")


def load_dataset(manifest: dict) -> VotDataset:
    return VotDataset(manifest["dataset"]["root"], limit=len(manifest["sequences"]))


def demo_frames(manifest: dict, limit: int | None = None) -> list[np.ndarray]:
    """The demo clip's frames (BGR), the first ``limit`` of them if given."""
    return [read_bgr(p) for p in manifest["demo"]["frames"][:limit]]


# ---------------------------------------------------------------------------------------
# 02-export


def load_model(profile: str) -> tuple[torch.nn.Module, dict]:
    """The network with the weights the export stage used."""
    weights = FILES.read(profile, "export.json", "02-export")["weights"]
    recipe = weights["kind"] == "recipe"
    return build(None if recipe else weights["path"], allow_recipe=recipe)


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


def demo_feeds(manifest: dict, model) -> dict[str, dict[str, np.ndarray]]:
    """Each graph's inputs as the tracker makes them on the demo clip: the template crop of
    frame 0, the search crop of frame 1, the kernels and the refine inputs at the chosen cell."""
    frames = demo_frames(manifest, 2)
    recorder = _Recorder(TorchEngine(model))
    tracker = SiamMaskTracker(recorder)
    tracker.init(frames[0], manifest["demo"]["box"])
    tracker.track(frames[1])
    z, x = recorder.feeds["template"], recorder.feeds["search"]
    kernels = TorchSession(graph_module(model, "template"), ["template"], list(GRAPHS["template"].outputs)).run(
        {"template": z})
    return {"mask": {"template": z, "search": x}, "refine": recorder.feeds["refine"], "template": {"template": z},
            "search": {"search": x, **kernels}}


def torch_session(model, name: str) -> TorchSession:
    return TorchSession(graph_module(model, name), list(GRAPHS[name].inputs), list(GRAPHS[name].outputs))


def export(profile: str, *, opset: int = 11, weights: str | None = None, require_official: bool = False) -> dict:
    """Export the four graphs (the port's mask and refine; the template-once split), check
    their names and shapes against the port's, and compare ONNX Runtime with PyTorch on the
    tracker's own crops of the demo clip (not the export's random examples)."""
    model, provenance = build(weights, allow_recipe=not require_official)
    folder = _artifacts(profile) / "onnx"
    feeds = demo_feeds(load_manifest(profile), model)
    graphs, summaries, parity = {}, {}, []
    for name, spec in tqdm(GRAPHS.items(), desc="export"):
        path = folder / f"{name}.onnx"
        summaries[name] = export_graph(model, name, path, opset=opset)
        io = onnx_io(path)
        expected = {"inputs": {k: list(v) for k, v in spec.inputs.items()},
                    "outputs": {k: list(v) for k, v in spec.outputs.items()}}
        if io != expected:
            raise AssertionError(f"{path}: graph I/O {io} differs from {expected}")
        reference = torch_session(model, name).run(feeds[name])
        candidate = OnnxRuntimeSession(path, optimization="disable").run(feeds[name])
        parity += [{"graph": name, **row} for row in compare_outputs(reference, candidate, atol=ATOL, rtol=RTOL)]
        graphs[name] = str(path)
    write_json_atomic(_artifacts(profile) / "export.json", {"graphs": graphs, "weights": provenance,
                                                            "summaries": summaries})
    return {"graphs": graphs, "summaries": summaries, "parity": parity, "weights": provenance}


def onnx_paths(profile: str) -> dict[str, str]:
    return FILES.read(profile, "export.json", "02-export")["graphs"]


# ---------------------------------------------------------------------------------------
# 03-convert


def convert(profile: str, backend: str = "auto", *, backend_options: dict | None = None) -> dict:
    """Compile each graph for ``backend`` (static batch 1, as the port) and compare it with
    plain ONNX Runtime on the exported ONNX (msit thresholds; fp32 tolerance too on CPU)."""
    engine = get_backend(backend, **(backend_options or {}))
    sources = onnx_paths(profile)
    folder = _artifacts(profile) / "compiled"
    artifacts: dict[str, str] = {}
    if engine.name != "torch":
        for name, source in tqdm(sources.items(), desc=f"convert {engine.name}"):
            artifacts[name] = str(engine.compile(source, folder, input_shapes=GRAPHS[name].input_shapes(1), name=name))
    manifest = {"backend": engine.name, "options": backend_options or {}, "device": engine.device(),
                "artifacts": artifacts}
    write_json_atomic(folder / f"{engine.name}.json", manifest)
    parity = []
    if artifacts:
        model, _ = load_model(profile)
        feeds = demo_feeds(load_manifest(profile), model)
        cpu = engine.name == "onnxruntime"
        for name, artifact in artifacts.items():
            reference = OnnxRuntimeSession(sources[name], optimization="disable").run(feeds[name])
            with engine.open(artifact) as session:
                candidate = session.run(feeds[name])
            rows = compare_outputs(reference, candidate, atol=ATOL if cpu else None, rtol=RTOL if cpu else 0.0)
            parity += [{"graph": name, **row} for row in rows]
    return {**manifest, "parity": parity}


def _compiled(profile: str, backend: str) -> dict:
    return FILES.read(profile, f"compiled/{backend}.json", "03-convert")


def open_engine(profile: str, backend: str, *, mode: str = "split", model=None, backend_options: dict | None = None):
    """The tracker's engine: PyTorch eager for ``torch``, else the compiled graphs. ``mode``
    ``split`` runs the template graph once per sequence and the search graph per frame;
    ``port`` runs the port's mask graph (template and search) every frame."""
    if mode not in ("split", "port"):
        raise ValueError(f"mode must be 'split' or 'port', not {mode!r}")
    if backend == "torch":
        return TorchEngine(model if model is not None else load_model(profile)[0])
    engine = get_backend(backend, **(backend_options or {}))
    artifacts = _compiled(profile, engine.name)["artifacts"]
    names = ("template", "search", "refine") if mode == "split" else ("mask", "refine")
    missing = [n for n in names if n not in artifacts]
    if missing:
        raise KeyError(f"no {engine.name} artifact for {missing}; rerun 03-convert")
    sessions = {n: engine.open(artifacts[n]) for n in names}
    if mode == "split":
        return SessionEngine(sessions["refine"], search=sessions["search"], template=sessions["template"])
    return SessionEngine(sessions["refine"], mask=sessions["mask"])


# ---------------------------------------------------------------------------------------
# 04-infer


def tracker_name(weights: dict) -> str:
    """The reference's results folder name: ``Custom_mask_refine_<checkpoint stem>``."""
    stem = Path(weights["path"]).stem if weights.get("path") else "recipe"
    return f"Custom_mask_refine_{stem}"


def results_folder(profile: str, candidate: str) -> Path:
    weights = FILES.read(profile, "export.json", "02-export")["weights"]
    return _artifacts(profile) / "results" / candidate / tracker_name(weights)


def _results_key(profile: str, candidate: str, manifest: dict, mode: str) -> dict:
    export = FILES.read(profile, "export.json", "02-export")
    artifacts = FILES.compiled(profile, candidate)
    return {"dataset": manifest["dataset"], "sequences": manifest["sequences"], "weights": export["weights"]["sha256"],
            "mode": mode, "artifacts": file_stamps(artifacts)}


def track_vot(profile: str, backend: str, *, reference: bool = True, mode: str = "split", resume: bool = True,
              backend_options: dict | None = None) -> dict:
    """Run the supervised experiment on every sequence with the backend (and the PyTorch
    reference), writing the reference's result files. With ``resume``, sequences whose
    file exists are kept, as long as data, weights and compiled model are unchanged."""
    manifest = load_manifest(profile)
    dataset = load_dataset(manifest)
    model, _ = load_model(profile)
    summary = {}
    for candidate in with_reference(backend, reference):
        folder = results_folder(profile, candidate)
        resumable_folder(folder, _results_key(profile, candidate, manifest, mode), resume=resume,
                         pattern="baseline/*/*_001.txt")
        tracker = SiamMaskTracker(open_engine(profile, candidate, mode=mode, model=model,
                                              backend_options=backend_options))
        summary[candidate] = _experiment(tracker, dataset, folder, resume=resume, desc=f"track {candidate}")
    return summary


def _experiment(tracker: SiamMaskTracker, dataset: VotDataset, folder: Path, *, resume: bool, desc: str) -> dict:
    """The supervised experiment on every sequence not yet written (with ``resume``), into
    the reference's result files under ``folder``."""
    runs, skipped = {}, []
    with tqdm(total=sum(len(dataset[i]) for i in range(len(dataset))), desc=desc) as bar:
        for i in range(len(dataset)):
            sequence = dataset[i]
            path = vot.results_path(folder, sequence.name)
            if resume and path.is_file():
                skipped.append(sequence.name)
                bar.update(len(sequence))
                continue
            run = run_sequence(tracker, sequence, on_frame=lambda _: bar.update())
            vot.write_results(path, run["regions"])
            runs[sequence.name] = {"failures": len(run["failures"]), "frames": len(sequence),
                                   "tracking_s": run["tracking_s"], "fps": run["fps"]}
    return {"folder": str(folder), "sequences": runs, "skipped": skipped, "fps": _mean_fps(runs)}


#: the base model's tracker settings: the reference's class defaults, which its base config
#: (experiments/siammask_base/config.json) leaves in place; the mask branch alone (63 x 63)
BASE_TRACKER = TrackerConfig(penalty_k=0.09, window_influence=0.39, lr=0.38, seg_thr=0.30, out_size=63,
                             refine=False)
TRAINED = "trained-base"


def trained_checkpoint(profile: str) -> dict | None:
    """What 00-train handed over, None when it has not run."""
    return train_stage.handed_over(profile)


def trained_weights(profile: str, handed: dict | None = None) -> dict:
    """Where the base model's weights came from: the checkpoint 00-train handed over."""
    from zoobook.checkpoints import file_sha256

    handed = handed or trained_checkpoint(profile)
    if handed is None:
        raise FileNotFoundError(f"{train_stage.handoff_path(profile)}: no trained checkpoint; run stage 00-train first")
    path = Path(handed["checkpoint"])
    return {"kind": "checkpoint", "path": str(path), "sha256": file_sha256(path), "from": "00-train",
            "processes": handed["processes"], "epochs": handed["epochs"], "preset": handed["preset"],
            "note": f"{path.name}: base model trained by 00-train ({handed['epochs']} epochs, "
                    f"{handed['processes']} process(es), preset {handed['preset']})"}


def load_trained(profile: str) -> tuple[torch.nn.Module, dict]:
    """The base model with the checkpoint 00-train handed over, and where it came from."""
    weights = trained_weights(profile)
    model, loaded = build(weights["path"], refine=False)
    return model, {**loaded, **weights}


def track_trained(profile: str, *, resume: bool = True) -> dict:
    """Run the supervised experiment with the base model 00-train trained (PyTorch, the mask
    branch alone, the base config's tracker settings), into the reference's result files
    under ``results/trained-base/Custom_mask_<checkpoint>``."""
    manifest = load_manifest(profile)
    dataset = load_dataset(manifest)
    model, weights = load_trained(profile)
    folder = trained_results_folder(profile, weights)
    key = {"dataset": manifest["dataset"], "sequences": manifest["sequences"], "weights": weights["sha256"],
           "tracker": BASE_TRACKER.__dict__}
    resumable_folder(folder, key, resume=resume, pattern="baseline/*/*_001.txt")
    tracker = SiamMaskTracker(TorchEngine(model), BASE_TRACKER)
    return {**_experiment(tracker, dataset, folder, resume=resume, desc="track trained base"), "weights": weights}


def trained_results_folder(profile: str, weights: dict) -> Path:
    """The reference's results name for the base model with masks: ``Custom_mask_<checkpoint stem>``."""
    return _artifacts(profile) / "results" / TRAINED / f"Custom_mask_{Path(weights['path']).stem}"


def _mean_fps(runs: dict) -> float | None:
    """Tracked frames / tracking time over all sequences run now (as the reference reports speed)."""
    seconds = sum(r["tracking_s"] for r in runs.values())
    return sum(r["frames"] - 1 for r in runs.values()) / seconds if seconds else None


def track_demo(profile: str, backend: str, *, reference: bool = True, mode: str = "split",
               backend_options: dict | None = None) -> dict:
    """Track the demo clip from its first-frame box with each candidate; save the polygons,
    the boxes and the binary masks (``demo/<candidate>.npz``)."""
    manifest = load_manifest(profile)
    frames = demo_frames(manifest)
    model, _ = load_model(profile)
    out = {}
    for candidate in with_reference(backend, reference):
        tracker = SiamMaskTracker(open_engine(profile, candidate, mode=mode, model=model,
                                              backend_options=backend_options))
        tracker.init(frames[0], manifest["demo"]["box"])
        polygons, masks, scores = [], [], []
        for frame in tqdm(frames[1:], desc=f"demo {candidate}"):
            result = tracker.track(frame)
            polygons.append(result.polygon)
            masks.append(result.mask > tracker.config.seg_thr)
            scores.append(result.score)
        path = _artifacts(profile) / "demo" / f"{candidate}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, polygons=np.array(polygons), masks=np.packbits(np.array(masks), axis=-1),
                            scores=np.array(scores), width=frames[0].shape[1])
        out[candidate] = str(path)
    return out


def load_demo(profile: str, candidate: str) -> dict[str, np.ndarray]:
    path = _artifacts(profile) / "demo" / f"{candidate}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no demo track; run 04-infer with backend {candidate}")
    with np.load(path) as data:
        width = int(data["width"])
        return {"polygons": data["polygons"], "scores": data["scores"],
                "masks": np.unpackbits(data["masks"], axis=-1, count=width).astype(bool)}


# ---------------------------------------------------------------------------------------
# 05-evaluate


def evaluate(profile: str, backend: str, *, reference: bool = True, mode: str = "split",
             backend_options: dict | None = None, trained: bool = True) -> dict:
    """Score each candidate's result files alone (accuracy, robustness, EAO over both
    intervals), and the backend against the PyTorch reference: on the VOT runs, whether
    both wrote the same kind of line and the overlap of their regions; on the demo clip, in
    lock-step (:func:`lockstep`). With ``trained``, also the base model 00-train trained,
    where 04-infer tracked with it."""
    manifest = load_manifest(profile)
    index = read_json_index(manifest["index"])
    names = with_reference(backend, reference)
    scores = {name: vot.evaluate_folder(index, results_folder(profile, name)) for name in names}
    for name, score in scores.items():
        write_json_atomic(_artifacts(profile) / "scores" / f"{name}.json", score)
    weights = FILES.read(profile, "export.json", "02-export")["weights"]
    out = {"scores": scores, "dataset": manifest["dataset"], "weights": weights}
    if trained and (handed := trained_checkpoint(profile)) is not None:
        base = trained_weights(profile, handed)
        folder = trained_results_folder(profile, base)
        if folder.is_dir():
            out["scores"][TRAINED] = vot.evaluate_folder(index, folder)
            out["trained_weights"] = base
    if len(names) == 2:
        out["agreement"] = agreement(index, *(results_folder(profile, n) for n in names))
        out["lockstep"] = lockstep(profile, backend, mode=mode, backend_options=backend_options)
    return out


def agreement(index: dict, candidate_folder: Path, reference_folder: Path) -> dict:
    """Frames where both wrote the same kind of line, and the overlap of their regions where
    both tracked (image bounds)."""
    same, total, overlaps = 0, 0, []
    for name, entry in index.items():
        a = vot.read_results(vot.results_path(candidate_folder, name))
        b = vot.read_results(vot.results_path(reference_folder, name))
        for ra, rb in zip(a, b):
            total += 1
            same += (len(ra) == 1) == (len(rb) == 1) and (len(ra) > 1 or ra == rb)
            if len(ra) > 1 and len(rb) > 1:
                overlaps.append(vot.region_overlap(ra, rb, (entry["width"], entry["height"])))
    overlaps = np.array(overlaps)
    return {"frames": total, "same_kind_of_line": same / total if total else None,
            "mean_region_overlap": float(overlaps.mean()) if overlaps.size else None,
            "min_region_overlap": float(overlaps.min()) if overlaps.size else None}


def lockstep(profile: str, backend: str, *, mode: str = "split", backend_options: dict | None = None) -> dict:
    """The backend against PyTorch on the demo clip in lock-step: before each frame the
    backend's tracker is given the reference's state, so both see the same crop, and their
    decisions are compared (same anchor cell, box centre, mask IoU). Free-running trackers
    drift apart once a near-tie between two cells falls differently (with synthetic weights
    that happens often); lock-step measures the numerical agreement itself."""
    manifest = load_manifest(profile)
    frames = demo_frames(manifest)
    model, _ = load_model(profile)
    reference = SiamMaskTracker(TorchEngine(model))
    candidate = SiamMaskTracker(open_engine(profile, backend, mode=mode, model=model, backend_options=backend_options))
    for tracker in (reference, candidate):
        tracker.init(frames[0], manifest["demo"]["box"])
    same_cell, centre, iou = [], [], []
    for frame in tqdm(frames[1:], desc=f"lock-step {backend}"):
        candidate.centre, candidate.size = reference.centre.copy(), reference.size.copy()
        a, b = reference.track(frame), candidate.track(frame)
        same_cell.append(a.cell == b.cell)
        centre.append(float(np.abs(a.centre - b.centre).max()))
        ma, mb = a.mask > reference.config.seg_thr, b.mask > candidate.config.seg_thr
        union = np.count_nonzero(ma | mb)
        iou.append(np.count_nonzero(ma & mb) / union if union else 1.0)
    return {"frames": len(same_cell), "same_cell": float(np.mean(same_cell)), "max_centre_difference_px": max(centre),
            "mean_mask_iou": float(np.mean(iou)), "min_mask_iou": float(np.min(iou)), "mask_iou": iou}


def vot_rows(evaluation: dict, spec) -> list[dict]:
    """Measured EAO (both intervals), accuracy and robustness per candidate, then the published figures."""
    data = evaluation["dataset"]
    rows = []
    for name, s in evaluation["scores"].items():
        trained = name == TRAINED
        weights = evaluation["trained_weights"]["note"] if trained else weights_label(evaluation["weights"])
        rows.append({"source": "measured", "backend": "torch, base model (mask branch)" if trained else name,
                     "EAO [100,356]": s["eao"]["repo"],
                     "EAO [108,371]": s["eao"]["vot2016"], "accuracy": s["accuracy"], "robustness": s["robustness"],
                     "failures": s["lost_number"], "frames": s["frames"], "weights": weights,
                     "data": f"{data['kind']}: {data['name']} ({data['sequences']} sequences)"})
    published: dict[str, dict] = {}
    for pub in spec.published:
        if pub.unit in ("EAO", "accuracy", "robustness"):
            row = published.setdefault(pub.device, {
                "source": "published", "backend": pub.device, "EAO [100,356]": None, "EAO [108,371]": None,
                "accuracy": None, "robustness": None, "failures": None, "frames": None,
                "weights": "official checkpoint", "data": f"{pub.data}; {pub.source}"})
            row["EAO [100,356]" if pub.unit == "EAO" else pub.unit] = pub.value
    rows += published.values()
    return rows


def agreement_rows(evaluation: dict) -> list[dict]:
    if "agreement" not in evaluation:
        return []
    a, d = evaluation["agreement"], evaluation["lockstep"]
    return [{"measure": "demo clip, lock-step: frames where both chose the same anchor cell", "value": d["same_cell"]},
            {"measure": "demo clip, lock-step: largest box-centre difference (px)", "value": d["max_centre_difference_px"]},
            {"measure": "demo clip, lock-step: mean mask IoU", "value": d["mean_mask_iou"]},
            {"measure": "demo clip, lock-step: lowest mask IoU", "value": d["min_mask_iou"]},
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
# 06-benchmark


def _bench_sessions(profile: str, name: str, model, backend_options) -> dict:
    if name == "torch":
        return {g: torch_session(model, g) for g in GRAPHS}
    if name == "onnxruntime":
        paths = FILES.compiled(profile, "onnxruntime") or onnx_paths(profile)
        return {g: OnnxRuntimeSession(p) for g, p in paths.items()}
    engine = get_backend(name, **(backend_options or {}))
    return {g: engine.open(p) for g, p in _compiled(profile, engine.name)["artifacts"].items()}


def benchmark(profile: str, backend: str, *, iterations: int = 10, warmup: int = 2, tracker_frames: int = 20,
              backend_options: dict | None = None) -> dict:
    """PyTorch eager against ONNX Runtime (and the backend, if another), interleaved in one
    run: each graph alone at batch 1, then the whole tracker per frame on the demo clip
    (crops, inference, decoding, mask paste and contour; frames decoded beforehand, as the
    reference's speed excludes image reading), template-once split against the port's graph."""
    names = benchmark_candidates(backend)
    manifest = load_manifest(profile)
    model, _ = load_model(profile)
    feeds = demo_feeds(manifest, model)
    sessions = {name: _bench_sessions(profile, name, model, backend_options) for name in names}
    graph_rows = []
    for graph in GRAPHS:
        runners = {name: (lambda s=s[graph]: s.run(feeds[graph])) for name, s in sessions.items()}
        device = {name: s[graph].device_times_ms for name, s in sessions.items()}
        for row in bench.benchmark(runners, batch_size=1, warmup=warmup, iterations=iterations, device_times=device):
            graph_rows.append({"graph": graph, **row})
    frames = demo_frames(manifest)[:max(2, tracker_frames + 1)]
    trackers = {"torch (template once)": TorchEngine(model)}
    for name in names[1:]:
        for mode in ("split", "port"):
            label = f"{name} ({'template once' if mode == 'split' else 'port: template every frame'})"
            trackers[label] = open_engine(profile, name, mode=mode, model=model, backend_options=backend_options)
    runners = {label: _tracking_loop(engine, frames, manifest["demo"]["box"]) for label, engine in trackers.items()}
    tracker_rows = bench.benchmark(runners, batch_size=1, warmup=min(warmup, 1), iterations=max(iterations, len(frames) - 1))
    for row in tracker_rows:
        row["fps"] = row.pop("throughput")
    return {"graph": graph_rows, "tracker": tracker_rows, "candidates": names, "derived": derived_rows(graph_rows)}


def _tracking_loop(engine, frames: list[np.ndarray], box: list[float]):
    """One call = one tracked frame; the clip restarts (untimed init) when it runs out."""
    tracker = SiamMaskTracker(engine)
    cycle = itertools.cycle(range(1, len(frames)))

    def step():
        index = next(cycle)
        if index == 1:
            tracker.init(frames[0], box)
        return tracker.track(frames[index])

    return step


def derived_rows(graph_rows: list[dict]) -> list[dict]:
    """Per candidate: what the template-once split saves per frame, and model-only frame
    rates: 1000 / (mask + refine) and the port's parse.py formula (that value x 4)."""
    by = {(r["candidate"], r["graph"]): r["mean_ms"] for r in graph_rows}
    rows = []
    for name in dict.fromkeys(r["candidate"] for r in graph_rows):
        mask, refine, search = by[(name, "mask")], by[(name, "refine")], by[(name, "search")]
        rows.append({"candidate": name, "port mask graph (ms)": mask, "search graph (ms)": search,
                     "saved per frame (ms)": mask - search, "saved (%)": 100 * (mask - search) / mask,
                     "model-only FPS, 1000/(mask+refine)": 1000 / (mask + refine),
                     "port's formula, x4 (parse.py)": 4000 / (mask + refine)})
    return rows
