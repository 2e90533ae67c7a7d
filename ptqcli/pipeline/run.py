"""``ptq run``: calibrate -> export -> simulate (optional) -> evaluate -> gate, from one config.

Each stage is the API's own verb; this module sequences them, checks the gate, and writes the
JSON summary and the JUnit report.  Both reports are written whenever the configuration was
valid, also when a stage fails (the report then says which and why), so a CI job always has
something to show; neither is ever half written.
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ptqcli import files
from ptqcli.errors import ConfigError, OptionError, PtqError
from ptqcli.pipeline.config import RunConfig, key_for

if TYPE_CHECKING:
    from ptqcli.analysis.evaluate import Evaluation
    from ptqcli.api import CalibrateResult, ProgressFactory
    from ptqcli.sim.report import SimulationReport

#: The stages in the order they run.
STAGES = ("calibrate", "export", "simulate", "evaluate")

#: Accuracies are fractions of a sample count: a drop equal to ``max_drop`` must not fail for the
#: last bit of a float subtraction (0.988 - 0.986 is 0.0020000000000000018).
TOLERANCE = 1e-9

#: Exit codes of ``ptq run`` by status.
EXIT_CODES = {"passed": 0, "failed": 3}


@dataclass(frozen=True)
class Stage:
    """One stage: ``passed``, ``error`` (with the message), or ``skipped`` (with the reason)."""

    name: str
    status: str
    seconds: float = 0.0
    message: str = ""


@dataclass(frozen=True)
class Check:
    """One condition of the gate: ``value`` measured against ``limit``."""

    name: str           # "max_drop" or "min_sqnr"
    limit: float
    value: float | None
    passed: bool
    text: str           # one line, with the numbers


@dataclass(frozen=True)
class RunResult:
    """What ``ptq run`` did: ``status`` is ``passed`` (every check held), ``failed`` (the model
    was produced, a check did not hold) or ``error`` (a stage failed: ``error`` says why)."""

    config: RunConfig
    name: str
    stages: tuple[Stage, ...]
    checks: tuple[Check, ...]
    status: str
    error: PtqError | None = None
    calibration: CalibrateResult | None = None
    evaluation: Evaluation | None = None
    simulation: SimulationReport | None = None
    seconds: float = 0.0
    outputs: dict[str, pathlib.Path] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return self.error.exit_code if self.error is not None else EXIT_CODES[self.status]


def _respelled(exc: PtqError, stage: str) -> PtqError:
    """An option error names options by their API keyword; here they are configuration keys."""
    if isinstance(exc, OptionError) and not isinstance(exc, ConfigError):
        return ConfigError(exc.spelled(lambda name: key_for(name, stage)))
    return exc


def gate(config: RunConfig, evaluation: Evaluation) -> tuple[Check, ...]:
    """The gate's checks on ``evaluation``; a check that cannot be measured is a PtqError."""
    checks = []
    g = config.gate
    if g.max_drop is not None:
        if not evaluation.accuracy:
            raise PtqError(f"gate.max_drop: no top-1 accuracy for {config.model.name} on {config.evaluate.data} "
                           f"(its first output is not [N, classes] scores)")
        before, after = evaluation.accuracy["float"], evaluation.accuracy["quantized"]
        drop = before - after
        ok = drop <= g.max_drop + TOLERANCE
        checks.append(Check("max_drop", g.max_drop, drop, ok,
                            f"top-1 accuracy drop {drop * 100:.2f} points (float {before * 100:.2f} %, quantized "
                            f"{after * 100:.2f} %) {'<=' if ok else '>'} max_drop {g.max_drop * 100:.2f} points"))
    if g.min_sqnr is not None:
        outputs = evaluation.outputs
        name = g.output if g.output is not None else min(outputs, key=lambda n: _finite(outputs[n].sqnr_db))
        sqnr = outputs[name].sqnr_db
        ok = not math.isnan(sqnr) and sqnr >= g.min_sqnr
        checks.append(Check("min_sqnr", g.min_sqnr, sqnr, ok,
                            f"output {name}: SQNR {sqnr:.2f} dB {'>=' if ok else '<'} min_sqnr {g.min_sqnr:.2f} dB"))
    return tuple(checks)


def failed(stages: tuple[Stage, ...] | list[Stage]) -> str | None:
    """The stage that ended the run, if one did."""
    return next((s.name for s in stages if s.status == "error"), None)


def _finite(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def _check_outputs(config: RunConfig) -> None:
    """``gate.output`` must name an output of the model: said before any work."""
    if config.gate.output is None:
        return
    from ptqcli.graph import load

    names = [o.name for o in load(config.model).graph.output]
    if config.gate.output not in names:
        raise ConfigError(f"gate.output {config.gate.output!r}: not an output of {config.model.name}; "
                          f"its outputs: {', '.join(names)}")


def run(config: RunConfig, *, name: str = "ptq run",
        progress: Callable[[str], ProgressFactory] | None = None) -> RunResult:
    """Run every stage of ``config``, check the gate, write the summary and the JUnit report.

    ``progress(stage)`` gives the progress factory of ``observe``, ``ranges``, ``simulate`` and
    ``evaluate``.  A stage's PtqError ends the run: the reports are written, then it is raised."""
    from ptqcli import api
    from ptqcli.pipeline import junit, summary

    start = time.perf_counter()
    quiet: Callable[[str], Any] = progress or (lambda stage: lambda total: contextlib.nullcontext(lambda n: None))
    out = config.outputs
    for path in (out.table, out.model, out.summary, out.junit):
        path.parent.mkdir(parents=True, exist_ok=True)
    outputs = {"table": out.table, "observations": api.observations_path_for(out.table), "model": out.model,
               "summary": out.summary, "junit": out.junit}
    reports = [("outputs.summary", out.summary), ("outputs.junit", out.junit)]
    inputs = [("model", config.model), ("calibration folder", config.calibrate.data),
              ("evaluation folder", config.evaluate.data)]
    try:
        with files.claimed(reports, inputs):
            _check_outputs(config)
            state: dict[str, Any] = {}
            stages: list[Stage] = []
            error: PtqError | None = None
            for stage in STAGES:
                if error is not None:
                    stages.append(Stage(stage, "skipped", message=f"not run: {failed(stages)} failed"))
                    continue
                if stage == "simulate" and not config.simulate.enabled:
                    stages.append(Stage(stage, "skipped", message="simulate.enabled is false"))
                    continue
                t0 = time.perf_counter()
                try:
                    state[stage] = _STAGES[stage](config, quiet)
                except PtqError as exc:
                    error = _respelled(exc, stage)
                    stages.append(Stage(stage, "error", time.perf_counter() - t0, str(error)))
                    continue
                stages.append(Stage(stage, "passed", time.perf_counter() - t0))
            checks: tuple[Check, ...] = ()
            if error is None:
                try:
                    checks = gate(config, state["evaluate"])
                except PtqError as exc:
                    error = exc
            status = "error" if error is not None else "passed" if all(c.passed for c in checks) else "failed"
            result = RunResult(config, name, tuple(stages), checks, status, error, state.get("calibrate"),
                               state.get("evaluate"), state.get("simulate"), time.perf_counter() - start, outputs)
            files.write_text_atomic(out.summary, json.dumps(summary.as_json(result), sort_keys=True, indent=1,
                                                            allow_nan=False) + "\n")
            files.write_atomic(out.junit, lambda f: f.write(junit.as_xml(result)))
    except OptionError as exc:
        raise _respelled(exc, "outputs") from None
    if error is not None:
        raise error
    return result


def _calibrate(config: RunConfig, progress: Callable[[str], ProgressFactory]) -> CalibrateResult:
    from ptqcli import api

    return api.calibrate(config.model, data=config.calibrate.data, output=config.outputs.table,
                         options=config.calibrate.options, data_options=config.data,
                         on_bad_sample=config.calibrate.on_bad_sample, progress=progress("observe"),
                         range_progress=progress("ranges"))


def _export(config: RunConfig, progress: Callable[[str], ProgressFactory]) -> pathlib.Path:
    from ptqcli import api

    return api.export(config.model, config.outputs.table, config.outputs.model)


def _simulate(config: RunConfig, progress: Callable[[str], ProgressFactory]) -> SimulationReport:
    from ptqcli.sim.report import simulation_report

    sim = config.simulate
    return simulation_report(config.model, config.outputs.table, config.evaluate.data, labels=config.evaluate.labels,
                             batch_size=config.data.batch_size, limit=config.data.limit, image=config.data.image,
                             per_layer=sim.per_layer, requant=sim.requant, cpu=sim.cpu, progress=progress("simulate"))


def _evaluate(config: RunConfig, progress: Callable[[str], ProgressFactory]) -> Evaluation:
    from ptqcli import api

    return api.evaluate(config.model, config.outputs.model, config.evaluate.data, labels=config.evaluate.labels,
                        data_options=config.data, reference=config.evaluate.reference, progress=progress("evaluate"))


_STAGES = {"calibrate": _calibrate, "export": _export, "simulate": _simulate, "evaluate": _evaluate}
