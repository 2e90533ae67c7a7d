"""The errors ptq reports to its users.

Every error names what is at fault (file, tensor, node or option) in its message; the CLI prints
the message on one line and exits with ``exit_code``.
"""

from __future__ import annotations


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


class OptionError(PtqError):
    """An option value is invalid (bad usage: exit code 2)."""

    exit_code = 2
