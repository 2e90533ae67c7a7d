"""KL / entropy calibration: the threshold whose quantized distribution loses least information.

The method of TensorRT (S. Migacz, "8-bit Inference with TensorRT", GTC 2017), in the form
MXNet and ONNX Runtime implement it:

1. Histogram the magnitudes into ``N_BINS`` bins over ``[0, absmax]``.
2. For each candidate cut ``i`` (``levels <= i <= N_BINS``): the reference distribution ``P``
   is ``bins[:i]`` with all clipped mass added to its last bin.  ``Q`` quantizes ``bins[:i]``
   into ``levels`` groups of ``i // levels`` bins (the last group takes the remainder) and
   spreads each group's mass evenly over the bins that are non-zero in ``P``.
   The first bin is set to the second so that a spike of exact zeros does not steer the pick.
3. Both are smoothed (zeros get ``EPS``, taken from the non-zero bins) and, among the cuts that
   keep at least ``MIN_KEPT`` of the mass, the one with the least ``KL(P || Q)`` wins; the
   threshold is the cut's upper edge, ``i * bin_width``.

``levels`` is the number of non-negative codes: 128 for symmetric int8, 256 for uint8 over
one-sided data.  All candidates are evaluated at once, in chunks, with prefix sums for the
group totals.  Ranges with more codes than the histogram has bins (int16) keep the full range:
clipping buys nothing at that resolution.
"""

from __future__ import annotations

import numpy as np

from calibrators.histogram import Histogram, magnitudes
from calibrators.types import Range, RangeSpec, is_two_sided, observed, one_sided, to_range

N_BINS = 2048
#: Fewest codes on one side of an asymmetric range for a KL search of that side to mean anything.
MIN_LEVELS = 64
#: Least share of the mass a candidate cut must keep.
MIN_KEPT = 0.999
EPS = 1e-4
_CHUNK = 256


def resample(counts: np.ndarray, width: float, absmax: float, n_bins: int) -> np.ndarray:
    """Counts of a ``[0, ...)`` histogram with bin ``width`` re-binned onto ``n_bins`` bins over
    ``[0, absmax]``, by linear interpolation of the cumulative counts at the new edges."""
    edges = np.arange(len(counts) + 1, dtype=np.float64) * width
    cum = np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)])
    new_edges = np.linspace(0.0, absmax, n_bins + 1)
    resampled = np.diff(np.interp(new_edges, edges, cum))
    resampled[-1] += cum[-1] - np.interp(absmax, edges, cum)  # the bin holding absmax itself
    return resampled


def _smooth(dist: np.ndarray, valid: np.ndarray, nonzeros: np.ndarray) -> np.ndarray:
    """Give zero entries EPS, taken evenly from the non-zero ones (per row, over ``valid``)."""
    zeros = valid & ~nonzeros
    n_zeros = zeros.sum(axis=1, keepdims=True)
    n_nonzeros = np.maximum(nonzeros.sum(axis=1, keepdims=True), 1)
    return dist + EPS * zeros - (EPS * n_zeros / n_nonzeros) * nonzeros


def divergences(bins: np.ndarray, levels: int, first: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """KL(P || Q) for every cut ``i`` in ``first .. len(bins)`` (``first`` defaults to ``levels``,
    the smallest cut that has a bin per level); returns ``(cuts, kl)``.

    Cuts are evaluated a chunk at a time over ``[chunk, columns]`` arrays, the columns those the
    chunk's largest cut keeps: a cut ``i`` reads ``bins[:i]`` only, so the work is the sum of the
    cuts, not candidates x bins (half as much)."""
    n = len(bins)
    cuts = np.arange(max(levels, first or levels), n + 1)
    cum = np.concatenate([[0.0], np.cumsum(bins)])
    nz_cum = np.concatenate([[0], np.cumsum(bins != 0)])
    out = np.empty(len(cuts))
    for c0 in range(0, len(cuts), _CHUNK):
        i = cuts[c0:c0 + _CHUNK]                               # [C] candidate cuts, ascending
        j = np.arange(int(i[-1]))                              # the columns any of them keeps
        valid = j[None, :] < i[:, None]                        # [C, J] bins kept by the cut
        p = np.where(valid, bins[None, :len(j)], 0.0)
        outliers = cum[-1] - cum[i]
        p[np.arange(len(i)), i - 1] += outliers
        merged = (i // levels)[:, None]                        # bins per group
        group = np.minimum(j[None, :] // merged, levels - 1)   # [C, J] group of each bin
        start = group * merged
        last = group == levels - 1
        stop = np.where(last, i[:, None], start + merged)
        total = cum[stop] - cum[start]
        nonzero = (nz_cum[stop] - nz_cum[start]).astype(np.float64)
        # The clipped mass can make the last kept bin non-zero in P although it is zero in bins.
        nonzero += last & ((bins[i - 1] == 0) & (outliers > 0))[:, None]
        in_p = valid & (p != 0)
        q = np.where(in_p, total / np.maximum(nonzero, 1.0), 0.0)
        p_s, q_s = _smooth(p, valid, in_p), _smooth(q, valid, valid & (q != 0))
        p_s /= p_s.sum(axis=1, keepdims=True)
        q_s /= q_s.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(valid & (p_s > 0), p_s * np.log(p_s / q_s), 0.0)
        out[c0:c0 + len(i)] = terms.sum(axis=1)
    return cuts, out


def _threshold(counts: np.ndarray, width: float, absmax: float, levels: int) -> float:
    """The KL threshold of a magnitude histogram quantized to ``levels`` non-negative codes."""
    bins = resample(counts, width, absmax, N_BINS)
    # Zero is exact in every candidate quantizer; a spike of zeros (after a ReLU) would otherwise
    # dominate P and Q and pull the threshold down (pytorch-quantization does the same).
    bins[0] = bins[1]
    # A cut below most of the mass lumps it all into P's last bin, where Q matches it exactly:
    # KL is zero and the range collapses (data far from zero, e.g. HardSigmoid outputs in
    # [0.1, 0.34]).  Only cuts that keep MIN_KEPT of the mass are candidates, and only they are
    # evaluated (on heavy-tailed tensors that skips about half the work).
    kept = np.cumsum(bins) / bins.sum()
    first = int(np.searchsorted(kept, MIN_KEPT, side="left")) + 1  # cut i keeps bins[:i]
    cuts, kl = divergences(bins, levels, first)
    return float(cuts[int(np.argmin(kl))]) * absmax / N_BINS


def kl_range(hist: Histogram, spec: RangeSpec) -> Range:
    """The clipping range of least KL divergence.

    Symmetric ranges search ``|x|``; one-sided data search their one side with every code.  Data
    of both signs under an asymmetric range are searched side by side, each with the share of the
    codes its extent gets (a side with less than ``MIN_LEVELS`` codes keeps its observed extent):
    folding them would let a crowd of small negative values (after HardSwish, say) decide the
    positive threshold."""
    full = observed(hist, spec)
    if hist.total == 0 or full.hi == full.lo:
        return full
    if spec.symmetric or not is_two_sided(hist):
        mags = one_sided(hist, spec)
        levels = mags.steps + 1
        if levels * 2 > N_BINS:
            return full
        return to_range(hist, spec, _threshold(mags.counts, mags.width, mags.absmax, levels), mags.sign)
    span = full.hi - full.lo
    ends = []
    for sign, extent in ((1, full.hi), (-1, -full.lo)):
        levels = int(round((spec.levels - 1) * extent / span)) + 1
        if levels < MIN_LEVELS or levels * 2 > N_BINS:
            ends.append(extent)
        else:
            ends.append(_threshold(magnitudes(hist, sign), hist.width, extent, levels))
    return Range(-min(ends[1], -full.lo), min(ends[0], full.hi))
