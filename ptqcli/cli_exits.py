"""How a ``ptq`` command ends: errors as one line and an exit code, signals, the library's notes.

Exit codes: 0 success, 1 failure (bad model, data, table; an output that cannot be written),
2 bad usage, 130 interrupted by SIGINT (Ctrl-C), 143 stopped by SIGTERM.  Errors are one line on
stderr; set ``PTQ_DEBUG=1`` to see the traceback of an unexpected error.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
from typing import Any, Callable, Iterator

import click

from ptqcli.errors import Interrupted, OptionError, PtqError

#: How the CLI spells an option that an error names by its Python keyword (the rest: ``--name``).
FLAGS = {"output": "-o", "per_channel": "--per-tensor-weights", "sensitive_int16": "--all-int8",
         "fixed_ranges": "--fixed-range"}


def _flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


class Failure(click.ClickException):
    """A one-line error with its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _interrupted(exc: KeyboardInterrupt) -> Failure:
    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    text = f"interrupted by {signal.Signals(signum).name}"
    if isinstance(exc, Interrupted) and exc.observations:
        text += (f"; the observations in {exc.observations} are complete: rerun with --observations "
                 f"{exc.observations} to skip the pass")
    elif isinstance(exc, Interrupted) and exc.checkpoint:
        text += (f"; the checkpoint {exc.checkpoint} holds {exc.done} samples: rerun with --resume to "
                 f"continue from it")
    return Failure(text, 128 + int(signum))


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` in the main thread, so that temporary files and
    locks are cleaned up on the way out (inside ``stops.deferred`` the first one waits for a safe
    point); the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    watched = (signal.SIGINT, signal.SIGTERM)

    def stop(signum: int, frame: Any) -> None:
        for s in watched:  # a second signal must not cut the cleanup short
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    def first(signum: int, frame: Any) -> None:
        from ptqcli import stops

        if not stops.hold(signum):  # else the work stops at its next safe point; a second signal at once
            stop(signum, frame)
        for s in watched:
            signal.signal(s, stop)

    previous = {s: signal.getsignal(s) for s in watched}
    for s in watched:
        signal.signal(s, first)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


class _Notes(logging.Handler):
    """The library's notes (logger ``ptq``), one line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"note: {record.getMessage()}", err=True)


@contextlib.contextmanager
def _notes(show: bool) -> Iterator[None]:
    logger = logging.getLogger("ptq")
    handler: logging.Handler = _Notes() if show else logging.NullHandler()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def reported(fn: Callable) -> Callable:
    """Turn PtqError (and anything unexpected) into a one-line message and an exit code; turn
    SIGINT and SIGTERM into exit codes 130 and 143; show the library's notes unless ``-q``."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _signals(), _notes(not kwargs.get("quiet")):
                return fn(*args, **kwargs)
        except OptionError as exc:
            raise Failure(exc.spelled(_flag), exc.exit_code) from None
        except PtqError as exc:
            raise Failure(str(exc), exc.exit_code) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt as exc:
            raise _interrupted(exc) from None
        except Exception as exc:
            if os.environ.get("PTQ_DEBUG"):
                raise
            raise Failure(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                           f"(set PTQ_DEBUG=1 for the traceback)", 1) from None
    return wrapper

