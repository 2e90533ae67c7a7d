"""A NumPy fake-quant reference of a scale table: the float graph, node by node (onnx reference
evaluator), with every tabled tensor replaced by dequantize(quantize(x)).  Independent of the
export: it reads only the prepared model and the table."""

from __future__ import annotations

import numpy as np
from onnx.reference import ReferenceEvaluator

from ptqcli.graph import Prepared, opset
from ptqcli.quantize.qparams import dequantize, quantize, quantize_bias
from ptqcli.quantize.scale_table import ScaleTable


def fake_quant(prepared: Prepared, table: ScaleTable, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    index = prepared.index
    values: dict[str, np.ndarray] = {}

    def store(name: str, value: np.ndarray) -> None:
        entry = table.tensors.get(name)
        if entry is not None:
            q = quantize_bias(value, entry.params) if entry.role == "bias" else quantize(value, entry.params)
            value = dequantize(q, entry.params)
        values[name] = value

    for name in index.initializers:
        store(name, index.array(name))
    for name, value in feeds.items():
        store(name, value)
    opsets = {"": opset(prepared.model)}
    for node in index.nodes:
        outs = ReferenceEvaluator(node, opsets=opsets).run(None, {n: values[n] for n in node.input if n})
        for name, value in zip(node.output, outs):
            store(name, np.asarray(value))
    return [values[name] for name in index.output_names]
