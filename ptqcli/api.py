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
import os as _os
import pathlib as _pathlib
import time as _time
import typing as _typing
from contextlib import nullcontext as _nullcontext

from ptqcli import files as _files
from ptqcli.analysis.evaluate import Evaluation
from ptqcli.analysis.metrics import Agreement
from ptqcli.analysis.sensitivity import Sensitivity
from ptqcli.errors import Option as _Option
from ptqcli.errors import OptionError as _OptionError
from ptqcli.errors import PtqError
from ptqcli.observe.dataset import ImageSpec
from ptqcli.observe.run_pass import PassOptions
from ptqcli.pipeline import calibrate as _stages
from ptqcli.pipeline.calibrate import SkippedSample
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
    from ptqcli.observe.dataset import list_samples
    from ptqcli.quantize import scale_table

    start = _time.perf_counter()
    options = _stages.calibration_options(options)
    options.validate()
    _stages.check_sources(options, data=data, observations=observations, on_bad_sample=on_bad_sample)
    table_path = _pathlib.Path(output) if output is not None else default_table_path(model)
    paths = _stages.Paths(table=table_path, observations=observations_path_for(table_path) if observations is None
                          else _pathlib.Path(observations), checkpoint=checkpoint_path_for(table_path),
                          given=observations)
    samples = list_samples(data, limit=data_options.limit) if data is not None else []
    pass_options = _stages.pass_options_for(pass_options, on_bad_sample)
    with _files.claimed(paths.outputs(), paths.inputs(model, samples)):
        prepared = _stages.prepare(model, options, samples, data_options)
        if options.rounding.data_free:
            observed = _stages.observe_synthetic(model, prepared, options, data_options=data_options,
                                                 subsample=subsample)
        elif observations is not None:
            observed = _stages.load_observations(prepared, paths, samples, options, data_options=data_options,
                                                 skip=on_bad_sample == "skip")
        else:
            observed = _stages.observe_samples(prepared, paths, samples, data_options=data_options,
                                               pass_options=pass_options, subsample=subsample,
                                               skip=on_bad_sample == "skip", progress=progress)
        _stages.check_samples_left(observed, samples, data)
        with _stages.keeping_observations(paths):
            if observations is None:
                _stages.save_observations(observed, paths)
            kept = observed.kept(samples)
            table = _stages.build_table(prepared, observed, options, kept, data_options=data_options,
                                        progress=range_progress)
            table, report = _stages.round_weights(prepared, table, options, kept, data_options=data_options,
                                                  progress=rounding_progress)
            scale_table.write(table, paths.table)
    return CalibrateResult(table, paths.table, paths.observations, len(observed.observations.histograms),
                           observed.seconds, _time.perf_counter() - start, observed.skipped, report,
                           prepared.equalized)


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
