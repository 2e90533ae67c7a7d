"""The observation pass: one run of ONNX Runtime over the calibration batches.

Each observed tensor streams into a histogram (``calibrators.histogram``): exact extremes, and a
body of at most ``subsample`` values per sample taken with a fixed odd stride ``k`` along each
sample's row (the tensor viewed as ``[N, -1]``), so the result does not depend on batch size.

Cost, not copies: every tensor's row length comes from ONNX shape inference with the inputs fixed
to the first sample's shapes (or, where that leaves a shape unknown, from running the first
sample with every tensor exposed).  The samples then run a leaner model in which a long tensor
(row longer than ``EXPOSE_ROW``) is reduced inside ONNX Runtime to its minimum, maximum and the
strided slice, so only small outputs leave the runtime; a short tensor is exposed as is
(a few in-graph nodes would cost more than the copy) and reduced in NumPy with the same
arithmetic, so every sample contributes identically.  Memory holds one batch of activations and the
histograms, whatever the number of samples.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from calibrators import histogram
from ptqcli import runtime
from ptqcli.errors import DataError
from ptqcli.graph import Prepared, opset
from ptqcli.observe.dataset import Batch
from ptqcli.observe.observations import Observations

#: Default cap on histogram values per sample and tensor.
SUBSAMPLE = 1 << 12
#: Rows up to this length are copied out and reduced in NumPy; longer ones inside the runtime.
EXPOSE_ROW = 1 << 15
#: With automatic batches, the observed activations of one run stay near this many bytes.
BATCH_BYTES = 1 << 24
#: Values of one tensor gathered before they are counted (bounds the memory that waits).
FLUSH_VALUES = 1 << 16


@dataclass(frozen=True)
class _Probe:
    """Where one tensor's statistics come from in the lean model."""

    tensor: str
    stride: int
    minimum: str | None = None   # output names; None when the tensor itself is an output
    maximum: str | None = None
    values: str | None = None


def stride_for(row: int, subsample: int) -> int:
    """The smallest odd stride that leaves at most ``subsample`` values of a row (1: keep all)."""
    if subsample <= 0 or row <= subsample:
        return 1
    k = math.ceil(row / subsample)
    return k if k % 2 else k + 1


def _exposing(prepared: Prepared, tensors: Sequence[str]) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(prepared.model)
    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    return model


def _extreme(graph: onnx.GraphProto, op: str, data: str, out: str, axis: int | None, opset: int) -> None:
    """``out = op(data)`` over ``axis`` (-1 or None: every axis), without kept dimensions."""
    inputs, attrs = [data], {"keepdims": 0}
    if axis is not None and opset >= 18:
        inputs.append("ptq::last")  # axes as an input from opset 18
    elif axis is not None:
        attrs["axes"] = [axis]
    graph.node.append(helper.make_node(op, inputs, [out], name=f"{out}::{op}", **attrs))


def lean_model(prepared: Prepared, plan: dict[str, tuple[int, int]]) -> tuple[onnx.ModelProto, list[_Probe]]:
    """The prepared model whose only outputs are the probes of ``plan`` (tensor -> (stride, row
    length)); rows longer than ``EXPOSE_ROW`` are reduced in the graph.  Their extremes are
    taken along the last axis first: ONNX Runtime reduces a whole tensor on one thread, but
    spreads the rows of a partial reduction over its threads."""
    model = _exposing(prepared, [t for t, (_, row) in plan.items() if row <= EXPOSE_ROW])
    graph = model.graph
    version = opset(model)
    graph.initializer.extend([
        helper.make_tensor("ptq::rows", TensorProto.INT64, [2], [0, -1]),
        helper.make_tensor("ptq::zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ptq::end", TensorProto.INT64, [1], [2 ** 62]),
        helper.make_tensor("ptq::one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("ptq::last", TensorProto.INT64, [1], [-1]),
    ])
    shapes = prepared.index.shape
    probes = []
    for i, (t, (k, row)) in enumerate(plan.items()):
        if row <= EXPOSE_ROW:
            probes.append(_Probe(t, k))
            continue
        p = f"ptq::{i}"
        probe = _Probe(t, k, f"{p}::min", f"{p}::max", f"{p}::values")
        graph.initializer.append(helper.make_tensor(f"{p}::stride", TensorProto.INT64, [1], [k]))
        for op, out in (("ReduceMin", probe.minimum), ("ReduceMax", probe.maximum)):
            if len(shapes.get(t, ())) >= 2:
                _extreme(graph, op, t, f"{out}::rows", -1, version)
                _extreme(graph, op, f"{out}::rows", out, None, version)
            else:
                _extreme(graph, op, t, out, None, version)
        graph.node.extend([
            helper.make_node("Reshape", [t, "ptq::rows"], [f"{p}::flat"], name=f"{p}::Reshape"),
            helper.make_node("Slice", [f"{p}::flat", "ptq::zero", "ptq::end", "ptq::one", f"{p}::stride"],
                             [probe.values], name=f"{p}::Slice"),
        ])
        graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                            for n in (probe.minimum, probe.maximum, probe.values))
        probes.append(probe)
    return model, probes


def _rows(value: np.ndarray, stride: int) -> np.ndarray:
    """Every ``stride``-th value of each sample's row."""
    if stride == 1 or value.ndim == 0:
        return value
    return value.reshape(value.shape[0], -1)[:, ::stride]


def _check(tensor: str, values: np.ndarray, lo: float, hi: float, batch: Batch) -> None:
    if values.size and not (math.isfinite(lo) and math.isfinite(hi) and np.isfinite(values).all()):
        files = ", ".join(p.name for p in batch.files)
        raise DataError(f"tensor {tensor!r} is NaN or infinite on sample(s) {files}")


def _update(hist: histogram.Histogram, tensor: str, values: np.ndarray, lo: float, hi: float,
            batch: Batch) -> histogram.Histogram:
    _check(tensor, values, lo, hi, batch)
    return histogram.update(hist, values, minimum=lo, maximum=hi) if values.size else hist


class _Pending:
    """Values waiting to be counted.  A histogram update gives the same counts however the
    values are grouped, so the values of many small runs are counted in one update."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.size = 0
        self.lo, self.hi = math.inf, -math.inf

    def add(self, values: np.ndarray, lo: float, hi: float) -> None:
        self.parts.append(np.ravel(values))
        self.size += values.size
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    def flush(self, hist: histogram.Histogram) -> histogram.Histogram:
        if not self.parts:
            return hist
        values = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        lo, hi = self.lo, self.hi
        self.parts, self.size, self.lo, self.hi = [], 0, math.inf, -math.inf
        return histogram.update(hist, values, minimum=lo, maximum=hi)


def _split(batch: Batch) -> tuple[Batch, Batch | None]:
    """The first sample of ``batch``, and the rest (None if there is no rest)."""
    if batch.count == 1:
        return batch, None
    head = {k: v[:1] for k, v in batch.feeds.items()}
    tail = {k: v[1:] for k, v in batch.feeds.items()}
    return Batch(head, batch.files, 1), Batch(tail, batch.files, batch.count - 1)


def _strides(prepared: Prepared, tensors: Sequence[str], sample: Batch, subsample: int,
             hists: dict[str, histogram.Histogram]) -> tuple[dict[str, tuple[int, int]], int]:
    """Run one sample with every tensor exposed: count it, and record each tensor's row length
    and the stride it implies (the plan of :func:`lean_model`).
    Also returns the bytes of the observed tensors of that sample."""
    session = runtime.session(_exposing(prepared, tensors))
    strides = {}
    values = session.run(list(tensors), sample.feeds)
    footprint = sum(v.nbytes for v in values)
    for t, value in zip(tensors, values):
        row = value.size // value.shape[0] if value.ndim and value.shape[0] else value.size
        stride = stride_for(row, subsample)
        lo, hi = (float(value.min()), float(value.max())) if value.size else (math.inf, -math.inf)
        hists[t] = _update(hists[t], t, _rows(value, stride), lo, hi, sample)
        strides[t] = (stride, row)
    return strides, footprint


def _chunks(batch: Batch, size: int | None) -> list[Batch]:
    """``batch`` cut into runs of at most ``size`` samples (``None``: as it is)."""
    if size is None or batch.count <= size:
        return [batch]
    return [Batch({k: v[i:i + size] for k, v in batch.feeds.items()}, batch.files, min(size, batch.count - i))
            for i in range(0, batch.count, size)]


def _static_plan(prepared: Prepared, tensors: Sequence[str], sample: Batch,
                 subsample: int) -> tuple[dict[str, tuple[int, int]], int] | None:
    """The plan of ``_strides`` from ONNX shape inference with the inputs fixed to one sample's
    shapes (no run needed), or None when some observed tensor's shape stays unknown."""
    model = onnx.ModelProto()
    model.CopyFrom(prepared.model)
    for inp in model.graph.input:
        if inp.name in sample.feeds:
            dims = inp.type.tensor_type.shape.dim
            for dim, size in zip(dims, (1,) + sample.feeds[inp.name].shape[1:]):
                dim.Clear()
                dim.dim_value = size
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # shape inference is an optimization here: the probe run always works
        return None
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    if any(t not in shapes for t in tensors):
        return None
    plan, footprint = {}, 0
    for t in tensors:
        size = int(np.prod(shapes[t], dtype=np.int64))
        row = size // shapes[t][0] if shapes[t] else 1
        plan[t] = (stride_for(row, subsample), row)
        footprint += 4 * size
    return plan, footprint


def observe(prepared: Prepared, tensors: Sequence[str], batches: Iterable[Batch], *,
            subsample: int = SUBSAMPLE, progress: Callable[[int], None] | None = None,
            budget: int | None = None) -> Observations:
    """Run the model once over ``batches`` and stream every tensor into a histogram.

    ``budget``: when set, batches are cut so that the observed tensors of one run take at most
    about that many bytes (as measured on the first sample): activations, not inputs, decide
    memory (Magika's 2,048 input bytes become 4 MB of activations per sample)."""
    hists = {t: histogram.empty() for t in tensors}
    batches = iter(batches)
    first = next(batches, None)
    if first is None or not tensors:
        return Observations(prepared.fingerprint, 0, subsample, hists)
    head, rest = _split(first)
    static = _static_plan(prepared, tensors, head, subsample)
    if static is not None:  # shapes known: every sample goes through the lean model
        strides, footprint = static
        rest, samples = first, 0
    else:  # the first sample runs with every tensor exposed, which tells the row lengths
        strides, footprint = _strides(prepared, tensors, head, subsample, hists)
        samples = 1
        if progress is not None:
            progress(1)
    size = None if budget is None else max(1, budget // max(footprint, 1))
    model, probes = lean_model(prepared, strides)
    session = runtime.session(model)
    names = [o.name for o in session.get_outputs()]
    pending = {t: _Pending() for t in tensors}
    runs = (chunk for batch in itertools.chain([rest] if rest is not None else [], batches)
            for chunk in _chunks(batch, size))
    for batch in runs:
        out = dict(zip(names, session.run(names, batch.feeds)))
        for probe in probes:
            if probe.minimum is None:  # exposed: statistics in NumPy
                value = out[probe.tensor]
                lo, hi = (float(value.min()), float(value.max())) if value.size else (math.inf, -math.inf)
                values = _rows(value, probe.stride)
            else:
                values, lo, hi = out[probe.values], float(out[probe.minimum]), float(out[probe.maximum])
            _check(probe.tensor, values, lo, hi, batch)
            wait = pending[probe.tensor]
            wait.add(values, lo, hi)
            if wait.size >= FLUSH_VALUES:
                hists[probe.tensor] = wait.flush(hists[probe.tensor])
        samples += batch.count
        if progress is not None:
            progress(batch.count)
    for t, wait in pending.items():
        hists[t] = wait.flush(hists[t])
    return Observations(prepared.fingerprint, samples, subsample, hists)
