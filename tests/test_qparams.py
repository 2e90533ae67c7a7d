import numpy as np
import pytest

from calibrators import Range
from ptqcli.quantize.qparams import (
    QuantParams,
    activation_params,
    bias_floor,
    bias_params,
    dequantize,
    quantize,
    quantize_bias,
    weight_params,
)


def test_uint8_asymmetric_params_make_zero_exact():
    p = activation_params(Range(-1.0, 3.0), "uint8")
    assert p.scale[0] == pytest.approx(4.0 / 255, rel=1e-6)
    assert p.zero_point == (64,)  # round(1 / (4 / 255)) = round(63.75)
    assert dequantize(quantize(np.float32(0.0), p), p) == 0.0


def test_symmetric_int8_uses_127_steps_per_side():
    p = activation_params(Range(-2.54, 2.54), "int8")
    assert p.zero_point == (0,) and p.scale[0] == pytest.approx(0.02)
    q = quantize(np.array([-2.54, 2.54, 10.0, -10.0], np.float32), p)
    assert q.tolist() == [-127, 127, 127, -128]


def test_quantize_rounds_half_to_even_and_saturates():
    p = QuantParams("uint8", (1.0,), (10,))
    q = quantize(np.array([0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -300.0], np.float32), p)
    assert q.tolist() == [10, 12, 12, 10, 8, 255, 0]
    assert q.dtype == np.uint8


def test_int16_params():
    p = activation_params(Range(-1.0, 1.0), "int16")
    assert p.scale[0] == pytest.approx(1 / 32767) and quantize(np.float32(1.0), p) == 32767


def test_degenerate_range_gets_a_usable_scale():
    p = activation_params(Range(0.0, 0.0), "uint8")
    assert p.scale[0] > 0 and quantize(np.float32(0.0), p) == p.zero_point[0]


def test_weight_params_per_channel_and_dead_channel():
    w = np.zeros((3, 2, 1, 1), np.float32)
    w[0, 0] = 1.27
    w[2, 1] = -0.254
    p = weight_params(w, 0)
    assert p.axis == 0 and p.scale[0] == pytest.approx(0.01) and p.scale[2] == pytest.approx(0.002)
    assert p.scale[1] > 0  # the all-zero channel borrows the median scale
    q = quantize(w, p)
    assert q[0, 0, 0, 0] == 127 and q[2, 1, 0, 0] == -127
    per_tensor = weight_params(w, None)
    assert per_tensor.axis is None and len(per_tensor.scale) == 1


def test_bias_scale_is_input_scale_times_weight_scale():
    x = QuantParams("uint8", (0.5,), (3,))
    w = QuantParams("int8", (0.1, 0.2), (0, 0), 0)
    b = bias_params(x, w, 2)
    assert b.dtype == "int32" and b.scale == pytest.approx((0.05, 0.1))
    assert quantize_bias(np.array([1.0, -1.0]), b).tolist() == [20, -10]
    assert quantize_bias(np.array([1e12, -1e12]), b).tolist() == [2 ** 31 - 1, -(2 ** 31)]


def test_per_channel_dequantize_broadcasts_on_axis():
    p = QuantParams("int8", (1.0, 2.0), (0, 0), 1)
    q = np.array([[1, 1], [2, 2]], np.int8)
    assert dequantize(q, p).tolist() == [[1.0, 2.0], [2.0, 4.0]]


def test_nearly_dead_channel_keeps_its_bias_representable():
    w = np.array([[0.5, -0.25], [1e-18, -2e-18]], np.float32)  # channel 1 is nearly zero
    b = np.array([0.1, 0.8], np.float32)
    x = QuantParams("uint8", (0.02,), (0,))
    plain = weight_params(w, 0)
    assert plain.scale[1] < 1e-19  # its bias code would be 0.8 / (0.02 * 1.6e-20): far past int32
    floored = weight_params(w, 0, min_scale=bias_floor(b, x, per_channel=True))
    codes = quantize_bias(b, bias_params(x, floored, 2))
    assert abs(int(codes[1])) <= 2 ** 30 and floored.scale[0] == plain.scale[0]
    assert dequantize(codes, bias_params(x, floored, 2)) == pytest.approx(b, rel=1e-6)
