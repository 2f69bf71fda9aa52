"""Tensor comparison, one function for every stage that compares two backends.

Metrics follow Ascend's msit ``compare`` (shared/reference/ascend.md): cosine similarity,
max absolute error, max and mean relative error, RMSE and relative Euclidean distance, with
its "normal precision" thresholds. An optional elementwise tolerance
``|a - b| <= atol + rtol * |b|`` states the stricter fp32 check beside it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: msit compare's thresholds for "normal precision"
THRESHOLDS = {"cosine": 0.99, "rel_euclidean": 0.05, "rmse": 1.0, "mean_rel": 1.0}


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
