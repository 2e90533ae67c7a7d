"""percentile: the range that keeps ``spec.percentile`` percent of the mass.

Symmetric ranges and one-sided data take the quantile of the magnitude; data of both signs
with an asymmetric range drop ``100 - percentile`` percent from each tail.

A bound is a bin edge, never a point inside a bin: the edge of the bin the quantile falls in,
on the side that keeps at least the fraction (so within one bin width of the quantile of the raw
data).  A histogram does not know where inside a bin its mass lies, and on real tensors it is
rarely spread evenly: a Clip or Relu6 output piles up at its bound, HardSwish's output at its
minimum -0.375 (the density of ``x (x + 3) / 6`` has a ``1 / sqrt`` singularity there: a bound
2 % of the way into that bin clips 14 % of the bin's values, not 2 %), and in the sparse tail of
a tensor counted on every value, the last bin holds one value that a bound inside it clips
whole.  Reading the bin as uniform put the bound at the fraction's place and clipped up to four
times the predicted mass (cls ``tmp_8``: 0.020 % predicted, 0.078 % counted).  At a bin edge
the mass outside is what the histogram counted outside, with nothing to interpolate.
"""

from __future__ import annotations

import numpy as np

from calibrators.histogram import Histogram
from calibrators.types import Range, RangeSpec, is_two_sided, one_sided, to_range

#: Counts are whole numbers: this only absorbs rounding in ``fraction * total``
#: (99.9 / 100 * 200000 is 199800.00000000003, which must not skip to the next bin).
_TOLERANCE = 1e-6


def upper_edge(counts: np.ndarray, first_edge: float, width: float, fraction: float) -> float:
    """The lowest bin edge with at least ``fraction`` of the mass of ``counts`` below it.

    ``counts[k]`` covers ``[first_edge + k * width, first_edge + (k + 1) * width)``.
    """
    cum = np.cumsum(counts, dtype=np.float64)
    if not cum.size or cum[-1] <= 0:
        return first_edge
    k = int(np.searchsorted(cum, fraction * cum[-1] - _TOLERANCE, side="left"))
    return first_edge + (min(k, len(counts) - 1) + 1) * width


def lower_edge(counts: np.ndarray, first_edge: float, width: float, fraction: float) -> float:
    """The highest bin edge with at most ``fraction`` of the mass of ``counts`` below it."""
    cum = np.cumsum(counts, dtype=np.float64)
    if not cum.size or cum[-1] <= 0:
        return first_edge
    k = int(np.searchsorted(cum, fraction * cum[-1] + _TOLERANCE, side="right"))
    return first_edge + k * width


def percentile_range(hist: Histogram, spec: RangeSpec) -> Range:
    """Keep at least ``spec.percentile`` percent of the mass, between bin edges; never wider than
    the observed range."""
    keep = spec.percentile / 100.0
    if hist.total == 0:
        return Range(0.0, 0.0)
    if not spec.symmetric and is_two_sided(hist):
        start = hist.offset * hist.width
        lo = lower_edge(hist.counts, start, hist.width, 1.0 - keep)
        hi = upper_edge(hist.counts, start, hist.width, keep)
        return Range(min(max(lo, hist.minimum), 0.0), max(min(hi, hist.maximum), 0.0))
    mags = one_sided(hist, spec)
    return to_range(hist, spec, upper_edge(mags.counts, 0.0, mags.width, keep), mags.sign)
