"""Fixed-point arithmetic of the simulator: multipliers, rounding shifts, saturation, exactness.

Every real-valued factor the integer kernels need (``M = s_x * s_w / s_y`` and the like) is
held as an integer multiplier ``m`` and a right shift ``n``, ``M ~= m * 2**-n``.  ``m`` has
``b`` significant bits (``2**(b-1) <= m < 2**b``), where for values ``|v| <= bound``:

- ``b = min(31, 53 - bits(bound))`` when that is at least 24: every product ``v * m`` is below
  2**53, so float64 forms it exactly (the common case: int8 accumulators of real layers stay
  below 2**29);
- otherwise ``b = min(31, 62 - bits(bound))`` and the product is formed in int64.

Applying it is ``round_half_even(v * m / 2**n)``: the rounding rule of ONNX QuantizeLinear, so
that a multiplier that is exact (a power of two, say) gives exactly DequantizeLinear followed by
QuantizeLinear.  In float64 ``numpy.rint`` rounds the exact product half to even; in int64
``shift_round`` does: both paths are the same function (``tests/test_sim_fixed.py`` checks it).

The ``fp32`` arithmetic (``REQUANT``) replaces the integer multiplier by a float32 factor:
``round_half_even(float32(v) * f)``, the product rounded to float32 first, as ONNX Runtime's CPU
kernels (MLAS) and XNNPACK's fp32 requantization do.  :func:`f32` evaluates the factor the way
those kernels do, one float32 operation at a time, so ties fall where they fall there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ptqcli.choices import REQUANT  # noqa: F401  (the simulator's callers read it here)
from ptqcli.errors import UnsupportedError
from ptqcli.quantize.qparams import LIMITS, NUMPY

INT32_MIN, INT32_MAX = LIMITS["int32"]
#: Largest |value| whose products with a 31-bit multiplier stay exact in float64.
FLOAT64_EXACT = 2 ** 53
#: Float32 sums of integers are exact while every partial sum is below this.
FLOAT32_EXACT = 2 ** 24
#: Multipliers beyond this are refused (a tensor whose scale is ~2**-40 times its input's).
MAX_MULTIPLIER = 2.0 ** 40


@dataclass(frozen=True)
class Multiplier:
    """``M ~= m * 2**-shift`` per channel.  ``m`` and ``shift`` are int64 arrays shaped to
    broadcast against the values they scale (scalars for one channel); ``bound`` is the largest
    ``|v|`` they were built for (``|v| * m < 2**62``); ``scale`` is ``m * 2**-shift`` in float64
    when ``bound * m < 2**53`` (products exact in float64), else None."""

    m: np.ndarray
    shift: np.ndarray
    bound: int
    scale: np.ndarray | None

    def apply(self, v: np.ndarray) -> np.ndarray:
        """``round_half_even(v * m / 2**shift)`` as int64; ``v`` holds integers (int or float)
        with ``|v| <= bound``."""
        if self.scale is not None:
            return np.rint(np.asarray(v, dtype=np.float64) * self.scale).astype(np.int64)
        return shift_round(np.asarray(v, dtype=np.int64) * self.m, self.shift)


@dataclass(frozen=True)
class Float32Scale:
    """``round_half_even(float32(v) * scale)`` with ``scale`` float32 per channel (shaped to
    broadcast against the values): ``v`` is converted to float32 (rounded to nearest even beyond
    2**24, as a vector conversion does), multiplied in float32, then rounded."""

    scale: np.ndarray

    def apply(self, v: np.ndarray) -> np.ndarray:
        y = np.asarray(v).astype(np.float32)
        y *= self.scale
        return np.rint(y, out=y)


def f32(*ops: float | np.ndarray | str) -> np.ndarray:
    """Evaluate ``a op b op c ...`` left to right in float32, each operation rounded to float32:
    ``f32(s_x, "*", s_w, "/", s_y)`` is C's ``s_x * s_w / s_y`` on float operands."""
    value = np.asarray(ops[0], dtype=np.float32)
    for op, operand in zip(ops[1::2], ops[2::2]):
        b = np.asarray(operand, dtype=np.float32)
        value = {"*": np.multiply, "/": np.divide, "+": np.add, "-": np.subtract}[op](value, b, dtype=np.float32)
    return value


def multiplier(real: float | np.ndarray, bound: int, *, where: str = "") -> Multiplier:
    """Decompose non-negative ``real`` (a scalar, or an array shaped to broadcast per channel)
    into a :class:`Multiplier` of the same shape for values with ``|v| <= bound``.

    ``m = round_half_even(f * 2**b)`` with ``real = f * 2**e``, ``0.5 <= f < 1``, ``b`` bits
    as in the module docstring; ``shift = b - e``."""
    values = np.asarray(real, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise UnsupportedError(f"{where}: requantization factor {values.min()!r} is not a finite non-negative number")
    if np.any(values >= MAX_MULTIPLIER):
        raise UnsupportedError(f"{where}: requantization factor {values.max():.3g} is too large "
                               f"(the output scale is below 2**-40 of the input's)")
    width = max(int(bound), 1).bit_length()
    bits = min(31, 53 - width) if 53 - width >= 24 else min(31, 62 - width)
    if bits < 8:
        raise UnsupportedError(f"{where}: values up to {bound} leave too few multiplier bits")
    ms, shifts = [], []
    for x in values:
        if x == 0.0:
            ms.append(0)
            shifts.append(1)
            continue
        f, e = math.frexp(float(x))
        m = int(np.rint(f * 2.0 ** bits))
        if m == 2 ** bits:  # rounding carried into the next power of two
            m, e = m // 2, e + 1
        if bits - e >= 63:  # |v * m| < 2**62 <= half of 2**shift: every result rounds to 0
            m, e = 0, bits - 1
        ms.append(m)
        shifts.append(bits - e)
    m_arr = np.asarray(ms, dtype=np.int64)
    s_arr = np.asarray(shifts, dtype=np.int64)
    if np.any(s_arr < 1):  # M >= 2**(bits-1): shift left first so the rounding shift is >= 1
        lift = np.maximum(1 - s_arr, 0)
        if int(np.max(m_arr << lift, initial=0)) * max(int(bound), 1) >= 2 ** 62:
            raise UnsupportedError(f"{where}: requantization factor {values.max():.3g} overflows 64 bits")
        m_arr, s_arr = m_arr << lift, s_arr + lift
    m_arr, s_arr = m_arr.reshape(np.shape(real)), s_arr.reshape(np.shape(real))
    exact = int(bound) * int(np.max(m_arr, initial=0)) < FLOAT64_EXACT
    scale = m_arr.astype(np.float64) * np.exp2(-s_arr.astype(np.float64)) if exact else None
    return Multiplier(m_arr, s_arr, int(bound), scale)


def shift_round(v: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """``round_half_even(v / 2**shift)`` for int64 ``v`` and ``shift >= 1``, exactly."""
    v = np.asarray(v, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    q = np.right_shift(v, shift)          # floor division by 2**shift
    rem = v - np.left_shift(q, shift)     # in [0, 2**shift)
    half = np.left_shift(np.int64(1), shift - 1)
    up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    return q + up


def div_round(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``round_half_even(num / den)`` for int64 ``num`` and positive int64 ``den``, exactly."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    q = np.floor_divide(num, den)
    twice = 2 * (num - q * den)           # 2 * remainder, in [0, 2 * den)
    up = (twice > den) | ((twice == den) & ((q & 1) == 1))
    return q + up


def saturate(v: np.ndarray, dtype: str, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """Clamp integers to ``dtype`` (and to ``[lo, hi]`` inside it) and cast to its numpy type."""
    qmin, qmax = LIMITS[dtype]
    lo = qmin if lo is None else max(lo, qmin)
    hi = qmax if hi is None else min(hi, qmax)
    return np.clip(v, lo, hi).astype(NUMPY[dtype])


def span(dtype: str, zero_point: int | np.ndarray) -> int:
    """Largest ``|q - zero_point|`` over the codes of ``dtype``."""
    qmin, qmax = LIMITS[dtype]
    zp = np.asarray(zero_point, dtype=np.int64)
    return int(max(np.max(zp - qmin, initial=0), np.max(qmax - zp, initial=0)))


def accumulator_dtype(bound: float) -> type:
    """The float type whose sums of integers stay exact when every partial sum is at most
    ``bound`` in magnitude (float32 below 2**24, float64 below 2**53), else int64."""
    if bound < FLOAT32_EXACT:
        return np.float32
    if bound < FLOAT64_EXACT:
        return np.float64
    return np.int64


def wrap_int32(acc: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Reduce an int64 accumulator to int32 two's complement, as a 32-bit register does.

    Returns the wrapped values (int64), how many overflowed and the largest ``|acc|``."""
    over = (acc < INT32_MIN) | (acc > INT32_MAX)
    count = int(np.count_nonzero(over))
    if not count:
        return acc, 0, 0
    peak = int(np.max(np.abs(acc[over])))
    wrapped = ((acc - INT32_MIN) & 0xFFFFFFFF) + INT32_MIN
    return wrapped, count, peak
