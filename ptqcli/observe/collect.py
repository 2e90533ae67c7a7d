"""The observation pass: one run of ONNX Runtime over the calibration batches.

Each observed tensor streams into a histogram (``calibrators.histogram``): exact extremes, and a
body of about ``subsample`` values per sample: every ``k``-th value of the *stream*, the
concatenation of the samples' flattened rows in file order (see ``stride_for`` for ``k`` and for
why this sees every channel).  A run over a batch starts where the previous run left off, so
the values counted do not depend on batch size.

Cost: every tensor's row length comes from ONNX shape inference with the inputs fixed to the
first sample's shapes, and sizes the runs (``probes.run_samples``).  The samples run a lean model
(``probes``) whose outputs are the observed tensors; NumPy takes each one's extremes and its
subsample.  The length of a tensor that shape inference leaves unknown is learned from the first
run, and the first sample then runs alone, so that it sizes the runs.  The minimum of a tensor
that cannot be negative is not taken (the range has 0 as its lower end anyway; the histogram
keeps the smallest value it counted).  Memory holds one run of activations and the histograms,
whatever the number of samples.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx

from calibrators import guard, histogram
from ptqcli import runtime, stops
from ptqcli.errors import DataError, Interrupted
from ptqcli.graph import Prepared
from ptqcli.graph.sign import nonnegative
from ptqcli.observe.dataset import Batch
from ptqcli.observe.observations import Observations
from ptqcli.observe.state import Checkpoint, Every, PassState, Saver
from ptqcli.observe.probes import Plan, lean_model, run_samples

#: Default cap on histogram values per sample and tensor.
SUBSAMPLE = 1 << 12
#: With automatic batches, the observed activations of one run stay near this many bytes.
BATCH_BYTES = 1 << 24
#: Values of one tensor gathered before they are counted, and of all tensors together (bounds the
#: memory that waits: each tensor's own bound alone lets the peak creep up with the samples, as
#: more of the tensors' fill levels happen to peak together).
FLUSH_VALUES = 1 << 16
PENDING_VALUES = 1 << 20


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


def _kept(value: np.ndarray, start: int, stride: int) -> np.ndarray:
    """Every ``stride``-th value of the flattened batch from ``start`` (as the in-graph Slice),
    copied: a strided view would keep the whole output alive until its values are counted."""
    return value.reshape(-1)[start::stride].copy()


def _bad(tensor: str, batch: Batch) -> DataError:
    files = ", ".join(p.name for p in batch.files)
    return DataError(f"tensor {tensor!r} is NaN or infinite on sample(s) {files}")


class _Pending:
    """Values waiting to be counted.  A histogram update gives the same counts however the
    values are grouped, so the values of many small runs are counted in one update."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.size = 0
        self.lo, self.hi = math.inf, -math.inf

    def add(self, values: np.ndarray, lo: float | None, hi: float) -> None:
        self.parts.append(values)
        self.size += values.size
        self.lo, self.hi = min(self.lo, math.inf if lo is None else lo), max(self.hi, hi)

    def flush(self, hist: histogram.Histogram) -> histogram.Histogram:
        if not self.parts:
            return hist
        parts, lo, hi = self.parts, self.lo, self.hi
        self.parts, self.size, self.lo, self.hi = [], 0, math.inf, -math.inf
        return histogram.update(hist, parts, minimum=None if lo == math.inf else lo, maximum=hi)


def _split(batch: Batch) -> tuple[Batch, Batch | None]:
    """The first sample of ``batch``, and the rest (None if there is no rest)."""
    if batch.count == 1:
        return batch, None
    head = {k: v[:1] for k, v in batch.feeds.items()}
    tail = {k: v[1:] for k, v in batch.feeds.items()}
    return Batch(head, batch.files, 1), Batch(tail, batch.files, batch.count - 1)


def _chunks(batch: Batch, size: int | None) -> list[Batch]:
    """``batch`` cut into runs of at most ``size`` samples (``None``: as it is)."""
    if size is None or batch.count <= size:
        return [batch]
    return [Batch({k: v[i:i + size] for k, v in batch.feeds.items()}, batch.files, min(size, batch.count - i))
            for i in range(0, batch.count, size)]


def rows(prepared: Prepared, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Values per sample of every tensor whose shape ONNX shape inference fixes once the inputs
    have ``shapes`` (leading axis aside: one sample); empty when inference fails."""
    model = onnx.ModelProto()
    model.CopyFrom(prepared.model)
    for inp in model.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            for dim, size in zip(dims, (1,) + tuple(shapes[inp.name][1:])):
                dim.Clear()
                dim.dim_value = size
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # shape inference is an optimization here: the first run tells the rest
        return {}
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            out[vi.name] = int(np.prod([d.dim_value for d in dims], dtype=np.int64))
    return out


def plans(prepared: Prepared, tensors: Sequence[str], sample: Batch, subsample: int) -> dict[str, Plan]:
    """How each tensor is observed, from one sample's input shapes (a tensor whose length they
    do not fix is learned from the first run)."""
    known = rows(prepared, {k: v.shape for k, v in sample.feeds.items()})
    return {t: Plan(known.get(t), stride_for(known[t], subsample) if t in known else None,
                    not nonnegative(prepared.index, t)) for t in tensors}


class Stream:
    """Per tensor: where the stream stands (values seen: ``seen``, 0 at the first sample), the
    stride (once known) and whether its minimum is wanted."""

    def __init__(self, plans: dict[str, Plan], subsample: int, seen: dict[str, int] | None = None) -> None:
        self.seen = {t: (seen or {}).get(t, 0) for t in plans}
        self.stride = {t: p.stride for t, p in plans.items()}
        self.lower = {t: p.lower for t, p in plans.items()}
        self.subsample = subsample

    def take(self, t: str, value: np.ndarray, batch: Batch) -> tuple[np.ndarray, float | None, float]:
        """The values of tensor ``t`` to count from one run's ``value``, its minimum (None: not
        wanted) and its maximum.  NumPy's min and max propagate NaN: finite extremes, finite values."""
        if self.stride[t] is None:  # the first run tells the row length (a batch's rows are alike)
            self.stride[t] = stride_for(value.size // batch.count, self.subsample)
        hi = float(value.max()) if value.size else -math.inf
        lo = float(value.min()) if self.lower[t] and value.size else None
        if value.size and not (math.isfinite(hi) and (lo is None or math.isfinite(lo))):
            raise _bad(t, batch)
        k = self.stride[t]
        values = _kept(value, -self.seen[t] % k, k)
        self.seen[t] += value.size
        return values, lo, hi


def run(session, batches: Iterable[Batch], stream: Stream, hists: dict[str, histogram.Histogram],
        progress: Callable[[int], None] | None, *, chunk: int | None = None, saver: Saver | None = None) -> int:
    """Run ``session`` over ``batches`` (each cut into runs of at most ``chunk`` samples) and count
    each output into the histogram of its name in ``hists``; after a batch, when ``saver`` says a
    checkpoint is due, or a signal is held (``ptqcli.stops``), count every waiting value and save
    (and then, for a signal, stop).  Returns the number of samples run."""
    names = [o.name for o in session.get_outputs()]
    pending = {t: _Pending() for t in names}

    def flush() -> None:
        for t, wait in pending.items():
            hists[t] = wait.flush(hists[t])

    samples = 0
    for whole in batches:
        for batch in _chunks(whole, chunk):
            for t, value in zip(names, session.run(names, batch.feeds)):
                values, lo, hi = stream.take(t, value, batch)
                wait = pending[t]
                wait.add(values, lo, hi)
                if wait.size >= FLUSH_VALUES:
                    hists[t] = wait.flush(hists[t])
            waiting = sum(w.size for w in pending.values())
            while waiting > PENDING_VALUES:  # the fullest first: what waits stays bounded whatever the phases
                t, wait = max(pending.items(), key=lambda item: item[1].size)
                waiting -= wait.size
                hists[t] = wait.flush(hists[t])
            samples += batch.count
            if progress is not None:
                progress(batch.count)
        stop = stops.due()
        if saver is not None and saver.due(len(whole.files), whole.count, stopping=stop is not None):
            flush()
            saver.save()
        if stop is not None:  # a signal held for this point: the checkpoint holds every sample run
            raise Interrupted(stop)
    flush()
    return samples


def _main(prepared: Prepared, plan: dict[str, Plan], first: Batch | None, batches: Iterator[Batch],
          state: PassState | None, progress: Callable[[int], None] | None, budget: int | None,
          checkpoint: Checkpoint | None, every: Every, subsample: int) -> PassState:
    """The main stage, from the start (``state`` None; ``first`` is then the first batch) or from
    ``state``.  Returns the state at its end."""
    stream = Stream(plan, subsample, state.seen if state is not None else None)
    if state is not None:
        stream.stride.update({t: k for t, k in state.strides.items() if k})
    hists = dict(state.histograms) if state is not None else {t: histogram.empty() for t in plan}
    samples = state.samples if state is not None else 0
    session = runtime.session(lean_model(prepared, list(plan)))
    if state is None:
        assert first is not None
        if any(p.row is None for p in plan.values()):  # the first sample runs alone: its lengths size the runs
            head, rest = _split(first)
            samples = run(session, [head], stream, hists, progress)
            first = rest
        lengths = {t: p.row if p.row is not None else stream.seen[t] for t, p in plan.items()}
        chunk = run_samples(budget, lengths)
        batches = itertools.chain([first] if first is not None else [], batches)
    else:
        chunk = state.chunk

    def snapshot(files: int) -> PassState:
        return PassState(files, samples + counted.samples, {t: k or 0 for t, k in stream.stride.items()},
                         dict(stream.seen), chunk, dict(hists))

    counted = _Counted(batches)
    saver = Saver(checkpoint, every, state.files if state is not None else 0, snapshot)
    samples += run(session, counted, stream, hists, progress, chunk=chunk or None, saver=saver)
    return PassState(saver.files, samples, {t: k or 0 for t, k in stream.stride.items()}, dict(stream.seen),
                     chunk, hists)


class _Counted:
    """An iterator of batches that counts the samples it has handed out (and had run: a state is
    saved between batches, when the batch handed out last has been run)."""

    def __init__(self, batches: Iterable[Batch]) -> None:
        self._batches, self.samples = iter(batches), 0

    def __iter__(self) -> Iterator[Batch]:
        for batch in self._batches:
            self.samples += batch.count
            yield batch


def _recount(prepared: Prepared, state: PassState, again: Callable[[int], Iterable[Batch]],
             checkpoint: Checkpoint | None, every: Every, subsample: int,
             budget: int | None) -> dict[str, histogram.Histogram]:
    """The second stage: every value of ``state.recount`` counted again, from ``state``."""
    dense = {t: Plan(row, 1, not nonnegative(prepared.index, t)) for t, row in state.recount}
    chunk = run_samples(budget, dict(state.recount))
    stream = Stream(dense, subsample, state.seen)
    fresh = dict(state.fresh)

    def snapshot(files: int) -> PassState:
        return dataclasses.replace(state, files=files, seen=dict(stream.seen), fresh=dict(fresh))

    saver = Saver(checkpoint, every, state.files, snapshot)
    run(runtime.session(lean_model(prepared, list(dense))), again(state.files), stream, fresh, None,
        chunk=chunk or None, saver=saver)
    return fresh


def observe(prepared: Prepared, tensors: Sequence[str], batches: Iterable[Batch], *,
            subsample: int = SUBSAMPLE, progress: Callable[[int], None] | None = None,
            budget: int | None = None, again: Callable[[int], Iterable[Batch]] | None = None,
            resume: PassState | None = None, first: Batch | None = None,
            checkpoint: Checkpoint | None = None, every: Every = Every()) -> Observations:
    """Run the model once over ``batches`` and stream every tensor into a histogram.

    ``budget``: when set, batches are cut so that the observed tensors of one run take at most
    about that many bytes (as measured on the first sample): activations, not inputs, decide
    memory (Magika's 2,048 input bytes become 4 MB of activations per sample).

    ``again(start)``: the same batches once more, from sample file ``start``.  When given, every
    subsampled tensor whose exact extremes lie far beyond what its histogram counted
    (``calibrators.guard.uncounted``) is counted again, every value, in a second pass that runs
    only the part of the model it needs; without it, ranges drawn from such a histogram are
    widened instead (``quantize.decide``).

    ``checkpoint(state)`` is called when ``every`` says, at the end of a batch.  ``resume``
    continues from such a state: ``batches`` then starts at file ``resume.files`` (unless the
    state is in the second stage, which reads ``again``) and ``first`` is the folder's first
    batch, whose shapes fixed the plan.  Batches must be cut where the interrupted run cut them
    (``dataset.batches`` from a batch boundary with the same batch size does); the result is then
    identical to that of an uninterrupted run, since a histogram counts the same values however
    they are grouped (``calibrators.histogram``)."""
    batches = iter(batches)
    if resume is None:
        first = next(batches, None)
    if first is None or not tensors:
        return Observations(prepared.fingerprint, 0, subsample, {t: histogram.empty() for t in tensors})
    head, _ = _split(first)
    plan = plans(prepared, tensors, head, subsample)
    state = resume
    if state is None or not state.recount:
        state = _main(prepared, plan, first if resume is None else None, batches, resume, progress, budget,
                      checkpoint, every, subsample)
        flagged = [t for t in tensors if state.strides[t] > 1 and any(guard.uncounted(state.histograms[t]))]
        if not flagged or again is None:
            return Observations(prepared.fingerprint, state.samples, subsample, state.histograms, state.strides)
        rows = tuple((t, plan[t].row or state.seen[t] // state.samples) for t in flagged)
        state = PassState(0, state.samples, state.strides, dict.fromkeys(flagged, 0), state.chunk, state.histograms,
                          rows, {t: histogram.empty() for t in flagged})
        if checkpoint is not None:
            checkpoint(state)
    assert again is not None
    fresh = _recount(prepared, state, again, checkpoint, every, subsample, budget)
    recounted = [t for t, _ in state.recount]
    return Observations(prepared.fingerprint, state.samples, subsample, {**state.histograms, **fresh},
                        {**state.strides, **dict.fromkeys(recounted, 1)}, frozenset(recounted))
