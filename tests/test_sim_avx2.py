"""``cpu="x86-avx2"``: the simulator's int16 pair sums against a brute-force NumPy model written
here from the description of MLAS's AVX2 kernels (NHWC im2col, adjacent products summed and
saturated to int16, raw uint8 codes, zero point corrected afterwards), swept over layer shapes.
ONNX Runtime itself is the reference in ``test_qemu_avx2.py``."""

import itertools

import numpy as np
import pytest
from builders import float_input, make_model, save, write_npy_folder
from onnx import TensorProto, helper

from ptqcli import api
from ptqcli.graph import prepare
from ptqcli.quantize.decide import CalibrationOptions
from ptqcli.sim import simulate


def _quantize(x, scale, zero, lo, hi):
    return np.clip(np.rint(np.asarray(x, np.float32) / np.float32(scale)) + zero, lo, hi).astype(np.int64)


def _pair_sums(a: np.ndarray, w: np.ndarray, saturate: bool) -> np.ndarray:
    """sum_j sat16(a[2j] w[2j] + a[2j+1] w[2j+1]) for a [P, K] and w [M, K] -> [P, M]."""
    if a.shape[1] % 2:
        a = np.concatenate([a, np.zeros((len(a), 1), a.dtype)], axis=1)
        w = np.concatenate([w, np.zeros((len(w), 1), w.dtype)], axis=1)
    pairs = a[:, None, 0::2] * w[None, :, 0::2] + a[:, None, 1::2] * w[None, :, 1::2]
    if saturate:
        pairs = np.clip(pairs, -32768, 32767)
    return pairs.sum(axis=-1)


def _brute_conv(qx, qw, zp_x, pads, strides, group, saturate):
    """Accumulators [N, M, *out] of a Conv as MLAS forms them: per output pixel, the NHWC
    window (kernel taps row-major, channel fastest; padding holds zp_x) times the weights in
    the same order, in int16 pairs."""
    n, c = qx.shape[:2]
    m, cg = qw.shape[:2]
    kernel = qw.shape[2:]
    nd = len(kernel)
    padded = np.pad(qx, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)], constant_values=zp_x)
    out_sp = [(padded.shape[2 + i] - kernel[i]) // strides[i] + 1 for i in range(nd)]
    acc = np.zeros([n, m] + out_sp, np.int64)
    per_group = m // group
    for pos in itertools.product(*[range(o) for o in out_sp]):
        for g in range(group):
            window = []
            for tap in itertools.product(*[range(k) for k in kernel]):
                at = tuple(p * s + t for p, s, t in zip(pos, strides, tap))
                window.append(padded[(slice(None), slice(g * cg, (g + 1) * cg)) + at])  # [N, cg]
            a = np.concatenate(window, axis=1)                                          # [N, taps * cg]
            ws = qw[g * per_group:(g + 1) * per_group]
            wk = np.moveaxis(ws, 1, -1).reshape(len(ws), -1)                             # tap-major, channel fastest
            acc[(slice(None), slice(g * per_group, (g + 1) * per_group)) + pos] = _pair_sums(a, wk, saturate)
    return acc - zp_x * qw.reshape(m, -1).sum(axis=1).reshape((1, m) + (1,) * nd)


def _output(channels: int, spatial: int):
    return helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels] + [None] * spatial)


def _table(tmp_path, model, data, *, cpu, symmetric=False):
    path = save(model, tmp_path / "m.onnx")
    folder = write_npy_folder(tmp_path / f"calib-{cpu}", data)
    r = api.calibrate(path, data=folder, output=tmp_path / f"{cpu}.json",
                      options=CalibrationOptions(method="max", cpu=cpu, symmetric=symmetric))
    return path, r.table


def _hot_inputs(rng, shape, lo, hi):
    """Random values in [lo, hi] and one sample at the top of the range (raw codes near 255)."""
    x = rng.uniform(lo, hi, shape).astype(np.float32)
    x[0] = hi
    return x


CONV_CASES = [  # (C_in, M, kernel, pads, strides, group)
    (3, 8, (3, 3), (1, 1, 1, 1), (1, 1), 1),
    (4, 16, (3, 3), (1, 1, 1, 1), (1, 1), 1),
    (8, 16, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (5, 7, (1, 1), (0, 0, 0, 0), (2, 2), 1),
    (6, 4, (3, 3), (0, 1, 1, 0), (2, 1), 2),
    (3, 6, (2, 3), (1, 0, 0, 2), (1, 2), 3),
    (1, 4, (5,), (2, 2), (1,), 1),
    (4, 8, (3, 3), (1, 1, 1, 1), (1, 1), 4),     # depthwise with a channel multiplier: pairs
]


@pytest.mark.parametrize("cin,m,kernel,pads,strides,group", CONV_CASES)
@pytest.mark.parametrize("symmetric", [False, True])
def test_conv_pair_sums_match_the_brute_force_model(tmp_path, cin, m, kernel, pads, strides, group, symmetric):
    rng = np.random.default_rng(cin * 100 + m)
    spatial = (6,) * len(kernel)
    w = rng.normal(0, 1, (m, cin // group) + kernel).astype(np.float32)
    b = rng.normal(0, 1, m).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=list(pads), strides=list(strides), group=group)
    model = make_model([node], [float_input("x", ["N", cin, *spatial])], [_output(m, len(kernel))],
                       [("w", w), ("b", b)])
    lo, hi = (-2.0, 2.0) if symmetric else (-0.5, 2.0)
    path, table = _table(tmp_path, model, [_hot_inputs(rng, (2, cin, *spatial), lo, hi) for _ in range(4)],
                         cpu="x86-vnni", symmetric=symmetric)
    x = _hot_inputs(rng, (3, cin, *spatial), lo, hi)
    px, pw, pb = (table.tensors[t].params for t in ("x", "w", "b"))
    qmin, qmax = (-128, 127) if symmetric else (0, 255)
    qx = _quantize(x, px.scale[0], px.zero_point[0], qmin, qmax)
    sw = np.asarray(pw.scale, np.float32).reshape(-1, *(1,) * (w.ndim - 1))
    qw = np.clip(np.rint(w / sw), -128, 127).astype(np.int64)
    shift = 128 if symmetric else 0  # MLAS turns int8 codes into uint8
    bias = np.rint(b.astype(np.float64) / np.asarray(pb.scale, np.float64)).astype(np.int64)
    unit = np.float64(px.scale[0]) * np.asarray(pw.scale, np.float64)
    shape = (1, m) + (1,) * len(kernel)
    prepared = prepare(path)
    runs = {}
    for saturate, cpu in ((True, "x86-avx2"), (False, "exact")):
        acc = _brute_conv(qx + shift, qw, px.zero_point[0] + shift, pads, strides, group, saturate)
        want = ((acc + bias.reshape(shape)) * unit.reshape(shape)).astype(np.float32)
        got = simulate(prepared, table, {"x": x}, cpu=cpu)
        np.testing.assert_array_equal(got.tensors["y"].values, want)
        runs[cpu] = got
    assert sum(s.count for s in runs["x86-avx2"].saturations) > 0  # the case really saturates
    assert not runs["exact"].saturations


@pytest.mark.parametrize("op,k,trans_b", [("Gemm", 9, True), ("Gemm", 16, False), ("MatMul", 7, False),
                                          ("MatMul", 64, False)])
def test_gemm_and_matmul_pair_sums_match_the_brute_force_model(tmp_path, op, k, trans_b):
    rng = np.random.default_rng(k)
    n_out = 6
    w = rng.normal(0, 1, (n_out, k) if trans_b else (k, n_out)).astype(np.float32)
    inputs = ["x", "w"] + (["b"] if op == "Gemm" else [])
    attrs = {"transB": 1} if trans_b else {}
    node = helper.make_node(op, inputs, ["y"], **attrs)
    inits = [("w", w)] + ([("b", np.zeros(n_out, np.float32))] if op == "Gemm" else [])
    model = make_model([node], [float_input("x", ["N", k])], [_output(n_out, 0)], inits)
    path, table = _table(tmp_path, model, [_hot_inputs(rng, (4, k), -0.5, 2.0) for _ in range(4)], cpu="x86-vnni")
    x = _hot_inputs(rng, (5, k), -0.5, 2.0)
    px, pw = table.tensors["x"].params, table.tensors["w"].params
    qx = _quantize(x, px.scale[0], px.zero_point[0], 0, 255)
    wk = w if trans_b else w.T                                             # [N_out, K]
    sw = np.asarray(pw.scale, np.float32)[:, None]
    qw = np.clip(np.rint(wk / sw), -128, 127).astype(np.int64)
    unit = np.float64(px.scale[0]) * np.asarray(pw.scale, np.float64)
    prepared = prepare(path)
    for saturate, cpu in ((True, "x86-avx2"), (False, "exact")):
        acc = _pair_sums(qx, qw, saturate) - px.zero_point[0] * qw.sum(axis=1)
        got = simulate(prepared, table, {"x": x}, cpu=cpu)
        np.testing.assert_array_equal(got.tensors["y"].values, (acc * unit).astype(np.float32))
        assert bool(got.saturations) == saturate


@pytest.mark.parametrize("cin,m,kernel,pads,strides,group", CONV_CASES[:4])
def test_the_default_target_leaves_no_pair_to_saturate(tmp_path, cin, m, kernel, pads, strides, group):
    """With ``--cpu any`` (the default) the AVX2 arithmetic is the exact one, code for code."""
    rng = np.random.default_rng(7)
    spatial = (6,) * len(kernel)
    w = rng.normal(0, 1, (m, cin // group) + kernel).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=list(pads), strides=list(strides), group=group)
    model = make_model([node], [float_input("x", ["N", cin, *spatial])], [_output(m, len(kernel))], [("w", w)])
    path, table = _table(tmp_path, model, [_hot_inputs(rng, (2, cin, *spatial), -0.5, 2.0) for _ in range(4)],
                         cpu="any")
    assert table.tensors["w"].method == "max-pairs"
    x = _hot_inputs(rng, (3, cin, *spatial), -0.5, 2.0)
    prepared = prepare(path)
    avx2 = simulate(prepared, table, {"x": x}, cpu="x86-avx2")
    exact = simulate(prepared, table, {"x": x}, cpu="exact")
    assert not avx2.saturations
    np.testing.assert_array_equal(avx2.tensors["y"].values, exact.tensors["y"].values)


def test_depthwise_conv_never_saturates(tmp_path):
    rng = np.random.default_rng(3)
    w = np.full((8, 1, 3, 3), 1.0, np.float32)  # every pair would be 127 + 127 if MLAS paired them
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], group=8)
    model = make_model([node], [float_input("x", ["N", 8, 5, 5])], [_output(8, 2)], [("w", w)])
    path, table = _table(tmp_path, model, [_hot_inputs(rng, (2, 8, 5, 5), 0.0, 2.0)], cpu="any")
    assert table.tensors["w"].method == "max"  # nothing to raise
    got = simulate(prepare(path), table, {"x": _hot_inputs(rng, (2, 8, 5, 5), 0.0, 2.0)}, cpu="x86-avx2")
    assert not got.saturations
