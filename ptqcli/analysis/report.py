"""Human and machine summaries of an evaluation."""

from __future__ import annotations

from dataclasses import dataclass

from ptqcli.analysis.evaluate import Evaluation
from ptqcli.analysis.metrics import finite_or_none


@dataclass(frozen=True)
class EvaluationReport:
    float_model: str
    quantized_model: str
    evaluation: Evaluation

    def as_json(self) -> dict:
        ev = self.evaluation
        return {
            "float_model": self.float_model, "quantized_model": self.quantized_model, "samples": ev.samples,
            "outputs": {name: {"sqnr_db": finite_or_none(a.sqnr_db), "cosine": a.cosine, "mse": a.mse}
                        for name, a in ev.outputs.items()},
            "top1_agreement": ev.top1_agreement, "accuracy": ev.accuracy or None,
            "ort_arithmetic": ev.arithmetic,
        }

    def as_text(self) -> str:
        ev = self.evaluation
        lines = [f"{ev.samples} samples: {self.float_model} (float) vs {self.quantized_model}"]
        if ev.arithmetic:
            lines.append(f"  ONNX Runtime ran {ev.arithmetic}")
        for name, a in ev.outputs.items():
            lines.append(f"  output {name}: SQNR {a.sqnr_db:.2f} dB, cosine {a.cosine:.6f}")
        if ev.top1_agreement is not None:
            lines.append(f"  top-1 agreement: {ev.top1_agreement * 100:.2f} %")
        if ev.accuracy:
            lines.append(f"  accuracy: float {ev.accuracy['float'] * 100:.2f} %, "
                         f"quantized {ev.accuracy['quantized'] * 100:.2f} %")
        return "\n".join(lines)
