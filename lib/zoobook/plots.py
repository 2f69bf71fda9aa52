"""Pictures the notebooks and the book show: samples with masks, predictions, speed."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

_PALETTE = plt.get_cmap("tab20")(np.arange(20))[:, :3]


def _overlay(image_bgr: np.ndarray, masks: list[np.ndarray], alpha: float = 0.45) -> np.ndarray:
    rgb = image_bgr[:, :, ::-1].astype(np.float32) / 255
    for i, mask in enumerate(masks):
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * _PALETTE[i % 20]
    return rgb


def show_instances(images: list[np.ndarray], instances: list[list[dict]], titles: list[str] | None = None,
                   columns: int = 3):
    """Images (BGR) with instances ``{"box": x1y1x2y2, "mask": bool HxW, "label": str}``."""
    rows = int(np.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (image, found) in enumerate(zip(images, instances)):
        ax = axes.ravel()[k]
        ax.imshow(_overlay(image, [d["mask"] for d in found if d.get("mask") is not None]))
        for i, d in enumerate(found):
            x1, y1, x2, y2 = d["box"]
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5, color=_PALETTE[i % 20]))
            ax.text(x1, y1, d["label"], fontsize=7, color="white", va="bottom",
                    bbox={"facecolor": _PALETTE[i % 20], "alpha": 0.7, "pad": 1, "lw": 0})
        if titles:
            ax.set_title(titles[k], fontsize=9)
    fig.tight_layout()
    return fig


def coco_annotation_instances(sample: dict, names: dict[int, str]) -> list[dict]:
    """Ground-truth annotations of a COCO sample as drawable instances."""
    from pycocotools import mask as mask_utils

    found = []
    for ann in sample["annotations"]:
        seg = ann["segmentation"]
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, sample["height"], sample["width"])) \
            if isinstance(seg, list) else seg
        x, y, w, h = ann["bbox"]
        found.append({"box": (x, y, x + w, y + h), "mask": mask_utils.decode(rle).astype(bool),
                      "label": names.get(ann["category_id"], str(ann["category_id"]))})
    return found


def result_instances(result, names: list[str], top: int = 10) -> list[dict]:
    """The ``top`` best detections of an InstanceResult as drawable instances."""
    return [{"box": tuple(result.boxes[i]), "mask": result.masks[i],
             "label": f"{names[int(result.classes[i])]} {result.scores[i]:.2f}"} for i in range(min(top, len(result.scores)))]


def throughput_vs_batch(rows: list[dict], published: list[dict] | None = None, title: str = "Throughput"):
    """Throughput (samples/s) against batch size, one line per candidate; published figures
    as hollow markers, labelled as such."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in dict.fromkeys(r["candidate"] for r in rows):
        mine = sorted((r["batch_size"], r["throughput"]) for r in rows if r["candidate"] == name)
        ax.plot(*zip(*mine), marker="o", label=f"{name} (measured)")
    for pub in published or []:
        ax.scatter([pub["batch_size"]], [pub["value"]], facecolors="none", edgecolors="grey")
    if published:
        ax.scatter([], [], facecolors="none", edgecolors="grey", label=f"published ({published[0]['device']})")
        ax.set_yscale("log")
    return _batch_axes(fig, ax, "throughput (images/s)", title)


def _batch_axes(fig, ax, ylabel: str, title: str):
    """Batch size on a base-2 log axis, grid, legend: the frame of the per-batch plots."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig



# ---------------------------------------------------------------------------------------
# Tracking


def _polygon_patch(ax, polygon, color, label=None):
    corners = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    ax.add_patch(plt.Polygon(corners, closed=True, fill=False, lw=1.8, color=color, label=label))


def evenly_spaced(count: int, shown: int) -> list[int]:
    """``shown`` indices spread over 0 .. count - 1, first and last included (for strips of frames)."""
    shown = min(shown, count)
    return [round(i * (count - 1) / max(1, shown - 1)) for i in range(shown)]


def show_track(frames: list[np.ndarray], polygons: list, masks: list | None = None, *, titles: list[str] | None = None,
               ground_truth: list | None = None, columns: int = 4):
    """A strip of frames (BGR) with the tracked polygon (and mask), optionally the ground-truth polygon."""
    rows = int(np.ceil(len(frames) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows * frames[0].shape[0] / frames[0].shape[1]
                                                     + 0.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, frame in enumerate(frames):
        ax = axes.ravel()[k]
        ax.imshow(_overlay(frame, [masks[k]] if masks is not None and masks[k] is not None else []))
        if ground_truth is not None:
            _polygon_patch(ax, ground_truth[k], "lime", "ground truth" if k == 0 else None)
        if polygons[k] is not None:
            _polygon_patch(ax, polygons[k], "red", "tracked" if k == 0 else None)
        if titles:
            ax.set_title(titles[k], fontsize=9)
    if ground_truth is not None:
        axes.ravel()[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def track_animation_html(frames: list[np.ndarray], polygons: list, masks: list, *, every: int = 1,
                         width: int = 360, duration_ms: int = 80) -> str:
    """An animated GIF of the track (mask tinted, polygon in red), as an HTML ``<img>`` that
    the notebook and the book show as is."""
    import base64
    import io

    import cv2
    from PIL import Image

    pictures = []
    for k in range(0, len(frames), every):
        rgb = (_overlay(frames[k], [masks[k]] if masks[k] is not None else []) * 255).astype(np.uint8)
        if polygons[k] is not None:
            corners = np.round(np.asarray(polygons[k]).reshape(-1, 1, 2)).astype(np.int32)
            cv2.polylines(rgb, [corners], True, (255, 0, 0), 2)
        scale = width / rgb.shape[1]
        pictures.append(Image.fromarray(cv2.resize(rgb, (width, int(round(rgb.shape[0] * scale))),
                                                   interpolation=cv2.INTER_AREA)))
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0,
                     optimize=True)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/gif;base64,{data}" alt="tracked sequence" style="max-width:100%"/>'


def expected_overlap_curves(curves: dict[str, np.ndarray], intervals: dict[str, tuple[int, int]]):
    """Expected average overlap Phi(L) against sequence length L, one line per candidate, the
    averaging intervals shaded."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, curve in curves.items():
        ax.plot(np.arange(len(curve)), curve, label=name)
    for (label, (low, high)), color in zip(intervals.items(), ("tab:orange", "tab:green")):
        ax.axvspan(low, high, alpha=0.12, color=color, label=f"{label} [{low}, {high}]")
    ax.set_xlabel("sequence length L (frames)")
    ax.set_ylabel("expected overlap")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def latency_bars(rows: list[dict], group: str, title: str = "Latency"):
    """Mean latency (ms) per ``group`` value, one bar per candidate."""
    groups = list(dict.fromkeys(r[group] for r in rows))
    names = list(dict.fromkeys(r["candidate"] for r in rows))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for k, name in enumerate(names):
        mine = {r[group]: r for r in rows if r["candidate"] == name}
        xs = [i + (k - (len(names) - 1) / 2) * width for i, g in enumerate(groups) if g in mine]
        means = [mine[g]["mean_ms"] for g in groups if g in mine]
        ax.bar(xs, means, width, label=name)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("mean latency per call (ms)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def image_grid(rows: list[list[np.ndarray]], columns: list[str], names: list[str] | None = None, *,
               legend: dict[str, np.ndarray] | None = None, width: float = 3.6):
    """RGB images in a grid, one row per sample with ``columns`` titled; ``legend`` maps a
    name to an RGB colour (uint8) shown as a key below."""
    height = width * rows[0][0].shape[0] / rows[0][0].shape[1] + 0.35
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(width * len(columns), height * len(rows) + 0.6),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
        if names:
            axes[r, 0].set_ylabel(names[r], fontsize=7)
    if legend:
        handles = [plt.Rectangle((0, 0), 1, 1, color=np.asarray(colour) / 255) for colour in legend.values()]
        fig.legend(handles, list(legend), loc="lower center", ncol=min(len(legend), 10), fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
        fig.tight_layout()
    return fig


def memory_vs_batch(rows: list[dict], title: str = "Peak resident memory", limit_gib: float | None = None):
    """Peak resident memory (GiB) during the calls against batch size, one line per candidate,
    with the memory once loaded dashed and the machine's memory (``limit_gib``) dotted."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if limit_gib:
        ax.axhline(limit_gib, color="grey", ls=":", label=f"this machine's memory ({limit_gib:g} GiB)")
    for k, name in enumerate(dict.fromkeys(r["candidate"] for r in rows)):
        mine = sorted((r["batch_size"], r["peak_rss_mb"] / 1024, r["rss_loaded_mb"] / 1024)
                      for r in rows if r["candidate"] == name)
        batch, peak, loaded = zip(*mine)
        ax.plot(batch, peak, marker="o", color=f"C{k}", label=f"{name}: peak during the calls")
        ax.plot(batch, loaded, ls="--", color=f"C{k}", alpha=0.6, label=f"{name}: once loaded")
    return _batch_axes(fig, ax, "resident memory (GiB)", title)


def training_curves(runs: dict[str, dict], parts: tuple[str, ...] = ("loss", "cls", "loc", "mask", "iou_mean"),
                    titles: dict[str, str] | None = None):
    """Loss per training step, one colour per run (``{label: train log}``, the log's
    ``iterations`` each a dict with ``epoch`` and the loss parts), one panel per part: each step
    faint, each epoch's mean as a marked line at the epoch's middle step; epochs shaded
    alternately and a dotted line where the trunk starts training. Steps with no value for a
    part (NaN, e.g. the mask IoU of a batch without masks) are left out of its means. The
    value axis spans the epoch means and the 2nd to 98th percentile of the steps."""
    titles = {"loss": "total loss", "cls": "classification", "loc": "box (L1)", "mask": "mask (logistic)",
              "iou_mean": "mask IoU (mean over positives)", **(titles or {})}
    fig, axes = plt.subplots(1, len(parts), figsize=(3.6 * len(parts), 3.4), squeeze=False)
    for ax, part in zip(axes[0], parts):
        shown = []
        for k, (label, log) in enumerate(runs.items()):
            steps = log["iterations"]
            values = np.array([s[part] for s in steps], dtype=np.float64)
            epochs = np.array([s["epoch"] for s in steps])
            x = np.arange(1, len(values) + 1)
            ax.plot(x, values, color=f"C{k}", alpha=0.3, lw=1)
            known = np.isfinite(values)
            kept = [e for e in np.unique(epochs) if known[epochs == e].any()]
            middles = [x[epochs == e].mean() for e in kept]
            means = [values[(epochs == e) & known].mean() for e in kept]
            ax.plot(middles, means, color=f"C{k}", lw=2, marker="o", ms=4, label=f"{label} (epoch mean)")
            shown += [np.percentile(values[known], [2, 98]) if known.any() else [], means]
        first = next(iter(runs.values()), {"iterations": [], "epochs": []})
        epochs = [s["epoch"] for s in first["iterations"]]
        for e in sorted(set(epochs))[1::2]:
            inside = [i + 1 for i, v in enumerate(epochs) if v == e]
            ax.axvspan(inside[0] - 0.5, inside[-1] + 0.5, color="grey", alpha=0.08)
        thawed = [e["epoch"] for e in first.get("epochs", []) if e.get("trunk_trainable")]
        if thawed and thawed[0] in epochs:
            ax.axvline(epochs.index(thawed[0]) + 0.5, color="k", ls=":", lw=1, label="trunk starts training")
        spread = np.concatenate(shown) if shown else np.array([])
        if spread.size and spread.max() > spread.min():
            lo, hi = spread.min(), spread.max()
            ax.set_ylim(lo - 0.08 * (hi - lo), hi + 0.08 * (hi - lo))  # a rare spike leaves the panel
        ax.set_title(titles.get(part, part))
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def host_time(host_rows: list[dict], device, *, steps: list[str], title: str = "Time per item"):
    """Stacked horizontal bars of one item's host time: per thread setting, the host's steps
    (``steps`` in order, the graph left out: on an accelerator it is the device's), and below
    them the published device time (``device``, a :class:`~zoobook.stages.spec.DeviceTime`, or
    None): whichever is longer sets a pipelined deployment's pace."""
    host_steps = [s for s in steps if s != "graph"]
    bars = len(host_rows) + (device is not None)
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.5 * bars))
    labels = []
    for y, row in enumerate(host_rows):
        left = 0.0
        for k, step in enumerate(host_steps):
            width = row.get(step, 0.0)
            ax.barh(y, width, left=left, color=_PALETTE[(2 * k) % 20], label=step if y == 0 else None)
            left += width
        labels.append(f"host, {row['threads']} thread{'s' if row['threads'] > 1 else ''}: {row['host_ms']:.1f} ms")
    if device is not None:
        ax.barh(len(host_rows), device.ms, color="0.25", hatch="//", edgecolor="white", label="device (published)")
        labels.append(f"device, published: {device.ms:.2f} ms")
    ax.set_yticks(range(bars), labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"milliseconds per {host_rows[0].get('unit', 'item')}")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best", ncol=3)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
