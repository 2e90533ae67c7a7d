"""Histograms of table-group outputs, derived from their inputs' (see ``tensors.observation_plan``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import onnx
from onnx import TensorProto, helper

from calibrators import histogram
from ptqcli import runtime
from ptqcli.graph import Prepared
from ptqcli.observe.observations import Observations
from ptqcli.quantize.plan import Group


def islands(prepared: Prepared, groups: Sequence[Group]) -> onnx.ModelProto:
    """One model computing every table group's float function as ONNX Runtime evaluates it: one
    flat input per group input, one output per group output (one session for all of them)."""
    index = prepared.index
    nodes = [index.node_by_name[n] for g in groups for n in g.nodes]
    used = {i for n in nodes for i in n.input if i in index.initializers}
    sources = list(dict.fromkeys(g.inputs[0] for g in groups))
    graph = helper.make_graph(nodes, "islands",
                              [helper.make_tensor_value_info(s, TensorProto.FLOAT, [None]) for s in sources],
                              [helper.make_tensor_value_info(g.outputs[0], TensorProto.FLOAT, None) for g in groups],
                              [index.initializers[i] for i in sorted(used)])
    model = helper.make_model(graph, opset_imports=list(prepared.model.opset_import))
    model.ir_version = prepared.model.ir_version
    return model


def derive(prepared: Prepared, obs: Observations, derived: dict[str, Group]) -> Observations:
    """``obs`` with the histogram of every derived output, pushed through its group's function;
    it counts what its source counted (its stride, and whether it was counted again)."""
    hists, strides, recounted = dict(obs.histograms), dict(obs.strides), set(obs.recounted)
    groups = [g for g in derived.values() if hists.get(g.inputs[0], histogram.empty()).total]
    if groups:
        session = runtime.session(islands(prepared, groups))
        feeds = {g.inputs[0]: histogram.push_points(hists[g.inputs[0]]) for g in groups}
        values = session.run([g.outputs[0] for g in groups], feeds)
        for g, y in zip(groups, values):
            hists[g.outputs[0]] = histogram.pushed(hists[g.inputs[0]], y)
    for out, group in derived.items():
        source = group.inputs[0]
        if source in hists and out not in hists:
            hists[out] = histogram.empty()
        if source in strides:
            strides[out] = strides[source]
        if source in recounted:
            recounted.add(out)
    return replace(obs, histograms=hists, strides=strides, recounted=frozenset(recounted))
