"""Write HardSigmoid and HardSwish that a model spells out elementwise as ONNX's HardSigmoid.

Exporters of MobileNetV3-style networks (PP-OCR among them) write

- HardSigmoid as ``Clip(x + 3, 0, 6) / 6`` and
- HardSwish as ``x * Clip(x + 3, 0, 6) / 6``.

Quantized, either chain is one lookup table over the codes of ``x`` (``ptqcli.quantize.plan``),
but a runtime executes the exported float operators as written between DequantizeLinear and
QuantizeLinear: ONNX Runtime runs Add, Clip, Mul, Div, and because ``x`` has two readers it also
dequantizes ``x`` twice (its EnsureUniqueDQForNodeUnit gives each reader a DequantizeLinear of
its own), seven passes over the tensor for one activation.  ``Clip(x + 3, 0, 6) / 6`` is
``HardSigmoid(x)`` with ``alpha = 1/6, beta = 1/2`` (ONNX operator spec: ``max(0, min(1,
alpha * x + beta))``), and ONNX defines ``HardSwish(x) = x * HardSigmoid(x)`` with the same
constants, so the rewrite is:

- ``Clip(x + 3, 0, 6) / 6``      ->  ``HardSigmoid(x)``
- ``x * Clip(x + 3, 0, 6) / 6``  ->  ``x * HardSigmoid(x)``   (ONNX Runtime inlines HardSwish so too)

with ``/ 6`` also accepted as ``* (1/6)`` and either operand order: five passes for HardSwish
(two DequantizeLinear, HardSigmoid, Mul, QuantizeLinear), which made ptq's exports of PP-OCR's
cls, rec and det 4-11 % faster in ONNX Runtime (1 thread, interleaved A/B).  HardSigmoid exists from opset 6, so no opset
changes.  The result equals the chain up to float32 rounding (a few ulps);
every later stage (observation, the simulator's tables, the export) reads the rewritten graph,
so they agree with each other exactly.  An intermediate tensor that another node or a graph
output also reads keeps its chain.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

ALPHA, BETA = 1.0 / 6.0, 0.5


def _scalar(inits: dict, name: str) -> float | None:
    if name not in inits:
        return None
    value = numpy_helper.to_array(inits[name])
    return float(value.reshape(())) if value.size == 1 and value.dtype.kind == "f" else None


def _is(inits: dict, name: str, value: float) -> bool:
    got = _scalar(inits, name)
    return got is not None and bool(np.isclose(got, value, rtol=1e-6, atol=0.0))


class _Graph:
    """Producers and consumers of a graph's tensors."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.readers: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                self.readers[name] = self.readers.get(name, 0) + 1
        for out in graph.output:
            self.readers[out.name] = self.readers.get(out.name, 0) + 1

    def sole(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        """The ``op_type`` node producing ``tensor`` if nothing but one node reads ``tensor``."""
        node = self.producer.get(tensor)
        if node is None or node.op_type != op_type or self.readers.get(tensor, 0) != 1:
            return None
        return node

    def operand(self, node: onnx.NodeProto, value: float) -> str | None:
        """The other input of a two-input ``node`` whose one input is the constant ``value``."""
        if len(node.input) != 2:
            return None
        a, b = node.input
        if _is(self.inits, b, value):
            return a
        if _is(self.inits, a, value) and node.op_type != "Div":
            return b
        return None


def _divided_by_six(g: _Graph, node: onnx.NodeProto) -> str | None:
    """``t`` if ``node`` computes ``t / 6`` (Div by 6 or Mul by 1/6)."""
    if node.op_type == "Div":
        return g.operand(node, 6.0)
    if node.op_type == "Mul":
        return g.operand(node, 1.0 / 6.0)
    return None


def _relu6_of_x_plus_3(g: _Graph, tensor: str) -> tuple[str, list[onnx.NodeProto]] | None:
    """``(x, [Add, Clip])`` if ``tensor`` is ``Clip(x + 3, 0, 6)`` read by one node only."""
    clip = g.sole(tensor, "Clip")
    if clip is None or len(clip.input) != 3 or not _is(g.inits, clip.input[1], 0.0) \
            or not _is(g.inits, clip.input[2], 6.0):
        return None
    add = g.sole(clip.input[0], "Add")
    x = g.operand(add, 3.0) if add is not None else None
    return None if x is None else (x, [add, clip])


def _match(g: _Graph, end: onnx.NodeProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]] | None:
    """``(removed, added)`` if ``end`` closes a HardSigmoid or HardSwish chain, else None."""
    t = _divided_by_six(g, end)
    if t is None or g.readers.get(t, 0) != 1:
        return None
    gate = _relu6_of_x_plus_3(g, t)
    if gate is not None:  # Clip(x + 3, 0, 6) / 6
        x, chain = gate
        return chain + [end], [helper.make_node("HardSigmoid", [x], [end.output[0]], name=chain[1].name,
                                                alpha=ALPHA, beta=BETA)]
    mul = g.sole(t, "Mul")
    if mul is None or len(mul.input) != 2:
        return None
    for i in (0, 1):
        x, other = mul.input[i], mul.input[1 - i]
        gate = _relu6_of_x_plus_3(g, other)
        if gate is not None and gate[0] == x:  # x * Clip(x + 3, 0, 6) / 6
            add, clip = gate[1]
            return [add, clip, mul, end], [
                helper.make_node("HardSigmoid", [x], [clip.output[0]], name=clip.name, alpha=ALPHA, beta=BETA),
                helper.make_node("Mul", [x, clip.output[0]], [end.output[0]], name=end.name)]
    return None


def hard_sigmoid(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its written-out HardSigmoid and HardSwish chains rewritten (see module
    docstring), in place; the constants they no longer read are dropped.  Nodes must have
    unique names (the new nodes take the names of the Clip and of the chain's last node)."""
    graph = model.graph
    g = _Graph(graph)
    replaced: dict[str, list[onnx.NodeProto]] = {}
    removed: set[str] = set()
    for node in graph.node:
        found = _match(g, node)
        if found is None or any(n.name in removed for n in found[0]):
            continue
        old, new = found
        removed.update(n.name for n in old)
        replaced[node.name] = new
    if not replaced:
        return model
    nodes = []
    for node in graph.node:
        if node.name in replaced:
            nodes.extend(replaced[node.name])
        elif node.name not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for n in graph.node for name in n.input} | {t.name for t in list(graph.output) + list(graph.input)}
    unused = [t for t in graph.initializer if t.name not in read]
    for t in unused:
        graph.initializer.remove(t)
    return model
