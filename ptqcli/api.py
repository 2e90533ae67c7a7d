"""The Python API: the same verbs as the CLI, for notebooks and CI jobs."""

from __future__ import annotations

import pathlib
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager

from ptqcli.errors import ObservationError, OptionError
from ptqcli.export.qdq import check_table
from ptqcli.export.qdq import export as export_model
from ptqcli.export.qdq import save as save_model
from ptqcli.graph import prepare
from ptqcli.observe import collect
from ptqcli.observe import observations as obs_io
from ptqcli.observe.dataset import ImageSpec, batches, list_samples
from ptqcli.observe.derive import derive
from ptqcli.quantize import autosearch, scale_table
from ptqcli.quantize.decide import CalibrationOptions, build_table, decide
from ptqcli.quantize.scale_groups import observation_plan
from ptqcli.quantize.scale_table import ScaleTable

#: ``progress(total)`` returns a context manager yielding ``update(n)``.
ProgressFactory = Callable[[int], ContextManager[Callable[[int], None]]]


@dataclass(frozen=True)
class DataOptions:
    """How a sample folder is read: ``batch_size`` samples per run (None: sized automatically
    from the first sample), the first ``limit`` files, images turned into tensors by ``image``."""

    batch_size: int | None = None
    limit: int | None = None
    image: ImageSpec = field(default_factory=ImageSpec)


@dataclass(frozen=True)
class CalibrateResult:
    table: ScaleTable
    table_path: pathlib.Path
    observations_path: pathlib.Path
    observed_tensors: int
    seconds_observe: float
    seconds_total: float


def default_table_path(model: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(model).with_suffix(".table.json")


def observations_path_for(table_path: pathlib.Path) -> pathlib.Path:
    return table_path.with_name(table_path.name.removesuffix(".json") + ".obs.npz")


def _no_progress(total: int) -> ContextManager[Callable[[int], None]]:
    return nullcontext(lambda n: None)


def calibrate(model: str | pathlib.Path, *, data: str | pathlib.Path | None = None,
              output: str | pathlib.Path | None = None, observations: str | pathlib.Path | None = None,
              options: CalibrationOptions = CalibrationOptions(), data_options: DataOptions = DataOptions(),
              subsample: int = collect.SUBSAMPLE, progress: ProgressFactory = _no_progress) -> CalibrateResult:
    """Observe ``data`` (or load saved ``observations``) and write the scale table."""
    start = time.perf_counter()
    options.validate()
    if data is None and observations is None:
        raise OptionError("give --data DIR (or --observations FILE from an earlier run)")
    table_path = pathlib.Path(output) if output is not None else default_table_path(model)
    if not table_path.parent.is_dir():
        raise OptionError(f"-o {str(table_path)!r}: folder {str(table_path.parent)!r} does not exist")
    prepared = prepare(model)
    decisions = decide(prepared, options)  # option errors surface before the model runs
    seconds_observe = 0.0
    if observations is not None:
        obs = obs_io.load(observations)
        obs_path = pathlib.Path(observations)
        if obs.fingerprint != prepared.fingerprint:
            raise ObservationError(f"{obs_path}: the observations were made on another model")
    else:
        files = list_samples(data, limit=data_options.limit)
        tensors, derived = observation_plan(prepared.index, decisions.structure)
        t0 = time.perf_counter()
        with progress(len(files)) as update:
            def feed():
                return batches(files, prepared.inputs, batch_size=data_options.batch_size, image=data_options.image)
            budget = collect.BATCH_BYTES if data_options.batch_size is None else None
            obs = collect.observe(prepared, tensors, feed(), subsample=subsample, progress=update, budget=budget,
                                  again=feed)
        obs = derive(prepared, obs, derived)
        seconds_observe = time.perf_counter() - t0
        obs_path = observations_path_for(table_path)
    if options.method == "auto":
        if data is None:
            raise OptionError("--method auto scores candidate tables on calibration samples: give --data too")
        feeds = autosearch.search_feeds(list_samples(data, limit=data_options.limit), prepared.inputs,
                                        batch_size=data_options.batch_size, image=data_options.image)
        table = autosearch.search(prepared, obs, options, feeds).table
    else:
        table = build_table(prepared, obs, options)
    if observations is None:
        obs_io.save(obs, obs_path)
    scale_table.write(table, table_path)
    return CalibrateResult(table, table_path, obs_path, len(obs.histograms), seconds_observe,
                           time.perf_counter() - start)


def export(model: str | pathlib.Path, table: str | pathlib.Path, output: str | pathlib.Path) -> pathlib.Path:
    """Write the QDQ model of ``model`` quantized with the scale table at ``table``."""
    output = pathlib.Path(output)
    if not output.parent.is_dir():
        raise OptionError(f"-o {str(output)!r}: folder {str(output.parent)!r} does not exist")
    prepared = prepare(model)
    loaded = scale_table.load(table)
    check_table(prepared, loaded, table)
    save_model(export_model(prepared, loaded), output)
    return output


def simulate(model, table, inputs, *, tensors=(), requant="fixed"):
    """The NumPy integer simulator on one batch of ``inputs`` (see ``ptqcli.sim``)."""
    from ptqcli.sim import simulate as simulate_batch

    return simulate_batch(model, table, inputs, tensors=tensors, requant=requant)


def sensitivity(model: str | pathlib.Path, table: str | pathlib.Path, data: str | pathlib.Path,
                data_options: DataOptions = DataOptions(limit=16), progress: ProgressFactory = _no_progress):
    """Layerwise sensitivity of ``model`` under ``table`` on the first ``data_options.limit``
    samples of ``data``: ``(all quantized, [one point quantized, most sensitive first])``."""
    from ptqcli.analysis.sensitivity import layerwise, points

    prepared = prepare(model)
    loaded = scale_table.load(table)
    check_table(prepared, loaded, table)
    files = list_samples(data, limit=data_options.limit)
    feeds = [b.feeds for b in batches(files, prepared.inputs, batch_size=data_options.batch_size,
                                      image=data_options.image)]
    with progress(len(points(loaded))) as update:
        return layerwise(prepared, loaded, feeds, progress=update)
