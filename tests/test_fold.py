import numpy as np
import onnxruntime as ort
from builders import float_input, make_model, save
from onnx import TensorProto, helper

from ptqcli.graph import prepare


def run(model_bytes, x):
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_conv_transpose_add_and_batchnorm_fold_exactly(tmp_path, rng):
    f32 = np.float32
    c_in, groups, per_group = 4, 2, 3
    inits = [
        ("w", rng.normal(size=(c_in, per_group, 2, 2)).astype(f32)),
        ("b", rng.normal(size=(1, groups * per_group, 1, 1)).astype(f32)),
        ("g", rng.uniform(0.5, 2, groups * per_group).astype(f32)), ("beta", rng.normal(size=groups * per_group).astype(f32)),
        ("mean", rng.normal(size=groups * per_group).astype(f32)), ("var", rng.uniform(0.1, 2, groups * per_group).astype(f32)),
    ]
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["ct"], strides=[2, 2], group=groups, name="up"),
        helper.make_node("Add", ["ct", "b"], ["ctb"], name="bias"),
        helper.make_node("BatchNormalization", ["ctb", "g", "beta", "mean", "var"], ["bn"], epsilon=1e-3, name="bn"),
        helper.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]
    model = make_model(nodes, [float_input("x", ["N", c_in, 5, 5])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 10, 10])], inits)
    path = save(model, tmp_path / "ct.onnx")
    prepared = prepare(path)
    assert [n.op_type for n in prepared.index.nodes] == ["ConvTranspose", "Relu"]
    x = rng.normal(size=(2, c_in, 5, 5)).astype(f32)
    want = run(model.SerializeToString(), x)
    got = run(prepared.model.SerializeToString(), x)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5)
    # the displaced constants are gone
    assert not {"b", "g", "beta", "mean", "var", "w"} & set(prepared.index.initializers)


def test_conv_output_with_two_consumers_is_not_folded(tmp_path, rng):
    f32 = np.float32
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["ct"], name="up"),
        helper.make_node("Add", ["ct", "b"], ["y"], name="bias"),
        helper.make_node("Relu", ["ct"], ["z"], name="relu"),
    ]
    model = make_model(nodes, [float_input("x", [1, 2, 3, 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3]),
                        helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 3, 3])],
                       [("w", rng.normal(size=(2, 2, 1, 1)).astype(f32)), ("b", np.ones((1, 2, 1, 1), f32))])
    prepared = prepare(save(model, tmp_path / "two.onnx"))
    assert [n.op_type for n in prepared.index.nodes] == ["ConvTranspose", "Add", "Relu"]
