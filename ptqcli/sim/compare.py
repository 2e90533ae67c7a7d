"""The simulator against the float model and against ONNX Runtime running the exported QDQ model.

Over a folder of samples, per model output (and with ``per_layer`` per quantized activation):
SQNR and cosine of the simulator's dequantized values against float; the fraction of integer
codes equal to, or within one code (LSB) of, the codes ONNX Runtime's QDQ model produces (read
from its QuantizeLinear nodes); top-1 agreement and, with labels, accuracy of the three; time
per sample of the simulator and of the QDQ model.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import helper

from ptqcli import runtime
from ptqcli.analysis.metrics import Agreement, class_scores, top1
from ptqcli.errors import DataError
from ptqcli.export.qdq import export
from ptqcli.graph import Prepared
from ptqcli.observe.dataset import ImageSpec, batches
from ptqcli.quantize.qparams import quantize
from ptqcli.quantize.scale_table import ScaleTable
from ptqcli.sim.base import Log, Overflow
from ptqcli.sim.pairs import Saturation
from ptqcli.sim.program import CODES, Fallback, Program, build
from ptqcli.sim.run import run

ELEM = {"uint8": onnx.TensorProto.UINT8, "int8": onnx.TensorProto.INT8, "int16": onnx.TensorProto.INT16}


@dataclass(frozen=True)
class Codes:
    """Running comparison of two code arrays."""

    equal: int = 0
    within1: int = 0
    count: int = 0
    max_diff: int = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> "Codes":
        d = np.abs(a.astype(np.int64) - b.astype(np.int64))
        return Codes(self.equal + int((d == 0).sum()), self.within1 + int((d <= 1).sum()),
                     self.count + d.size, max(self.max_diff, int(d.max(initial=0))))

    @property
    def equal_fraction(self) -> float | None:
        """Fraction of codes equal; None when nothing was compared (not a vacuous 100 %)."""
        return self.equal / self.count if self.count else None

    @property
    def within1_fraction(self) -> float | None:
        """Fraction of codes at most one apart; None when nothing was compared."""
        return self.within1 / self.count if self.count else None


@dataclass(frozen=True)
class TensorComparison:
    """One tensor: simulator vs float, ONNX Runtime (QDQ) vs float, simulator vs ORT values,
    and simulator vs ORT codes (None for a tensor the table leaves in float)."""

    name: str
    dtype: str | None
    sim_vs_float: Agreement = field(default_factory=Agreement)
    ort_vs_float: Agreement = field(default_factory=Agreement)
    sim_vs_ort_values: Agreement = field(default_factory=Agreement)
    sim_vs_ort: Codes | None = None
    local: Codes | None = None  # the simulator's kernel fed ORT's own input codes, vs ORT

    def add(self, ref: np.ndarray, sim_values: np.ndarray, ort_values: np.ndarray | None,
            sim_codes: np.ndarray | None, ort_codes: np.ndarray | None) -> "TensorComparison":
        have_ort = ort_values is not None
        codes = self.sim_vs_ort.add(sim_codes, ort_codes) if self.sim_vs_ort is not None and \
            ort_codes is not None else self.sim_vs_ort
        return dataclasses.replace(
            self, sim_vs_float=self.sim_vs_float.add(ref, sim_values),
            ort_vs_float=self.ort_vs_float.add(ref, ort_values) if have_ort else self.ort_vs_float,
            sim_vs_ort_values=self.sim_vs_ort_values.add(ort_values, sim_values) if have_ort
            else self.sim_vs_ort_values, sim_vs_ort=codes)


@dataclass(frozen=True)
class Comparison:
    """``outputs``: the model outputs; ``output_codes``: the quantized tensors whose codes stand
    for them (the output itself, or the quantized inputs of the node writing a float output);
    ``layers``: every quantized activation in graph order (``per_layer`` only)."""

    samples: int
    outputs: tuple[TensorComparison, ...]
    output_codes: tuple[TensorComparison, ...]
    layers: tuple[TensorComparison, ...]
    top1: dict[str, float]             # "sim_vs_float", "ort_vs_float", "sim_vs_ort"
    accuracy: dict[str, float]         # "float", "ort", "sim"
    seconds: dict[str, float]          # "sim", "ort": run time only, all samples
    fallbacks: tuple[Fallback, ...]
    overflows: tuple[Overflow, ...]    # summed per node
    saturations: tuple[Saturation, ...] = ()  # int16 pair sums clipped (cpu x86-avx2), summed per node

    @property
    def first_divergence(self) -> str | None:
        """The first quantized tensor (graph order) whose codes differ from ORT's by more than
        one code anywhere."""
        for t in self.layers:
            if t.sim_vs_ort is not None and t.sim_vs_ort.max_diff > 1:
                return t.name
        return None

    @property
    def first_local_difference(self) -> str | None:
        """The first quantized tensor whose codes differ from ORT's when the simulator's kernel
        is fed ORT's own input codes: where the two arithmetics, not their inputs, differ."""
        for t in self.layers:
            if t.local is not None and t.local.equal < t.local.count:
                return t.name
        return None

    @property
    def output_codes_within1(self) -> float | None:
        """Fraction of all output codes (see ``output_codes``) within one code of ORT's."""
        total = sum(t.sim_vs_ort.count for t in self.output_codes if t.sim_vs_ort is not None)
        if not total:
            return None
        return sum(t.sim_vs_ort.within1 for t in self.output_codes if t.sim_vs_ort is not None) / total


def _with_outputs(model: onnx.ModelProto, extra: dict[str, int]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name, elem in extra.items():
        if name not in have:
            out.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return out


def _code_tensors(qdq: onnx.ModelProto, names: Sequence[str]) -> dict[str, str]:
    """For each quantized activation, the QuantizeLinear output in the QDQ model holding its codes."""
    dequant = {n.output[0]: n for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    quant = {n.output[0]: n for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    found = {}
    for name in names:
        dq = dequant.get(name)
        if dq is None:  # a quantized graph input: its DequantizeLinear writes a renamed copy
            dq = next((n for n in dequant.values() if n.input[0] in quant and quant[n.input[0]].input[0] == name), None)
        if dq is not None and dq.input[0] in quant:
            found[name] = dq.input[0]
    return found


def output_code_tensors(program: Program) -> dict[str, tuple[str, ...]]:
    """Per graph output, the quantized tensors whose codes stand for it: itself when quantized,
    else the nearest quantized tensors upstream (walking back through float steps)."""
    writer = {w: s for s in program.steps for w in s.writes}
    found = {}
    for out in program.outputs:
        stack, seen, codes = [out], set(), []
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in program.params:
                codes.append(name)
            elif name in writer:
                stack.extend(n for n, _ in writer[name].reads if n)
        found[out] = tuple(dict.fromkeys(codes))
    return found


def _local(program: Program, code_names: dict[str, str], probed: dict[str, np.ndarray],
           batch: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each integer step run on ORT's codes of its inputs: (simulator, ORT) codes per output.
    Steps that read a tensor computed at run time in float are skipped."""
    found = {}
    for step in program.steps:
        if not step.integer or not all(w in code_names for w in step.writes):
            continue
        args = []
        for name, mode in step.reads:
            if not name:
                args.append(None)
            elif mode == CODES and name in code_names:
                args.append(probed[code_names[name]])
            elif mode == CODES and name in program.const_codes:
                args.append(program.const_codes[name])
            elif mode != CODES and name in program.constants:
                args.append(program.constants[name])
            else:
                break
        else:
            outs = step.kernel.run(args, Log(batch=batch))
            found.update({w: (y, probed[code_names[w]]) for w, y in zip(step.writes, outs)})
    return found


def compare(prepared: Prepared, table: ScaleTable, files: Sequence[pathlib.Path], *, batch_size: int | None = None,
            image: ImageSpec | None = None, labels: dict[str, int] | None = None, per_layer: bool = False,
            requant: str = "fixed", cpu: str = "exact",
            progress: Callable[[int], None] | None = None) -> Comparison:
    """Run float, QDQ (ONNX Runtime) and the simulator (with the ``requant`` and ``cpu``
    arithmetic) over ``files`` and compare them."""
    index = prepared.index
    order = {n.name: i for i, n in enumerate(index.nodes)}
    acts = sorted((n for n, e in table.tensors.items() if e.role == "activation"),
                  key=lambda t: (order[index.producer[t].name] if t in index.producer else -1, t))
    if labels is not None:
        missing = [f.name for f in files if f.name not in labels]
        if missing:
            raise DataError(f"no label for sample {missing[0]!r} (and {len(missing) - 1} more)")
    program = build(prepared, table, keep=acts, requant=requant, cpu=cpu)  # keeping codes alive costs memory
    standing = output_code_tensors(program)
    inner = [t for t in acts if per_layer or any(t in v for v in standing.values())]
    outputs = list(index.output_names)
    watched = list(dict.fromkeys(outputs + inner))
    qdq = export(prepared, table)
    # Inner codes come from the QuantizeLinear outputs of an instrumented copy (exposing them
    # changes no result); the plain copy gives the outputs and the timing.
    code_names = _code_tensors(qdq, inner)
    plain = runtime.session(qdq)
    probe = runtime.session(_with_outputs(qdq, {c: ELEM[program.params[t].dtype] for t, c in code_names.items()})) \
        if code_names else None
    reference = runtime.session(_with_outputs(prepared.model, {t: onnx.TensorProto.FLOAT for t in inner}))
    stats = {t: TensorComparison(t, program.params[t].dtype if t in program.params else None,
                                 sim_vs_ort=Codes() if t in program.params else None) for t in watched}
    counts = dict.fromkeys(("sim_vs_float", "ort_vs_float", "sim_vs_ort", "float", "ort", "sim"), 0)
    seconds = {"sim": 0.0, "ort": 0.0}
    overflows: dict[str, Overflow] = {}
    saturated: dict[str, int] = {}
    samples, classified = 0, False
    for batch in batches(files, prepared.inputs, batch_size=batch_size, image=image):
        t0 = time.perf_counter()
        ort_out = dict(zip(outputs, plain.run(outputs, batch.feeds)))
        t1 = time.perf_counter()
        sim = run(program, batch.feeds, keep=inner)
        seconds["sim"] += time.perf_counter() - t1
        seconds["ort"] += t1 - t0
        ref = dict(zip(outputs + inner, reference.run(outputs + inner, batch.feeds)))
        probe_names = list(code_names.values())
        probed = dict(zip(probe_names, probe.run(probe_names, batch.feeds))) if probe is not None else {}
        if per_layer:
            for name, (sim_codes, ort_codes) in _local(program, code_names, probed, batch.count).items():
                old = stats[name].local or Codes()
                stats[name] = dataclasses.replace(stats[name], local=old.add(sim_codes, ort_codes))
        for t in watched:
            ort_codes = probed.get(code_names.get(t, ""))
            ort_value = ort_out.get(t)
            p = program.params.get(t)
            if ort_value is None and ort_codes is not None:
                ort_value = (ort_codes.astype(np.float32) - p.zero_point[0]) * np.float32(p.scale[0])
            if ort_codes is None and ort_value is not None and p is not None:
                ort_codes = quantize(ort_value, p)  # exact: the value is a dequantized code
            got = sim.tensors[t]
            stats[t] = stats[t].add(ref[t], got.values, ort_value, got.codes, ort_codes)
        for o in sim.overflows:
            prev = overflows.get(o.node, Overflow(o.node, 0, 0))
            overflows[o.node] = Overflow(o.node, prev.count + o.count, max(prev.peak, o.peak))
        for s in sim.saturations:
            saturated[s.node] = saturated.get(s.node, 0) + s.count
        if class_scores(ref[outputs[0]], batch.count):
            classified = True
            pf, po, ps = top1(ref[outputs[0]]), top1(ort_out[outputs[0]]), top1(sim.tensors[outputs[0]].values)
            counts["sim_vs_float"] += int((ps == pf).sum())
            counts["ort_vs_float"] += int((po == pf).sum())
            counts["sim_vs_ort"] += int((ps == po).sum())
            if labels is not None:
                truth = np.array([labels[f.name] for f in batch.files])
                for key, pred in (("float", pf), ("ort", po), ("sim", ps)):
                    counts[key] += int((pred == truth).sum())
        samples += batch.count
        if progress is not None:
            progress(batch.count)
    top = {k: counts[k] / samples for k in ("sim_vs_float", "ort_vs_float", "sim_vs_ort")} \
        if classified and samples else {}
    acc = {k: counts[k] / samples for k in ("float", "ort", "sim")} \
        if classified and labels is not None and samples else {}
    codes = tuple(stats[t] for t in dict.fromkeys(n for o in outputs for n in standing[o]))
    return Comparison(samples, tuple(stats[o] for o in outputs), codes,
                      tuple(stats[t] for t in acts) if per_layer else (), top, acc, seconds,
                      program.fallbacks, tuple(overflows.values()),
                      tuple(Saturation(n, k) for n, k in saturated.items()))
