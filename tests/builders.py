"""Small ONNX models built with onnx.helper, for fast offline tests."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(model: onnx.ModelProto, path: pathlib.Path) -> pathlib.Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_model(nodes, inputs, outputs, initializers=(), opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs),
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def float_input(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def conv_net(rng: np.random.Generator, opset: int = 13) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv -> BatchNorm -> Relu -> (Conv -> Relu | Conv 1x1) -> Concat -> MaxPool
    -> Add(residual with a third Conv) -> HardSwish written as x*Clip(x+3,0,6)/6 -> GAP -> Flatten -> Gemm."""
    f32 = np.float32
    inits = [
        ("w1", rng.normal(0, 0.3, (8, 3, 3, 3)).astype(f32)), ("b1", rng.normal(0, 0.1, 8).astype(f32)),
        ("bn_scale", rng.uniform(0.5, 1.5, 8).astype(f32)), ("bn_bias", rng.normal(0, 0.1, 8).astype(f32)),
        ("bn_mean", rng.normal(0, 0.1, 8).astype(f32)), ("bn_var", rng.uniform(0.5, 1.5, 8).astype(f32)),
        ("w2", rng.normal(0, 0.2, (4, 8, 3, 3)).astype(f32)), ("b2", rng.normal(0, 0.1, 4).astype(f32)),
        ("w3", rng.normal(0, 0.2, (4, 8, 1, 1)).astype(f32)), ("b3", rng.normal(0, 0.1, 4).astype(f32)),
        ("w4", rng.normal(0, 0.2, (8, 8, 1, 1)).astype(f32)), ("b4", rng.normal(0, 0.1, 8).astype(f32)),
        ("three", np.array(3.0, f32)), ("zero", np.array(0.0, f32)), ("six", np.array(6.0, f32)),
        ("wf", rng.normal(0, 0.3, (5, 8)).astype(f32)), ("bf", rng.normal(0, 0.1, 5).astype(f32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r1", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("Concat", ["r2", "c3"], ["cat"], axis=1, name="concat"),
        helper.make_node("MaxPool", ["cat"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Conv", ["mp", "w4", "b4"], ["c4"], name="conv4"),
        helper.make_node("Add", ["c4", "mp"], ["res"], name="add"),
        helper.make_node("Add", ["res", "three"], ["hs_a"], name="hs_add"),
        helper.make_node("Clip", ["hs_a", "zero", "six"], ["hs_c"], name="hs_clip"),
        helper.make_node("Mul", ["res", "hs_c"], ["hs_m"], name="hs_mul"),
        helper.make_node("Div", ["hs_m", "six"], ["hs"], name="hs_div"),
        helper.make_node("GlobalAveragePool", ["hs"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    return make_model(nodes, [float_input("x", ["N", 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits, opset)


def write_npy_folder(folder: pathlib.Path, arrays) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        np.save(folder / f"{i:04d}.npy", a)
    return folder


def if_model(rng: np.random.Generator, *, main_conv: bool = False) -> onnx.ModelProto:
    """x[1,3,8,8], flag[] (bool) -> If(flag) with a Conv in each branch (a voice-activity detector
    keeps its compute in such branches); with ``main_conv``, a Conv in the main graph first."""
    f32 = np.float32
    first = "h" if main_conv else "x"
    branches = []
    for name in ("then", "else"):
        conv = helper.make_node("Conv", [first, f"w_{name}"], [f"y_{name}"], pads=[1, 1, 1, 1], name=f"conv_{name}")
        relu = helper.make_node("Relu", [f"y_{name}"], [f"r_{name}"], name=f"relu_{name}")
        out = helper.make_tensor_value_info(f"r_{name}", TensorProto.FLOAT, [1, 4, 8, 8])
        branches.append(helper.make_graph([conv, relu], name, [], [out]))
    nodes = [helper.make_node("If", ["flag"], ["y"], then_branch=branches[0], else_branch=branches[1], name="if")]
    inits = [("w_then", rng.normal(0, 0.3, (4, 3, 3, 3)).astype(f32)),
             ("w_else", rng.normal(0, 0.3, (4, 3, 3, 3)).astype(f32))]
    if main_conv:
        nodes.insert(0, helper.make_node("Conv", ["x", "w_main"], ["h"], name="conv_main"))
        inits.append(("w_main", rng.normal(0, 0.3, (3, 3, 1, 1)).astype(f32)))
    inputs = [float_input("x", [1, 3, 8, 8]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])]
    return make_model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)


def qdq_relu_model() -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> Relu: an already quantized model."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"),
             helper.make_node("Relu", ["dq"], ["y"], name="relu")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    return make_model(nodes, [float_input("x", ["N", 4])], [output],
                      [("s", np.array(0.1, np.float32)), ("z", np.array(0, np.uint8))])


def matmul_integer_model() -> onnx.ModelProto:
    """x (uint8) MatMulInteger w (int8) -> Cast: quantized without a QDQ pair."""
    nodes = [helper.make_node("MatMulInteger", ["x", "w"], ["acc"], name="mmi"),
             helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT, name="cast")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 4])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                      [("w", np.ones((4, 3), np.int8))])


def detector_model(rng: np.random.Generator) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(6 channels) -> [N, 64 boxes, 6]: a detector-like output, not class scores."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Reshape", ["c", "shape"], ["flat"], name="reshape"),
             helper.make_node("Transpose", ["flat"], ["boxes"], perm=[0, 2, 1], name="transpose")]
    return make_model(nodes, [float_input("x", ["N", 3, 8, 8])],
                      [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 64, 6])],
                      [("w", rng.normal(0, 0.3, (6, 3, 1, 1)).astype(np.float32)),
                       ("b", rng.normal(0, 0.1, 6).astype(np.float32)), ("shape", np.array([0, 6, -1], np.int64))])
