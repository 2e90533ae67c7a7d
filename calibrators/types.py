"""Values shared by every range method."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibrators.histogram import Histogram, magnitudes


@dataclass(frozen=True)
class Range:
    """A clipping range ``[lo, hi]`` in the tensor's float units; always ``lo <= 0 <= hi``."""

    lo: float
    hi: float


@dataclass(frozen=True)
class RangeSpec:
    """What the range is for.

    ``symmetric``: the range is ``[-t, t]`` (int8/int16 with zero point 0).
    ``levels``: number of integer codes of the target dtype (256 for 8 bits, 65536 for 16).
    ``percentile``: mass kept by the percentile method, in percent.
    """

    symmetric: bool
    levels: int = 256
    percentile: float = 99.99


@dataclass(frozen=True)
class Magnitudes:
    """A one-sided view of a histogram, on which thresholds are searched.

    ``counts[k]`` is the mass with magnitude in ``[k w, (k+1) w)``; ``sign`` is +1 when the
    magnitude is ``x`` (non-negative data, or symmetric ``|x|``) and -1 for non-positive data
    (magnitude ``-x``).  ``steps`` is the number of quantization steps between zero and the
    threshold: 127 for symmetric int8, 255 for one-sided uint8.
    """

    counts: np.ndarray
    width: float
    absmax: float
    sign: int
    steps: int


def is_two_sided(hist: Histogram) -> bool:
    return hist.minimum < 0.0 < hist.maximum


def one_sided(hist: Histogram, spec: RangeSpec) -> Magnitudes:
    """The magnitude distribution a threshold search works on, for symmetric or one-sided data.

    Symmetric ranges fold ``|x|`` and have ``levels / 2 - 1`` steps per side (127: the code -128 is
    left unused so that the range is symmetric).  Asymmetric ranges of one-sided data put every
    code on that side: ``levels - 1`` steps.
    """
    counts = magnitudes(hist)
    if spec.symmetric:
        return Magnitudes(counts, hist.width, hist.absmax, 1, spec.levels // 2 - 1)
    if hist.minimum >= 0.0:
        return Magnitudes(counts, hist.width, hist.maximum, 1, spec.levels - 1)
    return Magnitudes(counts, hist.width, -hist.minimum, -1, spec.levels - 1)


def to_range(hist: Histogram, spec: RangeSpec, threshold: float, sign: int) -> Range:
    """Turn a magnitude threshold into a range, never wider than what was observed."""
    threshold = min(threshold, hist.absmax)
    if spec.symmetric:
        return Range(-threshold, threshold)
    if sign > 0:
        return Range(0.0, min(threshold, max(hist.maximum, 0.0)))
    return Range(max(-threshold, min(hist.minimum, 0.0)), 0.0)


def observed(hist: Histogram, spec: RangeSpec) -> Range:
    """The full observed range, including zero (symmetric: ``[-absmax, absmax]``)."""
    if spec.symmetric:
        return Range(-hist.absmax, hist.absmax)
    return Range(min(hist.minimum, 0.0), max(hist.maximum, 0.0))
