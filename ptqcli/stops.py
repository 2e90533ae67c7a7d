"""Signals that wait for a safe point.

The CLI turns SIGINT and SIGTERM into ``Interrupted``, raised wherever the main thread happens to
be, so that temporary files and locks are cleaned up on the way out.  Work whose state on the
way out matters marks a stretch with ``deferred()``: in it the first signal is only recorded, and
the work asks ``due()`` where it can stop whole (the observation pass, after a batch: it saves a
checkpoint holding every sample run so far, then raises).  A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from ptqcli.errors import Interrupted

_held: list[int] | None = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for ``due()`` while the block runs (main thread only); a signal
    still held when it ends is raised then."""
    global _held
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer, _held = _held, []
    try:
        yield
    except BaseException:
        _held = outer
        raise
    got, _held = _held, outer
    if got:
        raise Interrupted(got[0])


def hold(signum: int) -> bool:
    """Record ``signum`` if a deferred stretch is running (the signal handler asks)."""
    if _held is None:
        return False
    _held.append(signum)
    return True


def due() -> int | None:
    """The signal held, if any: the caller should stop now, whole."""
    return _held[0] if _held else None
