"""The graph the observation pass runs, and how much of the stream one run of it takes.

The graph is the prepared model with the observed tensors as its only outputs and without the
nodes none of them depends on.  Every observed tensor leaves ONNX Runtime whole and NumPy
reduces it (exact extremes, the strided subsample: ``ptqcli.observe.collect``).

Reducing long tensors inside the runtime instead (``ReduceMax``/``ReduceMin`` and a strided
``Slice`` per tensor, fed the slice's start each run) was the design until it was measured
against this one side by side (``bench.observe_time``, 3-5 interleaved rounds): copying every
tensor out made the pass faster on the small models, where the extra nodes cost more than the
copies (cls at 500 samples 1.79x -> 1.56x float inference, magika 1.72x -> 1.58x at 100 and
1.18x -> 0.95x at 500), and no slower on rec and det (0.97x against 0.99x, within their
spread).  ONNX Runtime keeps every output buffer until the run ends either way, so memory is
sized by the run (``run_bytes``) in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import onnx
from onnx import TensorProto, helper

from ptqcli.graph import Prepared


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
    values each).  Counting only what leaves the runtime (and the largest tensor twice) was tried
    while long tensors were reduced inside it: ONNX Runtime's arena keeps buffers sized by the
    whole run, so rec's peak RSS at 100 samples rose from 273 to 389 MB and its pass was no
    faster.  The tables are identical either way."""
    return 4 * sum(rows.values())


def exposing(prepared: Prepared, tensors: Sequence[str]) -> onnx.ModelProto:
    """The prepared model with ``tensors`` as its only outputs."""
    model = onnx.ModelProto()
    model.CopyFrom(prepared.model)
    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    return model


def lean_model(prepared: Prepared, tensors: Sequence[str]) -> onnx.ModelProto:
    """The prepared model whose only outputs are ``tensors``, without the nodes they do not need."""
    return upstream(exposing(prepared, tensors))


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
