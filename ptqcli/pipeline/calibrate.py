"""The stages of ``ptqcli.api.calibrate``, in the order it runs them.

1. ``calibration_options``, ``check_sources`` and ``pass_options_for``: the options read and
   checked against which sources of observations were given (samples, a saved file, none);
2. ``prepare``: the model prepared, its decisions made, and equalized when asked;
3. ``observe_synthetic``, ``load_observations`` or ``observe_samples``: the observations, from
   tensors drawn from the BatchNorm statistics, from an earlier run's file, or from a pass over
   the samples (``ptqcli.observe.run_pass``); ``check_samples_left``;
4. ``keeping_observations`` around the rest: ``save_observations``, ``build_table`` (plain or
   ``auto``, equalization undone, data-free bias correction) and ``round_weights`` (AdaRound,
   bias correction on samples).

At the top only what the API loads anyway: the API names ``SkippedSample``.  The rest is
imported inside the stages that use it, so that a calibration without rounding options loads
neither SciPy nor the rounding algorithms, and one without ``auto`` not the search.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
import signal
import time
import typing

from ptqcli import files, stops
from ptqcli.choices import ON_BAD_SAMPLE
from ptqcli.errors import DataError, Interrupted, ObservationError, Option, OptionError
from ptqcli.quantize import decide
from ptqcli.quantize.decide import CalibrationOptions

if typing.TYPE_CHECKING:
    from ptqcli.api import DataOptions, ProgressFactory
    from ptqcli.graph.prepared import Prepared
    from ptqcli.observe.observations import Observations
    from ptqcli.observe.run_pass import PassOptions
    from ptqcli.quantize.decide import Decisions
    from ptqcli.quantize.scale_table import ScaleTable
    from ptqcli.rounding.datafree import Synthetic
    from ptqcli.rounding.equalize import Equalized
    from ptqcli.rounding.sequential import RoundingReport

_log = logging.getLogger("ptq")


@dataclasses.dataclass(frozen=True)
class SkippedSample:
    """A calibration sample left out by ``on_bad_sample="skip"``, and why."""

    file: pathlib.Path
    reason: str


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where a calibration writes: the table, the observations (the file it was given, else the
    one it writes) and the checkpoint of its pass; ``given``: the observations file as the caller
    spelled it (messages quote it so), None when this calibration writes one."""

    table: pathlib.Path
    observations: pathlib.Path
    checkpoint: pathlib.Path
    given: typing.Any = None

    def outputs(self) -> list[tuple[str, pathlib.Path]]:
        """The files this calibration may write, as ``files.claimed`` takes them."""
        from ptqcli.quantize.stored import sidecar_path

        return [("output", self.table), ("output", sidecar_path(self.table))] + \
            ([("output", self.observations), ("output", self.checkpoint)] if self.given is None else [])

    def inputs(self, model_path: typing.Any, samples: list[pathlib.Path]) -> list[tuple[str, typing.Any]]:
        """The files it reads, as ``files.claimed`` takes them."""
        return [("model", model_path)] + ([("observations file", self.given)] if self.given is not None else []) + \
            [("data sample", f) for f in samples]


@dataclasses.dataclass(frozen=True)
class Model:
    """The model as loaded (``user``), the one every later step sees (``prepared``: equalized
    when asked, with what the equalization did in ``equalized``), and its decisions."""

    user: Prepared
    prepared: Prepared
    decisions: Decisions
    equalized: Equalized | None


@dataclasses.dataclass(frozen=True)
class Observed:
    """The observations, the seconds spent making them (0 when loaded), the samples left out as
    bad in file order, and the synthetic model of a data-free pass (its bias correction reads
    it)."""

    observations: Observations
    seconds: float
    skipped: tuple[SkippedSample, ...] = ()
    synthetic: Synthetic | None = None

    def kept(self, samples: list[pathlib.Path]) -> list[pathlib.Path]:
        """``samples`` without the skipped ones."""
        bad = {s.file for s in self.skipped}
        return [f for f in samples if f not in bad]


def calibration_options(options: CalibrationOptions | typing.Mapping[str, typing.Any]) -> CalibrationOptions:
    """``options`` as a ``CalibrationOptions``; a mapping is read as the JSON form a table records
    (``method_for`` and ``fixed_ranges`` as mappings, lists for tuples)."""
    if isinstance(options, CalibrationOptions):
        return options
    if not isinstance(options, typing.Mapping):
        raise OptionError(Option("options"), f" must be a CalibrationOptions or a mapping of its fields, "
                                             f"not {type(options).__name__}")
    known = [f.name for f in dataclasses.fields(CalibrationOptions)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise OptionError(Option("options"), f": unknown field {unknown[0]!r}; known: {', '.join(known)}")
    values = dict(options)
    if isinstance(values.get("method_for"), typing.Mapping):
        values["method_for"] = tuple(sorted(values["method_for"].items()))
    if isinstance(values.get("fixed_ranges"), typing.Mapping):
        values["fixed_ranges"] = tuple((k, float(lo), float(hi))
                                       for k, (lo, hi) in sorted(values["fixed_ranges"].items()))
    if isinstance(values.get("rounding"), typing.Mapping):
        from ptqcli.rounding.options import RoundingOptions

        values["rounding"] = RoundingOptions(**values["rounding"])
    for name in ("int16", "exclude"):
        if isinstance(values.get(name), str):
            values[name] = (values[name],)
    for name in ("method_for", "fixed_ranges", "int16", "exclude"):
        if name in values:
            values[name] = tuple(tuple(v) if isinstance(v, list) else v for v in values[name])
    return CalibrationOptions(**values)


def check_sources(options: CalibrationOptions, *, data: typing.Any, observations: typing.Any,
                  on_bad_sample: str) -> None:
    """Refuse ``on_bad_sample`` values and combinations of ``data`` (a sample folder),
    ``observations`` (a saved file) and the options that do not say where the observations
    come from, or that need samples and were given none; the first problem found is raised."""
    if on_bad_sample not in ON_BAD_SAMPLE:
        raise OptionError(Option("on_bad_sample", str(on_bad_sample)), f": known: {', '.join(ON_BAD_SAMPLE)}")
    auto = options.method == "auto"
    rounding = options.rounding
    if rounding.data_free and (data is not None or observations is not None):
        raise OptionError(Option("data_free"), " observes synthetic tensors from the BatchNorm statistics: give "
                          "neither ", Option("data"), " nor ", Option("observations"))
    if data is None and observations is None and not rounding.data_free:
        raise OptionError("give ", Option("data"), " (a folder of samples) or ", Option("observations"),
                          " (the file an earlier run saved), or ", Option("data_free"))
    if data is not None and observations is not None and not (auto or rounding.needs_model_runs):
        raise OptionError(Option("data"), " and ", Option("observations"), " were both given: the observations "
                          "replace the pass over the samples; only ", Option("method", "auto"),
                          " (to score its candidates), ", Option("weights", "adaround"), " and ",
                          Option("bias_correction"), " also read samples")
    if rounding.needs_model_runs and data is None:
        raise OptionError(Option("weights", rounding.weights) if rounding.weights == "adaround" else
                          Option("bias_correction"), " learns from calibration samples: give ", Option("data"),
                          " too")
    if auto and data is None:
        raise OptionError(Option("method", "auto"), " scores candidate tables on calibration samples: give ",
                          Option("data"), " too")


def pass_options_for(pass_options: PassOptions, on_bad_sample: str) -> PassOptions:
    """``pass_options`` checked; with ``on_bad_sample="skip"``, refused when resuming or
    distributed (a skipped file would shift the positions they count) and without checkpoints."""
    pass_options.validate()
    if on_bad_sample == "skip":
        if pass_options.resume or pass_options.distributed:
            raise OptionError(Option("on_bad_sample", "skip"), " runs in one process from the first sample: drop ",
                              Option("resume" if pass_options.resume else
                                     "workers" if pass_options.workers is not None else "scheduler"))
        pass_options = dataclasses.replace(pass_options, checkpoint_every=0)
    return pass_options


def prepare(model_path: typing.Any, options: CalibrationOptions, samples: list[pathlib.Path],
            data_options: DataOptions) -> Model:
    """Prepare the model at ``model_path`` and decide its groups; note nested graphs (they stay
    float) and resized images; equalize when asked (every later step sees the equalized model)."""
    from ptqcli.graph import prepare as prepare_model
    from ptqcli.graph import subgraph_note
    from ptqcli.observe.dataset import image_note

    prepared = user = prepare_model(model_path)
    decisions = decide.decide(prepared, options)  # option errors surface before the model runs
    nested = subgraph_note(prepared.model)
    if nested:
        _log.warning(f"{pathlib.Path(model_path).name}: {nested}; they stay float")
    image_note(samples, prepared.inputs, data_options.image)
    equalized = None
    if options.rounding.equalize:
        from ptqcli.rounding import equalize

        prepared, equalized = equalize.equalized_model(prepared)
    return Model(user, prepared, decisions, equalized)


def _subsample(subsample: int | None) -> int:
    from ptqcli.observe import collect

    return collect.SUBSAMPLE if subsample is None else subsample


def _skip(skipped: list[SkippedSample], path: pathlib.Path, exc: DataError) -> None:
    skipped.append(SkippedSample(path, str(exc).removeprefix(f"{path}: ")))
    _log.warning(f"skipped bad sample {exc}")


def observe_synthetic(model_path: typing.Any, model: Model, options: CalibrationOptions, *,
                      data_options: DataOptions, subsample: int | None) -> Observed:
    """Observe synthetic tensors drawn from the BatchNorm statistics of the model at
    ``model_path`` (rescaled like the equalized weights) instead of samples (``data_free``)."""
    from ptqcli.observe import collect
    from ptqcli.observe.derive import derive
    from ptqcli.quantize.scale_groups import observation_plan
    from ptqcli.rounding import datafree  # SciPy's special functions: 0.4 s to import

    stats = datafree.statistics(model_path)
    if model.equalized is not None:
        stats = datafree.rescaled(stats, model.equalized.scales)
    synthetic = datafree.synthetic_model(model.prepared, stats, options.fixed_ranges, data_options.image.size,
                                         options.rounding.seed)
    tensors, derived = observation_plan(model.prepared.index, model.decisions.structure)
    t0 = time.perf_counter()
    obs = derive(model.prepared, collect.observe(synthetic.prepared, tensors, synthetic.batches(),
                                                 subsample=_subsample(subsample)), derived)
    return Observed(obs, time.perf_counter() - t0, synthetic=synthetic)


def load_observations(model: Model, paths: Paths, samples: list[pathlib.Path], options: CalibrationOptions, *,
                      data_options: DataOptions, skip: bool) -> Observed:
    """The observations an earlier run saved (``paths.given``), refused when made on another
    model.  With ``skip``, when the search or the rounding will read ``samples``, those that fail
    their checks are left out first (no pass sorted them out)."""
    from ptqcli.observe import observations as obs_io
    from ptqcli.observe.dataset import read_sample

    skipped: list[SkippedSample] = []
    if (options.method == "auto" or options.rounding.needs_model_runs) and skip:
        for path in samples:
            try:
                read_sample(path, model.prepared.inputs, data_options.image)
            except DataError as exc:
                _skip(skipped, path, exc)
    obs = obs_io.load(paths.given)
    if obs.fingerprint != model.prepared.fingerprint:
        raise ObservationError(f"{paths.observations}: the observations were made on another model")
    return Observed(obs, 0.0, tuple(skipped))


def observe_samples(model: Model, paths: Paths, samples: list[pathlib.Path], *, data_options: DataOptions,
                    pass_options: PassOptions, subsample: int | None, skip: bool,
                    progress: ProgressFactory) -> Observed:
    """The observation pass over ``samples`` (``ptqcli.observe.run_pass``), checkpointed at
    ``paths.checkpoint``; with ``skip``, a bad sample is left out (and counted by ``progress``)
    instead of stopping the pass."""
    from ptqcli.observe.derive import derive
    from ptqcli.observe.run_pass import run_pass
    from ptqcli.quantize.scale_groups import observation_plan

    tensors, derived = observation_plan(model.prepared.index, model.decisions.structure)
    per_sample = _subsample(subsample)  # imports the pass before its progress line: see run_pass on Ctrl-C
    t0 = time.perf_counter()
    skipped: list[SkippedSample] = []
    # Deferred before the progress line is out: a Ctrl-C from then on waits for the first batch
    # and its checkpoint (``run_pass``); the Dask pass stops at once.
    with (contextlib.nullcontext() if pass_options.distributed else stops.deferred()), progress(len(samples)) as update:
        def skip_counted(path: pathlib.Path, exc: DataError) -> None:
            if path not in {s.file for s in skipped}:  # the guard's second reading meets it again
                _skip(skipped, path, exc)
                update(1)

        obs = run_pass(model.prepared, tensors, samples, batch_size=data_options.batch_size,
                       image=data_options.image, pass_options=pass_options, subsample=per_sample,
                       ckpt_path=paths.checkpoint, update=update, on_bad=skip_counted if skip else None)
    obs = derive(model.prepared, obs, derived)
    return Observed(obs, time.perf_counter() - t0, tuple(skipped))


def check_samples_left(observed: Observed, samples: list[pathlib.Path], data: typing.Any) -> None:
    """Refuse a folder whose every sample was skipped: nothing left to observe or to score."""
    skipped = observed.skipped
    if skipped and len(skipped) == len(samples):
        raise DataError(f"{data}: every sample failed its checks ({len(skipped)} skipped; the first: "
                        f"{skipped[0].file.name}: {skipped[0].reason})")


@contextlib.contextmanager
def keeping_observations(paths: Paths) -> typing.Iterator[None]:
    """Interrupted (Ctrl-C) once this calibration has saved its observations, raise
    ``Interrupted`` naming the file, so that a new run can resume from it."""
    previous = files.identity(paths.observations)
    try:
        yield
    except KeyboardInterrupt as exc:
        # the file is ours and complete once the rename has replaced whatever was there
        if paths.given is None and files.identity(paths.observations) not in (None, previous):
            raise Interrupted(getattr(exc, "signum", signal.SIGINT), str(paths.observations)) from None
        raise


def save_observations(observed: Observed, paths: Paths) -> None:
    """Save the observations now (a search interrupted later can resume from them); they
    replace the checkpoint."""
    from ptqcli.observe import observations as obs_io

    obs_io.save(observed.observations, paths.observations)
    paths.checkpoint.unlink(missing_ok=True)


def build_table(model: Model, observed: Observed, options: CalibrationOptions, samples: list[pathlib.Path], *,
                data_options: DataOptions, progress: ProgressFactory) -> ScaleTable:
    """The scale table from the observations (``auto``: the search, scored on ``samples``;
    ``progress`` counts its steps, or else the scale groups), for the model as loaded (the
    equalization folded back in), with the data-free bias correction when asked."""
    groups = len(model.decisions.scales.sources)
    if options.method == "auto":
        from ptqcli.quantize import autosearch

        feeds = autosearch.search_feeds(samples, model.prepared.inputs, batch_size=data_options.batch_size,
                                        image=data_options.image)
        with progress(autosearch.steps(groups, feeds)) as update:
            table = autosearch.search(model.prepared, observed.observations, options, feeds, progress=update).table
    else:
        with progress(groups) as update:
            table = decide.build_table(model.prepared, observed.observations, options, progress=update)
    if model.equalized is not None:
        from ptqcli.rounding import equalize

        table = equalize.restore(table, model.user, model.equalized)
    if observed.synthetic is not None and options.rounding.bias_correction:
        from ptqcli.rounding import datafree

        table, _ = datafree.correct_biases(model.prepared, table, observed.synthetic)
    return table


def round_weights(model: Model, table: ScaleTable, options: CalibrationOptions, samples: list[pathlib.Path], *,
                  data_options: DataOptions,
                  progress: ProgressFactory) -> tuple[ScaleTable, RoundingReport | None]:
    """``table`` with weight codes learned (AdaRound) and biases corrected on ``samples``, layer
    by layer, when the options ask for a rounding that runs the model (``progress`` counts
    weights); else ``table`` unchanged and no report."""
    rounding = options.rounding
    if not rounding.needs_model_runs:
        return table, None
    from ptqcli.rounding import sequential
    from ptqcli.targets import Target

    feeds = sequential.feeds(samples, model.prepared.inputs, rounding, batch_size=data_options.batch_size,
                             image=data_options.image)
    weights = sum(model.prepared.index.array(g.weight).size for g in table.groups.values() if g.weight)
    with progress(weights) as update:
        return sequential.round_weights(
            model.prepared, table, feeds, rounding, qmax=options.weight_qmax,
            pair_bound=Target(options.cpu).pairs_saturate and options.weight_bits == 8, progress=update)
