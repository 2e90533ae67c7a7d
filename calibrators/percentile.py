"""percentile: the range that keeps ``spec.percentile`` percent of the mass.

Symmetric ranges and one-sided data take the quantile of the magnitude; data of both signs
with an asymmetric range drop ``100 - percentile`` percent from each tail.  Quantiles are read
from the histogram's cumulative counts with linear interpolation inside a bin, so they are
within one bin width of the quantile of the raw data.
"""

from __future__ import annotations

import numpy as np

from calibrators.histogram import Histogram
from calibrators.types import Range, RangeSpec, is_two_sided, one_sided, to_range


def quantile(counts: np.ndarray, first_edge: float, width: float, fraction: float) -> float:
    """The value below which ``fraction`` of the mass of ``counts`` lies.

    ``counts[k]`` covers ``[first_edge + k * width, first_edge + (k + 1) * width)``.
    """
    cum = np.cumsum(counts, dtype=np.float64)
    if cum[-1] <= 0:
        return first_edge
    target = fraction * cum[-1]
    # Counts are whole numbers: the tolerance only absorbs rounding in fraction * total
    # (99.9 / 100 * 200000 is 199800.00000000003, which must not skip to the next sample).
    k = int(np.searchsorted(cum, target - 1e-6, side="left"))
    k = min(k, len(counts) - 1)
    below = cum[k - 1] if k > 0 else 0.0
    inside = (target - below) / counts[k] if counts[k] else 0.0
    return first_edge + (k + min(max(inside, 0.0), 1.0)) * width


def percentile_range(hist: Histogram, spec: RangeSpec) -> Range:
    """Keep ``spec.percentile`` percent of the mass; never wider than the observed range."""
    keep = spec.percentile / 100.0
    if hist.total == 0:
        return Range(0.0, 0.0)
    if not spec.symmetric and is_two_sided(hist):
        start = hist.offset * hist.width
        lo = quantile(hist.counts, start, hist.width, 1.0 - keep)
        hi = quantile(hist.counts, start, hist.width, keep)
        return Range(min(max(lo, hist.minimum), 0.0), max(min(hi, hist.maximum), 0.0))
    mags = one_sided(hist, spec)
    return to_range(hist, spec, quantile(mags.counts, 0.0, mags.width, keep), mags.sign)
