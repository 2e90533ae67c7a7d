"""MSE: the clipping range with the least expected squared quantization error.

For a range ``[lo, hi]`` with step ``delta`` (zero exactly representable), each histogram bin of
centre ``c``, width ``w`` and mass ``m`` contributes:

- clipping, ``c < lo`` or ``c > hi``: ``m * ((c - clip(c))**2 + w**2 / 12)``;
- rounding to zero, ``|c| < delta / 2``: ``m * (c**2 + w**2 / 12)`` (exact, so a spike of zeros
  after a ReLU costs nothing whatever the step);
- rounding elsewhere inside: ``m * delta**2 / 12`` (uniform rounding error).

Prefix sums of ``m``, ``m c`` and ``m c**2`` make every candidate O(log n), so ``CANDIDATES``
ranges are searched exhaustively: ``[-t, t]`` for symmetric ranges, ``[0, t]`` (or ``[-t, 0]``)
for one-sided data, ``[a * min, b * max]`` for two-sided asymmetric ranges, each down from the
observed range, which is always a candidate: the pick never has a larger expected error than max.
"""

from __future__ import annotations

import numpy as np

from calibrators.histogram import Histogram
from calibrators.types import Range, RangeSpec, observed

CANDIDATES = 2048
GRID = 64


def expected_errors(hist: Histogram, lo: np.ndarray, hi: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Expected squared error summed over the histogram's mass, for each candidate range."""
    c = hist.centers()
    m = hist.counts.astype(np.float64)
    spread = hist.width ** 2 / 12.0
    s0 = np.concatenate([[0.0], np.cumsum(m)])
    s1 = np.concatenate([[0.0], np.cumsum(m * c)])
    s2 = np.concatenate([[0.0], np.cumsum(m * c * c)])

    def between(a: np.ndarray, b: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sum over bins a..b-1 of m*(c-ref)**2 and of m."""
        mass = s0[b] - s0[a]
        sq = (s2[b] - s2[a]) - 2.0 * ref * (s1[b] - s1[a]) + ref * ref * mass
        return sq, mass

    n = len(c)
    below = np.searchsorted(c, lo, side="left")
    above = np.searchsorted(c, hi, side="right")
    zero_a = np.maximum(np.searchsorted(c, -delta / 2.0, side="right"), below)
    zero_b = np.minimum(np.searchsorted(c, delta / 2.0, side="left"), above)
    zero_b = np.maximum(zero_a, zero_b)
    zeros = np.zeros_like(lo)
    clip_lo, mass_lo = between(np.zeros_like(below), below, lo)
    clip_hi, mass_hi = between(above, np.full_like(above, n), hi)
    near, mass_near = between(zero_a, zero_b, zeros)
    inside = s0[-1] - mass_lo - mass_hi - mass_near
    return (clip_lo + clip_hi + near + spread * (mass_lo + mass_hi + mass_near)
            + inside * delta * delta / 12.0)


def candidates(hist: Histogram, spec: RangeSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate ranges ``(lo, hi, delta)``, shrinking from the observed range: along one axis
    for symmetric ranges and one-sided data, on a ``GRID`` x ``GRID`` lattice of independent
    shrink factors for the two ends of an asymmetric range over data of both signs."""
    full = observed(hist, spec)
    steps = 2 * (spec.levels // 2 - 1) if spec.symmetric else spec.levels - 1
    if not spec.symmetric and full.lo < 0.0 < full.hi:
        f = np.arange(1, GRID + 1, dtype=np.float64) / GRID
        a, b = np.meshgrid(f, f, indexing="ij")
        lo, hi = a.ravel() * full.lo, b.ravel() * full.hi
    else:
        alpha = np.arange(1, CANDIDATES + 1, dtype=np.float64) / CANDIDATES
        lo, hi = alpha * full.lo, alpha * full.hi
    return lo, hi, (hi - lo) / steps


def mse_range(hist: Histogram, spec: RangeSpec) -> Range:
    """The candidate range of least expected squared error."""
    full = observed(hist, spec)
    if hist.total == 0 or full.hi == full.lo:
        return full
    lo, hi, delta = candidates(hist, spec)
    best = int(np.argmin(expected_errors(hist, lo, hi, delta)))
    return Range(float(lo[best]), float(hi[best]))
