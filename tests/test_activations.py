import numpy as np
import onnxruntime as ort
from builders import float_input, make_model, save
from onnx import TensorProto, helper

from ptqcli.graph import prepare


def run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _consts():
    f32 = np.float32
    return [("three", np.array(3.0, f32)), ("zero", np.array(0.0, f32)), ("six", np.array(6.0, f32)),
            ("sixth", np.array([1 / 6], f32))]


def test_hardswish_and_hardsigmoid_written_out_become_hardsigmoid(tmp_path):
    nodes = [  # HardSwish as x * Clip(x + 3, 0, 6) / 6, then HardSigmoid as Clip(3 + h, 0, 6) * (1/6)
        helper.make_node("Add", ["x", "three"], ["a"], name="add"),
        helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
        helper.make_node("Mul", ["c", "x"], ["m"], name="mul"),
        helper.make_node("Div", ["m", "six"], ["h"], name="div"),
        helper.make_node("Add", ["three", "h"], ["a2"], name="add2"),
        helper.make_node("Clip", ["a2", "zero", "six"], ["c2"], name="clip2"),
        helper.make_node("Mul", ["sixth", "c2"], ["y"], name="scale2"),
    ]
    model = make_model(nodes, [float_input("x", ["N", 2, 5])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 5])], _consts())
    prepared = prepare(save(model, tmp_path / "hs.onnx"))
    got = [(n.op_type, n.name, list(n.input), list(n.output)) for n in prepared.index.nodes]
    assert got == [("HardSigmoid", "clip", ["x"], ["c"]), ("Mul", "div", ["x", "c"], ["h"]),
                   ("HardSigmoid", "clip2", ["h"], ["y"])]
    assert not set(prepared.index.initializers)  # the constants are read by nothing any more
    x = np.linspace(-8, 8, 2 * 2 * 5 * 10, dtype=np.float32).reshape(-1, 2, 5)
    assert np.allclose(run(prepared.model, x)[0], run(model, x)[0], rtol=1e-6, atol=1e-6)


def test_chains_with_another_reader_or_other_constants_stay(tmp_path):
    nodes = [
        helper.make_node("Add", ["x", "three"], ["a"], name="add"),
        helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),  # c is also a graph output
        helper.make_node("Div", ["c", "six"], ["y"], name="div"),
        helper.make_node("Clip", ["a", "zero", "five"], ["c5"], name="clip5"),  # Relu5, not Relu6
        helper.make_node("Div", ["c5", "six"], ["z"], name="div5"),
    ]
    model = make_model(nodes, [float_input("x", [2, 3])],
                       [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("y", "c", "z")],
                       _consts() + [("five", np.array(5.0, np.float32))])
    prepared = prepare(save(model, tmp_path / "kept.onnx"))
    assert [n.op_type for n in prepared.index.nodes] == ["Add", "Clip", "Div", "Clip", "Div"]
