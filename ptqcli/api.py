"""The Python API: the same verbs as the CLI, for notebooks and CI jobs.

``calibrate``, ``export``, ``evaluate``, ``simulate`` and ``sensitivity`` take paths and option
dataclasses and return dataclasses; every problem with an input is a ``ptqcli.errors.PtqError``
whose message names the file, tensor or option (options by their keyword here, by their flag in
the CLI).  Notes about what a command did on its own (hidden files skipped, images resized) go to
the ``ptq`` logger.
"""

from __future__ import annotations

# Standard-library and implementation modules are imported under private names (or inside the
# functions), so that the module's namespace is its API (``__all__``).
import dataclasses as _dataclasses
import logging as _logging
import os as _os
import pathlib as _pathlib
import signal as _signal
import time as _time
import typing as _typing
from contextlib import nullcontext as _nullcontext

from ptqcli import files as _files
from ptqcli.analysis.evaluate import Evaluation
from ptqcli.analysis.metrics import Agreement
from ptqcli.analysis.sensitivity import Sensitivity
from ptqcli.errors import Interrupted as _Interrupted
from ptqcli.errors import ObservationError as _ObservationError
from ptqcli.errors import Option as _Option
from ptqcli.errors import OptionError as _OptionError
from ptqcli.errors import PtqError
from ptqcli.observe.dataset import ImageSpec
from ptqcli.quantize.decide import CalibrationOptions
from ptqcli.quantize.scale_table import ScaleTable
from ptqcli.sim import SimOutputs

__all__ = ["Agreement", "CalibrateResult", "CalibrationOptions", "DataOptions", "Evaluation", "ImageSpec",
           "PathLike", "ProgressFactory", "PtqError", "ScaleTable", "Sensitivity", "SensitivityResult",
           "SimOutputs", "calibrate", "default_table_path", "evaluate", "export", "observations_path_for",
           "sensitivity", "sensitivity_arithmetic", "simulate"]

PathLike = _typing.Union[str, _os.PathLike]

_log = _logging.getLogger("ptq")

#: ``progress(total)`` returns a context manager yielding ``update(n)``.
ProgressFactory = _typing.Callable[[int], _typing.ContextManager[_typing.Callable[[int], None]]]


@_dataclasses.dataclass(frozen=True)
class DataOptions:
    """How a sample folder is read: ``batch_size`` samples per run (None: sized automatically
    from the first sample), the first ``limit`` files, images turned into tensors by ``image``."""

    batch_size: int | None = None
    limit: int | None = None
    image: ImageSpec = _dataclasses.field(default_factory=ImageSpec)


@_dataclasses.dataclass(frozen=True)
class CalibrateResult:
    """The table written to ``table_path``; the observations at ``observations_path`` (written by
    this call, or the file it was given); seconds spent observing and in all."""

    table: ScaleTable
    table_path: _pathlib.Path
    observations_path: _pathlib.Path
    observed_tensors: int
    seconds_observe: float
    seconds_total: float


@_dataclasses.dataclass(frozen=True)
class SensitivityResult:
    """Output agreement with float with every point quantized (``all_quantized``), and with one
    point quantized at a time (``points``, most sensitive first)."""

    all_quantized: Agreement
    points: list[Sensitivity]
    arithmetic: str = ""  # what the agreements were measured with, and what this CPU's kernels do


def default_table_path(model: PathLike) -> _pathlib.Path:
    """``model.onnx`` -> ``model.table.json``."""
    return _pathlib.Path(model).with_suffix(".table.json")


def observations_path_for(table_path: PathLike) -> _pathlib.Path:
    """``t.json`` -> ``t.obs.npz``: where ``calibrate`` saves the observations of its pass."""
    table_path = _pathlib.Path(table_path)
    return table_path.with_name(table_path.name.removesuffix(".json") + ".obs.npz")


def _no_progress(total: int) -> _typing.ContextManager[_typing.Callable[[int], None]]:
    return _nullcontext(lambda n: None)


def _calibration_options(options: CalibrationOptions | _typing.Mapping[str, _typing.Any]) -> CalibrationOptions:
    """``options`` as a ``CalibrationOptions``; a mapping is read as the JSON form a table records
    (``method_for`` and ``fixed_ranges`` as mappings, lists for tuples)."""
    if isinstance(options, CalibrationOptions):
        return options
    if not isinstance(options, _typing.Mapping):
        raise _OptionError(_Option("options"), f" must be a CalibrationOptions or a mapping of its fields, "
                                             f"not {type(options).__name__}")
    known = [f.name for f in _dataclasses.fields(CalibrationOptions)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise _OptionError(_Option("options"), f": unknown field {unknown[0]!r}; known: {', '.join(known)}")
    values = dict(options)
    if isinstance(values.get("method_for"), _typing.Mapping):
        values["method_for"] = tuple(sorted(values["method_for"].items()))
    if isinstance(values.get("fixed_ranges"), _typing.Mapping):
        values["fixed_ranges"] = tuple((k, float(lo), float(hi))
                                       for k, (lo, hi) in sorted(values["fixed_ranges"].items()))
    for name in ("int16", "exclude"):
        if isinstance(values.get(name), str):
            values[name] = (values[name],)
    for name in ("method_for", "fixed_ranges", "int16", "exclude"):
        if name in values:
            values[name] = tuple(tuple(v) if isinstance(v, list) else v for v in values[name])
    return CalibrationOptions(**values)


def calibrate(model: PathLike, *, data: PathLike | None = None, output: PathLike | None = None,
              observations: PathLike | None = None,
              options: CalibrationOptions | _typing.Mapping[str, _typing.Any] = CalibrationOptions(),
              data_options: DataOptions = DataOptions(), subsample: int | None = None,
              progress: ProgressFactory = _no_progress,
              range_progress: ProgressFactory = _no_progress) -> CalibrateResult:
    """Observe ``data`` (or load saved ``observations``), choose every range, write the table.

    ``output``: the table (default ``default_table_path(model)``); a new pass saves its
    observations beside it (``observations_path_for``) as soon as the pass ends, so a search
    interrupted after it can be resumed from them.  ``progress`` follows the pass (samples),
    ``range_progress`` the choice of ranges (steps).  ``subsample``: histogram values per
    sample and tensor (default ``ptqcli.observe.collect.SUBSAMPLE``)."""
    from ptqcli.graph import prepare, subgraph_note
    from ptqcli.observe import collect
    from ptqcli.observe import observations as obs_io
    from ptqcli.observe.dataset import batches, image_note, list_samples
    from ptqcli.observe.derive import derive
    from ptqcli.quantize import autosearch, scale_table
    from ptqcli.quantize.decide import build_table, decide
    from ptqcli.quantize.scale_groups import observation_plan

    start = _time.perf_counter()
    options = _calibration_options(options)
    options.validate()
    auto = options.method == "auto"
    if data is None and observations is None:
        raise _OptionError("give ", _Option("data"), " (a folder of samples) or ", _Option("observations"),
                          " (the file an earlier run saved)")
    if data is not None and observations is not None and not auto:
        raise _OptionError(_Option("data"), " and ", _Option("observations"), " were both given: the observations "
                          "replace the pass over the samples; only ", _Option("method", "auto"),
                          " also reads samples (to score its candidates)")
    if auto and data is None:
        raise _OptionError(_Option("method", "auto"), " scores candidate tables on calibration samples: give ",
                          _Option("data"), " too")
    table_path = _pathlib.Path(output) if output is not None else default_table_path(model)
    obs_path = observations_path_for(table_path) if observations is None else _pathlib.Path(observations)
    samples = list_samples(data, limit=data_options.limit) if data is not None else []
    outputs = [("output", table_path)] + ([("output", obs_path)] if observations is None else [])
    inputs = [("model", model)] + ([("observations file", observations)] if observations is not None else []) + \
        [("data sample", f) for f in samples]
    with _files.claimed(outputs, inputs):
        prepared = prepare(model)
        decisions = decide(prepared, options)  # option errors surface before the model runs
        nested = subgraph_note(prepared.model)
        if nested:
            _log.warning(f"{_pathlib.Path(model).name}: {nested}; they stay float")
        image_note(samples, prepared.inputs, data_options.image)
        seconds_observe = 0.0
        if observations is not None:
            obs = obs_io.load(observations)
            if obs.fingerprint != prepared.fingerprint:
                raise _ObservationError(f"{obs_path}: the observations were made on another model")
        else:
            tensors, derived = observation_plan(prepared.index, decisions.structure)
            t0 = _time.perf_counter()
            with progress(len(samples)) as update:
                def feed():
                    return batches(samples, prepared.inputs, batch_size=data_options.batch_size,
                                   image=data_options.image)
                budget = collect.BATCH_BYTES if data_options.batch_size is None else None
                obs = collect.observe(prepared, tensors, feed(), subsample=collect.SUBSAMPLE if subsample is None
                                      else subsample, progress=update, budget=budget, again=feed)
            obs = derive(prepared, obs, derived)
            seconds_observe = _time.perf_counter() - t0
        previous = _files.identity(obs_path)
        try:
            if observations is None:
                obs_io.save(obs, obs_path)  # now: a search interrupted later can resume from it
            groups = len(decisions.scales.sources)
            if auto:
                feeds = autosearch.search_feeds(samples, prepared.inputs, batch_size=data_options.batch_size,
                                                image=data_options.image)
                with range_progress(autosearch.steps(groups, feeds)) as update:
                    table = autosearch.search(prepared, obs, options, feeds, progress=update).table
            else:
                with range_progress(groups) as update:
                    table = build_table(prepared, obs, options, progress=update)
            scale_table.write(table, table_path)
        except KeyboardInterrupt as exc:
            # the file is ours and complete once the rename has replaced whatever was there
            if observations is None and _files.identity(obs_path) not in (None, previous):
                raise _Interrupted(getattr(exc, "signum", _signal.SIGINT), str(obs_path)) from None
            raise
    return CalibrateResult(table, table_path, obs_path, len(obs.histograms), seconds_observe,
                           _time.perf_counter() - start)


def export(model: PathLike, table: PathLike, output: PathLike) -> _pathlib.Path:
    """Write the QDQ model of ``model`` quantized with the scale table at ``table`` to ``output``
    (with its initializers in ``output.data`` beside it when the model exceeds 2 GiB)."""
    from ptqcli.export.qdq import check_table, data_path, save
    from ptqcli.export.qdq import export as export_model
    from ptqcli.graph import prepare
    from ptqcli.quantize import scale_table

    output = _pathlib.Path(output)
    outputs = [("output", output), ("output", data_path(output))]  # the second for a model over 2 GiB
    with _files.claimed(outputs, [("model", model), ("table", table)]):
        prepared = prepare(model)
        loaded = scale_table.load(table)
        check_table(prepared, loaded, table)
        save(export_model(prepared, loaded), output)
    return output


def evaluate(float_model: PathLike, quantized_model: PathLike, data: PathLike, *,
             labels: PathLike | None = None, data_options: DataOptions = DataOptions(), reference: bool = False,
             progress: ProgressFactory = _no_progress) -> Evaluation:
    """Run both models over ``data``: per output SQNR and cosine of the quantized model against
    float; top-1 agreement for a ``[N, classes]`` first output; with ``labels`` (CSV rows
    ``file,label``), the accuracy of both.  The quantized model runs on this CPU's fused int8
    kernels (ONNX Runtime's default), or with ``reference`` on the reference arithmetic; the
    result says which (``Evaluation.arithmetic``)."""
    import dataclasses

    from ptqcli.analysis.evaluate import describe_run, ort_runner, read_labels
    from ptqcli.analysis.evaluate import evaluate as run_both
    from ptqcli.graph import input_specs, load
    from ptqcli.observe.dataset import image_note, list_samples
    from ptqcli.runtime import Optimization

    inputs = input_specs(load(float_model))
    load(quantized_model)
    files = list_samples(data, limit=data_options.limit)
    image_note(files, inputs, data_options.image)
    optimization = Optimization.NONE if reference else Optimization.ALL
    ref, names = ort_runner(float_model)
    cand, _ = ort_runner(quantized_model, optimization)
    with progress(len(files)) as update:
        result = run_both(ref, cand, names, files, inputs, labels=read_labels(labels) if labels else None,
                          batch_size=data_options.batch_size, image=data_options.image, progress=update)
    return dataclasses.replace(result, arithmetic=describe_run(optimization))


def simulate(model: PathLike, table: PathLike | ScaleTable, inputs: _typing.Mapping[str, _typing.Any], *,
             tensors: _typing.Iterable[str] = (), requant: str = "fixed", cpu: str = "exact") -> SimOutputs:
    """The NumPy integer simulator on one batch of ``inputs`` (see ``ptqcli.sim``): integer codes
    and dequantized values of the graph outputs and of every tensor named in ``tensors``.
    ``requant``: ``fixed`` or ``fp32``; ``cpu``: ``exact``, ``x86-avx2`` or ``native``."""
    from ptqcli.sim import simulate as simulate_batch

    return simulate_batch(model, table, inputs, tensors=tensors, requant=requant, cpu=cpu)


def sensitivity(model: PathLike, table: PathLike, data: PathLike, data_options: DataOptions = DataOptions(limit=16),
                progress: ProgressFactory = _no_progress) -> SensitivityResult:
    """Layerwise sensitivity of ``model`` under ``table`` on the first ``data_options.limit``
    samples of ``data``: the output agreement with everything quantized, and with each scale
    group (or weight) alone quantized, most sensitive first."""
    from ptqcli.analysis.sensitivity import layerwise, points
    from ptqcli.export.qdq import check_table
    from ptqcli.graph import prepare
    from ptqcli.observe.dataset import batches, image_note, list_samples
    from ptqcli.quantize import scale_table

    prepared = prepare(model)
    loaded = scale_table.load(table)
    check_table(prepared, loaded, table)
    files = list_samples(data, limit=data_options.limit)
    image_note(files, prepared.inputs, data_options.image)
    feeds = [b.feeds for b in batches(files, prepared.inputs, batch_size=data_options.batch_size,
                                                image=data_options.image)]
    with progress(len(points(loaded))) as update:
        everything, ranked = layerwise(prepared, loaded, feeds, progress=update)
    return SensitivityResult(everything, ranked, sensitivity_arithmetic(loaded))


def sensitivity_arithmetic(table: ScaleTable) -> str:
    """The arithmetic ``sensitivity`` measures (one ONNX Runtime session whose quantization
    points are switched in float never reaches the fused int8 kernels), what this CPU's kernels
    compute, and a warning when the table's weights can saturate them."""
    from ptqcli.runtime import int8_arithmetic
    from ptqcli.targets import Target

    here = int8_arithmetic()
    text = ("measured with ONNX Runtime's reference arithmetic (each point quantized and dequantized in "
            f"float); on this machine {here.describe()}")
    target = table.options.get("cpu", Target.X86_VNNI.value)  # tables older than --cpu kept 8-bit weights
    if here.saturating and not Target(target).pairs_saturate:
        text += (f"; this table was calibrated for --cpu {target}, so the fused kernels here can saturate "
                 "where this analysis does not: see ptq simulate --cpu native --per-layer")
    return text
