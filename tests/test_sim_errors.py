"""Mismatched tables, operators without an integer kernel, int32 overflow, exact accumulation."""

import dataclasses

import numpy as np
import pytest
from onnx import helper
from test_sim_support import act, agreement, codes_of, group, model, prepared, reference, table, weight_table

from ptqcli.errors import OptionError, TableError
from ptqcli.quantize.qparams import QuantParams, quantize
from ptqcli.sim import build, run, simulate
from ptqcli.sim.fixed import saturate
from ptqcli.sim.program import Fallback

f32 = np.float32


def _relu_model(tmp_path):
    m = model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", ["N", 4])], [("y", None)])
    p = prepared(tmp_path, m)
    q = act(0.05, 0, "int8")
    return p, table(p, {"x": q, "y": q}, {"relu": group("lut", ["relu"], ["x"], ["y"])})


def test_table_of_another_model_is_refused(tmp_path):
    p, t = _relu_model(tmp_path)
    other = dataclasses.replace(t, fingerprint="sha256:" + "0" * 64)
    with pytest.raises(TableError, match="made for another model"):
        build(p, other)


def test_table_missing_a_node_is_refused(tmp_path):
    p, t = _relu_model(tmp_path)
    with pytest.raises(TableError, match="node 'relu' of the model is not in the table"):
        build(p, dataclasses.replace(t, nodes={}))


def test_group_tensor_without_parameters_is_refused(tmp_path):
    p, t = _relu_model(tmp_path)
    with pytest.raises(TableError, match="tensor 'y', which has no parameters"):
        build(p, dataclasses.replace(t, tensors={"x": t.tensors["x"]}))


def test_asking_for_a_group_intermediate_names_the_group(tmp_path, rng):
    w = rng.normal(0, 1, (3, 2, 1, 1)).astype(f32)
    m = model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"], name="relu")],
              [("x", ["N", 2, 3, 3])], [("y", None)], [("w", w)])
    p = prepared(tmp_path, m)
    xq = act(0.02, 128)
    t = table(p, {"x": xq, "y": act(0.02), **weight_table(p, "w", 0, xq)},
              {"conv": group("compute", ["conv", "relu"], ["x"], ["y"], "w")}, roles={"w": "weight"})
    with pytest.raises(OptionError, match="inside group 'conv'"):
        build(p, t, keep=["c"])


def test_operator_without_integer_kernel_runs_in_float_and_is_reported(tmp_path, rng):
    # A cubic Resize in a requantize group, and a float node (Sin) the table keeps in float.
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], name="resize", mode="cubic"),
             helper.make_node("Sin", ["r"], ["y"], name="sin")]
    m = model(nodes, [("x", ["N", 1, 4, 4])], [("y", None)], [("scales", np.array([1, 1, 2, 2], f32))])
    p = prepared(tmp_path, m)
    t = table(p, {"x": act(4 / 255, 128), "r": act(5 / 255, 128)},
              {"resize": group("requantize", ["resize"], ["x"], ["r"])})
    x = rng.normal(0, 1, (2, 1, 4, 4)).astype(f32)
    got = simulate(p, t, {"x": x}, tensors=["r"])
    assert [f.node for f in got.fallbacks] == ["resize", "sin"]
    assert "no integer kernel" in got.fallbacks[0].reason and "cubic" in got.fallbacks[0].reason
    assert got.fallbacks[1] == Fallback("sin", "Sin", "float in the table")
    ref = reference(p, t, {"x": x})
    equal, worst = agreement(got.tensors["r"].codes, codes_of(t, "r", ref["r"]))
    assert worst <= 1 and equal > 0.99
    np.testing.assert_allclose(got.tensors["y"].values, ref["y"], atol=1e-5)


def test_int32_overflow_is_wrapped_and_reported(tmp_path):
    w = np.ones((4, 1), f32)
    b = np.array([1e9], f32)  # far beyond int32 at s_x * s_w: the bias code saturates at 2**31 - 1
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"), helper.make_node("Add", ["mm", "b"], ["y"], name="add")]
    m = model(nodes, [("x", ["N", 3, 4])], [("y", None)], [("w", w), ("b", b)])
    p = prepared(tmp_path, m)
    xq = act(1 / 255, 0)
    t = table(p, {"x": xq, "y": act(1.0, 0, "int8"), **weight_table(p, "w", 1, xq, "b", 1)},
              {"mm": group("compute", ["mm", "add"], ["x"], ["y"], "w", "b")}, roles={"w": "weight", "b": "bias"})
    x = np.zeros((1, 3, 4), f32)
    x[0, 0] = 1.0  # acc = 4 * 255 * 127 on top of the saturated bias: wraps negative
    got = simulate(p, t, {"x": x})
    assert len(got.overflows) == 1 and got.overflows[0].node == "mm" and got.overflows[0].count == 1
    assert got.overflows[0].peak == 2 ** 31 - 1 + 4 * 255 * 127
    codes = got.tensors["y"].codes.reshape(-1)
    assert codes[0] == -128 and codes[1] == 127  # wrapped to a large negative value; the others saturate high


def test_accumulation_is_exact_beyond_float32(tmp_path, rng):
    # K = 64 * 9 = 576 taps of weight code +-127 and inputs up to 255: partial sums reach 1.9e7 > 2**24,
    # so float32 would round; the kernel must pick float64 and match an int64 computation exactly.
    cin, cout = 64, 3
    w = np.where(rng.random((cout, cin, 3, 3)) < 0.5, -1.0, 1.0).astype(f32)
    w[0] = 1.0  # one output channel sums every tap positively
    m = model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
              [("x", ["N", cin, 4, 4])], [("y", None)], [("w", w)])
    p = prepared(tmp_path, m)
    xq = act(1 / 255, 0)
    yq = QuantParams("int16", (float(f32(1 / 255 / 127 * 300)),), (0,))
    t = table(p, {"x": xq, "y": yq, **weight_table(p, "w", 0, xq)},
              {"conv": group("compute", ["conv"], ["x"], ["y"], "w")}, roles={"w": "weight"})
    x = rng.uniform(0, 1, (2, cin, 4, 4)).astype(f32)
    x[0] = 1.0  # codes 255 everywhere in the first sample
    program = build(p, t)
    kernel = program.steps[0].kernel
    assert kernel.dtype is np.float64
    got = run(program, {"x": x}).tensors["y"].codes
    qx = quantize(x, xq).astype(np.int64)
    qw = quantize(w, t.tensors["w"].params).astype(np.int64)
    padded = np.pad(qx, ((0, 0), (0, 0), (1, 1), (1, 1)))
    acc = np.zeros((2, cout, 4, 4), np.int64)
    for i in range(3):
        for j in range(3):
            acc += np.einsum("nchw,oc->nohw", padded[:, :, i:i + 4, j:j + 4], qw[:, :, i, j])
    assert np.abs(acc).max() > 2 ** 24
    want = saturate(kernel.epilogue.mult.apply(acc), "int16")
    np.testing.assert_array_equal(got, want)


def test_float_feeds_are_aligned_copies():
    from ptqcli.sim.floatops import aligned

    x = np.arange(20, dtype=f32)[1:13].reshape(3, 4)  # an offset view
    y = aligned(x)
    assert y.ctypes.data % 64 == 0 and y.flags.c_contiguous and np.array_equal(x, y)
    assert aligned(y) is y


@pytest.mark.parametrize("axes, rowwise", [([1], True), ([0], False)])
def test_float_reductions_run_per_sample_only_when_rows_are_independent(tmp_path, rng, axes, rowwise):
    m = model([helper.make_node("ReduceSum", ["x", "axes"], ["s"], name="sum", keepdims=1),
               helper.make_node("Relu", ["s"], ["y"], name="relu")],
              [("x", ["N", 214])], [("y", None)], [("axes", np.array(axes, np.int64))], opset_version=13)
    p = prepared(tmp_path, m)
    t = table(p, {"s": act(0.5, 128), "y": act(0.5, 0)}, {"relu": group("lut", ["relu"], ["s"], ["y"])})
    program = build(p, t)
    assert program.steps[0].kernel.rowwise is rowwise
    x = np.exp(rng.normal(0, 3, (6, 214))).astype(f32)
    whole = run(program, {"x": x}).tensors["y"].codes
    if rowwise:
        singles = np.concatenate([run(program, {"x": x[i:i + 1]}).tensors["y"].codes for i in range(6)])
        np.testing.assert_array_equal(whole, singles)
    assert got_fallback(program) == [("sum", "float in the table")]


def got_fallback(program):
    return [(f.node, f.reason) for f in program.fallbacks]
