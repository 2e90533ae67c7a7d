"""Softmax and LayerNormalization in integers (int64 registers, no floating point at run time).

Softmax along ``axis``, per row of codes ``q``:

    d = max(q) - q                                  (0 .. 2**bits - 1)
    e = E[d],  E[d] = round(2**24 * exp(-d * s_x))  (a table over every code difference)
    S = sum(e)                                      (int64: rows up to 2**30 elements)
    y = zp_y + round_half_even(e * r / (S * 2**g))  (1/s_y = r * 2**-g, r with 31 bits)

LayerNormalization over the axes from ``axis`` on, per row of ``N`` codes (``R = qmax - qmin``):

    S = sum(q);  c = N q - S                        (exact: N (x - mean) / s_x)
    c = round(c / 2**k)                             (k = 0 unless N**3 R**2 >= 2**61)
    T = sum(c**2) + round(eps * N**3 / (s_x**2 4**k))   (= N**2 (var + eps) in c units, times N)
    r = isqrt(T * 4**a)  in [2**30, 2**31);   1/sqrt(T) = m * 2**(a - 61),  m = round(2**61 / r)
    u = round(c * m * 2**(a - 61) * 2**24)          (c / sqrt(T) in Q24, |u| <= 2**24)
    y = zp_y + round_half_even((u * G_j + B_j * 2**n_j) / 2**n_j),
        G_j = round(gamma_j sqrt(N) / s_y * 2**(n_j - 24)),  B_j = round(beta_j / s_y * 2**n_j)

``n_j`` puts the larger of the two per-channel terms just under 2**60.  Every product stays
below 2**62; rounding is half to even throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ptqcli.graph import attr
from ptqcli.quantize.qparams import LIMITS
from ptqcli.quantize.scale_table import GroupEntry
from ptqcli.sim.base import Context, Log, NoKernel, scalar
from ptqcli.sim.fixed import div_round, saturate, shift_round

EXP_BITS = 24
Q_NORM = 24


@dataclass(frozen=True)
class SoftmaxKernel:
    axis: int
    exp_table: np.ndarray  # int64, indexed by max(q) - q
    r: int
    g: int
    zero_point: int
    dtype: str
    where: str

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        q = inputs[0].astype(np.int64)
        d = q.max(axis=self.axis, keepdims=True) - q
        e = self.exp_table[d]
        total = e.sum(axis=self.axis, keepdims=True)
        if q.shape[self.axis] >= 2 ** (62 - EXP_BITS - self.g):
            raise NoKernel(f"{self.where}: Softmax rows of {q.shape[self.axis]} elements overflow 64 bits")
        y = div_round(e * self.r, total << self.g)
        return [saturate(y + self.zero_point, self.dtype)]


def softmax(ctx: Context, group: GroupEntry) -> SoftmaxKernel:
    node = ctx.node(group.nodes[0])
    where = f"node {node.name!r}"
    if ctx.opset < 13:
        raise NoKernel(f"{where}: Softmax before opset 13 (coerced to 2-D)")
    pin = ctx.activation(group.inputs[0], where)
    pout = ctx.activation(group.outputs[0], where)
    (s_x, _), (s_y, zp_y) = scalar(pin), scalar(pout)
    qmin, qmax = LIMITS[pin.dtype]
    d = np.arange(qmax - qmin + 1, dtype=np.float64)
    table = np.rint(np.exp(-d * s_x) * 2.0 ** EXP_BITS).astype(np.int64)
    f, e = math.frexp(1.0 / s_y)
    g = 31 - e
    if g < 0:
        raise NoKernel(f"{where}: output scale {s_y!r} is too large for the integer Softmax")
    r = int(np.rint(f * 2.0 ** 31))
    table.setflags(write=False)
    return SoftmaxKernel(int(attr(node, "axis", -1)), table, r, g, zp_y, pout.dtype, node.name)


def isqrt(t: np.ndarray) -> np.ndarray:
    """Exact ``floor(sqrt(t))`` of int64 ``0 <= t < 2**62`` (float64 estimate, then corrected)."""
    r = np.floor(np.sqrt(t.astype(np.float64))).astype(np.int64)
    r = np.where(r * r > t, r - 1, r)
    return np.where((r + 1) * (r + 1) <= t, r + 1, r)


@dataclass(frozen=True)
class LayerNormKernel:
    axis: int
    n: int                 # elements per row
    k: int                 # right shift of the centered values
    eps_term: int          # round(eps * N**3 / (s_x**2 4**k))
    gain: np.ndarray       # G_j, int64, normalized shape
    offset: np.ndarray     # B_j * 2**n_j, int64
    shift: np.ndarray      # n_j
    zero_point: int
    dtype: str

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        x = inputs[0]
        axis = self.axis % x.ndim
        q = x.astype(np.int64).reshape(x.shape[:axis] + (-1,))
        c = q * self.n - q.sum(axis=-1, keepdims=True)
        if self.k:
            c = shift_round(c, self.k)
        t = (c * c).sum(axis=-1, keepdims=True) + self.eps_term
        # Normalize T into [2**60, 2**62) by an even shift 2a, so that r has 31 bits.
        bits = np.frexp(np.maximum(t, 1).astype(np.float64))[1].astype(np.int64)
        a = (62 - bits) // 2
        scaled = np.where(a >= 0, t << np.maximum(a, 0) * 2, t >> np.maximum(-a, 0) * 2)
        r = isqrt(scaled)
        m = np.where(r > 0, div_round(np.int64(2) ** 61, np.maximum(r, 1)), 0)
        u = shift_round(c * m, 61 - Q_NORM - a)
        y = shift_round(u.reshape(x.shape) * self.gain + self.offset, self.shift)
        return [saturate(y + self.zero_point, self.dtype)]


def layer_norm(ctx: Context, group: GroupEntry) -> LayerNormKernel:
    node = ctx.node(group.nodes[0])
    where = f"node {node.name!r}"
    if any(o for o in node.output[1:]):
        raise NoKernel(f"{where}: Mean / InvStdDev outputs")
    x_name = group.inputs[0]
    shape = ctx.index.shape.get(x_name)
    axis = int(attr(node, "axis", -1))
    if shape is None:
        raise NoKernel(f"{where}: the input's shape is unknown")
    axis %= len(shape)
    norm_shape = tuple(shape[axis:])
    if not all(isinstance(d, int) for d in norm_shape):
        raise NoKernel(f"{where}: the normalized dimensions are not static")
    gamma = ctx.const(node.input[1])
    beta = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1, np.float32)
    if gamma is None or beta is None:
        raise NoKernel(f"{where}: Scale or B computed at run time")
    pin = ctx.activation(x_name, where)
    pout = ctx.activation(group.outputs[0], where)
    (s_x, _), (s_y, zp_y) = scalar(pin), scalar(pout)
    n = int(np.prod(norm_shape))
    qmin, qmax = LIMITS[pin.dtype]
    k = 0
    while n * (n * (qmax - qmin) / 2 ** k) ** 2 >= 2.0 ** 61:
        k += 1
    eps = float(attr(node, "epsilon", 1e-5))
    eps_term = int(min(round(eps * n ** 3 / (s_x * s_x * 4.0 ** k)), 2 ** 61))
    g = np.broadcast_to(gamma.astype(np.float64), norm_shape) * math.sqrt(n) / s_y
    b = np.broadcast_to(beta.astype(np.float64), norm_shape) / s_y
    largest = np.maximum(np.abs(g), np.abs(b))
    exponent = np.frexp(np.where(largest > 0, largest, 1.0))[1]
    shift = np.clip(60 - exponent, 1, 62).astype(np.int64)
    gain = np.rint(g * np.exp2(shift - Q_NORM)).astype(np.int64)
    offset = np.rint(b * np.exp2(shift)).astype(np.int64)
    return LayerNormKernel(axis, n, k, eps_term, gain, offset, shift, zp_y, pout.dtype)
