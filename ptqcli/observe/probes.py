"""The graphs the observation pass runs: the prepared model with its observed tensors made
outputs, or reduced inside ONNX Runtime so that only small outputs leave it.

A tensor whose rows are short (``EXPOSE_ROW``) is exposed as it is: a few in-graph nodes would
cost more than the copy, and NumPy reduces it.  A long one (or one whose length is not known
before the run) is reduced in the graph to its maximum, its minimum (unless it cannot be
negative: ``ptqcli.graph.sign``), its size, and a strided ``Slice`` of the flattened batch whose
start (and, for a tensor of unknown length, stride) is an input fed with each run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import onnx
from onnx import TensorProto, helper

from ptqcli.graph import Prepared, opset

#: Rows up to this length are copied out and reduced in NumPy; longer ones inside the runtime.
EXPOSE_ROW = 1 << 15


@dataclass(frozen=True)
class Probe:
    """Where one tensor's statistics come from in the lean model.

    ``exposed``: the tensor itself is an output (statistics in NumPy); else the names of the
    in-graph outputs ``maximum``, ``minimum`` (None: not reduced, the tensor cannot be negative),
    ``values`` (the strided slice) and ``size``, and of the inputs ``start`` and ``stride`` (None:
    the stride is the constant ``Plan.stride``)."""

    tensor: str
    exposed: bool
    lower: bool
    maximum: str | None = None
    minimum: str | None = None
    values: str | None = None
    size: str | None = None
    start: str | None = None
    stride: str | None = None


@dataclass(frozen=True)
class Plan:
    """How one tensor is observed: its row length (None: unknown until the first run), the
    stride of its subsample (None likewise) and whether its minimum is needed."""

    row: int | None
    stride: int | None
    lower: bool


def run_samples(budget: int | None, rows: dict[str, int]) -> int:
    """Samples per run that keep a run within ``budget`` bytes (``run_bytes``): at least 1; 0
    when there is no budget (runs are whole batches)."""
    return 0 if budget is None else max(1, budget // max(run_bytes(rows), 1))


def run_bytes(rows: dict[str, int]) -> int:
    """Bytes one sample of a run is counted for: every observed tensor whole (``rows`` float32
    values each), whether it leaves the runtime or is reduced inside it.  Counting only what
    leaves the runtime (and the largest tensor twice) was tried: ONNX Runtime's arena keeps
    buffers sized by the whole run, so rec's peak RSS at 100 samples rose from 273 to 389 MB and
    its pass was no faster; cls ran 6 samples at a time in place of 4 for 13 MB more and the
    same time.  The tables are identical either way."""
    return 4 * sum(rows.values())


def exposing(prepared: Prepared, tensors: Sequence[str]) -> onnx.ModelProto:
    """The prepared model with ``tensors`` as its only outputs."""
    model = onnx.ModelProto()
    model.CopyFrom(prepared.model)
    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    return model


def _extreme(graph: onnx.GraphProto, op: str, data: str, out: str, axis: int | None, version: int) -> None:
    """``out = op(data)`` over ``axis`` (-1 or None: every axis), without kept dimensions."""
    inputs, attrs = [data], {"keepdims": 0}
    if axis is not None and version >= 18:
        inputs.append("ptq::last")  # axes as an input from opset 18
    elif axis is not None:
        attrs["axes"] = [axis]
    graph.node.append(helper.make_node(op, inputs, [out], name=f"{out}::{op}", **attrs))


def lean_model(prepared: Prepared, plans: dict[str, Plan]) -> tuple[onnx.ModelProto, list[Probe]]:
    """The prepared model whose only outputs are the probes of ``plans``.  Extremes are taken
    along the last axis first: ONNX Runtime reduces a whole tensor on one thread, but spreads
    the rows of a partial reduction over its threads."""
    exposed = {t: None for t, p in plans.items() if p.row is not None and p.row <= EXPOSE_ROW}
    model = exposing(prepared, list(exposed))
    graph = model.graph
    version = opset(model)
    graph.initializer.extend([
        helper.make_tensor("ptq::flat", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("ptq::end", TensorProto.INT64, [1], [2 ** 62]),
        helper.make_tensor("ptq::zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ptq::last", TensorProto.INT64, [1], [-1]),
    ])
    shapes = prepared.index.shape
    probes = []
    for i, (t, plan) in enumerate(plans.items()):
        if t in exposed:
            probes.append(Probe(t, True, plan.lower))
            continue
        p = f"ptq::{i}"
        probe = Probe(t, False, plan.lower, f"{p}::max", f"{p}::min" if plan.lower else None, f"{p}::values",
                      f"{p}::size", f"{p}::start", f"{p}::stride" if plan.stride is None else None)
        graph.input.append(helper.make_tensor_value_info(probe.start, TensorProto.INT64, [1]))
        if probe.stride is not None:
            graph.input.append(helper.make_tensor_value_info(probe.stride, TensorProto.INT64, [1]))
        else:
            graph.initializer.append(helper.make_tensor(f"{p}::step", TensorProto.INT64, [1], [plan.stride]))
        for op, out in (("ReduceMax", probe.maximum), ("ReduceMin", probe.minimum)):
            if out is None:
                continue
            if len(shapes.get(t, ())) >= 2:
                _extreme(graph, op, t, f"{out}::rows", -1, version)
                _extreme(graph, op, f"{out}::rows", out, None, version)
            else:
                _extreme(graph, op, t, out, None, version)
            graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
        graph.node.extend([
            helper.make_node("Reshape", [t, "ptq::flat"], [f"{p}::flat"], name=f"{p}::Reshape"),
            helper.make_node("Slice", [f"{p}::flat", probe.start, "ptq::end", "ptq::zero", probe.stride or f"{p}::step"],
                             [probe.values], name=f"{p}::Slice"),
            helper.make_node("Size", [t], [probe.size], name=f"{p}::Size"),
        ])
        graph.output.extend([helper.make_tensor_value_info(probe.values, TensorProto.FLOAT, None),
                             helper.make_tensor_value_info(probe.size, TensorProto.INT64, [])])
        probes.append(probe)
    return upstream(model), probes


def _reads(node: onnx.NodeProto) -> Iterator[str]:
    """Every tensor name ``node`` reads, those its subgraphs read from the outer scope included."""
    yield from node.input
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for inner in g.node:
                yield from _reads(inner)


def upstream(model: onnx.ModelProto, extra: Sequence[str] = ()) -> onnx.ModelProto:
    """``model`` without the nodes that neither its outputs nor ``extra`` tensors depend on
    (ONNX Runtime runs every node of a graph, fetched or not), nor the initializers they alone
    read."""
    needed = {o.name for o in model.graph.output} | set(extra)
    keep = []
    for node in reversed(model.graph.node):
        if needed.intersection(node.output):
            keep.append(node)
            needed.update(_reads(node))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(reversed(keep))
    inits = [i for i in model.graph.initializer if i.name in needed]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    return out
