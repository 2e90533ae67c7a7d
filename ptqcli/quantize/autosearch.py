"""``--method auto``: choose ranges by the error they cause at the model's outputs.

Every range method optimizes a proxy on one tensor (mass kept, information kept, squared error);
which proxy serves a model best depends on the model (a classifier with heavy-tailed features
wants clipping, a small CNN wants the full range).  The search asks the model instead:

1. build the scale table of every method in ``CANDIDATES`` from the same observations;
2. score each by the SQNR of the model outputs against float, on calibration samples spread
   evenly over the folder (``SAMPLES``, fewer for large inputs: ``SAMPLE_VALUES``)
   (one ONNX Runtime session whose activation scales and zero points are graph inputs, so a
   candidate costs one run per sample and no new session);
3. starting from the best table, visit the scale groups where the methods disagree most (range
   scales more than ``MIN_SPREAD`` apart) and switch each to another method's range where that
   raises the output SQNR (greedy coordinate descent), within ``TRIALS`` trials and
   ``TRIAL_VALUES`` input values processed in all.

Every table scored is a whole table: a weight, bias or constant whose codes depend on an
activation scale (a bias's scale is its input's times its weight's; the bias floor can raise a
weight's scale) is fed to the scoring session as the dequantized value *that* table gives it.
(Scoring every candidate with the first table's biases misjudged the candidates: on a text
recognizer whose first conv has a bias the model is sensitive to, kl's activation scales scored
13.0 dB with mse's biases and 16.9 dB with its own.)  The final table is the assembly of the
chosen groups' ranges, which is exactly what ``--method-for`` would give.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import helper

from ptqcli import runtime
from ptqcli.analysis.metrics import Agreement, energy, noise_energy
from ptqcli.export.qdq import float_copy, insert_qdq
from ptqcli.graph import Prepared
from ptqcli.observe.dataset import Feed
from ptqcli.observe.observations import Observations
from ptqcli.quantize.decide import CalibrationOptions, assemble, decide, group_ranges
from ptqcli.quantize.qparams import NUMPY, QuantParams, dequantize
from ptqcli.quantize.stored import codes
from ptqcli.quantize.scale_table import ScaleTable

CANDIDATES = ("percentile", "mse", "max", "kl")
#: Calibration samples the search scores on (at most), and the most input values they may hold.
SAMPLES = 64
SAMPLE_VALUES = 1 << 22
#: A switch must raise the output SQNR by more than this (dB) to be taken.
MIN_GAIN_DB = 0.01
#: Candidate ranges closer than this (relative scale) are not worth a trial.
MIN_SPREAD = 0.05
#: Most refinement trials (each is one pass over the search samples), and the most input values
#: all passes together may process: together they bound the search time.
TRIALS = 96
TRIAL_VALUES = 1 << 26

_ONNX_TYPE = {"uint8": onnx.TensorProto.UINT8, "int8": onnx.TensorProto.INT8, "int16": onnx.TensorProto.INT16}


@dataclass(frozen=True)
class AutoResult:
    """The chosen table; the output SQNR (dB) of each method alone and of the final table; the
    scale groups switched away from the best method, with their method."""

    table: ScaleTable
    scores: dict[str, float]
    final_sqnr_db: float
    switched: dict[str, str]


class Evaluator:
    """Output SQNR of quantized tables against float, on fixed samples.

    One ONNX Runtime session serves every table of a search: activation scales and zero points
    are graph inputs, and so is the dequantized value of every operand (weight, bias, constant)
    whose codes differ between the ``tables`` given here.  Any table whose groups each take one
    of these tables' ranges has its operands among theirs (an operand's codes depend on its own
    group's input scale only), so the session serves every mix of them."""

    def __init__(self, prepared: Prepared, tables: Sequence[ScaleTable], feeds: Sequence[Feed]) -> None:
        template = tables[0]
        self.roots = sorted({e.scale_group for e in template.tensors.values() if e.role == "activation"})
        self._inputs = {r: (f"ptq::scale::{i}", f"ptq::zero::{i}") for i, r in enumerate(self.roots)}
        self._dtype = {e.scale_group: e.params.dtype for e in template.tensors.values() if e.role == "activation"}
        root_of = {t: e.scale_group for t, e in template.tensors.items() if e.role == "activation"}

        def as_inputs(graph: onnx.GraphProto, names, tensor: str, params: QuantParams) -> tuple[str, str]:
            return self._inputs[root_of[tensor]]

        model = float_copy(prepared, template)
        index = self._index = prepared.index
        operands = sorted(n for n, e in template.tensors.items() if e.role != "activation" and n in index.initializers)
        first = {n: self._operand(template, index, n) for n in operands}
        self._operands = [n for n in operands
                          if any(not np.array_equal(first[n], self._operand(t, index, n)) for t in tables[1:])]
        fed = set(self._operands)
        kept = [i for i in model.graph.initializer if i.name not in fed]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        for name in self._operands:
            model.graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, first[name].shape))
        for root, (s, z) in self._inputs.items():
            model.graph.input.extend([helper.make_tensor_value_info(s, onnx.TensorProto.FLOAT, []),
                                      helper.make_tensor_value_info(z, _ONNX_TYPE[self._dtype[root]], [])])
        insert_qdq(model, replace(template, tensors={n: e for n, e in template.tensors.items() if n not in fed}),
                   as_inputs)
        self._session = runtime.session(model)
        self._outputs = [o.name for o in self._session.get_outputs()]
        reference = runtime.session(prepared.model)
        self._feeds = list(feeds)
        self._reference = [reference.run(self._outputs, f) for f in self._feeds]
        self._signal = sum(energy(r) for ref in self._reference for r in ref)

    def params_of(self, table: ScaleTable) -> dict[str, QuantParams]:
        return {r: table.tensors[r].params for r in self.roots}

    @staticmethod
    def _operand(table: ScaleTable, index, name: str) -> np.ndarray:
        """What the exported model's DequantizeLinear gives for operand ``name`` under ``table``."""
        return dequantize(codes(table, name, index.array(name)), table.tensors[name].params)

    def sqnr_db(self, table: ScaleTable) -> float:
        """The output SQNR (dB) of ``table`` (one of the tables given, or a mix of their ranges)."""
        flags: dict[str, np.ndarray] = {}
        for root, (s, z) in self._inputs.items():
            p = table.tensors[root].params
            flags[s] = np.array(p.scale[0], dtype=np.float32)
            flags[z] = np.array(p.zero_point[0], dtype=NUMPY[p.dtype])
        for name in self._operands:
            flags[name] = self._operand(table, self._index, name)
        noise = 0.0  # the reference's energy is the same for every table: only the noise is summed
        for feed, ref in zip(self._feeds, self._reference):
            for r, g in zip(ref, self._session.run(self._outputs, {**feed, **flags})):
                noise += noise_energy(r, g)
        return Agreement(signal=self._signal, noise=noise).sqnr_db


def _budget(feeds: Sequence[Feed]) -> int:
    """Refinement trials allowed on ``feeds`` (``TRIALS``, fewer for large inputs)."""
    per_pass = sum(a.size for f in feeds for a in f.values())
    return min(TRIALS, max(0, TRIAL_VALUES // max(per_pass, 1) - len(CANDIDATES)))


def steps(groups: int, feeds: Sequence[Feed]) -> int:
    """How many ``progress(1)`` calls ``search`` makes for a plan of ``groups`` scale groups:
    one per group of every candidate's ranges, one per candidate scored, one per trial allowed."""
    return len(CANDIDATES) * groups + len(CANDIDATES) + _budget(feeds)


def search(prepared: Prepared, obs: Observations, options: CalibrationOptions, feeds: Sequence[Feed], *,
           progress: Callable[[int], None] | None = None) -> AutoResult:
    """The table whose per-group methods give the best output SQNR on ``feeds`` (see module doc).
    ``progress(n)`` counts the ``steps`` done."""
    update = progress or (lambda n: None)
    decisions = decide(prepared, options)
    ranges = {m: group_ranges(prepared, obs, replace(options, method=m), decisions, progress=update)
              for m in CANDIDATES}

    weights: dict = {}  # each weight's entries once per input scale, however many tables are assembled

    def table(best: str, chosen: dict[str, str]) -> ScaleTable:
        mix = {r: ranges[chosen.get(r, best)][r] for r in ranges[best]}
        return assemble(prepared, obs, replace(options, method=best, method_for=options.method_for + tuple(
            sorted(chosen.items()))), decisions, mix, cache=weights)

    tables = {m: table(m, {}) for m in CANDIDATES}
    evaluator = Evaluator(prepared, [tables[m] for m in CANDIDATES], feeds)
    scores = {}
    for m in CANDIDATES:
        scores[m] = evaluator.sqnr_db(tables[m])
        update(1)
    best = max(CANDIDATES, key=lambda m: (scores[m], -CANDIDATES.index(m)))
    current_db = scores[best]
    budget = _budget(feeds)
    fixed = {name for name, _ in options.method_for} | {name for name, _, _ in options.fixed_ranges}
    roots = [r for r in evaluator.roots if not fixed & set(decisions.scales.members(r))]
    params = {m: evaluator.params_of(t) for m, t in tables.items()}
    roots.sort(key=lambda r: -_spread([params[m][r] for m in CANDIDATES]))  # stable: graph order on ties
    chosen: dict[str, str] = {}
    trials = 0
    for root in roots:
        for m in CANDIDATES:
            current = chosen.get(root, best)
            if trials >= budget or m == best or not _differs(params[m][root], params[current][root]):
                continue
            trials += 1
            update(1)
            db = evaluator.sqnr_db(table(best, {**chosen, root: m}))
            if db > current_db + MIN_GAIN_DB:
                current_db, chosen[root] = db, m
    update(budget - trials)  # trials the search did not need
    final = table(best, chosen)
    record = {"method": "auto", "auto": {
        "best_method": best, "samples": sum(len(next(iter(f.values()))) for f in feeds),
        "output_sqnr_db": {**{m: round(v, 4) for m, v in scores.items()}, "chosen": round(current_db, 4)},
        "switched": dict(sorted(chosen.items()))}}
    return AutoResult(replace(final, options={**final.options, **record}), scores, current_db, chosen)


def spread(files: Sequence, count: int = SAMPLES) -> list:
    """``count`` items evenly spread over ``files`` (a folder sorted by class must not give the
    search one class only)."""
    if len(files) <= count:
        return list(files)
    return [files[int(i)] for i in np.linspace(0, len(files) - 1, count).round()]


def search_feeds(files: Sequence, inputs, *, batch_size: int | None = None, image=None) -> list[Feed]:
    """The feeds the search scores on: samples spread over ``files``, as many as fit in
    ``SAMPLES`` and ``SAMPLE_VALUES`` (large inputs, such as pages for a detector, get fewer)."""
    from ptqcli.observe.dataset import batches, read_sample

    per_sample = sum(a[0].size for a in read_sample(files[0], inputs, image).values())
    count = max(1, min(SAMPLES, SAMPLE_VALUES // max(per_sample, 1)))
    return [b.feeds for b in batches(spread(files, count), inputs, batch_size=batch_size, image=image)]


def _spread(params: Sequence[QuantParams]) -> float:
    """How far apart candidate scales are: largest over smallest, minus one."""
    scales = [p.scale[0] for p in params]
    return max(scales) / min(scales) - 1.0


def _differs(a: QuantParams, b: QuantParams) -> bool:
    return _spread([a, b]) > MIN_SPREAD or a.zero_point != b.zero_point
