"""Helpers for the simulator tests: one-op models, hand-made scale tables, a float reference.

The tables here are written by hand (not by ``ptq calibrate``) so that each kernel test picks
its own parameters: zero points at the extremes, per-channel scales, scales that saturate.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptqcli.graph import Prepared, opset, prepare
from ptqcli.quantize.qparams import QuantParams, dequantize, quantize, quantize_bias, weight_params
from ptqcli.quantize.scale_table import GroupEntry, NodeEntry, ScaleTable, TensorEntry


def model(nodes, inputs, outputs, inits=(), opset_version=17) -> onnx.ModelProto:
    """``inputs``/``outputs``: (name, shape) of float tensors (an output's shape may be None:
    inferred); ``inits``: (name, array)."""
    graph = helper.make_graph(
        nodes, "sim-test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset_version)])
    return onnx.shape_inference.infer_shapes(m)  # fills the output shapes the checker wants


def prepared(tmp_path: pathlib.Path, m: onnx.ModelProto, name: str = "m.onnx") -> Prepared:
    path = tmp_path / name
    onnx.save(m, str(path))
    return prepare(path)


def act(scale: float, zero: int = 0, dtype: str = "uint8") -> QuantParams:
    return QuantParams(dtype, (float(np.float32(scale)),), (int(zero),))


def table(p: Prepared, tensors: dict[str, QuantParams], groups: dict[str, GroupEntry] = (),
          moves: tuple[str, ...] = (), roles: dict[str, str] = ()) -> ScaleTable:
    """A table for ``p``: activations (and weights/biases, by ``roles``) with the given
    parameters; nodes of ``groups`` and the pass-through ``moves`` run in integers."""
    groups = dict(groups)
    roles = dict(roles)
    entries = {n: TensorEntry(roles.get(n, "activation"), q) for n, q in tensors.items()}
    group_of = {n: a for a, g in groups.items() for n in g.nodes}
    nodes = {}
    for node in p.index.nodes:
        if node.name in group_of:
            prec = groups[group_of[node.name]].precision
            nodes[node.name] = NodeEntry(node.op_type, prec, group_of[node.name])
        else:
            nodes[node.name] = NodeEntry(node.op_type, "int8" if node.name in moves else "fp32", None)
    return ScaleTable(p.fingerprint, p.source.name, opset(p.model), 0, {}, entries, nodes, groups)


def group(kind: str, nodes, inputs, outputs, weight=None, bias=None, consts=(), precision="int8") -> GroupEntry:
    return GroupEntry(kind, tuple(nodes), tuple(inputs), tuple(outputs), precision, weight, bias, tuple(consts))


def weight_table(p: Prepared, weight: str, axis: int | None, x: QuantParams, bias: str | None = None,
                 channels: int = 1) -> dict[str, QuantParams]:
    """Weight (int8 symmetric, per channel along ``axis``) and bias (int32, s_x * s_w) parameters."""
    wp = weight_params(p.index.array(weight), axis)
    out = {weight: wp}
    if bias is not None:
        s_w = np.broadcast_to(np.asarray(wp.scale, np.float32), (channels,))
        scale = (np.float32(x.scale[0]) * s_w).astype(np.float32)
        out[bias] = QuantParams("int32", tuple(float(s) for s in scale), (0,) * channels, 0 if channels > 1 else None)
    return out


def run_float(m: onnx.ModelProto, feeds: dict[str, np.ndarray], engine: str = "ort") -> list[np.ndarray]:
    """The float model in ONNX Runtime (``engine="ort"``) or in ONNX's reference evaluator
    (``"onnx"``: ``onnx.reference``, a second implementation written from the specification)."""
    if engine == "onnx":
        from onnx.reference import ReferenceEvaluator

        return [np.asarray(y) for y in ReferenceEvaluator(m).run(None, feeds)]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _node_model(p: Prepared, node: onnx.NodeProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(values[n].dtype), values[n].shape)
              for n in dict.fromkeys(node.input) if n]
    outputs = [helper.make_tensor_value_info(o, p.index.elem_type.get(o, TensorProto.FLOAT), None) for o in node.output]
    graph = helper.make_graph([node], "node", inputs, outputs)
    return helper.make_model(graph, opset_imports=list(p.model.opset_import))


def reference(p: Prepared, t: ScaleTable, feeds: dict[str, np.ndarray], engine: str = "ort") -> dict[str, np.ndarray]:
    """Fake-quant float reference: every tabled tensor replaced by dequantize(quantize(x)), each
    node run alone in float32 by ``engine`` (see ``run_float``; group intermediates stay float)."""
    index = p.index
    values: dict[str, np.ndarray] = {}

    def store(name: str, value: np.ndarray) -> None:
        entry = t.tensors.get(name)
        if entry is not None and value.dtype.kind == "f":
            q = quantize_bias(value, entry.params) if entry.role == "bias" else quantize(value, entry.params)
            value = dequantize(q, entry.params)
        values[name] = value

    for name in index.initializers:
        store(name, index.array(name))
    for name, value in feeds.items():
        store(name, np.asarray(value))
    for node in index.nodes:
        outs = run_float(_node_model(p, node, values), {n: values[n] for n in node.input if n}, engine)
        for name, value in zip(node.output, outs):
            store(name, np.asarray(value))
    return values


def codes_of(t: ScaleTable, name: str, values: np.ndarray) -> np.ndarray:
    return quantize(values, t.tensors[name].params)


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """(fraction equal, largest difference) of two code arrays."""
    d = np.abs(a.astype(np.int64) - b.astype(np.int64))
    return float((d == 0).mean()), int(d.max(initial=0))


def test_reference_quantizes_tabled_tensors(tmp_path):
    m = model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", [2])], [("y", [2])])
    p = prepared(tmp_path, m)
    t = table(p, {"x": act(0.5, 0, "int8"), "y": act(0.5, 0, "int8")})
    out = reference(p, t, {"x": np.array([0.7, -1.26], np.float32)})
    np.testing.assert_array_equal(out["y"], [0.5, 0.0])
