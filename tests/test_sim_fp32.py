"""The ``fp32`` requantization arithmetic: float32 factors evaluated as ONNX Runtime's CPU
kernels evaluate them, against ONNX Runtime itself, and where it parts from ``fixed``."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper
from test_sim_support import act, group, model, prepared, table

from ptqcli import api
from ptqcli.export.qdq import export
from ptqcli.graph import prepare
from ptqcli.quantize import scale_table
from ptqcli.quantize.qparams import QuantParams
from ptqcli.sim import simulate
from ptqcli.sim.compare import compare
from ptqcli.sim.fixed import Float32Scale, f32, multiplier

# Conv and Mul: scales whose float32 product loses its last bit: s_x * s_w = 1 + 2**-12 + 2**-13 + 2**-25
# exactly, float32 keeps 1 + 2**-12 + 2**-13, so with s_y = 8 * that the float32 factor is
# exactly 1/8 while the real one is 1/8 * (1 + ~2**-25).  An accumulator of 4 (mod 8) is then an
# exact tie in float32 (rounded to even) and a hair above it in fixed point (rounded up).
S_X = 1 + 2.0 ** -12
S_W = 1 + 2.0 ** -13
S_Y = 8 * float(np.float32(S_X * S_W))


def test_f32_evaluates_left_to_right_in_float32():
    assert f32(S_X, "*", S_W) == np.float32(1 + 2.0 ** -12 + 2.0 ** -13)
    assert f32(S_X, "*", S_W, "/", S_Y) == np.float32(0.125)
    assert S_X * S_W / S_Y > 0.125  # float64 keeps the bit float32 dropped


def test_a_tie_of_float32_is_not_a_tie_in_fixed_point():
    acc = np.array([4, 12, 20, -4, 3, 5])
    fixed = multiplier(S_X * S_W / S_Y, 1 << 20).apply(acc)
    fp32 = Float32Scale(f32(S_X, "*", S_W, "/", S_Y)).apply(acc)
    # 4/8, 12/8, 20/8, -4/8 are ties in float32 (half to even) and a hair beyond them in fixed point
    np.testing.assert_array_equal(fixed, [1, 2, 3, -1, 0, 1])
    np.testing.assert_array_equal(fp32, [0, 2, 2, 0, 0, 1])


# Add and GlobalAveragePool divide one float32 scale by another: with Y0 = float32(1.251) and
# S_A the float32 nearest to 0.75 * Y0, float32(S_A / Y0) is exactly 3/4 but S_A / Y0 is not.
Y0 = float(np.float32(1.251))
S_A = float(np.float32(0.75 * Y0))
CODES = np.arange(256)


def _tie_case(tmp_path, op):
    """One node whose float32 factor (``factor``) has code multiples landing on k + 0.5 while
    the real factor (``exact``) does not: ONNX Runtime rounds those ties half to even, fixed
    point rounds the real product.  Returns the simulator's codes (fixed, fp32), ORT's codes,
    and the integers the factor scales (the accumulator, product or sum per output code)."""
    grid = CODES.reshape(1, 1, 16, 16).astype(np.float32)
    inits = []
    if op == "Conv":  # 1x1 weight code 1: accumulator = input code
        inits = [("w", np.full((1, 1, 1, 1), S_W, np.float32))]
        node = helper.make_node("Conv", ["x", "w"], ["y"], name="n")
        tensors = {"x": act(S_X), "y": act(S_Y), "w": QuantParams("int8", (float(np.float32(S_W)),), (0,), 0)}
        groups = {"n": group("compute", ["n"], ["x"], ["y"], "w")}
        feeds = {"x": grid * np.float32(S_X)}
        factor, exact = f32(S_X, "*", S_W, "/", S_Y), S_X * S_W / S_Y
    elif op == "Mul":  # (code) x (code 1): product = input code
        node = helper.make_node("Mul", ["x", "b"], ["y"], name="n")
        tensors = {"x": act(S_X), "b": act(S_W), "y": act(S_Y)}
        groups = {"n": group("binary", ["n"], ["x", "b"], ["y"])}
        feeds = {"x": grid * np.float32(S_X), "b": np.full(grid.shape, S_W, np.float32)}
        factor, exact = f32(S_X, "*", S_W, "/", S_Y), S_X * S_W / S_Y
    elif op == "Add":  # code * 3/4 + 0
        node = helper.make_node("Add", ["x", "b"], ["y"], name="n")
        tensors = {"x": act(S_A), "b": act(Y0), "y": act(Y0)}
        groups = {"n": group("binary", ["n"], ["x", "b"], ["y"])}
        feeds = {"x": grid * np.float32(S_A), "b": np.zeros(grid.shape, np.float32)}
        factor, exact = f32(S_A, "/", Y0), S_A / Y0
    else:  # windows [code, 0, 0, 0]: sum = code, factor s_x / (s_y * 4)
        node = helper.make_node("GlobalAveragePool", ["x"], ["y"], name="n")
        tensors = {"x": act(S_A), "y": act(Y0 / 4)}
        groups = {"n": group("requantize", ["n"], ["x"], ["y"])}
        x = np.zeros((256, 1, 2, 2), np.float32)
        x[:, 0, 0, 0] = CODES * np.float32(S_A)
        feeds = {"x": x}
        factor, exact = f32(S_A, "/", f32(Y0 / 4, "*", 4)), S_A / Y0
    m = model([node], [(k, list(v.shape)) for k, v in feeds.items()], [("y", None)], inits)
    p = prepared(tmp_path, m)
    t = table(p, tensors, groups, roles={"w": "weight"} if op == "Conv" else {})
    session = ort.InferenceSession(export(p, t).SerializeToString(), providers=["CPUExecutionProvider"])
    s_y = np.float32(tensors["y"].scale[0])
    ort_codes = np.rint(session.run(None, feeds)[0] / s_y).astype(np.int64).reshape(-1)
    sim = {r: simulate(p, t, feeds, tensors=["y"], requant=r).tensors["y"].codes.astype(np.int64).reshape(-1)
           for r in ("fixed", "fp32")}
    return sim, ort_codes, np.float64(factor), exact


@pytest.mark.parametrize("op", ["Conv", "Mul", "Add", "GlobalAveragePool"])
def test_fp32_matches_onnx_runtime_at_ties_where_fixed_does_not(tmp_path, op):
    sim, ort_codes, factor, exact = _tie_case(tmp_path, op)
    assert factor != exact and np.float32(exact) == factor  # the float32 factor dropped a bit
    np.testing.assert_array_equal(sim["fp32"], ort_codes)
    # Fixed point rounds code * exact (never a tie here); ORT rounds code * factor half to even.
    parts = np.rint(CODES * factor) != np.floor(CODES * exact + 0.5)
    assert parts.sum() >= 16
    np.testing.assert_array_equal(sim["fixed"] != ort_codes, parts)
    assert np.abs(sim["fixed"] - ort_codes).max() == 1


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory):
    """Conv-Relu, depthwise Conv, residual Add, Mul of two activations, GlobalAveragePool, Gemm:
    the fused ONNX Runtime kernels QLinearConv, QLinearAdd, QLinearMul, QLinearGlobalAveragePool
    and QGemm, calibrated by ptq on random data."""
    rng = np.random.default_rng(3)
    tmp = tmp_path_factory.mktemp("fp32")
    inits = [("w1", rng.normal(0, 0.4, (8, 3, 3, 3))), ("b1", rng.normal(0, 0.1, 8)),
             ("w2", rng.normal(0, 0.4, (8, 1, 3, 3))), ("b2", rng.normal(0, 0.1, 8)),
             ("w3", rng.normal(0, 0.3, (8, 8, 1, 1))), ("wg", rng.normal(0, 0.3, (5, 8))), ("bg", rng.normal(0, 0.1, 5))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "w3"], ["g"], name="gate"),
        helper.make_node("Mul", ["s", "g"], ["m"], name="mul"),
        helper.make_node("GlobalAveragePool", ["m"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    m = model(nodes, [("x", ["N", 3, 12, 12])], [("y", None)],
              [(k, np.asarray(v, dtype=np.float32)) for k, v in inits])
    path = tmp / "cnn.onnx"
    import onnx

    onnx.save(m, str(path))
    for sub in ("calib", "eval"):
        (tmp / sub).mkdir()
        for i in range(24):
            np.save(tmp / sub / f"{i:03d}.npy", rng.normal(0, 1, (1, 3, 12, 12)).astype(np.float32))
    api.calibrate(path, data=tmp / "calib", output=tmp / "t.json")
    return prepare(path), scale_table.load(tmp / "t.json"), sorted((tmp / "eval").glob("*.npy"))


def test_fp32_is_bit_exact_with_onnx_runtime_fused_kernels(small_cnn):
    p, t, files = small_cnn
    result = compare(p, t, files, batch_size=8, per_layer=True, requant="fp32")
    checked = [layer for layer in result.layers if layer.sim_vs_ort is not None and layer.sim_vs_ort.count]
    local = [layer for layer in checked if layer.local is not None]
    assert len(checked) >= 6 and len(local) >= 5
    for layer in checked:  # end to end: every quantized tensor, code for code
        assert layer.sim_vs_ort.equal == layer.sim_vs_ort.count, layer.name
    for layer in local:    # and each kernel on ORT's own input codes
        assert layer.local.equal == layer.local.count, layer.name


def test_fixed_stays_within_one_code_of_onnx_runtime(small_cnn):
    p, t, files = small_cnn
    result = compare(p, t, files, batch_size=8, requant="fixed")
    assert result.output_codes_within1 >= 0.99
    assert all(c.sim_vs_ort.max_diff <= 1 for c in result.output_codes)


def test_an_unknown_arithmetic_is_refused(small_cnn):
    from ptqcli.errors import OptionError

    p, t, _ = small_cnn
    with pytest.raises(OptionError, match="^requant 'float16': expected one of fixed, fp32"):
        simulate(p, t, {"x": np.zeros((1, 3, 12, 12), np.float32)}, requant="float16")


def test_fp32_linear_resize_runs_as_onnx_runtime_runs_it(tmp_path):
    """ONNX Runtime has no integer linear Resize: between DequantizeLinear and QuantizeLinear it
    interpolates in float32, and the fp32 simulator gives its codes exactly."""
    rng = np.random.default_rng(5)
    m = model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="rs", mode="linear")],
              [("x", ["N", 2, 7, 9])], [("y", None)], [("s", np.array([1, 1, 2.5, 1.5], np.float32))])
    p = prepared(tmp_path, m)
    t = table(p, {"x": act(0.05, 128), "y": act(0.047, 120)}, {"rs": group("requantize", ["rs"], ["x"], ["y"])})
    x = rng.normal(0, 2, (4, 2, 7, 9)).astype(np.float32)
    session = ort.InferenceSession(export(p, t).SerializeToString(), providers=["CPUExecutionProvider"])
    ort_codes = np.rint(session.run(None, {"x": x})[0] / np.float32(0.047)).astype(np.int64) + 120
    got = simulate(p, t, {"x": x}, tensors=["y"], requant="fp32").tensors["y"].codes.astype(np.int64)
    np.testing.assert_array_equal(got, ort_codes)
