"""What the ``ptq`` commands share on the way in and out: option types that validate at the
edge, the sample-folder flags and the ``api.DataOptions`` they make, progress on stderr, JSON on
stdout.

Nothing here imports the library, so that ``ptq --help`` does not wait for onnx to load.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

import click

if TYPE_CHECKING:
    from ptqcli import api


class Pair(click.ParamType):
    """NAME=VALUE, where VALUE is parsed by ``parse``."""

    def __init__(self, name: str, metavar: str, parse: Callable[[str], Any]) -> None:
        self.name, self._metavar, self._parse = name, metavar, parse

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self._metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        name, sep, rest = str(value).rpartition("=")
        if not sep or not name:
            self.fail(f"{value!r} is not of the form {self._metavar}", param, ctx)
        try:
            return name, self._parse(rest)
        except ValueError as exc:
            self.fail(f"{value!r}: {exc}", param, ctx)


def lo_hi(text: str) -> tuple[float, float]:
    """``"LO:HI"`` -> ``(lo, hi)``, both finite."""
    lo, sep, hi = text.partition(":")
    if not sep:
        raise ValueError("expected LO:HI")
    values = float(lo), float(hi)
    if not all(math.isfinite(v) for v in values):
        raise ValueError("LO and HI must be finite numbers")
    return values


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.replace(",", " ").split())


class _FloatList(click.ParamType):
    name = "floats"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            values = _floats(value)
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if not values:
            self.fail("expected at least one number", param, ctx)
        return values


class _Size(click.ParamType):
    name = "HxW"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        parts = str(value).lower().replace("x", ",").split(",")
        try:
            h, w = (int(p) for p in parts)
        except ValueError:
            self.fail(f"{value!r} is not HEIGHTxWIDTH", param, ctx)
        if h <= 0 or w <= 0:
            self.fail(f"{value!r}: sizes must be positive", param, ctx)
        return h, w


def data_flags(fn: Callable) -> Callable:
    """The flags of every command that reads a sample folder (with ``-q`` and ``--json``)."""
    options = [
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Samples per ONNX Runtime run (samples of equal shape are stacked) "
                          "[default: about 256 Ki input values per run, at most 16 samples]."),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="Use the first N samples only."),
        click.option("--size", type=_Size(), default=None, help="Images: resize to HEIGHTxWIDTH."),
        click.option("--mean", type=_FloatList(), default="0", show_default=True,
                     help="Images: per-channel mean subtracted from pixels scaled to [0, 1]."),
        click.option("--std", type=_FloatList(), default="1", show_default=True,
                     help="Images: per-channel divisor after the mean."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True,
                     help="Images: tensor layout."),
        click.option("--bgr", is_flag=True, help="Images: channel order BGR instead of RGB."),
        click.option("-q", "--quiet", is_flag=True, help="No progress or summary on stderr."),
        click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def data_options(batch_size: int, limit: int | None, size, mean, std, layout: str, bgr: bool) -> api.DataOptions:
    """The values of ``data_flags`` as the library reads them."""
    from ptqcli import api

    return api.DataOptions(batch_size, limit, api.ImageSpec(size, tuple(mean), tuple(std), layout, bgr))


def stage_progress(label: str, quiet: bool, unit: str = "samples") -> api.ProgressFactory:
    """A bar with ETA on a terminal; otherwise a line when the stage starts and one when it ends."""
    @contextlib.contextmanager
    def factory(total: int):
        if quiet:
            yield lambda n: None
        elif sys.stderr.isatty():
            with click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True,
                                   show_pos=True, item_show_func=None) as bar:
                yield bar.update
        else:
            start = time.perf_counter()
            click.echo(f"{label}: {total} {unit}...", err=True)
            yield lambda n: None
            click.echo(f"{label}: done in {time.perf_counter() - start:.1f} s", err=True)
    return factory


def emit_json(payload: dict) -> None:
    """``payload`` on stdout: sorted keys, no NaN."""
    click.echo(json.dumps(payload, sort_keys=True, indent=1, allow_nan=False))

