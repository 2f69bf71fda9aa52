"""Tensor comparison, one function for every stage that compares two backends.

Metrics follow Ascend's msit ``compare`` (shared/reference/ascend.md): cosine similarity,
max absolute error, max and mean relative error, RMSE and relative Euclidean distance, with
its "normal precision" thresholds. An optional elementwise tolerance
``|a - b| <= atol + rtol * |b|`` states the stricter fp32 check beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: msit compare's thresholds for "normal precision"
THRESHOLDS = {"cosine": 0.99, "rel_euclidean": 0.05, "rmse": 1.0, "mean_rel": 1.0}


@dataclass(frozen=True)
class Tolerance:
    """How closely a candidate must match a reference, beyond msit's thresholds (always
    applied): ``atol`` and ``rtol`` elementwise (``|a - b| <= atol + rtol * |b|``, set for fp32
    runs of the same graph); ``min_agreement``, the share of equal pixels two class maps
    need; ``box_px``, how far two detections' boxes may be apart and still match, and
    ``min_matched``, the share of reference detections that must find a match."""

    atol: float | None = None
    rtol: float = 0.0
    min_agreement: float | None = None
    box_px: float | None = None
    min_matched: float = 0.99


def compare_tensors(reference: np.ndarray, candidate: np.ndarray, *, atol: float | None = None,
                    rtol: float = 0.0) -> dict:
    """Compare ``candidate`` against ``reference`` (same shape). Relative errors divide by
    ``|reference|`` where it is at least 1e-3 of its peak, so near-zero entries do not
    dominate. ``passed`` applies the msit thresholds, and the elementwise tolerance when
    ``atol`` is given."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    cand = np.asarray(candidate, dtype=np.float64).ravel()
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: reference {np.shape(reference)} vs candidate {np.shape(candidate)}")
    diff = np.abs(cand - ref)
    norm = np.linalg.norm(ref) * np.linalg.norm(cand)
    cosine = float(ref @ cand / norm) if norm > 0 else float(np.array_equal(ref, cand))
    scale = np.abs(ref)
    significant = scale >= 1e-3 * scale.max() if scale.size and scale.max() > 0 else np.zeros_like(scale, bool)
    rel = diff[significant] / scale[significant]
    ref_norm = np.linalg.norm(ref)
    row = {
        "shape": list(np.shape(reference)),
        "cosine": cosine,
        "max_abs": float(diff.max(initial=0.0)),
        "max_rel": float(rel.max(initial=0.0)),
        "mean_rel": float(rel.mean()) if rel.size else 0.0,
        "rmse": float(np.sqrt(np.mean(diff ** 2))) if diff.size else 0.0,
        "rel_euclidean": float(np.linalg.norm(cand - ref) / ref_norm) if ref_norm > 0 else float(diff.max(initial=0.0)),
    }
    passed = (row["cosine"] > THRESHOLDS["cosine"] and row["rel_euclidean"] < THRESHOLDS["rel_euclidean"]
              and row["rmse"] < THRESHOLDS["rmse"] and row["mean_rel"] < THRESHOLDS["mean_rel"])
    if atol is not None:
        row["within_tolerance"] = bool(np.all(diff <= atol + rtol * np.abs(ref)))
        row["tolerance"] = f"|a-b| <= {atol:g} + {rtol:g}*|b|"
        passed = passed and row["within_tolerance"]
    row["passed"] = bool(passed)
    return row


def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], *,
                    atol: float | None = None, rtol: float = 0.0) -> list[dict]:
    """One row per output name of ``reference`` (a missing output is an error)."""
    missing = [name for name in reference if name not in candidate]
    if missing:
        raise KeyError(f"candidate lacks outputs: {missing}")
    return [{"output": name, **compare_tensors(reference[name], candidate[name], atol=atol, rtol=rtol)}
            for name in reference]


def compare_with(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                 tolerance: Tolerance) -> list[dict]:
    """:func:`compare_outputs` under ``tolerance`` (its elementwise part where set)."""
    return compare_outputs(reference, candidate, atol=tolerance.atol, rtol=tolerance.rtol)


def class_map_parity(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance) -> dict:
    """Two class maps of the same images: the share of equal pixels, and whether it reaches
    ``tolerance.min_agreement`` (arg-max near-ties may flip, so an element-wise equality test
    would be wrong)."""
    if reference.shape != candidate.shape:
        return {"output": "output", "shape": list(candidate.shape), "agreement": 0.0, "differing_pixels": None,
                "passed": False, "note": f"shape differs from {list(reference.shape)}"}
    equal = reference == candidate
    return {"output": "output", "shape": list(reference.shape), "agreement": float(equal.mean()),
            "differing_pixels": int(equal.size - equal.sum()), "min_agreement": tolerance.min_agreement,
            "passed": bool(equal.mean() >= tolerance.min_agreement)}


def detection_parity(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                     tolerance: Tolerance) -> list[dict]:
    """Two runs of a graph whose outputs are a set of detections (``boxes``, ``labels``,
    ``scores``, ``masks``, one image, batch axis first). A top-k over many near-equal scores
    lets two correct backends order (or, at the k-th place, choose) entries differently, so an
    element-wise comparison would be wrong. Instead: the sorted scores element-wise; then each
    reference entry is matched to a candidate entry of the same label whose box is within
    ``tolerance.box_px``, and boxes and masks are compared over the matches; at least
    ``tolerance.min_matched`` of the entries must match."""
    ref = {k: v.reshape(v.shape[1:]) for k, v in reference.items()}
    cand = {k: v.reshape(v.shape[1:]) for k, v in candidate.items()}
    elementwise = {"atol": tolerance.atol, "rtol": tolerance.rtol}
    rows = [{"output": "scores (sorted)",
             **compare_tensors(np.sort(ref["scores"]), np.sort(cand["scores"]), **elementwise)}]
    close = (np.abs(ref["boxes"][:, None, :] - cand["boxes"][None, :, :]).max(-1) <= tolerance.box_px) \
        & (ref["labels"][:, None] == cand["labels"][None, :])
    taken = np.zeros(len(cand["labels"]), bool)
    pairs = []
    for i in range(len(ref["labels"])):
        options = np.flatnonzero(close[i] & ~taken)
        if options.size:
            taken[options[0]] = True
            pairs.append((i, options[0]))
    matched = len(pairs) / max(len(ref["labels"]), 1)
    rows.append({"output": "(label, box) entries matched", "shape": [len(ref["labels"])], "matched": matched,
                 "passed": matched >= tolerance.min_matched})
    if pairs:
        i, j = map(np.array, zip(*pairs))
        for name in ("boxes", "masks"):
            rows.append({"output": f"{name} (matched)", **compare_tensors(ref[name][i], cand[name][j], **elementwise)})
    return rows


# ---------------------------------------------------------------------------------------
# Task-level agreement


@dataclass(frozen=True)
class AgreementLimit:
    """What one of 05-evaluate's agreement measures must reach for a candidate to hold against
    the PyTorch reference: the rows whose ``measure`` starts with this one, their value at least
    ``at_least`` and at most ``at_most`` (its absolute value where ``absolute``)."""

    measure: str
    at_least: float | None = None
    at_most: float | None = None
    absolute: bool = False

    def holds(self, value) -> bool:
        if not isinstance(value, (int, float)) or value != value:
            return False                           # missing or NaN: nothing agrees
        value = abs(value) if self.absolute else value
        return ((self.at_least is None or value >= self.at_least) and
                (self.at_most is None or value <= self.at_most))

    @property
    def text(self) -> str:
        name = "|value|" if self.absolute else "value"
        return " and ".join(part for part in (f"{name} >= {self.at_least:g}" if self.at_least is not None else "",
                                              f"{name} <= {self.at_most:g}" if self.at_most is not None else "")
                            if part)


def judge_agreement(rows: list[dict], limits: tuple[AgreementLimit, ...]) -> list[dict]:
    """``rows`` (``measure``, ``value``) with ``limit`` and ``passed`` added to each row a limit
    covers; rows no limit covers are shown as measured, without a verdict."""
    out = []
    for row in rows:
        limit = next((lim for lim in limits if str(row.get("measure", "")).startswith(lim.measure)), None)
        out.append({**row, "limit": limit.text, "passed": limit.holds(row.get("value"))} if limit else dict(row))
    return out


def agreement_verdict(rows: list[dict] | None) -> bool | None:
    """Whether every judged agreement row passed; None where no row was judged."""
    judged = [r["passed"] for r in rows or () if isinstance(r, dict) and "passed" in r]
    return all(judged) if judged else None
