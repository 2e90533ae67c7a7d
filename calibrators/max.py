"""max: the observed range (abs-max for symmetric ranges); never clips."""

from __future__ import annotations

from calibrators.histogram import Histogram
from calibrators.types import Range, RangeSpec, observed


def max_range(hist: Histogram, spec: RangeSpec) -> Range:
    """The full observed range, widened to include zero."""
    return observed(hist, spec)
