"""Each integer kernel against a float (fake-quant) reference on random and edge inputs.

The reference dequantizes every quantized input, runs the float operator in float32 and
quantizes the result; the simulator must give the same codes except for rare ties and last-bit
float differences of the reference, and never differ by more than one code.  Two independent
implementations run the operator: ONNX Runtime, and ONNX's reference evaluator
(``onnx.reference``, NumPy code written from the specification); it lacks grouped
ConvTranspose, which ONNX Runtime alone checks (``ORT_ONLY``).
"""

import numpy as np
import pytest
from onnx import helper
from test_sim_support import act, agreement, codes_of, group, model, prepared, reference, run_float, table, weight_table

from ptqcli.quantize.qparams import QuantParams, weight_params
from ptqcli.sim import simulate

f32 = np.float32


def fit(values: np.ndarray, dtype: str = "uint8", squeeze: float = 0.8, relu: bool = False) -> QuantParams:
    """Parameters covering ``squeeze`` of the observed range, so both ends saturate."""
    lo, hi = float(values.min()) * squeeze, float(values.max()) * squeeze
    if relu:
        return act(hi / 255, 0, "uint8")
    if dtype == "uint8":
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / 255
        return act(scale, int(np.clip(round(-lo / scale), 0, 255)), "uint8")
    qmax = 32767 if dtype == "int16" else 127
    return act(max(abs(lo), abs(hi)) / qmax, 0, dtype)


def float_run(m, feeds):
    return run_float(m, feeds)


BOTH = ("ort", "onnx")
ORT_ONLY = ("ort",)


def check(tmp_path, m, tensors, groups, feeds, outputs, *, moves=(), roles=(), min_equal=0.99, engines=BOTH):
    p = prepared(tmp_path, m)
    t = table(p, tensors, groups, moves, roles)
    got = simulate(p, t, feeds, tensors=outputs)
    for engine in engines:
        ref = reference(p, t, feeds, engine)
        for name in outputs:
            equal, worst = agreement(got.tensors[name].codes, codes_of(t, name, ref[name]))
            assert worst <= 1 and equal >= min_equal, (engine, name, equal, worst)
    return got, reference(p, t, feeds), t


X_PARAMS = {  # input parameters: zero point at both extremes, mid, symmetric int8
    "zp0": lambda: act(2.0 / 255, 0, "uint8"),
    "zp255": lambda: act(2.0 / 255, 255, "uint8"),
    "mid": lambda: act(4.0 / 255, 131, "uint8"),
    "int8": lambda: act(2.5 / 127, 0, "int8"),
}


@pytest.mark.parametrize("groups, dil, pads, strides, k, cin, cout, relu, xp", [
    (1, 1, [1, 1, 1, 1], [1, 1], 3, 3, 5, True, "mid"),
    (1, 2, [2, 0, 1, 3], [2, 1], 3, 4, 6, False, "zp0"),
    (2, 1, [0, 0, 0, 0], [1, 2], 2, 4, 6, False, "zp255"),
    (6, 1, [1, 1, 1, 1], [2, 2], 3, 6, 6, True, "int8"),     # depthwise
    (3, 1, [1, 1, 1, 1], [1, 1], 3, 3, 6, False, "mid"),     # depthwise, two outputs per channel
    (1, 1, [0, 0, 0, 0], [1, 1], 1, 8, 4, False, "int8"),    # pointwise
    (1, 2, [2, 0, 1, 3], [1, 1], 3, 4, 6, False, "zp0"),     # stride 1: flattened rows, dilated
    (4, 1, [2, 1, 0, 2], [1, 1], 5, 4, 4, True, "mid"),      # depthwise 5x5, stride 1
])
def test_conv(tmp_path, rng, groups, dil, pads, strides, k, cin, cout, relu, xp):
    w = rng.normal(0, 0.3, (cout, cin // groups, k, k)).astype(f32)
    b = rng.normal(0, 0.3, cout).astype(f32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", group=groups, dilations=[dil, dil],
                              pads=pads, strides=strides)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="relu"))
    out = "y" if relu else "c"
    m = model(nodes, [("x", ["N", cin, 9, 7])], [(out, None)], [("w", w), ("b", b)])
    x = rng.normal(0, 1.2, (3, cin, 9, 7)).astype(f32)
    x[0, 0, 0, :3] = [0.0, 50.0, -50.0]  # exact zero, saturation at both ends of the input
    xq = X_PARAMS[xp]()
    yq = fit(float_run(m, {"x": x})[0], relu=relu)
    p = prepared(tmp_path, m)
    tensors = {"x": xq, out: yq, **weight_table(p, "w", 0, xq, "b", cout)}
    groups_ = {"conv": group("compute", [n.name for n in nodes], ["x"], [out], "w", "b")}
    check(tmp_path, m, tensors, groups_, {"x": x}, [out], roles={"w": "weight", "b": "bias"})


def test_depthwise_blocks_give_the_whole_tensor_result(tmp_path, rng, monkeypatch):
    """The depthwise accumulation in blocks of channels equals one pass over the tensor."""
    from ptqcli.sim import conv

    c = 6
    w = rng.normal(0, 0.3, (c, 1, 3, 3)).astype(f32)
    m = model([helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=c, pads=[1, 1, 1, 1])],
              [("x", ["N", c, 20, 17])], [("y", None)], [("w", w)])
    x = rng.normal(0, 1, (3, c, 20, 17)).astype(f32)
    p = prepared(tmp_path, m)
    xq = X_PARAMS["mid"]()
    t = table(p, {"x": xq, "y": fit(float_run(m, {"x": x})[0]), **weight_table(p, "w", 0, xq)},
              {"dw": group("compute", ["dw"], ["x"], ["y"], "w")}, roles={"w": "weight"})
    whole = simulate(p, t, {"x": x}).tensors["y"].codes
    monkeypatch.setattr(conv, "DEPTHWISE_BLOCK", 100)  # blocks of 1 channel, one sample each
    np.testing.assert_array_equal(simulate(p, t, {"x": x}).tensors["y"].codes, whole)


@pytest.mark.parametrize("groups, strides, pads, outpad", [(1, [2, 2], [0, 0, 0, 0], [0, 0]),
                                                          (2, [2, 1], [1, 0, 0, 1], [1, 0]),
                                                          (1, [1, 1], [1, 1, 1, 1], [0, 0])])
def test_conv_transpose(tmp_path, rng, groups, strides, pads, outpad):
    cin, cout_g = 4, 3
    w = rng.normal(0, 0.3, (cin, cout_g, 3, 3)).astype(f32)
    b = rng.normal(0, 0.3, cout_g * groups).astype(f32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="convt", group=groups, strides=strides,
                            pads=pads, output_padding=outpad)
    m = model([node], [("x", ["N", cin, 5, 4])], [("y", None)], [("w", w), ("b", b)])
    x = rng.normal(0, 1, (2, cin, 5, 4)).astype(f32)
    xq = X_PARAMS["mid"]()
    p = prepared(tmp_path, m)
    tensors = {"x": xq, "y": fit(float_run(m, {"x": x})[0]),
               **weight_table(p, "w", 1 if groups == 1 else None, xq, "b", cout_g * groups)}
    check(tmp_path, m, tensors, {"convt": group("compute", ["convt"], ["x"], ["y"], "w", "b")}, {"x": x}, ["y"],
          roles={"w": "weight", "b": "bias"}, engines=ORT_ONLY if groups > 1 else BOTH)


def test_gemm(tmp_path, rng):
    w = rng.normal(0, 0.4, (4, 7)).astype(f32)
    b = rng.normal(0, 0.2, 4).astype(f32)
    m = model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="gemm", transB=1)], [("x", ["N", 7])],
              [("y", None)], [("w", w), ("b", b)])
    x = rng.normal(0, 1, (11, 7)).astype(f32)
    xq = X_PARAMS["zp255"]()
    p = prepared(tmp_path, m)
    tensors = {"x": xq, "y": fit(float_run(m, {"x": x})[0], "int8"), **weight_table(p, "w", 0, xq, "b", 4)}
    check(tmp_path, m, tensors, {"gemm": group("compute", ["gemm"], ["x"], ["y"], "w", "b")}, {"x": x}, ["y"],
          roles={"w": "weight", "b": "bias"})


def test_matmul_with_bias_add(tmp_path, rng):
    w = rng.normal(0, 0.4, (6, 5)).astype(f32)
    b = rng.normal(0, 0.2, 5).astype(f32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["b", "mm"], ["y"], name="bias")]
    m = model(nodes, [("x", ["N", 3, 6])], [("y", None)], [("w", w), ("b", b)])
    x = rng.normal(0, 1, (2, 3, 6)).astype(f32)
    xq = X_PARAMS["int8"]()
    p = prepared(tmp_path, m)
    tensors = {"x": xq, "y": fit(float_run(m, {"x": x})[0]), **weight_table(p, "w", 1, xq, "b", 5)}
    check(tmp_path, m, tensors, {"mm": group("compute", ["mm", "bias"], ["x"], ["y"], "w", "b")}, {"x": x}, ["y"],
          roles={"w": "weight", "b": "bias"})


def test_matmul_of_two_activations(tmp_path, rng):
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")
    m = model([node], [("a", ["N", 3, 6]), ("b", ["N", 6, 4])], [("y", None)])
    a = rng.normal(0, 1, (2, 3, 6)).astype(f32)
    b = rng.normal(0.5, 1, (2, 6, 4)).astype(f32)
    tensors = {"a": act(3 / 255, 128), "b": act(4 / 255, 60), "y": fit(float_run(m, {"a": a, "b": b})[0])}
    check(tmp_path, m, tensors, {"mm": group("compute", ["mm"], ["a", "b"], ["y"])}, {"a": a, "b": b}, ["y"])


def test_matmul_head_with_float_output(tmp_path, rng):
    w = rng.normal(0, 0.4, (6, 3)).astype(f32)
    m = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [("x", ["N", 6])], [("y", None)], [("w", w)])
    x = rng.normal(0, 1, (4, 6)).astype(f32)
    p = prepared(tmp_path, m)
    xq = X_PARAMS["mid"]()
    t = table(p, {"x": xq, **weight_table(p, "w", 1, xq)}, {"mm": group("compute", ["mm"], ["x"], ["y"], "w")},
              roles={"w": "weight"})
    got = simulate(p, t, {"x": x})
    np.testing.assert_allclose(got.tensors["y"].values, reference(p, t, {"x": x})["y"], rtol=1e-5, atol=1e-6)
    assert got.tensors["y"].codes is None


@pytest.mark.parametrize("op, relu", [("Add", True), ("Add", False), ("Mul", False), ("Mul", True)])
def test_binary(tmp_path, rng, op, relu):
    nodes = [helper.make_node(op, ["a", "b"], ["s"], name="op")]
    if relu:
        nodes.append(helper.make_node("Relu", ["s"], ["y"], name="relu"))
    out = "y" if relu else "s"
    m = model(nodes, [("a", ["N", 3, 4]), ("b", [3, 1])], [(out, None)])
    a = rng.normal(0, 2, (5, 3, 4)).astype(f32)
    b = rng.normal(0.3, 1, (3, 1)).astype(f32)
    tensors = {"a": act(3 / 255, 0), "b": act(2 / 127, 0, "int8"),
               out: fit(float_run(m, {"a": a, "b": b})[0], relu=relu)}
    check(tmp_path, m, tensors, {"op": group("binary", [n.name for n in nodes], ["a", "b"], [out])},
          {"a": a, "b": b}, [out])


def test_add_with_a_constant_operand(tmp_path, rng):
    c = rng.normal(0, 1, (1, 4)).astype(f32)
    m = model([helper.make_node("Add", ["x", "c"], ["y"], name="add")], [("x", ["N", 4])], [("y", None)], [("c", c)])
    x = rng.normal(0, 1, (9, 4)).astype(f32)
    tensors = {"x": act(4 / 255, 120), "c": weight_params(c, None), "y": fit(float_run(m, {"x": x})[0])}
    check(tmp_path, m, tensors, {"add": group("binary", ["add"], ["x"], ["y"], consts=["c"])}, {"x": x}, ["y"],
          roles={"c": "constant"})


def _lut_nodes(name):
    half, one, root2 = ("half", f32(0.5)), ("one", f32(1.0)), ("root2", f32(np.sqrt(2)))
    lo, hi = ("lo", f32(-1.0)), ("hi", f32(2.0))
    single = {
        "Relu": ([helper.make_node("Relu", ["x"], ["y"], name="n0")], []),
        "LeakyRelu": ([helper.make_node("LeakyRelu", ["x"], ["y"], name="n0", alpha=0.1)], []),
        "HardSigmoid": ([helper.make_node("HardSigmoid", ["x"], ["y"], name="n0")], []),
        "HardSwish": ([helper.make_node("HardSwish", ["x"], ["y"], name="n0")], []),
        "Sigmoid": ([helper.make_node("Sigmoid", ["x"], ["y"], name="n0")], []),
        "Tanh": ([helper.make_node("Tanh", ["x"], ["y"], name="n0")], []),
        "Clip": ([helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="n0")], [lo, hi]),
        "SiLU": ([helper.make_node("Sigmoid", ["x"], ["s"], name="n0"),
                  helper.make_node("Mul", ["x", "s"], ["y"], name="n1")], []),
        "GELU": ([helper.make_node("Div", ["x", "root2"], ["d"], name="n0"),
                  helper.make_node("Erf", ["d"], ["e"], name="n1"),
                  helper.make_node("Add", ["e", "one"], ["a"], name="n2"),
                  helper.make_node("Mul", ["x", "a"], ["m"], name="n3"),
                  helper.make_node("Mul", ["m", "half"], ["y"], name="n4")], [half, one, root2]),
    }
    return single[name]


@pytest.mark.parametrize("fn", ["Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Clip",
                                "SiLU", "GELU"])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16"])
def test_lookup_tables(tmp_path, rng, fn, dtype):
    nodes, inits = _lut_nodes(fn)
    m = model(nodes, [("x", ["N", 50])], [("y", None)], inits)
    x = np.concatenate([rng.normal(0, 3, (4, 50)), np.linspace(-9, 9, 50)[None]]).astype(f32)
    xq = fit(x, dtype, squeeze=0.7) if dtype != "uint8" else act(8 / 255, 140)
    tensors = {"x": xq, "y": fit(float_run(m, {"x": x})[0], dtype if dtype != "uint8" else "int8", squeeze=0.9)}
    if dtype == "int16":
        tensors["y"] = fit(float_run(m, {"x": x})[0], "int16", squeeze=0.9)
    names = [n.name for n in prepared(tmp_path, m).index.nodes]  # prepare may rewrite HardSwish
    got, _, _ = check(tmp_path, m, tensors, {names[0]: group("lut", names, ["x"], ["y"],
                                                             precision="int16" if dtype == "int16" else "int8")},
                      {"x": x}, ["y"], min_equal=0.99)
    assert got.fallbacks == ()


@pytest.mark.parametrize("attrs", [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                                   dict(kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1),
                                   dict(kernel_shape=[2, 2], dilations=[2, 1], pads=[0, 1, 1, 0])])
def test_max_pool_moves_codes(tmp_path, rng, attrs):
    m = model([helper.make_node("MaxPool", ["x"], ["y"], name="pool", **attrs)], [("x", ["N", 3, 9, 8])], [("y", None)])
    x = rng.normal(0, 1, (2, 3, 9, 8)).astype(f32)
    q = act(3 / 255, 255)  # every value <= 0 except saturation at the top code
    got, _, _ = check(tmp_path, m, {"x": q, "y": q}, {}, {"x": x}, ["y"], moves=("pool",), min_equal=1.0)


@pytest.mark.parametrize("attrs", [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
                                   dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0),
                                   dict(kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1)])
def test_average_pool(tmp_path, rng, attrs):
    m = model([helper.make_node("AveragePool", ["x"], ["y"], name="pool", **attrs)], [("x", ["N", 3, 9, 8])],
              [("y", None)])
    x = rng.normal(0, 1, (2, 3, 9, 8)).astype(f32)
    tensors = {"x": act(4 / 255, 100), "y": act(2.5 / 255, 140)}
    check(tmp_path, m, tensors, {"pool": group("requantize", ["pool"], ["x"], ["y"])}, {"x": x}, ["y"])


@pytest.mark.parametrize("op, attrs", [("GlobalAveragePool", {}), ("ReduceMean", dict(axes=[1], keepdims=0)),
                                       ("ReduceMean", dict(axes=[2, 3], keepdims=1))])
def test_means(tmp_path, rng, op, attrs):
    m = model([helper.make_node(op, ["x"], ["y"], name="mean", **attrs)], [("x", ["N", 5, 6, 7])], [("y", None)],
              opset_version=13)
    x = rng.normal(0.5, 1, (2, 5, 6, 7)).astype(f32)
    tensors = {"x": act(5 / 255, 90), "y": act(1 / 255, 70)}
    check(tmp_path, m, tensors, {"mean": group("requantize", ["mean"], ["x"], ["y"])}, {"x": x}, ["y"])


def test_data_movement_chain(tmp_path, rng):
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t"], name="transpose", perm=[0, 2, 1, 3]),
        helper.make_node("Slice", ["t", "starts", "ends", "axes", "steps"], ["s"], name="slice"),
        helper.make_node("Pad", ["s", "pads"], ["p"], name="pad", mode="reflect"),
        helper.make_node("Split", ["p", "split"], ["a", "b"], name="split", axis=1),
        helper.make_node("Concat", ["b", "a", "other"], ["c"], name="concat", axis=1),
        helper.make_node("Unsqueeze", ["c", "ax0"], ["u"], name="unsqueeze"),
        helper.make_node("Squeeze", ["u", "ax0"], ["q"], name="squeeze"),
        helper.make_node("Gather", ["q", "idx"], ["g"], name="gather", axis=3),
        helper.make_node("Pad", ["g", "pads2"], ["z"], name="pad0"),
        helper.make_node("Flatten", ["z"], ["y"], name="flatten", axis=2),
    ]
    i64 = np.int64
    inits = [("shape", np.array([0, 3, 4, -1], i64)), ("starts", np.array([-1, 0], i64)),
             ("ends", np.array([-100, 5], i64)), ("axes", np.array([1, 3], i64)), ("steps", np.array([-2, 2], i64)),
             ("pads", np.array([0, 0, 1, 1, 0, 0, 1, 0], i64)), ("split", np.array([1, 1], i64)),
             ("ax0", np.array([0], i64)), ("idx", np.array([2, -1, 0], i64)),
             ("pads2", np.array([0, 0, 0, 1, 0, 0, 1, 0], i64))]
    m = model(nodes, [("x", ["N", 12, 5]), ("other", ["N", 2, 5, 4])], [("y", [None, None])], inits)
    x = rng.normal(0, 1, (2, 12, 5)).astype(f32)
    other = rng.normal(0, 1, (2, 2, 5, 4)).astype(f32)
    q = act(3 / 255, 128)
    names = ["x", "r", "t", "s", "p", "a", "b", "c", "u", "q", "g", "z", "y"]
    tensors = {n: q for n in names} | {"other": act(5 / 255, 30)}  # Concat rescales "other"
    check(tmp_path, m, tensors, {}, {"x": x, "other": other}, ["y"], moves=tuple(n.name for n in nodes),
          min_equal=0.995)


@pytest.mark.parametrize("mode, coord, nearest, scales", [
    ("nearest", "asymmetric", "floor", [1, 1, 2, 2]),
    ("nearest", "half_pixel", "round_prefer_floor", [1, 1, 1.5, 0.5]),
    ("nearest", "align_corners", "round_prefer_ceil", [1, 1, 2.5, 3]),
    ("linear", "half_pixel", "round_prefer_floor", [1, 1, 2, 2]),
    ("linear", "pytorch_half_pixel", "round_prefer_floor", [1, 1, 1.7, 0.6]),
    ("linear", "align_corners", "round_prefer_floor", [1, 1, 3, 2]),
    ("linear", "asymmetric", "round_prefer_floor", [1, 1, 0.5, 2]),
])
def test_resize(tmp_path, rng, mode, coord, nearest, scales):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", mode=mode,
                            coordinate_transformation_mode=coord, nearest_mode=nearest)
    m = model([node], [("x", ["N", 2, 6, 5])], [("y", None)], [("scales", np.array(scales, f32))])
    x = rng.normal(0, 1, (2, 2, 6, 5)).astype(f32)
    tensors = {"x": act(4 / 255, 127), "y": act(4 / 255, 127) if mode == "nearest" else act(3.5 / 255, 120)}
    check(tmp_path, m, tensors, {"resize": group("requantize", ["resize"], ["x"], ["y"])}, {"x": x}, ["y"],
          min_equal=0.98)


def test_nearest_resize_outside_a_group_moves_codes(tmp_path, rng):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", mode="nearest",
                            coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    m = model([node], [("x", ["N", 2, 6, 5])], [("y", None)], [("scales", np.array([1, 1, 2, 3], f32))])
    x = rng.normal(0, 1, (2, 2, 6, 5)).astype(f32)
    q = act(4 / 255, 127)
    got, _, _ = check(tmp_path, m, {"x": q, "y": q}, {}, {"x": x}, ["y"], moves=("resize",), min_equal=1.0)
    assert got.fallbacks == ()


@pytest.mark.parametrize("axis, dtype", [(-1, "uint8"), (1, "int8"), (-1, "int16")])
def test_softmax(tmp_path, rng, axis, dtype):
    m = model([helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=axis)], [("x", ["N", 7, 9])], [("y", None)])
    x = rng.normal(0, 3, (3, 7, 9)).astype(f32)
    xq = act(16 / 255, 128) if dtype == "uint8" else fit(x, dtype, squeeze=0.9)
    yq = act(1 / 255, 0) if dtype == "uint8" else act(1 / (127 if dtype == "int8" else 32767), 0, dtype)
    check(tmp_path, m, {"x": xq, "y": yq}, {"sm": group("requantize", ["sm"], ["x"], ["y"])}, {"x": x}, ["y"],
          min_equal=0.99)


@pytest.mark.parametrize("axis, dtype", [(-1, "uint8"), (-2, "int8"), (-1, "int16")])
def test_layer_normalization(tmp_path, rng, axis, dtype):
    gamma = rng.uniform(0.5, 1.5, (6, 10) if axis == -2 else (10,)).astype(f32)
    beta = rng.normal(0, 0.3, gamma.shape).astype(f32)
    m = model([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], name="ln", axis=axis)],
              [("x", ["N", 6, 10])], [("y", None)], [("g", gamma), ("b", beta)])
    x = (rng.normal(0, 1, (4, 6, 10)) * rng.uniform(0.1, 3, (4, 6, 1)) + 2).astype(f32)
    x[0, 0] = 2.0  # a constant row: variance from epsilon only
    xq = fit(x, dtype, squeeze=0.95) if dtype != "uint8" else act(8 / 255, 0)
    yq = fit(float_run(m, {"x": x})[0], "int16" if dtype == "int16" else "uint8", squeeze=0.9)
    check(tmp_path, m, {"x": xq, "y": yq}, {"ln": group("requantize", ["ln"], ["x"], ["y"])}, {"x": x}, ["y"],
          min_equal=0.99)
