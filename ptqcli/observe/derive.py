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
    """``obs`` with the histogram of every derived output, pushed through its group's function."""
    hists = dict(obs.histograms)
    for out, group in derived.items():
        source = hists.get(group.inputs[0])
        if source is not None:
            hists[out] = histogram.push_through(source, island_function(prepared, group))
    return replace(obs, histograms=hists)
