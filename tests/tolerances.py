"""Golden comparisons with tolerances relative to each tensor's scale.

Float32 results move with the CPU's instruction set and thread count (the order in which a
convolution or a matrix product accumulates), by amounts proportional to the size of the
values involved. The READMEs that came with the golden vectors (the reference material's
golden/README.md of each model; tests/golden/trim_*.py say which files were kept) state that
noise per tensor: for example a channel mean of SiamMask's correlation
(values up to 81) moved by 1.2e-4 between two CPUs, and YolactEdge's FPN maps differ by up to
7.4e-5 of each tensor's peak between two correct backends. A tolerance is therefore stated as
a fraction of the reference tensor's peak, never as what one machine happened to show; an
error of 1e-2 of the scale or more means a real mistake in these ports.
"""

from __future__ import annotations

import numpy as np


def assert_close_to_scale(actual, expected, rel: float, what: str = "", *, scale: float | None = None) -> None:
    """|actual - expected| <= rel * scale elementwise, where scale defaults to max|expected|."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = float(np.abs(expected).max()) if scale is None else scale
    worst = float(np.abs(actual - expected).max()) if actual.size else 0.0
    assert worst <= rel * scale, f"{what}: max |diff| {worst:.3g} > {rel:g} x scale {scale:.3g}"
