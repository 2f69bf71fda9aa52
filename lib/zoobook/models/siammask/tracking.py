"""The SiamMask tracker on a run: its data (the VOT set and the shipped demo clip), its
engines (PyTorch, or sessions on the compiled graphs), the supervised experiment over every
sequence with resumable result files, the base model 00-train handed on, the demo clip's
tracks, and lock-step against the reference. The port's hooks (``port.py``) and the
notebooks call these; each takes the stage's :class:`~zoobook.stages.Run`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm import tqdm

from zoobook.atomic import save_npz_atomic
from zoobook.backends import REFERENCE, capabilities, with_reference
from zoobook.data.images import read_bgr
from zoobook.data.vot import VotDataset
from zoobook.metrics import vot
from zoobook.models.siammask import train_stage
from zoobook.models.siammask.checkpoint import build
from zoobook.models.siammask.experiment import run_sequence
from zoobook.models.siammask.tracker import SessionEngine, SiamMaskTracker, TorchEngine, TrackerConfig
from zoobook.paths import project_root
from zoobook.resume import file_stamps, resumable_folder
from zoobook.stages import Run
from zoobook.stages.steps import open_session

DEMO = "tennis"
#: the tracker's engines: ``split`` runs the template graph once per sequence and the search
#: graph per frame; ``port`` runs the port's mask graph (template and search) every frame
MODES = ("split", "port")
#: the base model's tracker settings: the reference's class defaults, which its base config
#: (experiments/siammask_base/config.json) leaves in place; the mask branch alone (63 x 63)
BASE_TRACKER = TrackerConfig(penalty_k=0.09, window_influence=0.39, lr=0.38, seg_thr=0.30, out_size=63,
                             refine=False)
TRAINED = "trained-base"


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


def vot_dataset(run: Run) -> VotDataset:
    """The sequences 01-data checked, as a :class:`~zoobook.data.vot.VotDataset`."""
    return VotDataset(run.dataset["root"], limit=len(run.manifest["sequences"]))


def demo_frames(run: Run, limit: int | None = None) -> list[np.ndarray]:
    """The demo clip's frames (BGR), the first ``limit`` of them if given."""
    return [read_bgr(p) for p in run.manifest["demo"]["frames"][:limit]]


def tracker_engine(run: Run, candidate: str, *, mode: str = "split", backend_options: dict | None = None,
                   uncompiled: bool = False):
    """The tracker's engine: the run's network in PyTorch for the reference, else sessions on
    the graphs 03-convert compiled for ``candidate``. ``mode`` ``split`` runs the template
    graph once per sequence and the search graph per frame; ``port`` runs the port's mask
    graph (template and search) every frame. ``uncompiled``: see
    :func:`~zoobook.stages.steps.open_session`."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'split' or 'port', not {mode!r}")
    if capabilities(candidate).reference:
        return TorchEngine(run.model()[0])
    graphs = ("template", "search", "refine") if mode == "split" else ("mask", "refine")
    sessions = {g: open_session(run, candidate, graph=g, backend_options=backend_options, uncompiled=uncompiled)
                for g in graphs}
    return SessionEngine(sessions.pop("refine"), **sessions)


def tracker_name(weights: dict) -> str:
    """The reference's results folder name: ``Custom_mask_refine_<checkpoint stem>``."""
    stem = Path(weights["path"]).stem if weights.get("path") else "recipe"
    return f"Custom_mask_refine_{stem}"


def results_folder(run: Run, candidate: str) -> Path:
    """``results/<candidate>/<tracker>``: the candidate's VOT result files."""
    return run.path("results") / candidate / tracker_name(run.weights)


def results_key(run: Run, candidate: str, mode: str) -> dict:
    manifest = run.manifest
    return {"dataset": manifest["dataset"], "sequences": manifest["sequences"], "weights": run.weights["sha256"],
            "mode": mode, "artifacts": file_stamps(run.compiled_files(candidate))}


def run_experiment(tracker: SiamMaskTracker, dataset: VotDataset, folder: Path, *, resume: bool, desc: str) -> dict:
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


def _mean_fps(runs: dict) -> float | None:
    """Tracked frames / tracking time over all sequences run now (as the reference reports speed)."""
    seconds = sum(r["tracking_s"] for r in runs.values())
    return sum(r["frames"] - 1 for r in runs.values()) / seconds if seconds else None


def trained_checkpoint(run: Run) -> dict | None:
    """What 00-train handed over, None when it has not run."""
    return train_stage.handed_over(run)


def trained_weights(run: Run, handed: dict | None = None) -> dict:
    """Where the base model's weights came from: the checkpoint 00-train handed over."""
    from zoobook.checkpoints import file_sha256

    handed = handed or trained_checkpoint(run)
    if handed is None:
        raise FileNotFoundError(f"{train_stage.handoff_path(run)}: no trained checkpoint; run stage 00-train first")
    path = Path(handed["checkpoint"])
    return {"kind": "checkpoint", "path": str(path), "sha256": file_sha256(path), "from": "00-train",
            "processes": handed["processes"], "epochs": handed["epochs"], "preset": handed["preset"],
            "note": f"{path.name}: base model trained by 00-train ({handed['epochs']} epochs, "
                    f"{handed['processes']} process(es), preset {handed['preset']})"}


def trained_model(run: Run) -> tuple[torch.nn.Module, dict]:
    """The base model with the checkpoint 00-train handed over, and where it came from."""
    weights = trained_weights(run)
    model, loaded = build(weights["path"], refine=False)
    return model, {**loaded, **weights}


def trained_results_folder(run: Run, weights: dict) -> Path:
    """The reference's results name for the base model with masks: ``Custom_mask_<checkpoint stem>``."""
    return run.path("results") / TRAINED / f"Custom_mask_{Path(weights['path']).stem}"


def track_trained(run: Run, *, resume: bool = True) -> dict:
    """Run the supervised experiment with the base model 00-train trained (PyTorch, the mask
    branch alone, the base config's tracker settings), into the reference's result files
    under ``results/trained-base/Custom_mask_<checkpoint>``."""
    manifest = run.manifest
    model, weights = trained_model(run)
    folder = trained_results_folder(run, weights)
    key = {"dataset": manifest["dataset"], "sequences": manifest["sequences"], "weights": weights["sha256"],
           "tracker": BASE_TRACKER.__dict__}
    resumable_folder(folder, key, resume=resume, pattern="baseline/*/*_001.txt")
    tracker = SiamMaskTracker(TorchEngine(model), BASE_TRACKER)
    return {**run_experiment(tracker, vot_dataset(run), folder, resume=resume, desc="track trained base"),
            "weights": weights}


def track_demo(run: Run, backend: str, *, reference: bool = True, mode: str = "split",
               backend_options: dict | None = None) -> dict:
    """Track the demo clip from its first-frame box with each candidate; save the polygons,
    the boxes and the binary masks (``demo/<candidate>.npz``)."""
    frames = demo_frames(run)
    out = {}
    for candidate in with_reference(backend, reference):
        tracker = SiamMaskTracker(tracker_engine(run, candidate, mode=mode, backend_options=backend_options))
        tracker.init(frames[0], run.manifest["demo"]["box"])
        polygons, masks, scores, states = [], [], [], []
        for frame in tqdm(frames[1:], desc=f"demo {candidate}"):
            before = np.concatenate([tracker.centre, tracker.size])
            result = tracker.track(frame)
            polygons.append(result.polygon)
            masks.append(result.mask > tracker.config.seg_thr)
            scores.append(result.score)
            states.append([*before, *result.cell, *result.centre])
        # the reference's states too, so that lock-step (05) need not track it again
        extra = {"states": np.array(states), "key": _demo_key(run, frames)} if capabilities(candidate).reference else {}
        path = run.path("demo") / f"{candidate}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npz_atomic(path, {"polygons": np.array(polygons), "masks": np.packbits(np.array(masks), axis=-1),
                               "scores": np.array(scores), "width": frames[0].shape[1], **extra}, compressed=True)
        out[candidate] = str(path)
    return out


def _demo_key(run: Run, frames: list[np.ndarray]) -> str:
    """What a reference track of the demo clip depends on: the network's weights, the clip
    (its frames' pixels) and the first-frame box."""
    digest = hashlib.sha256(json.dumps([run.weights, run.manifest["demo"]["box"]], sort_keys=True).encode())
    for frame in frames:
        digest.update(np.ascontiguousarray(frame).data)
    return digest.hexdigest()


def read_demo_track(run: Run, candidate: str) -> dict[str, np.ndarray]:
    """``candidate``'s track of the demo clip (04-infer): polygons, scores and binary masks."""
    path = run.path("demo") / f"{candidate}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no demo track; run 04-infer with backend {candidate}")
    with np.load(path) as data:
        width = int(data["width"])
        extra = {name: data[name] for name in ("states", "key") if name in data.files}  # the reference's
        return {"polygons": data["polygons"], "scores": data["scores"],
                "masks": np.unpackbits(data["masks"], axis=-1, count=width).astype(bool), **extra}


def lockstep(run: Run, backend: str, *, mode: str = "split", backend_options: dict | None = None) -> dict:
    """The backend against PyTorch on the demo clip in lock-step: before each frame the
    backend's tracker is given the reference's state, so both see the same crop, and their
    decisions are compared (same anchor cell, box centre, mask IoU). Free-running trackers
    drift apart once a near-tie between two cells falls differently (with synthetic weights
    that happens often); lock-step measures the numerical agreement itself. The reference's
    track is the one 04-infer saved with its states (:func:`saved_reference_track`), else made
    once per run (:func:`reference_demo_track`), for every backend compared."""
    frames = demo_frames(run)
    states = run.memo("reference demo track",
                      lambda: saved_reference_track(run, frames) or reference_demo_track(run, frames))
    candidate = SiamMaskTracker(tracker_engine(run, backend, mode=mode, backend_options=backend_options))
    candidate.init(frames[0], run.manifest["demo"]["box"])
    same_cell, centre, iou = [], [], []
    for frame, a in zip(tqdm(frames[1:], desc=f"lock-step {backend}"), states):
        candidate.centre, candidate.size = a.before_centre.copy(), a.before_size.copy()
        b = candidate.track(frame)
        same_cell.append(a.cell == b.cell)
        centre.append(float(np.abs(a.centre - b.centre).max()))
        ma, mb = a.mask, b.mask > candidate.config.seg_thr
        union = np.count_nonzero(ma | mb)
        iou.append(np.count_nonzero(ma & mb) / union if union else 1.0)
    return {"frames": len(same_cell), "same_cell": float(np.mean(same_cell)), "max_centre_difference_px": max(centre),
            "mean_mask_iou": float(np.mean(iou)), "min_mask_iou": float(np.min(iou)), "mask_iou": iou}


def saved_reference_track(run: Run, frames: list[np.ndarray]) -> list[SimpleNamespace] | None:
    """:func:`reference_demo_track`'s states as 04-infer saved them with the reference's demo
    track (:func:`track_demo`); None where there is none, or it was made by other weights, from
    another clip or box."""
    if not (run.path("demo") / f"{REFERENCE}.npz").is_file():
        return None
    track = read_demo_track(run, REFERENCE)
    if "states" not in track or str(track["key"]) != _demo_key(run, frames):
        return None
    return [SimpleNamespace(before_centre=s[0:2], before_size=s[2:4], cell=(int(s[4]), int(s[5])), centre=s[6:8],
                            mask=m) for s, m in zip(track["states"], track["masks"])]


def reference_demo_track(run: Run, frames: list[np.ndarray]) -> list[SimpleNamespace]:
    """The PyTorch reference tracking the demo clip from its first-frame box: per later frame,
    its state before the frame (``before_centre``, ``before_size``) and what it decided
    (``cell``, ``centre``, and ``mask``, the pasted probabilities over its threshold)."""
    reference = SiamMaskTracker(tracker_engine(run, REFERENCE))
    reference.init(frames[0], run.manifest["demo"]["box"])
    states = []
    for frame in tqdm(frames[1:], desc="lock-step reference"):
        before_centre, before_size = reference.centre.copy(), reference.size.copy()
        result = reference.track(frame)
        states.append(SimpleNamespace(before_centre=before_centre, before_size=before_size, cell=result.cell,
                                      centre=result.centre, mask=result.mask > reference.config.seg_thr))
    return states


def tracking_loop(engine, frames: list[np.ndarray], box: list[float]):
    """One call = one tracked frame; the clip restarts (untimed init) when it runs out."""
    tracker = SiamMaskTracker(engine)
    cycle = itertools.cycle(range(1, len(frames)))

    def step():
        index = next(cycle)
        if index == 1:
            tracker.init(frames[0], box)
        return tracker.track(frames[index])

    return step
