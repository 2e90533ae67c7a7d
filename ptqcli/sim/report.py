"""``ptq simulate``: load, compare, and summarize as text or JSON."""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass
from typing import Callable, ContextManager

from ptqcli.analysis.evaluate import read_labels
from ptqcli.analysis.metrics import finite_or_none
from ptqcli.graph import prepare
from ptqcli.observe.dataset import ImageSpec, image_note, list_samples
from ptqcli.quantize import scale_table
from ptqcli.runtime import Int8Arithmetic, int8_arithmetic
from ptqcli.sim import resolve_cpu
from ptqcli.sim.compare import Comparison, TensorComparison, compare
from ptqcli.sim.program import check


@dataclass(frozen=True)
class SimulationReport:
    model: str
    table: str
    batch_size: int
    requant: str
    cpu: str
    ort_arithmetic: Int8Arithmetic
    comparison: Comparison

    def as_json(self) -> dict:
        c = self.comparison
        return {
            "model": self.model, "table": self.table, "samples": c.samples, "batch_size": self.batch_size,
            "requant": self.requant, "cpu": self.cpu,
            "ort_arithmetic": {"cpu": self.ort_arithmetic.cpu, "vnni": self.ort_arithmetic.vnni,
                               "description": self.ort_arithmetic.describe()},
            "outputs": {t.name: _tensor_json(t) for t in c.outputs},
            "output_codes": {t.name: _tensor_json(t) for t in c.output_codes},
            "output_codes_within_1": c.output_codes_within1,
            "layers": [dict(_tensor_json(t), name=t.name) for t in c.layers] if c.layers else None,
            "first_divergence": c.first_divergence if c.layers else None,
            "first_local_difference": c.first_local_difference if c.layers else None,
            "top1": c.top1 or None, "accuracy": c.accuracy or None,
            "seconds_per_sample": _per_sample(c),
            "fallbacks": [{"node": f.node, "op_type": f.op_type, "reason": f.reason} for f in c.fallbacks],
            "overflows": [{"node": o.node, "count": o.count, "peak": o.peak} for o in c.overflows],
            "saturations": [{"node": s.node, "count": s.count} for s in c.saturations],
        }

    def as_text(self) -> str:
        c = self.comparison
        batch = self.batch_size or "auto"
        lines = [f"{c.samples} samples (batch {batch}): simulator of {self.model} with {self.table}, "
                 f"{self.requant} requantization, {CPU_TEXT[self.cpu]}",
                 f"  ORT QDQ: {self.ort_arithmetic.describe()}"]
        if self.cpu != self.ort_arithmetic.cpu:
            lines.append(f"  (the simulator models {CPU_TEXT[self.cpu]}: its codes differ from ORT's where pairs "
                         f"saturate; --cpu native follows this machine)")
        for t in c.outputs:
            lines.append(f"  output {t.name}: " + _tensor_text(t))
        for t in c.output_codes:
            if t.name not in {o.name for o in c.outputs}:
                lines.append(f"  codes feeding a float output, {t.name}: " + _codes_text(t))
        within = c.output_codes_within1
        if within is not None:
            lines.append(f"  output codes within 1 of ORT QDQ: {within:.2%}")
        if c.top1:
            lines.append(f"  top-1 agreement with float: simulator {c.top1['sim_vs_float']:.2%}, ORT QDQ "
                         f"{c.top1['ort_vs_float']:.2%}; simulator with ORT QDQ {c.top1['sim_vs_ort']:.2%}")
        if c.accuracy:
            lines.append(f"  accuracy: float {c.accuracy['float']:.2%}, ORT QDQ {c.accuracy['ort']:.2%}, "
                         f"simulator {c.accuracy['sim']:.2%}")
        per = _per_sample(c)
        ratio = f" ({per['sim'] / per['ort']:.1f}x)" if per["ort"] > 0 else ""
        lines.append(f"  time per sample: simulator {per['sim'] * 1e3:.3f} ms, ORT QDQ {per['ort'] * 1e3:.3f} ms{ratio}")
        lines.append("  int32 overflows: " + (", ".join(f"{o.node} ({o.count} values, peak {o.peak})"
                                                     for o in c.overflows) or "none"))
        if self.cpu == "x86-avx2":
            lines.append("  int16 pair sums saturated: " + (", ".join(f"{s.node} ({s.count})" for s in c.saturations)
                                                            or "none"))
        lines.append(f"  float fallbacks: {len(c.fallbacks) or 'none'}")
        lines.extend(f"    {f.node} ({f.op_type}): {f.reason}" for f in c.fallbacks)
        if c.layers:
            lines.append("  per quantized tensor, graph order (SQNR of the simulator vs float; codes vs ORT QDQ "
                         "end to end, and 'local': the kernel fed ORT's own input codes):")
            width = max(len(t.name) for t in c.layers)
            lines.append(f"    {'tensor':<{width}}  dtype   SQNR dB    equal  within 1  max     local equal")
            for t in c.layers:
                codes = t.sim_vs_ort
                tail = (f"{codes.equal_fraction:8.3%}  {codes.within1_fraction:8.3%}  {codes.max_diff:3d}"
                        if codes is not None and codes.count else "       -         -    -")
                local = f"{t.local.equal_fraction:10.4%}" if t.local is not None and t.local.count else "         -"
                lines.append(f"    {t.name:<{width}}  {t.dtype or '-':<6} {_db(t.sim_vs_float.sqnr_db):>8}  "
                             f"{tail}  {local}")
            lines.append(f"  first tensor more than 1 code from ORT QDQ: {c.first_divergence or 'none'}")
            lines.append(f"  first tensor whose kernel differs from ORT on ORT's own inputs: "
                         f"{c.first_local_difference or 'none'}")
        return "\n".join(lines)


#: How the report names each accumulation arithmetic.
CPU_TEXT = {"exact": "exact int32 accumulation", "x86-avx2": "x86 AVX2 int16 pair sums"}


def _db(x: float) -> str:
    return "inf" if math.isinf(x) and x > 0 else f"{x:.2f}"


def _per_sample(c: Comparison) -> dict[str, float]:
    n = max(c.samples, 1)
    return {k: v / n for k, v in c.seconds.items()}


def _tensor_json(t: TensorComparison) -> dict:
    out = {"dtype": t.dtype or "float", "sqnr_db": finite_or_none(t.sim_vs_float.sqnr_db),
           "cosine": t.sim_vs_float.cosine, "ort_sqnr_db": finite_or_none(t.ort_vs_float.sqnr_db),
           "sqnr_db_vs_ort": finite_or_none(t.sim_vs_ort_values.sqnr_db)}
    if t.sim_vs_ort is not None:
        out.update(codes_equal=t.sim_vs_ort.equal_fraction, codes_within_1=t.sim_vs_ort.within1_fraction,
                   codes_max_diff=t.sim_vs_ort.max_diff)
    if t.local is not None:
        out.update(local_equal=t.local.equal_fraction, local_within_1=t.local.within1_fraction)
    return out


def _tensor_text(t: TensorComparison) -> str:
    text = (f"SQNR vs float {_db(t.sim_vs_float.sqnr_db)} dB (ORT QDQ {_db(t.ort_vs_float.sqnr_db)} dB), "
            f"cosine {t.sim_vs_float.cosine:.6f}; vs ORT QDQ SQNR {_db(t.sim_vs_ort_values.sqnr_db)} dB")
    return text + ("; " + _codes_text(t) if t.sim_vs_ort is not None else "; float")


def _codes_text(t: TensorComparison) -> str:
    codes = t.sim_vs_ort
    if not codes.count:
        return f"{t.dtype} codes not compared (ORT QDQ exposes none for this tensor)"
    return (f"{t.dtype} codes vs ORT QDQ {codes.equal_fraction:.2%} equal, {codes.within1_fraction:.2%} "
            f"within 1 (max {codes.max_diff})")


def simulation_report(model: pathlib.Path, table: pathlib.Path, data: pathlib.Path, *, labels: pathlib.Path | None,
                      batch_size: int, limit: int | None, image: ImageSpec, per_layer: bool, requant: str,
                      cpu: str, progress: Callable[[int], ContextManager[Callable[[int], None]]]) -> SimulationReport:
    prepared = prepare(model)
    loaded = scale_table.load(table)
    check(prepared, loaded)
    files = list_samples(data, limit=limit)
    image_note(files, prepared.inputs, image)
    with progress(len(files)) as update:
        result = compare(prepared, loaded, files, batch_size=batch_size, image=image,
                         labels=read_labels(labels) if labels else None, per_layer=per_layer,
                         requant=requant, cpu=resolve_cpu(cpu), progress=update)
    return SimulationReport(str(model), str(table), batch_size, requant, resolve_cpu(cpu), int8_arithmetic(), result)
