"""Whether a layer's learned rounding beats nearest, judged on calibration samples it did not learn from.

AdaRound fits a layer's codes to its calibration rows; the codes a layer keeps must lower the
reconstruction loss (``calibrators.adaround.reconstruction_loss``) on rows it was not fitted to,
or nearest rounding stays.  Rows are split by *calibration sample*, never inside one: the rows of
one sample (patches of one image, tokens of one text) are correlated, and a held-out row beside
a training row of the same image says little about another image.  Samples go to ``FOLDS`` folds
in turn (sample ``j`` to fold ``j % FOLDS``), so each fold is spread over the calibration set (a
folder sorted by class gives every fold every class; the last quarter of it would give the last
classes only).

Two regimes, by how many rows a layer has:

- **many rows** (more than one minibatch, ``AdaRoundOptions.batch``): learn on folds 1.. and judge
  on fold 0, a quarter of the samples.  A quarter of 4,100 rows is about a thousand rows; learning
  again on every row would double the cost of the layers that cost the most (PP-OCRv4 rec's
  W4 pass: 336 s of AdaRound), for a small gain (below).
- **few rows** (one minibatch or fewer: a squeeze-and-excitation convolution after a global pool
  or a classifier Gemm gets one row per sample, 100 rows for 100 samples, for up to 512 inputs):
  a quarter is 25 rows, and the verdict on 25 rows is noisy.  Here every fold is judged by codes
  learned on the other three (``FOLDS``-fold cross-validation), the held-out losses summed over
  the folds, so that the verdict rests on every sample; where learning wins, the layer learns once
  more on all its rows and keeps those codes (the cross-validation judged the procedure, the
  refit uses every row it can).  Such a layer's minibatch is all its rows, so its five learnings
  cost about what one costs a layer of 4,100 rows.

Numbers behind the choice (synthetic Gemm, 256 inputs, 16 outputs, correlated Relu inputs, the
loss ratio learned / nearest on 20,000 fresh rows, 4 seeds; ``/tmp`` scripts of issue 13): the
verdict of one held-out quarter of 100 rows was wrong on 1 of 6 layers (held-out ratio 1.12,
fresh 0.96, W4); with quantized inputs 5 % noisier than the float ones, learning fitted the 75
training rows (ratio 0.5) and lost on fresh rows (1.04-1.07): the held-out quarter saw it (1.08-
1.14).  Learning on all 100 rows instead of 75 gave fresh ratios 0.779 vs 0.773 (W8) and 0.829 vs
0.830 (W4); at 400 rows, 0.628 vs 0.668 and 0.700 vs 0.737.  A margin (keep learned only when it
wins by a standard error over the held-out samples) would have dropped a real win (fresh 0.87,
t = -0.86), so the verdict is the plain comparison of the summed losses.

On the rounding benchmark (bench/results-rounding.md: 100 calibration samples, 1,000 steps),
against the last quarter of the rows it replaces: cls W8 keeps nearest on 8 of its 19 layers
fed one row per sample (was 3), output SQNR 33.0 -> 36.6 dB (nearest 34.3), logits SQNR 27.9 ->
28.6 dB (nearest 26.7); magika W8 22.27 -> 22.38 dB (nearest 22.36); the digits transformer W8
0.950 -> 0.952 (nearest 0.952); rec W4 0.960 -> 0.989 but W4 + bias correction 0.994 -> 0.982
and cls W4 0.995 -> 0.9925 (one of 400 samples): where learned codes win, which rows a layer
learns from moves a task metric by a sample or two either way.  Without the few-rows regime
(every layer judged on one held-out fold, same folds): cls W8 output SQNR 32.2 dB, logits 28.6
dB, 49 of 54 layers learned; W4 0.9925, 26.8 dB, logits 18.9 dB; with it, 36.6 / 28.6 dB (44
of 54) and 0.9925, 28.9 / 19.7 dB: the one sample cls W4 lost came with the folds, not with the
cross-validation.

NumPy only; the caller hands in what makes a candidate admissible (``admit``: the x86 pair bound).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from calibrators.adaround import AdaRoundOptions, Layer, adaround, reconstruction_loss

#: Folds of calibration samples; one of them is held out at a time.
FOLDS = 4


@dataclass(frozen=True)
class Verdict:
    """``codes`` ``[G, O, K]`` int32: the learned codes if ``learned``, else the nearest ones;
    ``loss_nearest``/``loss_learned``: held-out reconstruction losses (summed over held-out rows,
    divided by their number); ``iterations``: Adam steps of one learning; ``learnings``: how many
    times the layer was learned (1: one held-out fold; ``FOLDS`` + 1: cross-validated and learned
    again on every row; 0: too few samples to judge, nearest kept)."""

    codes: np.ndarray
    learned: bool
    loss_nearest: float
    loss_learned: float
    iterations: int
    learnings: int


def folds(samples: np.ndarray) -> np.ndarray:
    """The fold of each row ``[R]`` from the calibration sample it came from (``samples`` ``[R]``):
    sample ``j`` goes to fold ``j % FOLDS`` (with fewer than two samples, the rows are cut in
    ``FOLDS`` consecutive blocks: nothing better is left)."""
    samples = np.asarray(samples)
    distinct = np.unique(samples)
    if len(distinct) < 2:
        return (np.arange(len(samples)) * FOLDS // max(len(samples), 1)).astype(np.int64)
    return (np.searchsorted(distinct, samples) % FOLDS).astype(np.int64)


def _rows(layer: Layer, mask: np.ndarray) -> Layer:
    return replace(layer, inputs=layer.inputs[:, mask], target=layer.target[:, mask])


def judge(layer: Layer, samples: np.ndarray, nearest: np.ndarray, options: AdaRoundOptions, seed,
          admit: Callable[[np.ndarray], np.ndarray] = lambda codes: codes) -> Verdict:
    """Learn ``layer``'s rounding and keep it only where it beats ``nearest`` (codes ``[G, O, K]``)
    on held-out calibration samples (module docstring).  ``samples`` ``[R]``: the calibration
    sample of each row; ``seed``: of the minibatch generators (one per learning, derived from it);
    ``admit(codes) -> codes``: the form a candidate must take before it is judged or kept."""
    fold = folds(samples)
    few = layer.rows <= options.batch
    judged = [f for f in (range(FOLDS) if few else (0,)) if np.any(fold == f) and np.any(fold != f)]
    if not judged:  # one fold only (a handful of rows): nothing to judge by
        return Verdict(nearest, False, float("nan"), float("nan"), 0, 0)
    loss_n = loss_l = 0.0
    held_rows = 0
    for f in judged:
        train, held = _rows(layer, fold != f), _rows(layer, fold == f)
        result = adaround(train, options, np.random.default_rng([*np.atleast_1d(seed), f]))
        candidate = admit(result.codes)
        loss_n += reconstruction_loss(held, nearest) * held.rows
        loss_l += reconstruction_loss(held, candidate) * held.rows
        held_rows += held.rows
    loss_n, loss_l = loss_n / held_rows, loss_l / held_rows
    if not loss_l < loss_n:
        return Verdict(nearest, False, loss_n, loss_l, options.iterations, len(judged))
    if few:  # the procedure won on every sample: learn once more, on all of them
        result = adaround(layer, options, np.random.default_rng([*np.atleast_1d(seed), FOLDS]))
        candidate = admit(result.codes)
        return Verdict(candidate, True, loss_n, loss_l, options.iterations, len(judged) + 1)
    return Verdict(candidate, True, loss_n, loss_l, options.iterations, 1)
