"""Fixed-point arithmetic: multiplier decomposition, rounding shifts, ties, saturation, overflow."""

from fractions import Fraction

import numpy as np
import pytest

from ptqcli.errors import UnsupportedError
from ptqcli.sim.fixed import accumulator_dtype, div_round, multiplier, saturate, shift_round, span, wrap_int32


def exact_round(num: Fraction) -> int:
    """Round half to even, on exact rationals."""
    floor = num.numerator // num.denominator
    rest = num - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2):
        return floor + 1
    return floor


@pytest.mark.parametrize("real, m, shift", [
    (0.5, 2 ** 30, 31),                       # 0.5 = 0.5 * 2**0: m = 0.5 * 2**31
    (0.75, 3 * 2 ** 29, 31),                  # 0.75 * 2**31
    (1.0, 2 ** 30, 30),                       # 1 = 0.5 * 2**1
    (1 / 3, 1431655765, 32),                  # 1/3 = (2/3) * 2**-1; round(2/3 * 2**31) = 1431655765
    (0.0123, 1690499128, 37),                 # 0.0123 = 0.7872 * 2**-6; round(0.7872 * 2**31)
    (3.0, 3 * 2 ** 29, 29),                   # 3 = 0.75 * 2**2: shift 31 - 2
])
def test_multiplier_decomposition_by_hand(real, m, shift):
    mult = multiplier(real, 2 ** 20)
    assert int(mult.m) == m and int(mult.shift) == shift
    assert abs(m * 2.0 ** -shift - real) <= real * 2.0 ** -31


def test_multiplier_mantissa_rounding_carries_into_next_power():
    # 0.99999999999 needs m = 2**31 after rounding: it becomes 2**30 with one shift less.
    mult = multiplier(1 - 1e-12, 100)
    assert int(mult.m) == 2 ** 30 and int(mult.shift) == 30


def test_multiplier_keeps_fewer_bits_for_wide_values():
    mult = multiplier(0.3, 2 ** 25)  # |v| m below 2**53 (float64 exact): 53 - 26 = 27 bits
    assert 2 ** 26 <= int(mult.m) < 2 ** 27 and mult.scale is not None
    mult = multiplier(0.3, 2 ** 40)  # 53 - 41 < 24: int64 products, |v| m below 2**62: 21 bits
    assert 2 ** 20 <= int(mult.m) < 2 ** 21 and mult.scale is None


def test_multiplier_per_channel_keeps_shape():
    mult = multiplier(np.array([0.5, 0.25, 0.1]).reshape(1, 3, 1, 1), 1000)
    assert mult.m.shape == (1, 3, 1, 1) and mult.shift.shape == (1, 3, 1, 1)


def test_multiplier_refuses_bad_factors():
    with pytest.raises(UnsupportedError):
        multiplier(float("nan"), 10, where="node 'x'")
    with pytest.raises(UnsupportedError):
        multiplier(2.0 ** 41, 10, where="node 'x'")


@pytest.mark.parametrize("v, n, want", [
    (5, 1, 2), (7, 1, 4), (-5, 1, -2), (-7, 1, -4),   # ties x.5 go to the even neighbour
    (6, 2, 2), (10, 2, 2), (14, 2, 4), (-6, 2, -2),   # 1.5 -> 2, 2.5 -> 2, 3.5 -> 4, -1.5 -> -2
    (9, 2, 2), (11, 2, 3), (-9, 2, -2), (-11, 2, -3),  # 2.25 -> 2, 2.75 -> 3
])
def test_shift_round_half_to_even(v, n, want):
    assert int(shift_round(np.int64(v), n)) == want


def test_shift_round_matches_exact_rationals():
    rng = np.random.default_rng(0)
    v = rng.integers(-2 ** 50, 2 ** 50, 5000)
    n = rng.integers(1, 40, 5000)
    got = shift_round(v, n)
    want = [exact_round(Fraction(int(a), 2 ** int(b))) for a, b in zip(v, n)]
    assert got.tolist() == want


def test_div_round_matches_exact_rationals():
    rng = np.random.default_rng(1)
    num = rng.integers(-2 ** 40, 2 ** 40, 3000)
    den = rng.integers(1, 2 ** 20, 3000)
    assert div_round(num, den).tolist() == [exact_round(Fraction(int(a), int(b))) for a, b in zip(num, den)]
    assert div_round(np.int64(5), np.int64(2)) == 2 and div_round(np.int64(-5), np.int64(2)) == -2


@pytest.mark.parametrize("bound", [2 ** 8, 2 ** 20, 2 ** 31, 2 ** 40])
def test_float_and_integer_paths_are_the_same_function(bound):
    rng = np.random.default_rng(bound)
    real = rng.uniform(1e-6, 3.0, 64)
    v = rng.integers(-bound, bound + 1, (500, 64))
    for r in real[:8]:
        mult = multiplier(float(r), bound)
        want = [exact_round(Fraction(int(a) * int(mult.m), 2 ** int(mult.shift))) for a in v[:, 0]]
        assert mult.apply(v[:, 0]).tolist() == want
        assert mult.apply(v[:, 0].astype(np.float64)).tolist() == want


def test_requantize_tie_rounds_half_to_even():
    mult = multiplier(0.5, 255)  # exact: acc * 0.5
    assert mult.apply(np.array([1, 3, 5, -1, -3])).tolist() == [0, 2, 2, 0, -2]


def test_saturate_and_span():
    assert saturate(np.array([-300, 0, 300]), "uint8").tolist() == [0, 0, 255]
    assert saturate(np.array([-300, 0, 300]), "int8", lo=-5, hi=7).tolist() == [-5, 0, 7]
    assert saturate(np.array([-40000, 40000]), "int16").tolist() == [-32768, 32767]
    assert span("uint8", 0) == 255 and span("uint8", 255) == 255 and span("uint8", 128) == 128
    assert span("int8", 0) == 128 and span("int16", 0) == 32768


def test_accumulator_dtype_bounds():
    assert accumulator_dtype(2 ** 24 - 1) is np.float32
    assert accumulator_dtype(2 ** 24) is np.float64
    assert accumulator_dtype(2 ** 53) is np.int64


def test_wrap_int32_is_twos_complement_and_counted():
    acc = np.array([2 ** 31 - 1, 2 ** 31, -(2 ** 31) - 1, 5], dtype=np.int64)
    wrapped, count, peak = wrap_int32(acc)
    assert wrapped.tolist() == [2 ** 31 - 1, -(2 ** 31), 2 ** 31 - 1, 5]
    assert count == 2 and peak == 2 ** 31 + 1
