"""Streaming comparison of a quantized result with its float reference.

SQNR in dB is ``10 log10(sum ref**2 / sum (ref - test)**2)``; cosine similarity is taken over all
elements of all samples.  Sums are kept in float64, so memory does not grow with the samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Agreement:
    """Running sums for one output; combine with ``add``."""

    signal: float = 0.0      # sum ref**2
    noise: float = 0.0       # sum (ref - test)**2
    dot: float = 0.0         # sum ref * test
    test_energy: float = 0.0  # sum test**2
    count: int = 0

    def add(self, ref: np.ndarray, test: np.ndarray) -> "Agreement":
        r = np.asarray(ref, dtype=np.float64).ravel()
        t = np.asarray(test, dtype=np.float64).ravel()
        d = r - t
        return Agreement(self.signal + _dot(r, r), self.noise + _dot(d, d), self.dot + _dot(r, t),
                         self.test_energy + _dot(t, t), self.count + r.size)

    @property
    def sqnr_db(self) -> float:
        if self.noise == 0.0:
            return math.inf
        if self.signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.noise)

    @property
    def cosine(self) -> float:
        denom = math.sqrt(self.signal * self.test_energy)
        return self.dot / denom if denom > 0 else (1.0 if self.noise == 0.0 else 0.0)

    @property
    def mse(self) -> float:
        return self.noise / self.count if self.count else 0.0


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """``sum(a * b)`` of two float64 vectors.  ``einsum`` rather than ``@``: BLAS's dot spreads a
    long vector over threads, which on a loaded machine made it 2-3x slower (20 ms for the 0.5 M
    values of one recognizer output) and sums in an order that depends on the thread count."""
    return float(np.einsum("i,i->", a, b))


def energy(x: np.ndarray) -> float:
    """``sum(x ** 2)`` in float64."""
    x = np.asarray(x, dtype=np.float64).ravel()
    return _dot(x, x)


def noise_energy(ref: np.ndarray, test: np.ndarray) -> float:
    """``sum((ref - test) ** 2)`` in float64 (a float32 difference is exact in float64)."""
    return energy(np.asarray(test, dtype=np.float64) - np.asarray(ref))


def class_scores(output: np.ndarray, count: int) -> bool:
    """Whether ``output`` holds one row of class scores for each of ``count`` samples
    (``[N, classes]``, two classes or more): the only shape where a top-1 class means something
    (not a detector's ``[1, boxes, 6]``, not a regression's ``[N, 1]``)."""
    return np.ndim(output) == 2 and len(output) == count and np.shape(output)[1] > 1


def top1(logits: np.ndarray) -> np.ndarray:
    """Class index per sample for a ``[N, classes]`` output (the last axis holds the classes)."""
    return np.asarray(logits).reshape(len(logits), -1).argmax(axis=1)


def finite_or_none(x: float) -> float | None:
    """JSON has no infinity: report an infinite SQNR (identical outputs) as null."""
    return x if math.isfinite(x) else None
