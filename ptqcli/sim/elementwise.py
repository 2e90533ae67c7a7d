"""Binary groups (Add, Mul of two quantized tensors, + fused Relu/Clip) and lookup tables.

Add: both operands are rescaled to the output scale in fixed point with one shared shift ``n``,

    y = zp_y + round_half_even((m_a (q_a - zp_a) + m_b (q_b - zp_b)) / 2**n),
    m_a = round(s_a / s_y * 2**n),  m_b = round(s_b / s_y * 2**n),

``n`` chosen so that the larger of ``m_a, m_b`` has 31 bits.  The sum is below 2**48, so float64
computes it exactly.

Mul: ``p = (q_a - zp_a)(q_b - zp_b)`` (exact), then ``y = zp_y + M p`` with ``M = s_a s_b / s_y``
as a fixed-point multiplier.

With the ``fp32`` arithmetic both follow ONNX Runtime's x86 kernels (MLAS) operation by
operation in float32: Add with ``r_a = s_a / s_y``, ``r_b = s_b / s_y`` and
``c = zp_y - (r_a zp_a + r_b zp_b)`` computes ``y = fma(q_a, r_a, fma(q_b, r_b, c))`` (an operand
that is one value per run of the other adds ``q r`` to ``c`` instead); Mul computes
``y = float32(p) * (s_a s_b / s_y) + zp_y``; both round half to even.

Lookup table: a ``lut`` group is one function ``f`` of one quantized tensor, so its output code
is a function of the input code: ``T[q] = quantize(f(dequantize(q)))`` over all 256 (8-bit) or
65536 (16-bit) codes, with ``f`` (the group's float nodes) evaluated once by ONNX Runtime in
float32.  Relu, Clip, LeakyRelu, HardSigmoid, HardSwish, Sigmoid, Tanh, SiLU, GELU (Erf),
Exp, ... all run this way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ptqcli.quantize.qparams import LIMITS, NUMPY, QuantParams, dequantize, quantize
from ptqcli.quantize.scale_table import GroupEntry
from ptqcli.sim.base import Context, Log, NoKernel, clamp_bounds, scalar
from ptqcli.sim.fixed import f32, multiplier, saturate, span


def _operands(ctx: Context, group: GroupEntry) -> tuple[list[str], list[QuantParams]]:
    node = ctx.node(group.nodes[0])
    names = list(node.input)
    if len(names) != 2 or not all(names):
        raise NoKernel(f"node {node.name!r}: {node.op_type} needs two inputs")
    return names, [ctx.activation(n, f"node {node.name!r}") for n in names]


@dataclass(frozen=True)
class AddKernel:
    """``zp_y + round((m_a (q_a - zp_a) + m_b (q_b - zp_b)) * 2**-n)`` (float64, exact)."""

    zeros: tuple[int, int]
    factors: tuple[float, float]   # m_a * 2**-n, m_b * 2**-n: exact float64 values
    zero_point: int
    lo: int
    hi: int
    dtype: str

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        (a, b), (za, zb), (fa, fb) = inputs, self.zeros, self.factors
        # Each product has at most 16 + 31 bits and their sum 48: exact, then one rounding.
        # (q - zp) * f = q * f - zp * f exactly, so the zero points fold into one constant.
        y = np.multiply(a, fa, dtype=np.float64) + np.multiply(b, fb, dtype=np.float64)
        y -= za * fa + zb * fb
        np.rint(y, out=y)
        return [_store(y, self.zero_point, self.dtype, self.lo, self.hi)]


def _store(y: np.ndarray, zero_point: int, dtype: str, lo: int, hi: int) -> np.ndarray:
    """Rounded float64 values -> saturated output codes (in place on ``y``)."""
    qmin, qmax = LIMITS[dtype]
    np.clip(y, max(lo, qmin) - zero_point, min(hi, qmax) - zero_point, out=y)
    y += zero_point
    return y.astype(NUMPY[dtype])


def _fma(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add: ``x * y`` (float32 operands) is exact in float64, the sum
    is rounded once to float32."""
    return (np.multiply(x, y, dtype=np.float64) + z).astype(np.float32)


@dataclass(frozen=True)
class Float32AddKernel:
    """ONNX Runtime's QLinearAdd (MLAS, AVX2) in float32; see the module docstring."""

    ratios: tuple[np.float32, np.float32]
    fixed: np.float32
    lo: int
    hi: int
    dtype: str

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        (a, b), (ra, rb) = inputs, self.ratios
        fa, fb = a.astype(np.float32), b.astype(np.float32)
        if _per_run(b, a):     # b is one value per run of a: folded into the constant
            y = _fma(fa, ra, self.fixed + fb * rb)
        elif _per_run(a, b):
            y = _fma(fb, rb, self.fixed + fa * ra)
        else:
            y = _fma(fa, ra, _fma(fb, rb, self.fixed))
        return [saturate(np.rint(y), self.dtype, self.lo, self.hi)]


def _per_run(small: np.ndarray, big: np.ndarray) -> bool:
    """``small`` broadcasts against ``big`` as one value per run of ``big``'s innermost axes."""
    return small.size < big.size and (small.ndim == 0 or small.shape[-1] == 1)


def add(ctx: Context, group: GroupEntry):
    _, (pa, pb) = _operands(ctx, group)
    out = ctx.activation(group.outputs[0], f"group {group.nodes[0]!r}")
    (s_a, zp_a), (s_b, zp_b), (s_y, zp_y) = scalar(pa), scalar(pb), scalar(out)
    if ctx.requant == "fp32":
        ra, rb = f32(s_a, "/", s_y), f32(s_b, "/", s_y)
        # C++ float: zp_y - (r_a * zp_a + r_b * zp_b), the inner sum contracted to an FMA
        inner = _fma(ra, np.float32(zp_a), f32(rb, "*", zp_b))
        lo, hi = clamp_bounds(ctx, tuple(group.nodes[1:]), out)
        return Float32AddKernel((ra, rb), f32(zp_y, "-", inner), lo, hi, out.dtype)
    ratios = (s_a / s_y, s_b / s_y)
    _, e = math.frexp(max(ratios))
    n = 31 - e  # the larger ratio gets 31 significant bits
    factors = tuple(float(np.rint(r * 2.0 ** n)) * 2.0 ** -n for r in ratios)
    lo, hi = clamp_bounds(ctx, tuple(group.nodes[1:]), out)
    return AddKernel((zp_a, zp_b), factors, zp_y, lo, hi, out.dtype)


@dataclass(frozen=True)
class MulKernel:
    """``zp_y + M (q_a - zp_a)(q_b - zp_b)``."""

    zeros: tuple[int, int]
    mult: object
    zero_point: int
    lo: int
    hi: int
    dtype: str

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        if self.mult.scale is None:  # 16-bit operands: products beyond float64's exact range
            a, b = (q.astype(np.int64) - z for q, z in zip(inputs, self.zeros))
            return [saturate(self.mult.apply(a * b) + self.zero_point, self.dtype, self.lo, self.hi)]
        a, b = (np.subtract(q, z, dtype=np.float64) for q, z in zip(inputs, self.zeros))
        y = a * b
        y *= self.mult.scale  # |p| m < 2**53: exact
        np.rint(y, out=y)
        return [_store(y, self.zero_point, self.dtype, self.lo, self.hi)]


@dataclass(frozen=True)
class Float32MulKernel:
    """ONNX Runtime's QLinearMul (MLAS, SSE2) in float32: ``p * ratio + zp_y``, rounded."""

    zeros: tuple[int, int]
    ratio: np.float32
    zero_point: np.float32
    lo: int
    hi: int
    dtype: str

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        a, b = (np.subtract(q, z, dtype=np.int32) for q, z in zip(inputs, self.zeros))
        y = (a * b).astype(np.float32)
        y *= self.ratio
        y += self.zero_point
        return [saturate(np.rint(y), self.dtype, self.lo, self.hi)]


def mul(ctx: Context, group: GroupEntry):
    _, (pa, pb) = _operands(ctx, group)
    out = ctx.activation(group.outputs[0], f"group {group.nodes[0]!r}")
    (s_a, zp_a), (s_b, zp_b), (s_y, zp_y) = scalar(pa), scalar(pb), scalar(out)
    if ctx.requant == "fp32":
        lo, hi = clamp_bounds(ctx, tuple(group.nodes[1:]), out)
        return Float32MulKernel((zp_a, zp_b), f32(s_a, "*", s_b, "/", s_y), np.float32(zp_y), lo, hi, out.dtype)
    bound = span(pa.dtype, zp_a) * span(pb.dtype, zp_b)
    mult = multiplier(s_a * s_b / s_y, bound, where=f"node {group.nodes[0]!r}")
    lo, hi = clamp_bounds(ctx, tuple(group.nodes[1:]), out)
    return MulKernel((zp_a, zp_b), mult, zp_y, lo, hi, out.dtype)


@dataclass(frozen=True)
class LutKernel:
    """Output codes looked up by input code.  ``table`` is indexed by the input code's bit
    pattern read as unsigned (``code & 0xff`` for 8 bits), so a view replaces the offset."""

    table: np.ndarray
    unsigned: type

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        return [np.take(self.table, inputs[0].view(self.unsigned))]


def codes(dtype: str) -> np.ndarray:
    """Every code of ``dtype``, ascending."""
    qmin, qmax = LIMITS[dtype]
    return np.arange(qmin, qmax + 1, dtype=np.int64).astype(NUMPY[dtype])


def lut_from_values(pin: QuantParams, pout: QuantParams, values: np.ndarray) -> LutKernel:
    """A table from ``values[i] = f(dequantize(codes(pin.dtype))[i])`` (float32)."""
    out = quantize(values, pout)
    unsigned = {1: np.uint8, 2: np.uint16}[np.dtype(NUMPY[pin.dtype]).itemsize]
    table = np.empty_like(out)
    table[codes(pin.dtype).view(unsigned)] = out
    table.setflags(write=False)
    return LutKernel(table, unsigned)


def lut(ctx: Context, group: GroupEntry, evaluate) -> LutKernel:
    """``evaluate(nodes, input_name, output_name, x)`` computes the group's float function."""
    where = f"group {group.nodes[0]!r}"
    if len(group.inputs) != 1 or len(group.outputs) != 1:
        raise NoKernel(f"{where}: a lookup table needs one input and one output")
    pin = ctx.activation(group.inputs[0], where)
    pout = ctx.activation(group.outputs[0], where)
    if pin.dtype not in ("int8", "uint8", "int16"):
        raise NoKernel(f"{where}: no lookup table over {pin.dtype} codes")
    x = dequantize(codes(pin.dtype), pin)
    y = np.asarray(evaluate(group.nodes, group.inputs[0], group.outputs[0], x), dtype=np.float32)
    if y.size != x.size:
        raise NoKernel(f"{where}: the function does not map each element to one element")
    return lut_from_values(pin, pout, y.reshape(-1))
