"""Float execution of nodes the simulator does not run in integers (and of lookup-table
functions at build time): the nodes are cut out into a small ONNX model that ONNX Runtime runs
in float32, exactly as the exported QDQ model runs them between DequantizeLinear and
QuantizeLinear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ptqcli import runtime
from ptqcli.errors import UnsupportedError
from ptqcli.graph import attr, ops
from ptqcli.sim.base import Context, Log


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If / Loop / Scan bodies) read from the enclosing graph."""
    names: set[str] = set()
    for a in node.attribute:
        graphs = list(a.graphs) + ([a.g] if a.HasField("g") else [])
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for inner in g.node:
                local.update(inner.output)
            for inner in g.node:
                names.update(n for n in inner.input if n and n not in local)
                names.update(n for n in _subgraph_names(inner) if n not in local)
    return names


def _value_info(ctx: Context, name: str) -> onnx.ValueInfoProto:
    elem = ctx.index.elem_type.get(name, TensorProto.FLOAT)
    return helper.make_tensor_value_info(name, elem, None)


def cut(ctx: Context, nodes: Sequence[onnx.NodeProto], outputs: Sequence[str]) -> tuple[onnx.ModelProto, list[str]]:
    """A model made of ``nodes`` (graph order) with the given ``outputs``; its inputs are the
    tensors the nodes read that none of them produces (initializers are copied in)."""
    produced = {o for n in nodes for o in n.output if o}
    needed: list[str] = []
    for node in nodes:
        for name in list(node.input) + sorted(_subgraph_names(node)):
            if name and name not in produced and name not in needed:
                needed.append(name)
    inits = [ctx.index.initializers[n] for n in needed if n in ctx.index.initializers]
    feeds = [n for n in needed if n not in ctx.index.initializers]
    graph = helper.make_graph(list(nodes), "ptq-sim-float", [_value_info(ctx, n) for n in feeds],
                              [_value_info(ctx, n) for n in outputs], inits)
    model = helper.make_model(graph, opset_imports=list(ctx.opset_imports))
    model.ir_version = ctx.ir_version
    return model, feeds


def session(model: onnx.ModelProto, where: str):
    """An ONNX Runtime session on one thread (many small sessions must not each spin a pool)."""
    return runtime.session(model, threads=1, error=UnsupportedError, where=f"{where} (run in float)")


@dataclass(frozen=True)
class FloatKernel:
    """Runs a cut-out model: inputs in ``feeds`` order, outputs in ``outputs`` order.

    With ``rowwise`` the nodes compute each row of axis 0 on its own, and the model runs on
    one sample's rows at a time (``len / batch`` rows): ONNX Runtime's float kernels may round
    differently for different numbers of rows, and the simulator's results must not depend on
    how samples are batched."""

    session: object
    feeds: tuple[str, ...]
    outputs: tuple[str, ...]
    rowwise: bool

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        names = list(self.outputs)
        feed = dict(zip(self.feeds, inputs))
        n = log.batch or 1
        lengths = {len(x) if np.ndim(x) else 0 for x in inputs}
        rows = lengths.pop() // n if len(lengths) == 1 and self.rowwise and n > 1 else 0
        if not rows or rows * n != len(inputs[0]):
            return self.session.run(names, {f: aligned(x) for f, x in feed.items()})
        parts = [self.session.run(names, {f: aligned(x[i * rows:(i + 1) * rows]) for f, x in feed.items()})
                 for i in range(n)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]


def aligned(x: np.ndarray, alignment: int = 64) -> np.ndarray:
    """``x`` in a C-contiguous buffer starting on an ``alignment``-byte boundary.

    ONNX Runtime's vectorized kernels (ReduceSum, for one) sum a row in a different order when
    it starts at a different alignment, so the same values could give different floats from
    one run or batch to the next; a fixed alignment makes them reproducible."""
    x = np.asarray(x)
    if x.flags.c_contiguous and x.ctypes.data % alignment == 0:
        return x
    buf = np.empty(x.nbytes + alignment, dtype=np.uint8)
    start = -buf.ctypes.data % alignment
    out = buf[start:start + x.nbytes].view(x.dtype).reshape(x.shape)
    out[...] = x
    return out


#: Operators that treat the rows of axis 0 independently (given the checks in ``_rowwise``).
ROWWISE = ops.ELEMENTWISE | {"Cast", "Equal", "Greater", "Less", "Not", "Where", "Softmax", "LogSoftmax",
                             "LayerNormalization", "MatMul", "ReduceSum", "ReduceMean", "ReduceMax",
                             "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare", "ArgMax", "ArgMin"}


def _rowwise(ctx: Context, nodes: Sequence[onnx.NodeProto], feeds: Sequence[str], outputs: Sequence[str]) -> bool:
    """Every feed and output has a dynamic first dimension and no node mixes rows of axis 0."""
    for name in list(feeds) + list(outputs):
        shape = ctx.index.shape.get(name)
        if not shape or isinstance(shape[0], int):
            return False
    for node in nodes:
        if node.op_type not in ROWWISE:
            return False
        rank = len(ctx.index.shape.get(node.input[0]) or ())
        if node.op_type.startswith(("Reduce", "Arg")):
            axes = attr(node, "axes") if len(node.input) < 2 else ctx.const(node.input[1])
            axes = [axes] if isinstance(axes, int) else axes
            if axes is None or not rank or 0 in {int(a) % rank for a in np.asarray(axes).reshape(-1)}:
                return False
        if node.op_type in ("Softmax", "LogSoftmax", "LayerNormalization", "ArgMax", "ArgMin"):
            if not rank or int(attr(node, "axis", -1 if node.op_type != "ArgMax" else 0)) % rank == 0:
                return False
        if node.op_type == "MatMul" and node.input[1] not in ctx.index.initializers and rank < 3:
            return False
    return True


def float_kernel(ctx: Context, nodes: Sequence[onnx.NodeProto], outputs: Sequence[str]) -> FloatKernel:
    model, feeds = cut(ctx, nodes, outputs)
    where = "node " + repr(nodes[0].name) if len(nodes) == 1 else f"nodes {nodes[0].name!r}..{nodes[-1].name!r}"
    rowwise = bool(feeds) and _rowwise(ctx, nodes, feeds, outputs)
    return FloatKernel(session(model, where), tuple(feeds), tuple(outputs), rowwise)


def evaluate(ctx: Context, node_names: Sequence[str], input_name: str, output_name: str, x: np.ndarray) -> np.ndarray:
    """The float function of a lookup-table group at the points ``x`` (1-D float32)."""
    nodes = [ctx.node(n) for n in node_names]
    kernel = float_kernel(ctx, nodes, [output_name])
    if kernel.feeds != (input_name,):
        raise UnsupportedError(f"group {node_names[0]!r}: its nodes read {list(kernel.feeds)}, "
                               f"not only {input_name!r}")
    return np.asarray(kernel.run([x.astype(np.float32)], Log())[0])
