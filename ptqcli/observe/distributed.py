"""The observation pass sharded over Dask workers (``pip install ptq[dask]``).

The sample files are cut into contiguous shards; each worker runs its own ONNX Runtime session
on a shard and returns one histogram per tensor; the histograms are merged.  The result is the
one a single process computes, byte for byte, because every worker counts exactly the values the
single process counts, and counts them into histograms that add exactly:

- *Bins.*  A histogram's grid is a power-of-two width anchored at zero and chosen from the
  extremes alone (``calibrators.histogram``): two shards' grids differ only by a power of two,
  and ``histogram.merge`` sums whole groups of bins.  No count is split, whatever the shards'
  ranges, so merging is exact and does not depend on the order.
- *Subsample.*  A tensor's histogram counts every ``k``-th value of the stream of all samples'
  values in file order (``collect.stride_for``), so a shard must start at the offset the single
  process has at its first sample: the number of values of that tensor in all earlier samples.
  Those counts are known before any run: a sample's input shapes are read from its file (only
  the header of a ``.npy``), and ONNX shape inference gives every observed tensor's length for
  each distinct input shape (``collect.rows``).  The strides come from the folder's first sample,
  as in one process.  A model in which a tensor's length depends on the values, not the shapes,
  cannot be sharded this way and is refused (use one process).
- *Batches.*  Shards begin where a single process begins a batch, and cut their batches and runs
  alike (``dataset.batch_starts``, the same batch size and chunk): each run sees the same
  samples together.
- *Second stage.*  Tensors whose extremes lie far beyond their counted body are counted again,
  every value (``collect.observe``); that stage is sharded the same way (stride 1: no offsets).

A worker that dies loses its shard; the Dask scheduler gives it to another worker (up to its
``allowed-failures`` limit, 3 by default).  Each worker runs ONNX Runtime on ``cores // workers``
threads of its host (at least 1), so that workers on one machine do not fight.  The workers of a
``--scheduler`` cluster need ptq installed and the sample files at the same paths.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import onnx

from calibrators import guard, histogram
from ptqcli import runtime
from ptqcli.errors import Option, OptionError, UnsupportedError
from ptqcli.graph import InputSpec, Prepared
from ptqcli.graph.sign import nonnegative
from ptqcli.observe import collect
from ptqcli.observe.dataset import ImageSpec, batch_limit, batch_starts, batches, sample_shapes
from ptqcli.observe.observations import Observations
from ptqcli.observe.probes import Plan, lean_model, run_samples

#: Shards per worker: more than one, so that a fast worker takes over the shards of a slow (or
#: dead) one; few, since each shard makes an ONNX Runtime session.
SHARDS_PER_WORKER = 4
INSTALL = "pip install ptq[dask]"


def client(workers: int | None, scheduler: str | None):
    """A Dask client: on a new local cluster of ``workers`` processes, or on ``scheduler``.
    Closing it closes the local cluster too."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise OptionError(Option("workers" if workers is not None else "scheduler"),
                          f" needs Dask, which is not installed: {INSTALL}") from None
    if scheduler is not None:
        try:
            return Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise OptionError(Option("scheduler", scheduler), f": cannot connect ({exc})") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=40)
    c = Client(cluster)
    c._ptq_cluster = cluster  # closed with the client
    return c


def close(c) -> None:
    cluster = getattr(c, "_ptq_cluster", None)
    c.close()
    if cluster is not None:
        cluster.close()


@dataclass(frozen=True)
class Shard:
    """Sample files ``files`` of the folder, their stream positions ``seen`` at the first file
    (per tensor) and how many samples they hold."""

    files: tuple[pathlib.Path, ...]
    seen: dict[str, int]
    samples: int


@dataclass(frozen=True)
class Job:
    """What every shard runs with (sent to each worker once)."""

    model: onnx.ModelProto
    plan: dict[str, Plan]
    inputs: tuple[InputSpec, ...]
    image: ImageSpec
    batch_size: int
    chunk: int
    subsample: int
    per_host: dict[str, int]


@dataclass(frozen=True)
class Layout:
    """The folder as a single process would run it: each file's sample count and the values of
    each tensor per sample of its shapes (``lengths[signatures[i]]``), the files where batches
    begin, and the batch size."""

    files: tuple[pathlib.Path, ...]
    counts: list[int]
    signatures: list[tuple]
    lengths: dict[tuple, dict[str, int]]
    starts: list[int]
    limit: int

    @property
    def first(self) -> dict[str, int]:
        """Every tensor's length in the first sample."""
        return self.lengths[self.signatures[0]]


def layout(prepared: Prepared, tensors: Sequence[str], files: Sequence[pathlib.Path], image: ImageSpec,
           batch_size: int | None) -> Layout:
    """Read the folder's input shapes (headers only where it can) and infer every tensor's length
    for each distinct one.  Raises ``UnsupportedError`` when a tensor's length does not follow
    from the input shapes."""
    shapes = [sample_shapes(f, prepared.inputs, image) for f in files]
    signatures = [tuple(sorted((k, v[1:]) for k, v in s.items())) for s in shapes]
    lengths: dict[tuple, dict[str, int]] = {}
    for s, sig in zip(shapes, signatures):
        if sig not in lengths:
            known = collect.rows(prepared, s)
            missing = [t for t in tensors if t not in known]
            if missing:
                raise UnsupportedError(f"tensor {missing[0]!r}: its length does not follow from the input shapes "
                                       f"(ONNX shape inference cannot tell it), so the shards cannot know where "
                                       f"their subsample starts; calibrate in one process (without --workers)")
            lengths[sig] = {t: known[t] for t in tensors}
    counts = [next(iter(s.values()))[0] for s in shapes]  # samples per file: the leading axis
    return Layout(tuple(files), counts, signatures, lengths, batch_starts(shapes, prepared.inputs, batch_size),
                  batch_limit(shapes[0], prepared.inputs, batch_size))


def shards(folder: Layout, count: int) -> list[Shard]:
    """The folder cut into about ``count`` shards at batch boundaries, each with the stream
    positions of its first file."""
    step = max(1, -(-len(folder.starts) // max(count, 1)))
    cuts = folder.starts[::step] + [len(folder.files)]
    out, seen = [], dict.fromkeys(folder.first, 0)
    for a, b in zip(cuts, cuts[1:]):
        out.append(Shard(folder.files[a:b], dict(seen), sum(folder.counts[a:b])))
        for i in range(a, b):
            for t, n in folder.lengths[folder.signatures[i]].items():
                seen[t] += folder.counts[i] * n
    return out


def _threads(per_host: dict[str, int]) -> int:
    """ONNX Runtime threads for this worker: its host's cores shared among its workers there."""
    from distributed import get_worker

    try:
        host = get_worker().address.rsplit(":", 1)[0].split("://")[-1]
    except ValueError:
        host = ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // per_host.get(host, 1))


#: The session of the last job this worker process ran (a job's shards share it).
_session: tuple[Job, Any] | None = None


def run_shard(job: Job, shard: Shard) -> tuple[dict[str, histogram.Histogram], int]:
    """Observe one shard (on a worker): its histograms and the samples it ran."""
    global _session
    if _session is None or _session[0] is not job:  # Dask hands a worker's tasks one copy of a scattered job
        _session = job, runtime.session(job.model, threads=_threads(job.per_host))
    stream = collect.Stream(job.plan, job.subsample, shard.seen)
    hists = {t: histogram.empty() for t in job.plan}
    feed = batches(shard.files, job.inputs, batch_size=job.batch_size, image=job.image)
    samples = collect.run(_session[1], feed, stream, hists, None, chunk=job.chunk or None)
    return hists, samples


def _per_host(c) -> dict[str, int]:
    out: dict[str, int] = {}
    for info in c.scheduler_info()["workers"].values():
        out[info["host"]] = out.get(info["host"], 0) + 1
    return out


def _gather(c, job: Job, parts: list[Shard], progress: Callable[[int], None] | None) -> tuple[dict, int]:
    """Run every shard and merge what they return."""
    from distributed import as_completed

    remote = c.scatter(job, broadcast=True)
    futures = {c.submit(run_shard, remote, s, pure=False): s for s in parts}
    merged: dict[str, histogram.Histogram] = {t: histogram.empty() for t in job.plan}
    samples = 0
    for future in as_completed(futures):
        hists, n = future.result()
        for t, h in hists.items():
            merged[t] = histogram.merge(merged[t], h)
        samples += n
        if progress is not None:
            progress(len(futures[future].files))
    return merged, samples


def observe(prepared: Prepared, tensors: Sequence[str], files: Sequence[pathlib.Path], *, image: ImageSpec,
            batch_size: int | None, subsample: int, budget: int | None, workers: int | None,
            scheduler: str | None, progress: Callable[[int], None] | None = None, dask_client: Any = None) -> Observations:
    """``collect.observe`` over ``files`` (with its second stage), sharded over Dask workers: a
    local cluster of ``workers`` processes, the cluster of ``scheduler``, or ``dask_client``."""
    if not files or not tensors:
        return Observations(prepared.fingerprint, 0, subsample, {t: histogram.empty() for t in tensors})
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # the cluster starts while the folder's layout is read
        starting = pool.submit(client, workers, scheduler) if dask_client is None else None
        try:
            folder = layout(prepared, tensors, files, image, batch_size)
        except BaseException:
            if starting is not None and starting.exception() is None:
                close(starting.result())
            raise
    c = dask_client if starting is None else starting.result()
    try:
        per_host = _per_host(c)
        parts = shards(folder, SHARDS_PER_WORKER * max(1, sum(per_host.values())))
        first, limit = folder.first, folder.limit
        plan = {t: Plan(first[t], collect.stride_for(first[t], subsample), not nonnegative(prepared.index, t))
                for t in tensors}
        model = lean_model(prepared, tensors)
        strides = {t: p.stride for t, p in plan.items()}
        chunk = run_samples(budget, first)
        job = Job(model, plan, tuple(prepared.inputs), image, limit, chunk, subsample, per_host)
        hists, samples = _gather(c, job, parts, progress)
        flagged = [t for t in tensors if strides[t] > 1 and any(guard.uncounted(hists[t]))]
        if flagged:
            dense = {t: Plan(first[t], 1, plan[t].lower) for t in flagged}
            model = lean_model(prepared, flagged)
            chunk = run_samples(budget, {t: first[t] for t in flagged})
            again = Job(model, dense, job.inputs, image, limit, chunk, subsample, per_host)
            fresh, _ = _gather(c, again, [Shard(s.files, dict.fromkeys(flagged, 0), s.samples) for s in parts], None)
            hists.update(fresh)
            strides.update(dict.fromkeys(flagged, 1))
    finally:
        if dask_client is None:
            close(c)
    return Observations(prepared.fingerprint, samples, subsample, hists, strides, frozenset(flagged))
