"""The observation pass: one run of ONNX Runtime over the calibration batches.

Each observed tensor streams into a histogram (``calibrators.histogram``): exact extremes, and a
body of about ``subsample`` values per sample: every ``k``-th value of the *stream*, the
concatenation of the samples' flattened rows in file order (see ``stride_for`` for ``k`` and for
why this sees every channel).  A run over a batch starts where the previous run left off, so
the values counted do not depend on batch size.

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
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from calibrators import guard, histogram
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
    size: str | None = None
    start: str | None = None     # input name: where this run's strided slice starts


def _prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def stride_for(row: int, subsample: int) -> int:
    """The stride ``k`` of the histogram subsample for rows of ``row`` values (1: keep all):
    the smallest prime that leaves at most ``subsample`` values of a row and does not divide it.

    Why it cannot alias.  The values counted are those at positions ``0, k, 2k, ...`` of the
    stream of rows, one row per sample in file order.  Take any trailing group of axes of the
    tensor whose sizes do not change from sample to sample (the channels of ``[N, T, C]``, or
    ``H, W`` of ``[N, C, H, W]``), with ``P`` elements: every row is a whole number of such
    groups, so a value's index within the group is its stream position modulo ``P``.  ``P``
    divides ``row``, so ``k`` is coprime to ``P``, and ``m -> m k mod P`` is a bijection: any
    ``P`` consecutive counted values hit every index of the group exactly once.  Each channel
    (each index of each such axis) therefore gets ``floor(K / P)`` or ``ceil(K / P)`` of the
    ``K`` values counted, whatever the shape and however long the rows: a fixed stride that
    divides a channel count (3 of 120) would count a third of the channels, forever.  The
    outermost axis of a row (``T``, or ``C`` of NCHW) is swept in order: every ``k`` consecutive
    positions hold one counted value.

    (A row is one sample's values when the tensor's leading axis counts samples, as it does for
    every tensor this tool batches; a run slices its whole batch as one piece of the stream.)

    ``k`` is chosen on the first sample; later samples may have other lengths (a dynamic ``T``).
    The argument above needs only the trailing groups of fixed size, which divide every row.  A
    prime ``k`` also keeps a dynamic inner axis from aliasing unless its size is a multiple of
    ``k`` itself (a composite stride aliases with every multiple of each of its factors)."""
    if subsample <= 0 or row <= subsample:
        return 1
    k = max(2, math.ceil(row / subsample))
    while not _prime(k) or row % k == 0:
        k += 1
    return k


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
    length)); rows longer than ``EXPOSE_ROW`` are reduced in the graph: the extremes, the
    tensor's size, and the strided slice of the flattened batch from a start fed with each run.
    Extremes are taken along the last axis first: ONNX Runtime reduces a whole tensor on one
    thread, but spreads the rows of a partial reduction over its threads."""
    model = _exposing(prepared, [t for t, (_, row) in plan.items() if row <= EXPOSE_ROW])
    graph = model.graph
    version = opset(model)
    graph.initializer.extend([
        helper.make_tensor("ptq::flat", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("ptq::end", TensorProto.INT64, [1], [2 ** 62]),
        helper.make_tensor("ptq::zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ptq::last", TensorProto.INT64, [1], [-1]),
    ])
    shapes = prepared.index.shape
    probes = []
    for i, (t, (k, row)) in enumerate(plan.items()):
        if row <= EXPOSE_ROW:
            probes.append(_Probe(t, k))
            continue
        p = f"ptq::{i}"
        probe = _Probe(t, k, f"{p}::min", f"{p}::max", f"{p}::values", f"{p}::size", f"{p}::start")
        graph.initializer.append(helper.make_tensor(f"{p}::stride", TensorProto.INT64, [1], [k]))
        graph.input.append(helper.make_tensor_value_info(probe.start, TensorProto.INT64, [1]))
        for op, out in (("ReduceMin", probe.minimum), ("ReduceMax", probe.maximum)):
            if len(shapes.get(t, ())) >= 2:
                _extreme(graph, op, t, f"{out}::rows", -1, version)
                _extreme(graph, op, f"{out}::rows", out, None, version)
            else:
                _extreme(graph, op, t, out, None, version)
        graph.node.extend([
            helper.make_node("Reshape", [t, "ptq::flat"], [f"{p}::flat"], name=f"{p}::Reshape"),
            helper.make_node("Slice", [f"{p}::flat", probe.start, "ptq::end", "ptq::zero", f"{p}::stride"],
                             [probe.values], name=f"{p}::Slice"),
            helper.make_node("Size", [t], [probe.size], name=f"{p}::Size"),
        ])
        graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                            for n in (probe.minimum, probe.maximum, probe.values))
        graph.output.append(helper.make_tensor_value_info(probe.size, TensorProto.INT64, []))
        probes.append(probe)
    return model, probes


def _kept(value: np.ndarray, start: int, stride: int) -> np.ndarray:
    """Every ``stride``-th value of the flattened batch from ``start`` (as the in-graph Slice)."""
    if stride == 1:
        return value
    return value.reshape(-1)[start::stride]


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
        stride = stride_for(value.size, subsample)
        lo, hi = (float(value.min()), float(value.max())) if value.size else (math.inf, -math.inf)
        hists[t] = _update(hists[t], t, _kept(value, 0, stride), lo, hi, sample)
        strides[t] = (stride, value.size)
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
        size = int(np.prod(shapes[t], dtype=np.int64))  # one sample: the row length
        plan[t] = (stride_for(size, subsample), size)
        footprint += 4 * size
    return plan, footprint


def _reads(node: onnx.NodeProto) -> Iterator[str]:
    """Every tensor name ``node`` reads, those its subgraphs read from the outer scope included."""
    yield from node.input
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for inner in g.node:
                yield from _reads(inner)


def _upstream(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the nodes its outputs do not depend on (ONNX Runtime runs every node of
    a graph, fetched or not), nor the initializers they alone read."""
    needed = {o.name for o in model.graph.output}
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


def _stream(session, probes: Sequence[_Probe], runs: Iterable[Batch], hists: dict[str, histogram.Histogram],
            seen: dict[str, int], progress: Callable[[int], None] | None) -> int:
    """Run ``session`` over ``runs`` and count each probe's values into ``hists``; ``seen``
    holds the stream position of every tensor and is advanced.  Returns the samples run."""
    names = [o.name for o in session.get_outputs()]
    pending = {p.tensor: _Pending() for p in probes}
    samples = 0
    for batch in runs:
        # Each tensor's slice starts where the stream's next multiple of its stride falls.
        starts = {p.start: np.array([-seen[p.tensor] % p.stride], np.int64) for p in probes if p.start}
        out = dict(zip(names, session.run(names, {**batch.feeds, **starts})))
        for probe in probes:
            if probe.minimum is None:  # exposed: statistics in NumPy
                value = out[probe.tensor]
                lo, hi = (float(value.min()), float(value.max())) if value.size else (math.inf, -math.inf)
                values = _kept(value, -seen[probe.tensor] % probe.stride, probe.stride)
                seen[probe.tensor] += value.size
            else:
                values, lo, hi = out[probe.values], float(out[probe.minimum]), float(out[probe.maximum])
                seen[probe.tensor] += int(out[probe.size])
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
    return samples


def observe(prepared: Prepared, tensors: Sequence[str], batches: Iterable[Batch], *,
            subsample: int = SUBSAMPLE, progress: Callable[[int], None] | None = None,
            budget: int | None = None, again: Callable[[], Iterable[Batch]] | None = None) -> Observations:
    """Run the model once over ``batches`` and stream every tensor into a histogram.

    ``budget``: when set, batches are cut so that the observed tensors of one run take at most
    about that many bytes (as measured on the first sample): activations, not inputs, decide
    memory (Magika's 2,048 input bytes become 4 MB of activations per sample).

    ``again``: the same batches once more.  When given, every subsampled tensor whose exact
    extremes lie far beyond what its histogram counted (``calibrators.guard.uncounted``) is
    counted again, every value, in a second pass that runs only the part of the model it needs;
    without it, ranges drawn from such a histogram are widened instead (``quantize.decide``)."""
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
        seen = dict.fromkeys(tensors, 0)
    else:  # the first sample runs with every tensor exposed, which tells the row lengths
        strides, footprint = _strides(prepared, tensors, head, subsample, hists)
        samples = 1
        seen = {t: row for t, (_, row) in strides.items()}
        if progress is not None:
            progress(1)
    size = None if budget is None else max(1, budget // max(footprint, 1))
    model, probes = lean_model(prepared, strides)
    runs = (chunk for batch in itertools.chain([rest] if rest is not None else [], batches)
            for chunk in _chunks(batch, size))
    samples += _stream(runtime.session(model), probes, runs, hists, seen, progress)
    flagged = [t for t in tensors if strides[t][0] > 1 and any(guard.uncounted(hists[t]))]
    if flagged and again is not None:
        dense = {t: (1, strides[t][1]) for t in flagged}
        model, probes = lean_model(prepared, dense)
        fresh = {t: histogram.empty() for t in flagged}
        runs = (chunk for batch in again() for chunk in _chunks(batch, size))
        _stream(runtime.session(_upstream(model)), probes, runs, fresh, dict.fromkeys(flagged, 0), None)
        hists.update(fresh)
        strides.update(dense)
    else:
        flagged = []
    return Observations(prepared.fingerprint, samples, subsample, hists,
                        {t: k for t, (k, _) in strides.items()}, frozenset(flagged))
