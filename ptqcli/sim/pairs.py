"""``cpu="x86-avx2"``: the int16 pair sums of ONNX Runtime's uint8 x int8 kernels on x86 CPUs
with AVX2 but without VNNI (see :mod:`ptqcli.targets` for what MLAS does and in which order).

The kernels first form the exact accumulator as usual; a pair of products can only leave int16
when its two weight codes have the same sign and ``|w1| + |w2| > 128``, so the builder lists
those pairs once, grouped by the two input values they read, and a run adds
``saturate_int16(v) - v`` for each of them (``v`` the pair's sum on the raw activation codes).
The result is MLAS's accumulator exactly, at no cost for a model whose pairs cannot saturate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptqcli import targets
from ptqcli.choices import CPUS  # noqa: F401  (the simulator's callers read it here)
from ptqcli.quantize.qparams import QuantParams
from ptqcli.sim import window
from ptqcli.sim.base import Log


@dataclass(frozen=True)
class Saturation:
    """Pair sums of one node that left int16 and were clipped, in one run."""

    node: str
    count: int


@dataclass(frozen=True)
class RiskyPairs:
    """Pairs that can saturate, grouped by the reduction positions ``(k1, k2)`` they read.

    ``positions[i]``: the two reduction indices (Conv: ``(channel, tap)`` each, absolute input
    channel; MatMul/Gemm: K indices); ``channels[i]``: the output channels whose pair at that
    position can saturate, with their raw weight codes ``w1[i]``, ``w2[i]``."""

    positions: tuple[tuple, ...]
    channels: tuple[np.ndarray, ...]
    w1: tuple[np.ndarray, ...]
    w2: tuple[np.ndarray, ...]


def risky_pairs(rows: np.ndarray, position) -> RiskyPairs | None:
    """The pairs of ``rows`` (raw weight codes ``[channels, 1, K]`` from
    :func:`ptqcli.targets.reduction_rows`) that can saturate on uint8 codes up to 255, or None.
    ``position(channel, k)`` names reduction index ``k`` of ``channel`` as the kernel reads it."""
    rows = rows[:, 0, :].astype(np.int64)
    pairs = rows.reshape(rows.shape[0], -1, 2)
    same = np.sign(pairs[..., 0]) * np.sign(pairs[..., 1]) > 0
    risky = same & (np.abs(pairs).sum(axis=-1) > targets.PAIR_LIMIT)
    if not risky.any():
        return None
    grouped: dict[tuple, list[tuple[int, int, int]]] = {}
    for channel, j in zip(*np.nonzero(risky)):
        c, j = int(channel), int(j)
        key = (position(c, 2 * j), position(c, 2 * j + 1))
        grouped.setdefault(key, []).append((c, int(pairs[c, j, 0]), int(pairs[c, j, 1])))
    keys = sorted(grouped)
    table = [np.asarray(grouped[k], dtype=np.int64) for k in keys]
    channels = tuple(a[:, 0].astype(np.intp) for a in table)
    w1 = tuple(a[:, 1].astype(np.int32) for a in table)
    w2 = tuple(a[:, 2].astype(np.int32) for a in table)
    return RiskyPairs(tuple(keys), channels, tuple(w1), tuple(w2))


def raw_shift(params: QuantParams) -> int:
    """What MLAS adds to the activation codes before multiplying: int8 codes become uint8."""
    return 128 if params.dtype == "int8" else 0


def _clip_difference(v: np.ndarray) -> np.ndarray:
    return np.clip(v, targets.INT16_MIN, targets.INT16_MAX) - v


@dataclass(frozen=True)
class ConvPairs:
    """The risky pairs of a Conv (``positions``: ``((c1, tap1), (c2, tap2))``)."""

    node: object
    kernel: tuple[int, ...]
    pairs: RiskyPairs
    x_zero: int
    shift: int
    where: str

    def apply(self, x: np.ndarray, acc: np.ndarray, log: Log) -> np.ndarray:
        """``acc`` ``[N, M, *out]`` (exact sums) corrected in place to MLAS's pair sums."""
        geo = window.geometry(self.node, x.shape[2:], self.kernel)
        raw = window.pad(x.astype(np.int32) + self.shift, geo, self.x_zero + self.shift)
        views = list(window.taps(raw, geo))
        count = 0
        for ((c1, t1), (c2, t2)), chans, w1, w2 in zip(self.pairs.positions, self.pairs.channels,
                                                      self.pairs.w1, self.pairs.w2):
            shape = (1, -1) + (1,) * (x.ndim - 2)
            v = views[t1][:, c1, None] * w1.reshape(shape) + views[t2][:, c2, None] * w2.reshape(shape)
            d = _clip_difference(v)
            hits = int(np.count_nonzero(d))
            if hits:
                acc[:, chans] += d.astype(acc.dtype)
                count += hits
        if count:
            log.saturations.append(Saturation(self.where, count))
        return acc


def conv_pairs(node, weight_codes: np.ndarray, group: int, x: QuantParams, where: str) -> ConvPairs | None:
    """The :class:`ConvPairs` of a Conv with raw weight codes ``[M, C/g, *k]``, or None when
    none of its pairs can saturate (or MLAS forms no pairs: depthwise)."""
    rows = targets.reduction_rows("Conv", weight_codes, group=group)
    if rows is None:
        return None
    m, cg = weight_codes.shape[:2]
    per_group = m // group

    def position(channel: int, k: int) -> tuple[int, int]:
        return (channel // per_group) * cg + k % cg, k // cg

    pairs = risky_pairs(rows, position)
    if pairs is None:
        return None
    return ConvPairs(node, tuple(weight_codes.shape[2:]), pairs, int(x.zero_point[0]), raw_shift(x), where)


@dataclass(frozen=True)
class MatMulPairs:
    """The risky pairs of a MatMul or Gemm with a 2-D constant weight (positions: K indices)."""

    pairs: RiskyPairs
    trans_a: bool
    shift: int
    where: str
    negate: bool = False  # the kernel's sums carry a negative Gemm alpha

    def apply(self, x: np.ndarray, acc: np.ndarray, log: Log) -> np.ndarray:
        raw = x.astype(np.int32) + self.shift
        if self.trans_a:
            raw = raw.T
        count = 0
        for (k1, k2), chans, w1, w2 in zip(self.pairs.positions, self.pairs.channels, self.pairs.w1, self.pairs.w2):
            v = raw[..., k1, None] * w1 + raw[..., k2, None] * w2
            d = _clip_difference(v)
            hits = int(np.count_nonzero(d))
            if hits:
                acc[..., chans] += (-d if self.negate else d).astype(acc.dtype)
                count += hits
        if count:
            log.saturations.append(Saturation(self.where, count))
        return acc


def matmul_pairs(op_type: str, weight_codes: np.ndarray, trans_a: bool, trans_b: bool, x: QuantParams,
                 where: str, *, negate: bool = False) -> MatMulPairs | None:
    """The :class:`MatMulPairs` of a 2-D weight of raw codes as the node holds it, or None."""
    if weight_codes.ndim != 2:
        return None
    rows = targets.reduction_rows(op_type, weight_codes, trans_b=trans_b)
    if rows is None:
        return None
    pairs = risky_pairs(rows, lambda channel, k: k)
    if pairs is None:
        return None
    return MatMulPairs(pairs, trans_a, raw_shift(x), where, negate)
