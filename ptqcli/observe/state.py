"""Where an observation pass stands, and when it saves that: the state a checkpoint holds
(``PassState``, written by ``ptqcli.observe.checkpoint``), the clock or count that makes a
checkpoint due (``Every``) and the saver that follows them during a pass (``Saver``)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from calibrators import histogram


@dataclass(frozen=True)
class PassState:
    """Where an observation pass stands after a whole number of sample files: everything it needs
    to go on (``ptqcli.observe.checkpoint`` writes it to disk), nothing per sample.

    ``files``: sample files the current stage has consumed; ``samples``: samples the main stage
    has run; ``strides``: per tensor (0: not known yet); ``seen``: the stream positions of the
    current stage (which fix the subsample's offset in the next sample); ``chunk``: samples per
    run (0: whole batches); ``histograms``: the main stage's.  ``recount``: the tensors (and
    their row lengths) being counted again, every value, in the second stage (empty: still in
    the main stage), into ``fresh``."""

    files: int
    samples: int
    strides: dict[str, int]
    seen: dict[str, int]
    chunk: int
    histograms: dict[str, histogram.Histogram]
    recount: tuple[tuple[str, int], ...] = ()
    fresh: dict[str, histogram.Histogram] = field(default_factory=dict)


#: ``checkpoint(state)`` is called after whole batches, with every count flushed.
Checkpoint = Callable[[PassState], None]


@dataclass(frozen=True)
class Every:
    """When a pass saves a checkpoint: once ``samples`` samples, or ``seconds`` seconds, have
    passed since the last one (0: that clock is off; both 0: never).  A checkpoint costs a write
    of every histogram (tens of milliseconds), so a count of samples that suits a slow model
    checkpoints a fast one many times a second; a clock costs each model the same fraction."""

    samples: int = 0
    seconds: float = 0.0

    @classmethod
    def parse(cls, text: int | str) -> "Every":
        """``256`` or ``"256"``: samples; ``"30s"``: seconds; ``0``: never.  ValueError otherwise."""
        word = str(text).strip().lower()
        value = float(word[:-1]) if word.endswith("s") else int(word)
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(text)
        return cls(seconds=value) if word.endswith("s") else cls(samples=value)

    def __bool__(self) -> bool:
        return self.samples > 0 or self.seconds > 0


class Saver:
    """Counts what each batch consumed and says when a checkpoint is due (``every``) since the
    last one; ``save`` then builds the state with ``snapshot(files)``."""

    def __init__(self, checkpoint: Checkpoint | None, every: Every, files: int,
                 snapshot: Callable[[int], PassState]) -> None:
        self.checkpoint, self.every, self.files, self.snapshot = checkpoint, every, files, snapshot
        self.since, self.last = 0, time.monotonic()

    def due(self, files: int, samples: int, stopping: bool = False) -> bool:
        """Count a batch; whether to save now (always when ``stopping``, if there is a checkpoint)."""
        self.files += files
        self.since += samples
        if self.checkpoint is None:
            return False
        now = time.monotonic()
        if not (stopping or 0 < self.every.samples <= self.since or 0 < self.every.seconds <= now - self.last):
            return False
        self.since, self.last = 0, now
        return True

    def save(self) -> None:
        assert self.checkpoint is not None
        self.checkpoint(self.snapshot(self.files))
