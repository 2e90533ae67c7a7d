"""Histograms of table-group outputs, derived from their inputs' (see ``tensors.observation_plan``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
from onnx import TensorProto, helper

from calibrators import histogram
from ptqcli import runtime
from ptqcli.graph import Prepared
from ptqcli.observe.observations import Observations
from ptqcli.quantize.plan import Group


def island_function(prepared: Prepared, group: Group) -> Callable[[np.ndarray], np.ndarray]:
    """The float function a table group computes, as ONNX Runtime evaluates it, on a flat array."""

    index = prepared.index
    nodes = [index.node_by_name[n] for n in group.nodes]
    used = {i for n in nodes for i in n.input if i in index.initializers}
    graph = helper.make_graph(nodes, "island", [helper.make_tensor_value_info(group.inputs[0], TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(group.outputs[0], TensorProto.FLOAT, None)],
                              [index.initializers[i] for i in sorted(used)])
    model = helper.make_model(graph, opset_imports=list(prepared.model.opset_import))
    model.ir_version = prepared.model.ir_version
    session = runtime.session(model)
    return lambda x: session.run(None, {group.inputs[0]: np.ascontiguousarray(x, dtype=np.float32)})[0]


def derive(prepared: Prepared, obs: Observations, derived: dict[str, Group]) -> Observations:
    """``obs`` with the histogram of every derived output, pushed through its group's function;
    it counts what its source counted (its stride, and whether it was counted again)."""
    hists, strides, recounted = dict(obs.histograms), dict(obs.strides), set(obs.recounted)
    for out, group in derived.items():
        source = group.inputs[0]
        if source in hists:
            hists[out] = histogram.push_through(hists[source], island_function(prepared, group))
            if source in strides:
                strides[out] = strides[source]
            if source in recounted:
                recounted.add(out)
    return replace(obs, histograms=hists, strides=strides, recounted=frozenset(recounted))
