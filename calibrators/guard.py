"""What a subsampled histogram does not know: extremes far beyond everything it counted.

The observation pass counts a subsample of each tensor in the histogram but reduces its exact
minimum and maximum over every value.  Between the last counted bin and an exact extreme the
histogram shows nothing, and every range method reads that as no mass: it cuts inside the gap
and clips the values that make up the extreme without knowing how many there are (one stray
value, or a population the subsample missed).

The test (``uncounted``): an exact extreme lies beyond the counted body by more than the body's
own spread, the width of the counted range with zero included (every range includes zero).
Justification: a range that covers such an extreme is more than twice as wide as one that covers
the body, so whether to cover it decides the step; and more than half of the candidates a method
searches lie where it has no information.  The subsample itself does not open such gaps on
ordinary data: with ``K`` values counted out of ``k K``, the largest counted value is the
``1 - 1/K`` quantile and the extreme the ``1 - 1/(k K)`` quantile; for an exponential tail the
extreme lies ``ln k`` beyond a body of ``ln K`` (about a third of it for ``k = 100`` and
``K = 409,600``, 100 samples of 4,096 values), for a Gaussian tail much less.  A gap wider than the body is a tail heavier than
exponential, or values the subsample never met.

The remedies, in the caller: count every value of the tensor again (the observation pass does
when it can read the data twice), or, when only the histogram is at hand, ``cover`` the extreme:
the range is not allowed to clip what was never counted.
"""

from __future__ import annotations

import numpy as np

from calibrators.histogram import Histogram
from calibrators.types import Range, RangeSpec


def counted_extremes(hist: Histogram) -> tuple[float, float]:
    """The smallest and largest value the histogram counted, to one bin (the outer edges of its
    first and last non-empty bins, cut to the exact extremes)."""
    filled = np.flatnonzero(hist.counts)
    if not filled.size:
        return 0.0, 0.0
    edges = hist.edges()
    return max(float(edges[filled[0]]), hist.minimum), min(float(edges[filled[-1] + 1]), hist.maximum)


def uncounted(hist: Histogram) -> tuple[bool, bool]:
    """``(low, high)``: whether the exact minimum (maximum) lies beyond everything counted by more
    than the counted body's spread (see the module docstring)."""
    if hist.total == 0:
        return False, False
    lo, hi = counted_extremes(hist)
    body_lo, body_hi = min(lo, 0.0), max(hi, 0.0)
    spread = body_hi - body_lo
    return body_lo - hist.minimum > spread, hist.maximum - body_hi > spread


def cover(r: Range, hist: Histogram, spec: RangeSpec, low: bool, high: bool) -> Range:
    """``r`` widened to the exact extreme on each flagged side (both sides of a symmetric range)."""
    lo = min(r.lo, hist.minimum) if low else r.lo
    hi = max(r.hi, hist.maximum) if high else r.hi
    if spec.symmetric:
        t = max(-lo, hi)
        return Range(-t, t)
    return Range(lo, hi)
