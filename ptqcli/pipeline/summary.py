"""The JSON summary of ``ptq run`` (``outputs.summary``): what ran, what it measured, the gate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ptqcli.analysis.metrics import finite_or_none
from ptqcli.analysis.report import EvaluationReport, skipped_json

if TYPE_CHECKING:
    from ptqcli.pipeline.run import RunResult


def as_json(result: RunResult) -> dict[str, Any]:
    """The summary as JSON values (floats finite or None), keys meant to be written sorted."""
    config = result.config
    calibration = result.calibration
    return {
        "name": result.name,
        "status": result.status,
        "exit_code": result.exit_code,
        "error": str(result.error) if result.error is not None else None,
        "model": str(config.model),
        "outputs": {k: str(v) for k, v in result.outputs.items()},
        "stages": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 3), "message": s.message or None}
                   for s in result.stages],
        "seconds": round(result.seconds, 3),
        "gate": {c.name: {"limit": c.limit, "value": finite_or_none(c.value) if c.value is not None else None,
                          "passed": c.passed, "text": c.text} for c in result.checks},
        "calibrate": None if calibration is None else {
            "samples": calibration.table.samples, "method": config.calibrate.options.method,
            "skipped_samples": skipped_json(calibration.skipped), "observed_tensors": calibration.observed_tensors},
        "evaluate": None if result.evaluation is None else
        EvaluationReport(str(config.model), str(config.outputs.model), result.evaluation).as_json(),
        "simulate": None if result.simulation is None else result.simulation.as_json(),
    }


def as_text(result: RunResult) -> str:
    """A few lines for a person: each stage, each check, the verdict."""
    lines = []
    for s in result.stages:
        lines.append(f"{s.name}: {s.status}" + (f" in {s.seconds:.1f} s" if s.status == "passed" else "") +
                     (f" ({s.message})" if s.message and s.status == "skipped" else ""))
        if s.name == "calibrate" and result.calibration is not None and result.calibration.skipped:
            lines[-1] += f"; {len(result.calibration.skipped)} bad samples skipped"
    for c in result.checks:
        lines.append(f"gate {c.name}: {'passed' if c.passed else 'FAILED'}: {c.text}")
    return "\n".join(lines)
