import numpy as np
from builders import float_input, make_model
from onnx import TensorProto, helper

from ptqcli.graph import GraphIndex
from ptqcli.graph.sign import nonnegative

F = np.float32


def _index():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["relu"], name="relu"),
        helper.make_node("Clip", ["c", "zero", "six"], ["relu6"], name="relu6"),
        helper.make_node("Clip", ["c", "minus", "six"], ["clip_neg"], name="clip_neg"),
        helper.make_node("Clip", ["c", "", "six"], ["clip_top"], name="clip_top"),
        helper.make_node("Sigmoid", ["c"], ["sig"], name="sig"),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], name="pool"),
        helper.make_node("GlobalAveragePool", ["pool"], ["gap"], name="gap"),
        helper.make_node("Concat", ["relu", "sig"], ["cat_pos"], axis=1, name="cat_pos"),
        helper.make_node("Concat", ["relu", "c"], ["cat_mixed"], axis=1, name="cat_mixed"),
        helper.make_node("Pad", ["relu", "pads", "minus"], ["pad_neg"], name="pad_neg"),
        helper.make_node("Pad", ["relu", "pads"], ["pad_zero"], name="pad_zero"),
        helper.make_node("Resize", ["relu", "", "scales"], ["cubic"], mode="cubic", name="cubic"),
        helper.make_node("Resize", ["relu", "", "scales"], ["linear"], mode="linear", name="linear"),
        helper.make_node("Add", ["relu", "relu"], ["add"], name="add"),
    ]
    outs = ["relu6", "clip_neg", "clip_top", "gap", "cat_pos", "cat_mixed", "pad_neg", "pad_zero", "cubic",
            "linear", "add"]
    model = make_model(nodes, [float_input("x", [1, 2, 4, 4])],
                       [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
                       [("w", np.ones((2, 2, 1, 1), F)), ("zero", F(0)), ("six", F(6)), ("minus", F(-1)),
                        ("pads", np.zeros(8, np.int64)), ("scales", np.array([1, 1, 2, 2], F))])
    return GraphIndex(model)


def test_what_the_graph_proves_non_negative():
    index = _index()
    proven = ["relu", "relu6", "sig", "pool", "gap", "cat_pos", "pad_zero", "linear"]
    not_proven = ["x", "c", "clip_neg", "clip_top", "cat_mixed", "pad_neg", "cubic", "add"]
    assert [t for t in proven if not nonnegative(index, t)] == []
    assert [t for t in not_proven if nonnegative(index, t)] == []
