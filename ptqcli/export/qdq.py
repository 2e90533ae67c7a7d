"""Export: the prepared float model plus a scale table -> a QDQ ONNX model.

- A weight, bias or constant operand in the table becomes an integer initializer and a
  DequantizeLinear that produces the original name (int8 per channel for weights, int32 for
  biases), so its consumers are untouched.
- A quantized activation ``t`` gets ``QuantizeLinear -> DequantizeLinear`` right after its
  producer: the producer now writes ``t_float``, and the DequantizeLinear writes ``t``, so every
  consumer (and a graph output of that name) reads the quantized value.  Graph inputs are
  quantized in front of their consumers instead, keeping the input's name.
- Nodes the table leaves in float read dequantized values and are otherwise untouched.

The opset is at least 13 (QuantizeLinear's ``axis``) and 21 when a tensor is int16.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptqcli import __version__
from ptqcli.errors import ModelError, TableError
from ptqcli.graph import Prepared, opset
from ptqcli.quantize.qparams import NUMPY, QuantParams
from ptqcli.quantize.stored import codes, overlay
from ptqcli.quantize.scale_table import ScaleTable

INT16_OPSET = 21


def check_table(prepared: Prepared, table: ScaleTable, table_path: str | os.PathLike) -> None:
    """Refuse a table made for another model, or naming tensors the model lacks."""
    if table.fingerprint != prepared.fingerprint:
        raise TableError(f"{table_path}: the table was made for another model ({table.model_file}, "
                         f"{table.fingerprint[:19]}...); {prepared.source.name} prepares to "
                         f"{prepared.fingerprint[:19]}...")
    index = prepared.index
    for name in table.tensors:
        if name not in index.producer and name not in index.initializers and name not in index.input_names:
            raise TableError(f"{table_path}: tensor {name!r} is not in {prepared.source.name}")


class _Names:
    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.used = {t.name for t in g.initializer} | {i.name for i in g.input} | {
            o for n in g.node for o in list(n.output) + list(n.input)}

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def _qparam_initializers(graph: onnx.GraphProto, names: _Names, tensor: str, p: QuantParams) -> tuple[str, str]:
    scale = np.asarray(p.scale, dtype=np.float32)
    zero = np.asarray(p.zero_point, dtype=NUMPY[p.dtype])
    if p.axis is None:
        scale, zero = scale.reshape(()), zero.reshape(())
    s_name, z_name = names.fresh(f"{tensor}_scale"), names.fresh(f"{tensor}_zero_point")
    graph.initializer.append(numpy_helper.from_array(scale, s_name))
    graph.initializer.append(numpy_helper.from_array(zero, z_name))
    return s_name, z_name


def _axis_attrs(p: QuantParams) -> dict:
    return {"axis": p.axis} if p.axis is not None else {}


QParamNames = Callable[[onnx.GraphProto, "_Names", str, QuantParams], tuple[str, str]]


def insert_qdq(model: onnx.ModelProto, table: ScaleTable, activation_qparams: QParamNames | None = None) -> onnx.ModelProto:
    """``model`` (a copy of the prepared graph) with the table's Q/DQ inserted, in place.

    ``activation_qparams(graph, names, tensor, params)`` names the scale and zero point an
    activation's Q/DQ pair reads; by default they are new initializers holding ``params``."""
    graph = model.graph
    names = _Names(model)
    inits = {t.name: t for t in graph.initializer}
    activation_qparams = activation_qparams or _qparam_initializers
    front: list[onnx.NodeProto] = []
    for name in sorted(table.tensors):
        entry = table.tensors[name]
        if entry.role == "activation" or name not in inits:
            continue
        value = numpy_helper.to_array(inits[name])
        q = codes(table, name, value)
        q_name = names.fresh(f"{name}_quantized")
        graph.initializer.remove(inits[name])
        graph.initializer.append(numpy_helper.from_array(q, q_name))
        s, z = _qparam_initializers(graph, names, name, entry.params)
        front.append(helper.make_node("DequantizeLinear", [q_name, s, z], [name],
                                      name=names.fresh(f"{name}_DequantizeLinear"), **_axis_attrs(entry.params)))

    def qdq(source: str, target: str, p: QuantParams, tensor: str) -> list[onnx.NodeProto]:
        s, z = activation_qparams(graph, names, tensor, p)
        q = names.fresh(f"{target}_quantized")
        return [helper.make_node("QuantizeLinear", [source, s, z], [q], name=names.fresh(f"{target}_QuantizeLinear")),
                helper.make_node("DequantizeLinear", [q, s, z], [target], name=names.fresh(f"{target}_DequantizeLinear"))]

    activations = {n: e.params for n, e in table.tensors.items() if e.role == "activation"}
    renamed_inputs = {}
    for inp in graph.input:
        if inp.name in activations and inp.name not in inits:
            if inp.name in {o.name for o in graph.output}:
                raise TableError(f"graph input {inp.name!r} is also a graph output; cannot quantize it")
            renamed_inputs[inp.name] = names.fresh(f"{inp.name}_dequantized")
            front.extend(qdq(inp.name, renamed_inputs[inp.name], activations[inp.name], inp.name))
    nodes: list[onnx.NodeProto] = list(front)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed_inputs:
                node.input[i] = renamed_inputs[name]
        nodes.append(node)
        for i, name in enumerate(node.output):
            if name in activations:
                raw = names.fresh(f"{name}_float")
                node.output[i] = raw
                nodes.extend(qdq(raw, name, activations[name], name))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return model


def float_copy(prepared: Prepared, table: ScaleTable) -> onnx.ModelProto:
    """A copy of the prepared model at an opset that holds the table's dtypes (21 for int16)."""
    model = onnx.ModelProto()
    model.CopyFrom(prepared.model)
    wide = any(e.params.dtype == "int16" for e in table.tensors.values())
    if wide and opset(model) < INT16_OPSET:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, INT16_OPSET)
        except Exception as exc:
            raise ModelError(f"{prepared.source}: int16 tensors need opset {INT16_OPSET}; converting "
                             f"from {opset(model)} failed ({str(exc).splitlines()[0]})") from None
    return model


def export(prepared: Prepared, table: ScaleTable) -> onnx.ModelProto:
    """The QDQ model for ``prepared`` quantized with ``table`` (checked by ``check_table``)."""
    model = insert_qdq(float_copy(overlay(prepared, table), table), table)
    model.producer_name, model.producer_version = "ptq", __version__
    model = onnx.shape_inference.infer_shapes(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ModelError(f"the exported model fails onnx.checker ({str(exc).splitlines()[0]})") from None
    return model


def save(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write atomically: temporary file beside ``path``, then rename."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
