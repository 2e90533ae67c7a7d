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
from ptqcli.choices import ON_BAD_SAMPLE as _ON_BAD_SAMPLE
from ptqcli.errors import Interrupted as _Interrupted
from ptqcli.errors import ObservationError as _ObservationError
from ptqcli.errors import Option as _Option
from ptqcli.errors import OptionError as _OptionError
from ptqcli.errors import PtqError
from ptqcli.observe.dataset import ImageSpec
from ptqcli.observe.run_pass import PassOptions
from ptqcli.pipeline.config import RunConfig
from ptqcli.pipeline.run import RunResult
from ptqcli.quantize.decide import CalibrationOptions
from ptqcli.quantize.scale_table import ScaleTable
from ptqcli.sim import SimOutputs

__all__ = ["Agreement", "CalibrateResult", "CalibrationOptions", "DataOptions", "Evaluation", "ImageSpec",
           "PassOptions", "PathLike", "ProgressFactory", "PtqError", "RunConfig", "RunResult", "ScaleTable",
           "Sensitivity", "SensitivityResult", "SimOutputs", "SkippedSample", "calibrate", "checkpoint_path_for",
           "default_table_path", "evaluate", "export", "load_run_config", "observations_path_for", "run",
           "sensitivity", "sensitivity_arithmetic", "simulate"]

PathLike = _typing.Union[str, _os.PathLike]

_log = _logging.getLogger("ptq")

if _typing.TYPE_CHECKING:
    from ptqcli.rounding.equalize import Equalized
    from ptqcli.rounding.sequential import RoundingReport

#: ``progress(total)`` returns a context manager yielding ``update(n)``.
ProgressFactory = _typing.Callable[[int], _typing.ContextManager[_typing.Callable[[int], None]]]


@_dataclasses.dataclass(frozen=True)
class DataOptions:
    """How a sample folder is read: ``batch_size`` samples per run (None: sized automatically
    from the first sample), the first ``limit`` files, images turned into tensors by ``image``."""

    batch_size: int | None = None
    limit: int | None = None
    image: ImageSpec = _dataclasses.field(default_factory=ImageSpec)

    def validate(self) -> None:
        for name in ("batch_size", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise _OptionError(_Option(name), f" must be at least 1, got {value!r}")


@_dataclasses.dataclass(frozen=True)
class SkippedSample:
    """A calibration sample left out by ``on_bad_sample="skip"``, and why."""

    file: _pathlib.Path
    reason: str


@_dataclasses.dataclass(frozen=True)
class CalibrateResult:
    """The table written to ``table_path``; the observations at ``observations_path`` (written by
    this call, or the file it was given); seconds spent observing and in all; the samples left
    out as bad (``on_bad_sample="skip"``), in file order; what the weight rounding (``rounding``)
    and cross-layer equalization (``equalized``) did, when asked for."""

    table: ScaleTable
    table_path: _pathlib.Path
    observations_path: _pathlib.Path
    observed_tensors: int
    seconds_observe: float
    seconds_total: float
    skipped: tuple[SkippedSample, ...] = ()
    rounding: RoundingReport | None = None
    equalized: Equalized | None = None


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


def checkpoint_path_for(table_path: PathLike) -> _pathlib.Path:
    """``t.json`` -> ``t.obs.ckpt.npz``: where ``calibrate`` checkpoints its pass."""
    table_path = _pathlib.Path(table_path)
    return table_path.with_name(table_path.name.removesuffix(".json") + ".obs.ckpt.npz")


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
    if isinstance(values.get("rounding"), _typing.Mapping):
        from ptqcli.rounding.options import RoundingOptions

        values["rounding"] = RoundingOptions(**values["rounding"])
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
              on_bad_sample: str = "fail", progress: ProgressFactory = _no_progress,
              range_progress: ProgressFactory = _no_progress,
              rounding_progress: ProgressFactory = _no_progress,
              pass_options: PassOptions = PassOptions()) -> CalibrateResult:
    """Observe ``data`` (or load saved ``observations``), choose every range, write the table.

    ``output``: the table (default ``default_table_path(model)``); a new pass saves its
    observations beside it (``observations_path_for``) as soon as the pass ends, so a search
    interrupted after it can be resumed from them.  ``progress`` follows the pass (samples),
    ``range_progress`` the choice of ranges (steps).  ``pass_options``: checkpoints and resuming,
    workers (see ``PassOptions``); the checkpoint goes beside the table (``checkpoint_path_for``)
    and is removed once the observations are saved.  ``subsample``: histogram values per
    sample and tensor (default ``ptqcli.observe.collect.SUBSAMPLE``).  ``on_bad_sample``:
    ``fail`` stops at a sample that cannot be read or fails its checks; ``skip`` leaves it out
    (logged on ``ptq``, listed in ``CalibrateResult.skipped``): the table is the one the folder
    without it gives (a single-process pass without checkpoints: the positions a checkpoint or a
    shard records count files, and a skipped file would shift them).

    ``options.rounding`` (``ptqcli.rounding``): ``equalize`` rescales the weights before anything
    is observed; ``data_free`` observes synthetic tensors drawn from the BatchNorm statistics
    instead of ``data``; ``weights="adaround"`` and ``bias_correction`` then learn codes and
    shift biases on ``data`` (``rounding_progress`` counts weights).  Learned codes and
    equalized values go to a sidecar beside the table (``ptqcli.quantize.stored``)."""
    from ptqcli.errors import DataError
    from ptqcli.graph import prepare, subgraph_note
    from ptqcli.observe import collect
    from ptqcli.observe import observations as obs_io
    from ptqcli.observe.dataset import image_note, list_samples, read_sample
    from ptqcli.observe.derive import derive
    from ptqcli.observe.run_pass import run_pass
    from ptqcli.quantize import autosearch, scale_table
    from ptqcli.quantize.decide import build_table, decide
    from ptqcli.quantize.scale_groups import observation_plan
    from ptqcli.quantize.stored import sidecar_path
    from ptqcli.targets import Target

    start = _time.perf_counter()
    options = _calibration_options(options)
    options.validate()
    if on_bad_sample not in _ON_BAD_SAMPLE:
        raise _OptionError(_Option("on_bad_sample", str(on_bad_sample)), f": known: {', '.join(_ON_BAD_SAMPLE)}")
    auto = options.method == "auto"
    rounding = options.rounding
    if rounding.data_free and (data is not None or observations is not None):
        raise _OptionError(_Option("data_free"), " observes synthetic tensors from the BatchNorm statistics: give "
                          "neither ", _Option("data"), " nor ", _Option("observations"))
    if data is None and observations is None and not rounding.data_free:
        raise _OptionError("give ", _Option("data"), " (a folder of samples) or ", _Option("observations"),
                          " (the file an earlier run saved), or ", _Option("data_free"))
    if data is not None and observations is not None and not (auto or rounding.needs_model_runs):
        raise _OptionError(_Option("data"), " and ", _Option("observations"), " were both given: the observations "
                          "replace the pass over the samples; only ", _Option("method", "auto"),
                          " (to score its candidates), ", _Option("weights", "adaround"), " and ",
                          _Option("bias_correction"), " also read samples")
    if rounding.needs_model_runs and data is None:
        raise _OptionError(_Option("weights", rounding.weights) if rounding.weights == "adaround" else
                          _Option("bias_correction"), " learns from calibration samples: give ", _Option("data"),
                          " too")
    if auto and data is None:
        raise _OptionError(_Option("method", "auto"), " scores candidate tables on calibration samples: give ",
                          _Option("data"), " too")
    table_path = _pathlib.Path(output) if output is not None else default_table_path(model)
    obs_path = observations_path_for(table_path) if observations is None else _pathlib.Path(observations)
    samples = list_samples(data, limit=data_options.limit) if data is not None else []
    pass_options.validate()
    if on_bad_sample == "skip":
        if pass_options.resume or pass_options.distributed:
            raise _OptionError(_Option("on_bad_sample", "skip"), " runs in one process from the first sample: drop ",
                               _Option("resume" if pass_options.resume else
                                       "workers" if pass_options.workers is not None else "scheduler"))
        pass_options = _dataclasses.replace(pass_options, checkpoint_every=0)
    ckpt_path = checkpoint_path_for(table_path)
    outputs = [("output", table_path), ("output", sidecar_path(table_path))] + \
        ([("output", obs_path), ("output", ckpt_path)] if observations is None else [])
    inputs = [("model", model)] + ([("observations file", observations)] if observations is not None else []) + \
        [("data sample", f) for f in samples]
    with _files.claimed(outputs, inputs):
        prepared = user = prepare(model)
        decisions = decide(prepared, options)  # option errors surface before the model runs
        nested = subgraph_note(prepared.model)
        if nested:
            _log.warning(f"{_pathlib.Path(model).name}: {nested}; they stay float")
        image_note(samples, prepared.inputs, data_options.image)
        equalized = synthetic = None
        if rounding.equalize:  # every later step sees the equalized model
            from ptqcli.rounding import equalize

            prepared, equalized = equalize.equalized_model(prepared)
        seconds_observe = 0.0
        skipped: list[SkippedSample] = []

        def skip(path: _pathlib.Path, exc: DataError) -> None:
            skipped.append(SkippedSample(path, str(exc).removeprefix(f"{path}: ")))
            _log.warning(f"skipped bad sample {exc}")

        if rounding.data_free:
            from ptqcli.rounding import datafree  # SciPy's special functions: 0.4 s to import

            stats = datafree.statistics(model)
            if equalized is not None:
                stats = datafree.rescaled(stats, equalized.scales)
            synthetic = datafree.synthetic_model(prepared, stats, options.fixed_ranges, data_options.image.size,
                                                 rounding.seed)
            tensors, derived = observation_plan(prepared.index, decisions.structure)
            t0 = _time.perf_counter()
            obs = derive(prepared, collect.observe(synthetic.prepared, tensors, synthetic.batches(),
                                                   subsample=collect.SUBSAMPLE if subsample is None else subsample),
                         derived)
            seconds_observe = _time.perf_counter() - t0
        elif observations is not None:
            if (auto or rounding.needs_model_runs) and on_bad_sample == "skip":  # no pass sorted them out
                for path in samples:
                    try:
                        read_sample(path, prepared.inputs, data_options.image)
                    except DataError as exc:
                        skip(path, exc)
            obs = obs_io.load(observations)
            if obs.fingerprint != prepared.fingerprint:
                raise _ObservationError(f"{obs_path}: the observations were made on another model")
        else:
            tensors, derived = observation_plan(prepared.index, decisions.structure)
            t0 = _time.perf_counter()
            with progress(len(samples)) as update:
                def skip_counted(path: _pathlib.Path, exc: DataError) -> None:
                    if path not in {s.file for s in skipped}:  # the guard's second reading meets it again
                        skip(path, exc)
                        update(1)

                obs = run_pass(prepared, tensors, samples, batch_size=data_options.batch_size,
                               image=data_options.image, pass_options=pass_options,
                               subsample=collect.SUBSAMPLE if subsample is None else subsample,
                               ckpt_path=ckpt_path, update=update,
                               on_bad=skip_counted if on_bad_sample == "skip" else None)
            obs = derive(prepared, obs, derived)
            seconds_observe = _time.perf_counter() - t0
        if skipped and len(skipped) == len(samples):  # nothing left to observe or to score
            raise DataError(f"{data}: every sample failed its checks ({len(skipped)} skipped; the first: "
                            f"{skipped[0].file.name}: {skipped[0].reason})")
        previous = _files.identity(obs_path)
        try:
            if observations is None:
                obs_io.save(obs, obs_path)  # now: a search interrupted later can resume from it
                ckpt_path.unlink(missing_ok=True)  # the observations replace it
            groups = len(decisions.scales.sources)
            bad = {s.file for s in skipped}
            good = [f for f in samples if f not in bad]
            if auto:
                feeds = autosearch.search_feeds(good, prepared.inputs, batch_size=data_options.batch_size,
                                                image=data_options.image)
                with range_progress(autosearch.steps(groups, feeds)) as update:
                    table = autosearch.search(prepared, obs, options, feeds, progress=update).table
            else:
                with range_progress(groups) as update:
                    table = build_table(prepared, obs, options, progress=update)
            if equalized is not None:
                from ptqcli.rounding import equalize

                table = equalize.restore(table, user, equalized)
            if synthetic is not None and rounding.bias_correction:
                from ptqcli.rounding import datafree

                table, _ = datafree.correct_biases(prepared, table, synthetic)
            report = None
            if rounding.needs_model_runs:
                from ptqcli.rounding import sequential

                feeds = sequential.feeds(good, prepared.inputs, rounding, batch_size=data_options.batch_size,
                                         image=data_options.image)
                weights = sum(prepared.index.array(g.weight).size for g in table.groups.values() if g.weight)
                with rounding_progress(weights) as update:
                    table, report = sequential.round_weights(
                        prepared, table, feeds, rounding, qmax=options.weight_qmax,
                        pair_bound=Target(options.cpu).pairs_saturate and options.weight_bits == 8,
                        progress=update)
            scale_table.write(table, table_path)
        except KeyboardInterrupt as exc:
            # the file is ours and complete once the rename has replaced whatever was there
            if observations is None and _files.identity(obs_path) not in (None, previous):
                raise _Interrupted(getattr(exc, "signum", _signal.SIGINT), str(obs_path)) from None
            raise
    return CalibrateResult(table, table_path, obs_path, len(obs.histograms), seconds_observe,
                           _time.perf_counter() - start, tuple(skipped), report, equalized)


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


def load_run_config(path: PathLike) -> RunConfig:
    """Read a ``ptq run`` configuration (TOML): relative paths from the file's folder, defaults
    filled in, outputs named.  A bad file raises ``ptqcli.errors.ConfigError`` naming the key."""
    from ptqcli.pipeline import config

    return config.load(path)


def run(config: RunConfig | PathLike, *,
        progress: _typing.Callable[[str], ProgressFactory] | None = None) -> RunResult:
    """Calibrate, export, simulate (if enabled) and evaluate as ``config`` (a ``RunConfig`` or
    the path of its TOML file) says, check its gate, and write the JSON summary and the JUnit
    report.  ``RunResult.status``: ``passed`` or ``failed`` (the gate); a stage that fails
    raises its ``PtqError`` after the reports are written.  ``progress(stage)``: the progress
    factory of ``observe``, ``ranges``, ``simulate`` and ``evaluate``."""
    from ptqcli.pipeline import run as pipeline

    name = "ptq run"
    if not isinstance(config, RunConfig):
        name = f"ptq run {config}"
        config = load_run_config(config)
    return pipeline.run(config, name=name, progress=progress)
