"""rounding.layers against ONNX Runtime: for every layer form, the rows cut out of the input times
the viewed weight give ONNX Runtime's output at the same positions, and the mean row is the mean
of all rows."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from builders import float_input, make_model, save
from ptqcli import runtime
from ptqcli.graph import prepare
from ptqcli.quantize.plan import analyse
from ptqcli.quantize.scale_table import GroupEntry
from ptqcli.rounding.layers import view

CASES = {
    "conv": ("Conv", (6, 4, 3, 3), (2, 4, 9, 7), dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2])),
    "conv-grouped": ("Conv", (6, 2, 3, 3), (2, 4, 7, 7), dict(group=2, pads=[1, 1, 1, 1])),
    "depthwise": ("Conv", (4, 1, 3, 3), (2, 4, 6, 6), dict(group=4, strides=[2, 2], auto_pad="SAME_UPPER")),
    "conv1d": ("Conv", (5, 3, 4), (2, 3, 11), dict(strides=[3])),
    "conv-transpose": ("ConvTranspose", (4, 3, 3, 2), (2, 4, 5, 4), dict(strides=[2, 2], pads=[1, 0, 0, 1])),
    "gemm": ("Gemm", (5, 7), (6, 5), {}),
    "gemm-trans": ("Gemm", (7, 5), (5, 6), dict(transA=1, transB=1)),
    "matmul": ("MatMul", (5, 7), (2, 3, 5), {}),
}


def _model(tmp_path, rng, op, w_shape, x_shape, attrs):
    w = rng.normal(size=w_shape).astype(np.float32)
    out_channels = w_shape[1] if op in ("ConvTranspose",) or (op in ("Gemm", "MatMul") and not attrs.get("transB")) \
        else w_shape[0]
    inputs = ["x", "w"]
    inits = [("w", w)]
    if op != "MatMul":
        inputs.append("b")
        inits.append(("b", rng.normal(size=out_channels).astype(np.float32)))
    node = helper.make_node(op, inputs, ["y"], name="layer", **attrs)
    model = make_model([node], [float_input("x", list(x_shape))],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(len(x_shape))])],
                       inits)
    return save(model, tmp_path / "m.onnx")


@pytest.mark.parametrize("case", sorted(CASES))
def test_rows_times_weights_give_the_output(tmp_path, rng, case):
    op, w_shape, x_shape, attrs = CASES[case]
    prepared = prepare(_model(tmp_path, rng, op, w_shape, x_shape, attrs))
    group = next(g for g in analyse(prepared.index).groups if g.weight)
    layer = view(prepared.index, GroupEntry(group.kind, group.nodes, group.inputs, group.outputs, "int8",
                                            group.weight, group.bias))
    x = rng.normal(size=x_shape).astype(np.float32)
    y = runtime.session(prepared.model).run(None, {"x": x})[0]
    w = prepared.index.array(group.weight)
    np.testing.assert_array_equal(layer.unview(layer.view(w)), w)
    bias = prepared.index.array(group.bias) if group.bias else np.zeros(layer.outputs, np.float32)
    rows = np.arange(layer.positions(y.shape) * y.shape[0])  # every output position
    got = np.matmul(layer.rows(x, rows), layer.view(w).transpose(0, 2, 1)) + layer.per_channel(bias)
    np.testing.assert_allclose(got, layer.targets(y, rows), rtol=1e-4, atol=1e-4)
    total, n = layer.mean_row(x)
    assert n == len(rows)
    np.testing.assert_allclose(total / n, layer.rows(x, rows).mean(axis=1), rtol=1e-5, atol=1e-6)
