"""Run a model that changes pass after pass, computing each node once.

The sequential rounding pass needs, wave after wave, the inputs of the next layers in the QDQ
model as it stands.  Wave ``k``'s inputs depend only on the layers of earlier waves, whose codes
are final by then; so the nodes that wave ``k - 1`` already needed computed final values, and
only the nodes added since must run.  :class:`Incremental` keeps, per batch, every tensor a node
not yet run will read, and runs the new nodes alone as a small model (ONNX Runtime computes
every node of a session whatever outputs are asked for, so running the whole model per wave
would cost one full pass per wave: 48 passes of PP-OCRv4 rec).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import helper

from ptqcli import runtime
from ptqcli.runtime import Optimization
from ptqcli.observe.dataset import Feed

_ELEM = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.int64): onnx.TensorProto.INT64,
         np.dtype(np.int32): onnx.TensorProto.INT32, np.dtype(np.uint8): onnx.TensorProto.UINT8,
         np.dtype(np.int8): onnx.TensorProto.INT8, np.dtype(np.int16): onnx.TensorProto.INT16,
         np.dtype(np.bool_): onnx.TensorProto.BOOL, np.dtype(np.float64): onnx.TensorProto.DOUBLE}


class Incremental:
    """The tensors computed so far for each of ``feeds``, and the nodes that computed them.
    Node names must stay the same from one model to the next (``insert_qdq`` names them from the
    tensors), and a node once run must not change its result."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self.values: list[dict[str, np.ndarray]] = [dict(f) for f in feeds]
        self.done: set[str] = set()
        self.passes = 0

    def run(self, model: onnx.ModelProto, wanted: Sequence[str]) -> list[dict[str, np.ndarray]]:
        """The tensors ``wanted`` for every batch, running only the nodes of ``model`` they need
        that no earlier call ran."""
        graph = model.graph
        producer = {o: n for n in graph.node for o in n.output if o}
        inits = {t.name: t for t in graph.initializer}
        needed: list[onnx.NodeProto] = []
        seen: set[str] = set()
        stack = [w for w in wanted if w in producer]
        while stack:
            node = producer[stack.pop()]
            if node.name in seen or node.name in self.done:
                continue
            seen.add(node.name)
            stack.extend(i for i in node.input if i in producer)
        needed = [n for n in graph.node if n.name in seen]  # graph order is topological
        if needed:
            self._run_nodes(model, needed, inits, wanted)
        self.done |= seen
        result = [{w: v[w] for w in wanted} for v in self.values]
        self._forget(graph)
        return result

    def _run_nodes(self, model: onnx.ModelProto, nodes: list[onnx.NodeProto], inits: dict,
                   wanted: Sequence[str]) -> None:
        made = {o for n in nodes for o in n.output if o}
        reads = list(dict.fromkeys(i for n in nodes for i in n.input if i and i not in made))
        inputs = [i for i in reads if i not in inits]
        outside = {n.name for n in model.graph.node} - self.done - {n.name for n in nodes}
        later = {i for n in model.graph.node if n.name in outside for i in n.input}
        outputs = [o for o in made if o in later or o in wanted]
        first = self.values[0]
        sub = helper.make_graph(
            nodes, "ptq-incremental",
            [helper.make_tensor_value_info(i, _ELEM[first[i].dtype], None) for i in inputs], [],
            [inits[i] for i in reads if i in inits])
        sub_model = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
        typed = {v.name: v.type.tensor_type.elem_type
                 for v in onnx.shape_inference.infer_shapes(sub_model).graph.value_info}
        sub_model.graph.output.extend(helper.make_tensor_value_info(o, typed.get(o, onnx.TensorProto.FLOAT), None)
                                      for o in outputs)
        session = runtime.session(sub_model, optimization=Optimization.BASIC)
        names = [o.name for o in session.get_outputs()]
        for values in self.values:
            for name, value in zip(names, session.run(names, {i: values[i] for i in inputs})):
                values[name] = value
        self.passes += 1

    def _forget(self, graph: onnx.GraphProto) -> None:
        """Drop the tensors no node left to run reads (graph inputs stay: a later wave may read them)."""
        keep = {i for n in graph.node if n.name not in self.done for i in n.input} | {i.name for i in graph.input}
        for values in self.values:
            for name in [k for k in values if k not in keep]:
                del values[name]
