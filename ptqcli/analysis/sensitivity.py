"""Layerwise sensitivity: how much each quantized tensor alone costs at the model's outputs.

One ONNX Runtime session serves every question.  The prepared float model gets, for each tensor
of the scale table, ``QuantizeLinear -> DequantizeLinear`` and a switch: ``Where(on, x', x)``
where ``on`` is a boolean graph input.  Feeding the switches picks any subset of quantized
tensors without building another model, so quantizing one tensor at a time (or all but one)
costs one run per tensor and sample.

The figure reported per tensor is the SQNR (dB) of the model outputs against float, with only
that tensor quantized; lower is more sensitive (see DESIGN.md: "A layerwise analysis finds them
in minutes").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptqcli import runtime
from ptqcli.analysis.metrics import Agreement
from ptqcli.export.qdq import float_copy
from ptqcli.graph import Prepared
from ptqcli.quantize.qparams import NUMPY
from ptqcli.quantize.scale_table import ScaleTable


@dataclass(frozen=True)
class Switchable:
    """A model whose quantization points are switched by boolean inputs ``switch[tensor]``."""

    model: onnx.ModelProto
    switch: dict[str, str]  # tensor name -> name of its boolean input


def switchable_model(prepared: Prepared, table: ScaleTable) -> Switchable:
    """The prepared model with a switched fake-quant point on every tensor of ``table``, at the
    opset the export would use (int16 QuantizeLinear needs opset 21)."""
    model = float_copy(prepared, table)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    switch: dict[str, str] = {}
    front: list[onnx.NodeProto] = []

    def point(source: str, target: str, name: str) -> list[onnx.NodeProto]:
        entry = table.tensors[name]
        p = entry.params
        scale = np.asarray(p.scale, np.float32)
        zero = np.asarray(p.zero_point, NUMPY[p.dtype])
        if p.axis is None:
            scale, zero = scale.reshape(()), zero.reshape(())
        key = f"ptq::sw{len(switch)}"
        graph.initializer.extend([numpy_helper.from_array(scale, key + "::s"), numpy_helper.from_array(zero, key + "::z")])
        graph.input.append(helper.make_tensor_value_info(key, TensorProto.BOOL, []))
        switch[name] = key
        axis = {"axis": p.axis} if p.axis is not None else {}
        return [helper.make_node("QuantizeLinear", [source, key + "::s", key + "::z"], [key + "::q"], **axis),
                helper.make_node("DequantizeLinear", [key + "::q", key + "::s", key + "::z"], [key + "::dq"], **axis),
                helper.make_node("Where", [key, key + "::dq", source], [target])]

    for name, entry in sorted(table.tensors.items()):
        # int32 biases add error far below the rest; they stay float here
        if entry.role in ("activation", "bias") or name not in inits:
            continue
        raw = name + "::float"
        inits[name].name = raw
        front.extend(point(raw, name, name))
    renamed = {}
    for inp in [i.name for i in graph.input]:
        if inp in table.tensors and table.tensors[inp].role == "activation":
            renamed[inp] = inp + "::switched"
            front.extend(point(inp, renamed[inp], inp))
    nodes = list(front)
    for node in list(graph.node):
        n = onnx.NodeProto()
        n.CopyFrom(node)
        for i, name in enumerate(n.input):
            if name in renamed:
                n.input[i] = renamed[name]
        nodes.append(n)
        for i, name in enumerate(n.output):
            entry = table.tensors.get(name)
            if entry is not None and entry.role == "activation":
                n.output[i] = name + "::float"
                nodes.extend(point(name + "::float", name, name))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return Switchable(model, switch)


def points(table: ScaleTable) -> dict[str, list[str]]:
    """The quantization decisions of a table: a scale group (named by its representative) or a
    weight or constant, with the tensors each one switches; tensors sharing a scale go together."""
    members: dict[str, list[str]] = {}
    for name, entry in sorted(table.tensors.items()):
        if entry.role == "bias":
            continue
        members.setdefault(entry.scale_group if entry.role == "activation" else name, []).append(name)
    return members


@dataclass(frozen=True)
class Sensitivity:
    """Output agreement with float when only ``tensor`` is quantized."""

    tensor: str
    role: str
    sqnr_db: float
    cosine: float


def layerwise(prepared: Prepared, table: ScaleTable, feeds: Sequence[dict[str, np.ndarray]], *,
              tensors: Iterable[str] | None = None,
              progress: Callable[[int], None] | None = None) -> tuple[Agreement, list[Sensitivity]]:
    """Agreement with everything quantized, and per scale group (named by its first tensor) and
    per weight with only that one quantized; most sensitive first."""

    sw = switchable_model(prepared, table)
    session = runtime.session(sw.model)
    outputs = [o.name for o in session.get_outputs()]
    off = {key: np.array(False) for key in sw.switch.values()}
    on = {key: np.array(True) for key in sw.switch.values()}
    reference = [session.run(outputs, {**f, **off}) for f in feeds]

    def agreement(flags: dict[str, np.ndarray]) -> Agreement:
        total = Agreement()
        for f, ref in zip(feeds, reference):
            for r, g in zip(ref, session.run(outputs, {**f, **flags})):
                total = total.add(r, g)
        return total

    everything = agreement(on)
    members = {k: [m for m in v if m in sw.switch] for k, v in points(table).items()}
    members = {k: v for k, v in members.items() if v}
    chosen = list(tensors) if tensors is not None else sorted(members)
    results = []
    for name in chosen:
        a = agreement({**off, **{sw.switch[m]: np.array(True) for m in members.get(name, [name])}})
        results.append(Sensitivity(name, table.tensors[name].role, a.sqnr_db, a.cosine))
        if progress is not None:
            progress(1)
    results.sort(key=lambda s: s.sqnr_db)
    return everything, results
