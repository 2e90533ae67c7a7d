"""Streaming histograms on a zero-anchored, power-of-two grid.

Bin ``k`` of a grid covers ``[k * w, (k + 1) * w)`` with ``w = 2 ** width_exp``.  A histogram
stores the counts of the run of bins between its minimum and its maximum.

The width is a function of the largest magnitude seen so far only: ``w`` is the power of two
that puts between ``TARGET_BINS`` and ``2 * TARGET_BINS`` bins between zero and that magnitude.
When a later batch exceeds the range, the grid is coarsened by summing whole groups of
``2 ** k`` bins (no count is ever split, because every grid shares the origin) and bins are
appended.  Two consequences:

- ``update`` over a stream of batches and ``merge`` of shard histograms give bit-identical
  results, whatever the batch size or the order of the batches;
- memory per tensor is bounded (at most ``4 * TARGET_BINS + 2`` bins) however many samples
  are seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: Bins between zero and the largest magnitude: at least this many, fewer than twice as many.
TARGET_BINS = 4096
#: Width exponent used for all-zero data; tiny magnitudes share it.
MIN_WIDTH_EXP = -80


@dataclass(frozen=True)
class Histogram:
    """Counts on a zero-anchored grid, plus the exact extremes of everything counted.

    ``width_exp``: the bin width is ``2.0 ** width_exp``.
    ``offset``: grid index of ``counts[0]``.
    ``counts``: int64 counts, shape ``[n_bins]``.
    ``minimum``/``maximum``: exact extremes of the values seen (not bin edges).
    """

    width_exp: int
    offset: int
    counts: np.ndarray
    minimum: float
    maximum: float

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.width_exp)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def absmax(self) -> float:
        return max(abs(self.minimum), abs(self.maximum)) if self.counts.size else 0.0

    def edges(self) -> np.ndarray:
        """Bin edges, shape ``[n_bins + 1]``."""
        return (self.offset + np.arange(len(self.counts) + 1, dtype=np.float64)) * self.width

    def centers(self) -> np.ndarray:
        """Bin centres, shape ``[n_bins]``."""
        return (self.offset + np.arange(len(self.counts), dtype=np.float64) + 0.5) * self.width


def width_exp_for(absmax: float) -> int:
    """The canonical width exponent for data whose largest magnitude is ``absmax``."""
    if absmax <= 0.0:
        return MIN_WIDTH_EXP
    return max(MIN_WIDTH_EXP, math.floor(math.log2(absmax / TARGET_BINS)))


def empty() -> Histogram:
    """The histogram of no values."""
    return Histogram(MIN_WIDTH_EXP, 0, np.zeros(0, dtype=np.int64), math.inf, -math.inf)


def _rebin(hist: Histogram, width_exp: int, lo: int, hi: int) -> np.ndarray:
    """Counts of ``hist`` on the coarser grid ``width_exp``, as a run of grid bins ``lo..hi``."""
    out = np.zeros(hi - lo + 1, dtype=np.int64)
    steps = width_exp - hist.width_exp
    if hist.counts.size and steps == 0:
        out[hist.offset - lo:hist.offset - lo + len(hist.counts)] = hist.counts
    elif hist.counts.size:
        # An arithmetic shift floors, so negative grid indices stay aligned with the origin.
        index = ((hist.offset + np.arange(len(hist.counts), dtype=np.int64)) >> steps) - lo
        np.add.at(out, index, hist.counts)
    return out


def _run(width_exp: int, minimum: float, maximum: float) -> tuple[int, int]:
    width = math.ldexp(1.0, width_exp)
    return math.floor(minimum / width), math.floor(maximum / width)


def update(hist: Histogram, values: np.ndarray | Sequence[np.ndarray], *, minimum: float | None = None,
           maximum: float | None = None) -> Histogram:
    """Return ``hist`` with the finite float ``values`` counted (an array, or a list of arrays
    of one dtype, counted together without first being joined).

    ``values`` may be a subsample of a tensor; ``minimum``/``maximum`` then give the exact
    extremes of the whole tensor (computed elsewhere, so they bound ``values``): they widen the
    recorded extremes and the grid although only ``values`` are counted.  An extreme not given
    is that of ``values``.
    """
    parts = [np.asarray(v).reshape(-1) for v in (values if isinstance(values, (list, tuple)) else [values])]
    parts = [v for v in parts if v.size]
    lo, hi = hist.minimum, hist.maximum
    if parts:
        lo = min(lo, min(float(v.min()) for v in parts) if minimum is None else minimum)
        hi = max(hi, max(float(v.max()) for v in parts) if maximum is None else maximum)
    if minimum is not None:
        lo, hi = min(lo, minimum), max(hi, minimum)
    if maximum is not None:
        lo, hi = min(lo, maximum), max(hi, maximum)
    if lo > hi:
        return hist
    width_exp = width_exp_for(max(abs(lo), abs(hi)))
    first, last = _run(width_exp, lo, hi)
    counts = _rebin(hist, width_exp, first, last)
    if parts:
        # Scaling by a power of two is exact, so values on a bin edge land in the same bin in
        # float32 as they would in exact arithmetic; floor, cast and shift in place.
        dtype = parts[0].dtype
        scale = dtype.type(math.ldexp(1.0, -width_exp))
        index = np.empty(sum(v.size for v in parts), dtype)
        at = 0
        for v in parts:
            np.multiply(v, scale, out=index[at:at + v.size])
            at += v.size
        np.floor(index, out=index)
        index = index.astype(np.intp)
        index -= first
        counts += np.bincount(index, minlength=len(counts))
    return Histogram(width_exp, first, counts, lo, hi)


def merge(a: Histogram, b: Histogram) -> Histogram:
    """Exact sum of two histograms; ``merge(a, b) == merge(b, a)``."""
    lo, hi = min(a.minimum, b.minimum), max(a.maximum, b.maximum)
    if lo > hi:
        return empty()
    width_exp = width_exp_for(max(abs(lo), abs(hi)))
    first, last = _run(width_exp, lo, hi)
    return Histogram(width_exp, first, _rebin(a, width_exp, first, last) + _rebin(b, width_exp, first, last),
                     lo, hi)


def magnitudes(hist: Histogram, sign: int = 0) -> np.ndarray:
    """Counts of ``|x|`` on the same grid, starting at zero: bin ``k`` covers ``[k w, (k+1) w)``.

    ``sign=0`` folds both signs, ``+1`` keeps the non-negative values only, ``-1`` the negative
    ones.  Grid bin ``k < 0`` holds ``x`` in ``[k w, (k+1) w)``, so ``|x|`` lies in
    ``((-k-1) w, -k w]``: it folds onto magnitude bin ``-k - 1`` (boundary points move by at most
    one bin edge).
    """
    index = hist.offset + np.arange(len(hist.counts), dtype=np.int64)
    counts = hist.counts
    if sign:
        keep = index >= 0 if sign > 0 else index < 0
        index, counts = index[keep], counts[keep]
    folded = np.where(index < 0, -index - 1, index)
    out = np.zeros(int(folded.max()) + 1 if folded.size else 0, dtype=np.int64)
    np.add.at(out, folded, counts)
    return out


def from_counts(values: np.ndarray, counts: np.ndarray, minimum: float, maximum: float) -> Histogram:
    """A histogram in which ``values[i]`` occurs ``counts[i]`` times, with the given extremes."""
    values = np.asarray(values, dtype=np.float64).ravel()
    lo = min(minimum, float(values.min())) if values.size else minimum
    hi = max(maximum, float(values.max())) if values.size else maximum
    if lo > hi:
        return empty()
    width_exp = width_exp_for(max(abs(lo), abs(hi)))
    first, last = _run(width_exp, lo, hi)
    index = np.floor(values * math.ldexp(1.0, -width_exp)).astype(np.int64) - first
    out = np.bincount(index, weights=np.asarray(counts, dtype=np.float64), minlength=last - first + 1)
    return Histogram(width_exp, first, np.rint(out).astype(np.int64), lo, hi)


def push_through(hist: Histogram, f) -> Histogram:
    """The histogram of ``f(x)`` for ``x`` distributed as ``hist``, ``f`` elementwise on float32.

    Each bin's count goes to ``f`` of its centre (clipped to the observed extremes); the extremes
    are those of ``f`` over the bin edges and the exact input extremes, so they are exact for a
    monotonic ``f`` and within ``f``'s variation over one bin otherwise.  In two steps for a
    caller that evaluates many functions at once: ``pushed(hist, f(push_points(hist)))``."""
    if hist.total == 0:
        return empty()
    return pushed(hist, np.asarray(f(push_points(hist))))


def push_points(hist: Histogram) -> np.ndarray:
    """Where ``push_through`` evaluates ``f``: the bin centres, then the bin edges and the exact
    extremes, all clipped to the extremes (float32)."""
    centers = np.clip(hist.centers(), hist.minimum, hist.maximum)
    edges = np.concatenate([np.clip(hist.edges(), hist.minimum, hist.maximum), [hist.minimum, hist.maximum]])
    return np.concatenate([centers, edges]).astype(np.float32)


def pushed(hist: Histogram, y: np.ndarray) -> Histogram:
    """The histogram ``push_through`` builds from ``y = f(push_points(hist))``."""
    if hist.total == 0:
        return empty()
    y = np.asarray(y, dtype=np.float64)
    n = len(hist.counts)
    y_centers, y_edges = y[:n], y[n:]
    keep = hist.counts > 0
    return from_counts(y_centers[keep], hist.counts[keep], float(y_edges.min()), float(y_edges.max()))
