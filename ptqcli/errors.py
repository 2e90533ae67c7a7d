"""The errors ptq reports to its users.

Every error names what is at fault (file, tensor, node or option) in its message; the CLI prints
the message on one line and exits with ``exit_code``.

An option is named the way the caller spelled it: an ``OptionError`` keeps the options it names
as ``Option`` values, which ``str()`` writes as the Python API's keyword (``percentile``) and the
CLI writes as its flag (``--percentile``).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Callable


class PtqError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""

    exit_code = 1


class ModelError(PtqError):
    """The model file cannot be loaded, checked or prepared."""


class DataError(PtqError):
    """A calibration or evaluation sample is missing, unreadable or does not fit the model."""


class TableError(PtqError):
    """A scale table is malformed, fails its schema, or belongs to another model."""


class ObservationError(PtqError):
    """A saved observation file is malformed or does not fit the model or the plan."""


class UnsupportedError(PtqError):
    """The model uses something ptq cannot handle; the message names the node."""


class OutputError(PtqError):
    """An output cannot be written: its folder refuses new files, or another process is
    writing the same output."""


@dataclass(frozen=True)
class Option:
    """An option named in a message: ``name`` is the Python keyword (``method_for``); ``value``,
    when given, is written after it (``method_for 'x'``, ``--method-for 'x'``)."""

    name: str
    value: str | None = None

    def spelled(self, spelling: str) -> str:
        return spelling if self.value is None else f"{spelling} {self.value!r}"


class OptionError(PtqError):
    """An option value is invalid (bad usage: exit code 2).

    The message is a sequence of text and ``Option`` parts; a plain string still works."""

    exit_code = 2

    def __init__(self, *parts: str | Option) -> None:
        self.parts = parts
        super().__init__(self.spelled(lambda name: name))

    def spelled(self, spell: Callable[[str], str]) -> str:
        """The message with each option's name written by ``spell`` (the CLI gives flags)."""
        return "".join(p.spelled(spell(p.name)) if isinstance(p, Option) else p for p in self.parts)


class ConfigError(OptionError):
    """A ``ptq run`` configuration file is malformed: the message names the file and the key
    by its dotted path (``calibrate.percentile``).  Bad usage: exit code 2."""


class Interrupted(KeyboardInterrupt):
    """The command was stopped by SIGINT (Ctrl-C) or SIGTERM (``signum``).

    A ``KeyboardInterrupt``, so that ``except Exception`` never swallows it and every cleanup
    (temporary files, locks) runs as for Ctrl-C.  ``observations``: the observation file, when
    the pass had ended and its file was complete before the interruption; ``checkpoint``: the
    checkpoint the pass left (``resume`` continues from it) and ``done``, the samples it holds."""

    def __init__(self, signum: int = signal.SIGINT, observations: str | None = None,
                 checkpoint: str | None = None, done: int = 0) -> None:
        super().__init__(signum)
        self.signum, self.observations = signum, observations
        self.checkpoint, self.done = checkpoint, done
