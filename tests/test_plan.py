import numpy as np
import pytest
from builders import conv_net, float_input, make_model, save
from onnx import TensorProto, helper

from ptqcli.errors import OptionError, UnsupportedError
from ptqcli.graph import prepare
from ptqcli.quantize.decide import CalibrationOptions, decide
from ptqcli.quantize.plan import analyse
from ptqcli.quantize.scale_groups import observed_tensors, scale_groups


def groups_of(prepared):
    return {g.anchor: (g.kind, g.nodes, g.inputs, g.outputs) for g in analyse(prepared.index).groups}


@pytest.fixture()
def conv_prepared(tmp_path, rng):
    return prepare(save(conv_net(rng), tmp_path / "conv.onnx"))


def test_conv_net_groups(conv_prepared):
    g = groups_of(conv_prepared)
    # BatchNorm folded into conv1, Relu fused into it
    assert g["conv1"] == ("compute", ("conv1", "relu1"), ("x",), ("r1",))
    assert g["conv3"] == ("compute", ("conv3",), ("r1",), ("c3",))
    assert g["add"] == ("binary", ("add",), ("c4", "mp"), ("res",))
    # HardSwish written as x * Clip(x + 3, 0, 6) / 6 is one table over the codes of `res`
    assert g["hs_add"] == ("lut", ("hs_add", "hs_clip", "hs_mul", "hs_div"), ("res",), ("hs",))
    assert g["gap"] == ("requantize", ("gap",), ("hs",), ("gap",))
    assert "bn1" not in {n.name for n in conv_prepared.index.nodes}


def test_concat_inputs_and_pass_through_share_one_scale(conv_prepared):
    structure = analyse(conv_prepared.index)
    sg = scale_groups(conv_prepared.index, structure, {g.anchor for g in structure.groups})
    assert sg.root["r2"] == sg.root["c3"] == sg.root["cat"] == sg.root["mp"]
    assert sg.root["flat"] == sg.root["gap"]
    # MaxPool, Flatten and Concat outputs are copies: their values are already in the group
    observed = observed_tensors(conv_prepared.index, structure)
    assert "mp" not in observed and "flat" not in observed and "cat" not in observed
    assert {"r2", "c3", "x", "gap"} <= set(observed)
    # the classifier's output feeds nothing integer: it stays float and is not observed
    assert "y" not in observed


def _matmul_model(rng):
    f32 = np.float32
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "b"], ["fc"], name="bias"),
        helper.make_node("MatMul", ["fc", "fcT"], ["att"], name="att_mm"),
        helper.make_node("Transpose", ["fc"], ["fcT"], perm=[0, 2, 1], name="tr"),
        helper.make_node("Sigmoid", ["att"], ["sig"], name="sig"),
        helper.make_node("Mul", ["att", "sig"], ["silu"], name="silu"),
        helper.make_node("Add", ["silu", "fc"], ["res"], name="res_add"),
        helper.make_node("Relu", ["res"], ["out"], name="relu"),
    ]
    nodes = [nodes[0], nodes[1], nodes[3], nodes[2], nodes[4], nodes[5], nodes[6], nodes[7]]
    return make_model(nodes, [float_input("x", ["N", 4, 6])],
                      [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 4])],
                      [("w", rng.normal(size=(6, 4)).astype(f32)), ("b", rng.normal(size=4).astype(f32))])


def test_matmul_bias_two_activation_matmul_silu_and_relu_after_add(tmp_path, rng):
    prepared = prepare(save(_matmul_model(rng), tmp_path / "mm.onnx"))
    g = groups_of(prepared)
    assert g["mm"] == ("compute", ("mm", "bias"), ("x",), ("fc",))
    assert g["att_mm"] == ("compute", ("att_mm",), ("fc", "fcT"), ("att",))
    assert g["sig"] == ("lut", ("sig", "silu"), ("att",), ("silu",))
    assert g["res_add"] == ("binary", ("res_add", "relu"), ("silu", "fc"), ("out",))
    structure = analyse(prepared.index)
    mm = next(x for x in structure.groups if x.anchor == "mm")
    assert (mm.weight, mm.weight_axis, mm.bias) == ("w", 1, "b")


def test_nearest_resize_passes_its_scale_through_and_linear_requantizes(tmp_path, rng):
    f32 = np.float32
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Resize", ["c", "", "scales"], ["near"], name="near", mode="nearest"),
             helper.make_node("Resize", ["c", "", "scales"], ["lin"], name="lin", mode="linear"),
             helper.make_node("Concat", ["near", "lin"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "w2"], ["y"], name="conv2")]
    m = make_model(nodes, [float_input("x", ["N", 2, 4, 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8])],
                   [("w", rng.normal(size=(3, 2, 1, 1)).astype(f32)), ("w2", rng.normal(size=(2, 6, 1, 1)).astype(f32)),
                    ("scales", np.array([1, 1, 2, 2], f32))])
    prepared = prepare(save(m, tmp_path / "resize.onnx"))
    structure = analyse(prepared.index)
    assert "near" in structure.passthrough
    assert groups_of(prepared)["lin"] == ("requantize", ("lin",), ("c",), ("lin",))
    sg = scale_groups(prepared.index, structure, {g.anchor for g in structure.groups})
    assert sg.root["near"] == sg.root["c"] == sg.root["lin"] == sg.root["cat"]
    observed = observed_tensors(prepared.index, structure)
    assert "near" not in observed and "cat" not in observed and {"c", "lin"} <= set(observed)


def test_exclusion_int16_and_option_errors(conv_prepared):
    d = decide(conv_prepared, CalibrationOptions(exclude=("Gemm", "add"), int16=("conv3",)))
    assert "fc" not in d.precision and "add" not in d.precision
    # conv3 reads r1 and writes c3 in 16 bits; c3 shares the Concat scale, so MaxPool's output and
    # the groups reading or writing any of them (conv1, conv2, conv4) are 16-bit too
    assert {a for a, p in d.precision.items() if p == "int16"} == {"conv1", "conv2", "conv3", "conv4"}
    # with the Gemm in float, the HardSwish table and the pooling after the residual Add feed only
    # float nodes, so they run in float too (a quantization point there would be pure loss)
    assert "hs_add" not in d.precision and "gap" not in d.precision
    # called from Python, the errors name the keyword; the CLI spells the same error as its flag
    with pytest.raises(OptionError, match="^exclude 'Nope': no node or operator type") as caught:
        decide(conv_prepared, CalibrationOptions(exclude=("Nope",)))
    assert caught.value.spelled(lambda name: "--" + name).startswith("--exclude 'Nope': no node")
    with pytest.raises(OptionError, match="^int16 'zz': not a quantized tensor or node"):
        decide(conv_prepared, CalibrationOptions(int16=("zz",)))
    with pytest.raises(OptionError, match="^fixed_ranges 'w4': not a quantized activation"):
        decide(conv_prepared, CalibrationOptions(fixed_ranges=(("w4", -1.0, 1.0),)))


def test_model_without_anything_to_quantize(tmp_path):
    model = make_model([helper.make_node("Shape", ["x"], ["s"], name="shape")], [float_input("x", [2, 3])],
                       [helper.make_tensor_value_info("s", TensorProto.INT64, [2])])
    prepared = prepare(save(model, tmp_path / "shape.onnx"))
    with pytest.raises(UnsupportedError, match="nothing to quantize") as caught:
        decide(prepared, CalibrationOptions())
    assert caught.value.exit_code == 1  # a model problem, not bad usage (exit code 2)


def test_softmax_and_layernorm_default_to_16_bits(transformer_model):
    prepared = prepare(transformer_model)
    d = decide(prepared, CalibrationOptions())
    by_op = {prepared.index.node_by_name[a].op_type: p for a, p in d.precision.items()}
    assert by_op["Softmax"] == "int16" and by_op["LayerNormalization"] == "int16"
    softmax = next(g for g in d.structure.groups if prepared.index.node_by_name[g.anchor].op_type == "Softmax")
    assert all(d.scales.root[t] in d.int16_roots for t in softmax.inputs + softmax.outputs)
    plain = decide(prepared, CalibrationOptions(sensitive_int16=False))
    assert set(plain.precision.values()) == {"int8"}
