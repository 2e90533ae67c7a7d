"""The observation pass: one run of ONNX Runtime over the calibration batches.

Each observed tensor ``t`` gets three extra graph outputs, computed inside ONNX Runtime:

- ``ReduceMin(t)`` and ``ReduceMax(t)``: the exact extremes;
- a deterministic subsample for the histogram body: ``t`` is viewed as one row per sample
  (``Reshape(t, [0, -1])``) and every ``k``-th value of each row is taken, with ``k`` odd and
  chosen at run time so that a row gives at most ``subsample`` values (``k = 1`` for small rows).

Only these small outputs are copied out of the runtime, which is what keeps the pass close to
the cost of plain inference.  Rows are per sample, so the histogram does not depend on the
batch size; histograms are merged exactly (see ``calibrators.histogram``), so it does not depend
on the order either.  Memory holds one batch of activations and the histograms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from calibrators import histogram
from ptqcli.dataset import Batch
from ptqcli.errors import DataError
from ptqcli.graph import Prepared
from ptqcli.observations import Observations

#: Default cap on histogram values per sample and tensor.
SUBSAMPLE = 1 << 14


@dataclass(frozen=True)
class _Probe:
    tensor: str
    minimum: str
    maximum: str
    values: str


def _row_length(prepared: Prepared, tensor: str) -> int | None:
    shape = prepared.index.shape.get(tensor)
    if shape is None or len(shape) < 1 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return int(np.prod(shape[1:], dtype=np.int64))


def _const(graph: onnx.GraphProto, name: str, values: list[int]) -> str:
    graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
    return name


def observation_model(prepared: Prepared, tensors: Sequence[str], subsample: int) -> tuple[onnx.ModelProto, list[_Probe]]:
    """The prepared model with probe outputs for ``tensors`` (and no other outputs)."""
    model = onnx.ModelProto()
    model.CopyFrom(prepared.model)
    graph = model.graph
    del graph.output[:]
    probes = []
    zero_minus_one = _const(graph, "ptq::shape_rows", [0, -1])
    starts = _const(graph, "ptq::zero", [0])
    ends = _const(graph, "ptq::end", [2 ** 62])
    axes = _const(graph, "ptq::one", [1])
    half = _const(graph, "ptq::half_cap", [max(1, subsample // 2)])
    two = _const(graph, "ptq::two", [2])
    for i, t in enumerate(tensors):
        p = f"ptq::{i}"
        probe = _Probe(t, f"{p}::min", f"{p}::max", t)
        graph.node.append(helper.make_node("ReduceMin", [t], [probe.minimum], keepdims=0, name=f"{p}::ReduceMin"))
        graph.node.append(helper.make_node("ReduceMax", [t], [probe.maximum], keepdims=0, name=f"{p}::ReduceMax"))
        rank = len(prepared.index.shape.get(t, ()))
        row = _row_length(prepared, t)
        if subsample and rank >= 1 and (row is None or row > subsample):
            # k = 2 * (row // subsample) + 1 (odd, so strides do not alias power-of-two layouts)
            probe = _Probe(t, probe.minimum, probe.maximum, f"{p}::values")
            graph.node.extend([
                helper.make_node("Reshape", [t, zero_minus_one], [f"{p}::rows"], name=f"{p}::Reshape"),
                helper.make_node("Shape", [f"{p}::rows"], [f"{p}::shape"], name=f"{p}::Shape"),
                helper.make_node("Slice", [f"{p}::shape", axes, two, starts], [f"{p}::row"], name=f"{p}::Row"),
                helper.make_node("Div", [f"{p}::row", half], [f"{p}::q"], name=f"{p}::Div"),
                helper.make_node("Mul", [f"{p}::q", two], [f"{p}::q2"], name=f"{p}::Mul"),
                helper.make_node("Add", [f"{p}::q2", axes], [f"{p}::step"], name=f"{p}::Add"),
                helper.make_node("Slice", [f"{p}::rows", starts, ends, axes, f"{p}::step"], [probe.values],
                                 name=f"{p}::Slice"),
            ])
        for name in {probe.minimum, probe.maximum, probe.values}:
            graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        probes.append(probe)
    return model, probes


def observe(prepared: Prepared, tensors: Sequence[str], batches: Iterable[Batch], *,
            subsample: int = SUBSAMPLE, progress: Callable[[int], None] | None = None) -> Observations:
    """Run the model once over ``batches`` and stream every tensor into a histogram."""
    import onnxruntime as ort

    model, probes = observation_model(prepared, tensors, subsample)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    hists = {t: histogram.empty() for t in tensors}
    samples = 0
    for batch in batches:
        values = dict(zip(output_names, session.run(output_names, batch.feeds)))
        for probe in probes:
            lo, hi = float(values[probe.minimum]), float(values[probe.maximum])
            if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(values[probe.values]).all()):
                files = ", ".join(p.name for p in batch.files)
                raise DataError(f"tensor {probe.tensor!r} is NaN or infinite on sample(s) {files}")
            hists[probe.tensor] = histogram.update(hists[probe.tensor], values[probe.values],
                                                   minimum=lo, maximum=hi)
        samples += batch.count
        if progress is not None:
            progress(batch.count)
    return Observations(prepared.fingerprint, samples, subsample, hists)
