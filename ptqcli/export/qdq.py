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
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptqcli import __version__
from ptqcli.errors import ModelError, TableError
from ptqcli.files import staged, write_atomic
from ptqcli.graph import Prepared, opset
from ptqcli.quantize.qparams import NUMPY, QuantParams, quantize, quantize_bias
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
    check_params(prepared, table, table_path)


def check_params(prepared: Prepared, table: ScaleTable, where: str | os.PathLike) -> None:
    """Refuse parameters that do not fit their tensor's shape: an axis beyond its rank, or a
    per-channel list whose length is not the channel count (a hand-edited table, say)."""
    index = prepared.index
    for name, entry in sorted(table.tensors.items()):
        p = entry.params
        if p.axis is None:
            continue
        shape = tuple(index.initializers[name].dims) if name in index.initializers else index.shape.get(name)
        if shape is None:
            continue
        if not -len(shape) <= p.axis < len(shape):
            raise TableError(f"{where}: tensor {name!r} has axis {p.axis}, but rank {len(shape)}")
        channels = shape[p.axis]
        if isinstance(channels, int) and channels != len(p.scale):
            raise TableError(f"{where}: tensor {name!r} has {len(p.scale)} scales and zero points, but "
                             f"{channels} channels along axis {p.axis}")


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
        q = quantize_bias(value, entry.params) if entry.role == "bias" else quantize(value, entry.params)
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


#: Protocol Buffers cannot serialize a message of 2 GiB or more: a larger model keeps its
#: initializers in a separate file ("external data", ONNX's format for large models).
PROTOBUF_LIMIT = 2 ** 31 - 1
#: Initializers smaller than this stay inside the model file when the rest goes outside.
EXTERNAL_MIN_BYTES = 1024


def export(prepared: Prepared, table: ScaleTable) -> onnx.ModelProto:
    """The QDQ model for ``prepared`` quantized with ``table`` (checked by ``check_table``).

    A model too large to serialize is checked from its files by ``save`` instead."""
    model = insert_qdq(float_copy(prepared, table), table)
    model.producer_name, model.producer_version = "ptq", __version__
    if model.ByteSize() > PROTOBUF_LIMIT:
        return model
    model = onnx.shape_inference.infer_shapes(model)
    _check(model)
    return model


def _check(model: onnx.ModelProto | str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ModelError(f"the exported model fails onnx.checker ({str(exc).splitlines()[0]})") from None


def data_path(path: str | os.PathLike) -> pathlib.Path:
    """Where ``save`` puts the external data of a model written to ``path``."""
    path = pathlib.Path(path)
    return path.with_name(path.name + ".data")


def _move_out(model: onnx.ModelProto) -> list[bytes]:
    """Mark every initializer of at least ``EXTERNAL_MIN_BYTES`` as external data (in place;
    ``_locate`` says where) and return their bytes, in file order."""
    chunks: list[bytes] = []
    offset = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.raw_data) < EXTERNAL_MIN_BYTES:
            continue
        data = tensor.raw_data
        del tensor.external_data[:]
        for key, value in (("location", ""), ("offset", str(offset)), ("length", str(len(data)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
        chunks.append(data)
        offset += len(data)
    return chunks


def _locate(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    return model


def save(model: onnx.ModelProto, path: str | os.PathLike, *, limit: int | None = None) -> list[pathlib.Path]:
    """Write ``model`` to ``path`` atomically (see ``ptqcli.files``).

    A model larger than ``limit`` bytes (default ``PROTOBUF_LIMIT``) keeps its initializers in
    ``data_path(path)`` beside it: both files are written under temporary names, the model is
    checked from them, then the data file is renamed into place before the model file.  The
    large initializers of ``model`` are left pointing at the data file (a copy would double the
    memory of a model that size).  Returns the files written."""
    path = pathlib.Path(path)
    chunks = _move_out(model) if model.ByteSize() > (PROTOBUF_LIMIT if limit is None else limit) else []
    if not chunks:
        write_atomic(path, lambda f: f.write(model.SerializeToString()))
        return [path]
    data = data_path(path)
    with staged(data, path) as (tmp_data, tmp_model):
        with open(tmp_data, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        tmp_model.write_bytes(_locate(model, tmp_data.name).SerializeToString())
        _check(str(tmp_model))
        tmp_model.write_bytes(_locate(model, data.name).SerializeToString())
    return [data, path]
