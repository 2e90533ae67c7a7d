"""How the observation pass runs over a sample folder: in one process, checkpointed every so
many samples and resumed from the checkpoint an interrupted run left, or sharded over Dask
workers (``PassOptions``); ``run_pass`` wires ``collect``, ``checkpoint`` and ``distributed``
together accordingly.

``collect``, ``checkpoint`` and ``distributed`` are imported inside the functions, so that the
API (which names ``PassOptions``) loads without ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import signal
from typing import TYPE_CHECKING, Callable

from ptqcli.choices import CHECKPOINT_EVERY
from ptqcli.errors import Interrupted, Option, OptionError

if TYPE_CHECKING:
    from ptqcli.observe.state import Every
    from ptqcli.observe.dataset import ImageSpec

_log = logging.getLogger("ptq")


@dataclasses.dataclass(frozen=True)
class PassOptions:
    """How the observation pass runs.

    ``checkpoint_every``: when the pass saves its state: ``N`` (an int, or a string of digits)
    samples, or ``"Ts"`` seconds, after the last checkpoint (0: never); ``resume``: continue from
    the checkpoint an interrupted run left (none there: start from the first sample); ``workers``:
    shard the samples over that many local Dask worker processes, or over the workers of the Dask
    ``scheduler`` at that address (needs ``pip install ptq[dask]``; no checkpoints)."""

    checkpoint_every: int | str = CHECKPOINT_EVERY
    resume: bool = False
    workers: int | None = None
    scheduler: str | None = None

    def validate(self) -> None:
        self.every()
        if self.workers is not None and self.workers < 1:
            raise OptionError(Option("workers"), f" must be at least 1, got {self.workers}")
        if self.workers is not None and self.scheduler is not None:
            raise OptionError(Option("workers"), " starts a local cluster; ", Option("scheduler"),
                               " uses a running one: give one of them")
        if self.resume and self.distributed:
            raise OptionError(Option("resume"), " continues a single-process pass; a distributed pass (",
                               Option("workers" if self.workers is not None else "scheduler"),
                               ") keeps no checkpoint")

    def every(self) -> Every:
        """``checkpoint_every`` read."""
        from ptqcli.observe.state import Every

        try:
            return Every.parse(self.checkpoint_every)
        except ValueError:
            raise OptionError(Option("checkpoint_every", str(self.checkpoint_every)),
                               ": give a count of samples (256), seconds (30s) or 0 (never)") from None

    @property
    def distributed(self) -> bool:
        return self.workers is not None or self.scheduler is not None


def run_pass(prepared, tensors, samples, *, batch_size: int | None, image: ImageSpec, pass_options: PassOptions,
             subsample: int, ckpt_path: pathlib.Path, update: Callable[[int], None], on_bad=None):
    """The observation pass of ``tensors`` over ``samples`` (read ``batch_size`` at a time, None:
    sized by ``collect.BATCH_BYTES``; images by ``image``): checkpointed every
    ``pass_options.checkpoint_every`` samples and resumed from ``ckpt_path``, or sharded over Dask
    workers.  ``update(n)`` counts samples; ``on_bad(path, error)``, when given, is called for a
    sample that fails its checks instead of raising.

    The single-process pass must run inside ``stops.deferred()`` (entered by the caller before
    its progress line, so that a first Ctrl-C from the moment the pass is announced waits for
    the batch under way and a checkpoint of every sample run); the Dask pass outside it."""
    from ptqcli.observe import collect

    budget = collect.BATCH_BYTES if batch_size is None else None
    if pass_options.distributed:
        from ptqcli.observe import distributed

        return distributed.observe(prepared, tensors, samples, image=image,
                                   batch_size=batch_size, subsample=subsample, budget=budget,
                                   workers=pass_options.workers, scheduler=pass_options.scheduler, progress=update)
    return _checkpointed(prepared, tensors, samples, batch_size=batch_size, budget=budget, image=image,
                         pass_options=pass_options, subsample=subsample, ckpt_path=ckpt_path,
                         update=update, on_bad=on_bad)


def _checkpointed(prepared, tensors, samples, *, batch_size: int | None, budget: int | None, image: ImageSpec,
                  pass_options: PassOptions, subsample: int, ckpt_path: pathlib.Path,
                  update: Callable[[int], None], on_bad):
    """The single-process pass of ``run_pass`` (runs cut to ``budget`` bytes), with its
    checkpoints and resume."""
    from ptqcli.observe import checkpoint, collect
    from ptqcli.observe.dataset import batches
    from ptqcli.observe.state import PassState


    def feed(start: int = 0):
        return batches(samples, prepared.inputs, batch_size=batch_size, image=image,
                       start=start, on_bad=on_bad)

    key = checkpoint.Key.of(prepared.fingerprint, samples, {
        "tensors": list(tensors), "subsample": subsample, "batch_size": batch_size,
        "image": dataclasses.asdict(image), "budget": budget})
    state = None
    if pass_options.resume:
        if ckpt_path.exists():
            state = checkpoint.load(ckpt_path, key)
            _log.warning(f"resuming from {ckpt_path}: {state.samples} samples observed")
        else:
            _log.warning(f"no checkpoint {ckpt_path} to resume from; starting from the first sample")
    saved: list[int] = []

    def save(s: PassState) -> None:
        checkpoint.save(s, key, ckpt_path)
        saved.append(s.samples)

    every = pass_options.every()
    try:
        if state is None:
            return collect.observe(prepared, tensors, feed(), subsample=subsample, progress=update,
                                   budget=budget, again=feed, checkpoint=save if every else None, every=every)
        update(state.files if not state.recount else len(samples))
        return collect.observe(prepared, tensors, feed(len(samples) if state.recount else state.files),
                               subsample=subsample, progress=update, budget=budget, again=feed, resume=state,
                               first=next(feed(), None), checkpoint=save if every else None, every=every)
    except KeyboardInterrupt as exc:
        if saved or state is not None:  # the file, not saved[-1]: a signal can land between the rename and the append
            done = checkpoint.load(ckpt_path, key).samples if ckpt_path.exists() else None
        else:
            done = None
        if done is not None:
            raise Interrupted(getattr(exc, "signum", signal.SIGINT), checkpoint=str(ckpt_path), done=done) from None
        raise
