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


def test_a_scale_and_shift_after_a_conv_fold_whatever_their_order_and_shape(tmp_path, rng):
    """A learnable affine after a convolution (Mul by a constant, then Add), as PP-LCNetV3 writes
    it: one value for all channels, or one per channel, the constant first or second."""
    f32 = np.float32
    for scale, shift, const_first in [(np.array([2.17], f32), np.array([0.86], f32), True),
                                      (rng.uniform(0.5, 2, (1, 3, 1, 1)).astype(f32), np.array(-0.3, f32), False),
                                      (rng.uniform(-2, 2, (3, 1, 1)).astype(f32), rng.normal(size=(3, 1, 1)).astype(f32), True)]:
        nodes = [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Mul", ["s", "c"] if const_first else ["c", "s"], ["m"], name="scale"),
            helper.make_node("Add", ["m", "t"], ["a"], name="shift"),
            helper.make_node("HardSigmoid", ["a"], ["h"], alpha=1 / 6, beta=0.5, name="gate"),
            helper.make_node("Mul", ["a", "h"], ["y"], name="swish"),
        ]
        model = make_model(nodes, [float_input("x", ["N", 2, 6, 6])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 6, 6])],
                           [("w", rng.normal(size=(3, 2, 3, 3)).astype(f32)), ("b", rng.normal(size=3).astype(f32)),
                            ("s", scale), ("t", shift)])
        prepared = prepare(save(model, tmp_path / "affine.onnx"))
        assert [n.op_type for n in prepared.index.nodes] == ["Conv", "HardSigmoid", "Mul"], (scale.shape, shift.shape)
        x = rng.normal(size=(2, 2, 6, 6)).astype(f32)
        assert np.allclose(run(prepared.model.SerializeToString(), x), run(model.SerializeToString(), x),
                           rtol=1e-5, atol=1e-5)


def test_a_constant_that_varies_over_space_is_not_folded(tmp_path, rng):
    f32 = np.float32
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Mul", ["c", "s"], ["y"], name="scale")]
    model = make_model(nodes, [float_input("x", [1, 2, 4, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
                       [("w", rng.normal(size=(3, 2, 1, 1)).astype(f32)), ("s", rng.normal(size=(1, 1, 4, 4)).astype(f32))])
    prepared = prepare(save(model, tmp_path / "spatial.onnx"))
    assert [n.op_type for n in prepared.index.nodes] == ["Conv", "Mul"]
