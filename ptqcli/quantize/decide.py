"""From observations and options to a scale table (the QuantPlan with its numbers)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

import calibrators
from calibrators import Range, RangeSpec, guard, histogram
from ptqcli.errors import ObservationError, Option, OptionError, UnsupportedError
from ptqcli.graph import Prepared, attr, opset, subgraph_note
from ptqcli.observe.observations import Observations
from ptqcli.quantize.plan import Group, Structure, analyse
from ptqcli.quantize.qparams import QuantParams, activation_params, bias_floor, bias_params, weight_params
from ptqcli.quantize.scale_groups import ScaleGroups, integer_groups, scale_groups
from ptqcli.quantize.scale_table import GroupEntry, NodeEntry, ScaleTable, TensorEntry
from ptqcli.rounding.options import RoundingOptions
from ptqcli.targets import Target, pair_safe_scales, reduction_rows

#: Operators whose integer form needs more than 8 bits on both sides: Softmax exponentiates its
#: input (an 8-bit step on attention logits spanning +-50 moves probabilities by 20 %) and
#: LayerNormalization divides by a statistic of its input.  Integer implementations of both take
#: 16-bit (or wider) inputs; ``--all-int8`` turns this off.
SENSITIVE = {"Softmax", "LayerNormalization"}


@dataclass(frozen=True)
class CalibrationOptions:
    """Choices that turn observations into a scale table (none of them needs a new pass).

    ``method``: range method for activations; ``method_for``: (tensor, method) overrides;
    ``symmetric``: int8 symmetric activations instead of uint8 asymmetric; ``per_channel``:
    per-output-channel weight scales; ``int16``: tensor or node names computed with 16-bit
    activations; ``sensitive_int16``: inputs and outputs of ``SENSITIVE`` operators are 16-bit
    too; ``exclude``: node names or op types left in float; ``fixed_ranges``:
    (tensor, lo, hi) ranges given by the user; ``cpu``: the deployment target
    (:class:`ptqcli.targets.Target`): ``any`` and ``x86-avx2`` keep every pair of weight codes
    within what x86 AVX2 kernels can add in int16; ``weight_bits``: 8, or 4 (codes -7..7 in int8
    containers, which never reach the int16 pair bound); ``rounding``: AdaRound, bias correction,
    equalization, data-free (:class:`ptqcli.rounding.options.RoundingOptions`)."""

    method: str = "mse"
    method_for: tuple[tuple[str, str], ...] = ()
    percentile: float = 99.99
    symmetric: bool = False
    per_channel: bool = True
    int16: tuple[str, ...] = ()
    sensitive_int16: bool = True
    exclude: tuple[str, ...] = ()
    fixed_ranges: tuple[tuple[str, float, float], ...] = ()
    cpu: str = Target.ANY.value
    weight_bits: int = 8
    # flat in ptq run's [calibrate] table (weights = "adaround"), as its flags are on the command line
    rounding: RoundingOptions = field(default=RoundingOptions(), metadata={"flatten": True})

    @property
    def weight_qmax(self) -> int:
        """The largest weight code: 127, or 7 for 4-bit weights."""
        return 2 ** (self.weight_bits - 1) - 1

    def validate(self) -> None:
        self.rounding.validate()
        if self.weight_bits not in (4, 8):
            raise OptionError(Option("weight_bits"), f" must be 8 or 4, got {self.weight_bits!r}")
        if self.method not in calibrators.METHODS and self.method != "auto":
            raise OptionError(Option("method", self.method), f": unknown range method; known: "
                              f"{', '.join(calibrators.METHODS)}, auto")
        for tensor, name in self.method_for:
            if name not in calibrators.METHODS:
                raise OptionError(Option("method_for", f"{tensor}={name}"), f": unknown range method; known: "
                                  f"{', '.join(calibrators.METHODS)}")
        if self.cpu not in {t.value for t in Target}:
            raise OptionError(Option("cpu", self.cpu), f": unknown CPU target; known: "
                              f"{', '.join(t.value for t in Target)}")
        if not 0.0 < self.percentile <= 100.0:
            raise OptionError(Option("percentile"), f" must be in (0, 100], got {self.percentile!r}")
        for name, lo, hi in self.fixed_ranges:
            if not lo <= 0.0 <= hi or lo == hi:
                raise OptionError(Option("fixed_ranges", f"{name}={lo}:{hi}"),
                                  ": the range must contain 0 and not be empty")


@dataclass(frozen=True)
class Decisions:
    """The structure and which of its groups run in integers, and at which precision."""

    structure: Structure
    precision: dict[str, str]       # group anchor -> "int8" | "int16" (enabled groups only)
    scales: ScaleGroups
    int16_roots: frozenset[str]


def decide(prepared: Prepared, options: CalibrationOptions) -> Decisions:
    """Apply exclusions and int16 choices to the graph's groups."""
    index = prepared.index
    structure = analyse(index)
    if not structure.groups:
        nested = subgraph_note(prepared.model)
        raise UnsupportedError(f"{prepared.source}: nothing to quantize (no float Conv, MatMul, Gemm, "
                               f"Add, Mul, pooling or activation operators{' in the main graph' if nested else ''})"
                               f"{'; ' + nested if nested else ''}")
    op_types = {n.op_type for n in index.nodes}
    for name in options.exclude:
        if name not in index.node_by_name and name not in op_types:
            raise OptionError(Option("exclude", name),
                              f": no node or operator type of that name in {prepared.source.name}")
    excluded_nodes = {n.name for n in index.nodes if n.name in options.exclude or n.op_type in options.exclude}
    enabled = {g.anchor for g in structure.groups if not excluded_nodes.intersection(g.nodes)}
    float_movers = excluded_nodes & (set(structure.passthrough) | set(structure.concats))
    enabled, float_outputs = integer_groups(index, structure, enabled, float_movers)
    scales = scale_groups(index, structure, enabled, float_movers, float_outputs)
    int16_roots: set[str] = set()
    if options.sensitive_int16:
        for g in structure.groups:
            if g.anchor in enabled and index.node_by_name[g.anchor].op_type in SENSITIVE:
                int16_roots.update(scales.root[t] for t in g.inputs + g.outputs if t in scales.root)
    for name in options.int16:
        if name in scales.root:
            int16_roots.add(scales.root[name])
        elif name in structure.group_of and structure.group_of[name] in enabled:
            group = next(g for g in structure.groups if g.anchor == structure.group_of[name])
            int16_roots.update(scales.root[t] for t in group.inputs + group.outputs if t in scales.root)
        else:
            raise OptionError(Option("int16", name), f": not a quantized tensor or node of {prepared.source.name}")
    for name, _ in options.method_for:
        if name not in scales.root:
            raise OptionError(Option("method_for", name), f": not a quantized activation of {prepared.source.name}")
    for name, _, _ in options.fixed_ranges:
        if name not in scales.root:
            raise OptionError(Option("fixed_ranges", name), f": not a quantized activation of {prepared.source.name}")
    precision = {}
    for g in structure.groups:
        if g.anchor in enabled:
            wide = any(scales.root[t] in int16_roots for t in g.inputs + g.outputs if t in scales.root)
            precision[g.anchor] = "int16" if wide else "int8"
    return Decisions(structure, precision, scales, frozenset(int16_roots))


def _group_range(rep: str, hist: histogram.Histogram, dtype: str, scales: ScaleGroups,
                 options: CalibrationOptions, dense: bool) -> tuple[Range, str, bool]:
    """The group's range, the method that chose it, and whether it was widened to extremes that
    its histogram (subsampled, ``dense`` False) never counted (``calibrators.guard``)."""
    members = scales.members(rep)
    fixed = {(lo, hi) for name, lo, hi in options.fixed_ranges if name in members}
    if len(fixed) > 1:
        raise OptionError(Option("fixed_ranges"), f": tensors sharing the scale of {rep!r} were given different ranges")
    if fixed:
        lo, hi = fixed.pop()
        return Range(lo, hi), "fixed", False
    chosen = sorted({m for name, m in options.method_for if name in members})
    if len(chosen) > 1:
        raise OptionError(Option("method_for"), f": tensors sharing the scale of {rep!r} were given methods {chosen}")
    method = chosen[0] if chosen else options.method
    spec = RangeSpec(symmetric=dtype != "uint8", levels=65536 if dtype == "int16" else 256,
                     percentile=options.percentile)
    r = calibrators.method(method)(hist, spec)
    if r.lo == r.hi:  # all zeros: any scale represents them; keep the observed extremes
        r = Range(min(hist.minimum, 0.0), max(hist.maximum, 0.0))
    low, high = (False, False) if dense else guard.uncounted(hist)
    if low or high:
        return guard.cover(r, hist, spec, low, high), method, True
    return r, method, False


@dataclass(frozen=True)
class GroupRange:
    """One scale group's chosen range: the ``method`` that chose it, ``checked`` ("widened",
    "recounted" or None: see ``calibrators.guard``) and the extremes of the group's merged
    histogram (the observed extremes of a member that has no histogram of its own)."""

    range: Range
    method: str
    checked: str | None
    extremes: tuple[float, float]


def build_table(prepared: Prepared, obs: Observations, options: CalibrationOptions, *,
                progress: Callable[[int], None] | None = None) -> ScaleTable:
    """The scale table for ``prepared`` from its observations (``auto``: see ``ptqcli.quantize.autosearch``).
    ``progress(1)`` follows each scale group's range."""
    options.validate()
    if options.method == "auto":
        raise OptionError(Option("method", "auto"),
                          " needs model runs: use ptqcli.quantize.autosearch.search (or api.calibrate)")
    d = decide(prepared, options)
    return assemble(prepared, obs, options, d, group_ranges(prepared, obs, options, d, progress=progress))


def group_ranges(prepared: Prepared, obs: Observations, options: CalibrationOptions, d: Decisions, *,
                 progress: Callable[[int], None] | None = None) -> dict[str, GroupRange]:
    """Each scale group's range (root -> ``GroupRange``), in the plan's order: the costly half of
    a table (the range methods); ``assemble`` makes the rest from it.  ``progress(1)`` per group."""
    options.validate()
    if obs.fingerprint != prepared.fingerprint:
        raise ObservationError(f"the observations were made on another model (fingerprint "
                               f"{obs.fingerprint[:19]}..., {prepared.source.name} has {prepared.fingerprint[:19]}...)")
    index = prepared.index
    ranges: dict[str, GroupRange] = {}
    for rep, sources in d.scales.sources.items():
        missing = [t for t in sources if t not in obs.histograms]
        if missing:
            raise ObservationError(f"the observations lack tensor {missing[0]!r}; observe the samples again "
                                   f"instead of reusing the observations")
        hist = histogram.empty()
        for t in sources:
            hist = histogram.merge(hist, obs.histograms[t])
        for c in d.scales.consts.get(rep, ()):
            hist = histogram.update(hist, index.array(c).astype(np.float32))
        r, method, widened = _group_range(rep, hist, _dtype(rep, d, options), d.scales, options,
                                          all(obs.dense(t) for t in sources))
        checked = "widened" if widened else "recounted" if obs.recounted.intersection(sources) else None
        ranges[rep] = GroupRange(r, method, checked, (hist.minimum, hist.maximum))
        if progress is not None:
            progress(1)
    return ranges


def _dtype(rep: str, d: Decisions, options: CalibrationOptions) -> str:
    return "int16" if rep in d.int16_roots else ("int8" if options.symmetric else "uint8")


def assemble(prepared: Prepared, obs: Observations, options: CalibrationOptions, d: Decisions,
             ranges: dict[str, GroupRange], *, cache: dict | None = None) -> ScaleTable:
    """The scale table whose activation groups have ``ranges`` (from ``group_ranges``, possibly
    mixed from several methods' calls) and whose weights, biases and constants follow from them
    and ``options``.  ``cache`` (a dict kept between calls with the same ``options`` but for the
    method) keeps each weight's and bias's entries by the input parameters they depend on: a
    search assembling many mixes then computes each weight's scales once per input scale."""
    index = prepared.index
    tensors: dict[str, TensorEntry] = {}
    for rep, gr in ranges.items():
        params = activation_params(gr.range, _dtype(rep, d, options))
        for t in d.scales.members(rep):
            own = obs.histograms.get(t)
            extremes = (own.minimum, own.maximum) if own is not None else gr.extremes
            tensors[t] = TensorEntry("activation", params, gr.method, (gr.range.lo, gr.range.hi), extremes, rep,
                                     gr.checked)
        for c in d.scales.consts.get(rep, ()):
            tensors[c] = TensorEntry("constant", params, "max", (gr.range.lo, gr.range.hi), _extremes(index.array(c)), rep)
    groups: dict[str, GroupEntry] = {}
    for g in d.structure.groups:
        if g.anchor not in d.precision:
            continue
        _weights(prepared, g, tensors, options, {} if cache is None else cache)
        groups[g.anchor] = GroupEntry(g.kind, g.nodes, g.inputs, g.outputs, d.precision[g.anchor],
                                      g.weight, g.bias, g.consts)
    nodes = {}
    for node in index.nodes:
        anchor = d.structure.group_of.get(node.name)
        if anchor in d.precision:
            nodes[node.name] = NodeEntry(node.op_type, d.precision[anchor], anchor)
        elif node.output and node.output[0] in tensors and node.name in set(d.structure.passthrough) | set(d.structure.concats):
            wide = tensors[node.output[0]].params.dtype == "int16"
            nodes[node.name] = NodeEntry(node.op_type, "int16" if wide else "int8", None)
        else:
            nodes[node.name] = NodeEntry(node.op_type, "fp32", None)
    return ScaleTable(prepared.fingerprint, prepared.source.name, opset(prepared.model), obs.samples,
                      _options_json(options), tensors, nodes, groups)


def _extremes(a: np.ndarray) -> tuple[float, float]:
    return (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)


def _weights(prepared: Prepared, g: Group, tensors: dict[str, TensorEntry], options: CalibrationOptions,
             cache: dict) -> None:
    """Table entries for a group's weight, bias and constant operands (``cache``: see ``assemble``)."""
    index = prepared.index
    if g.weight is not None:
        x = tensors[g.inputs[0]].params if g.bias is not None else None  # what the entries depend on
        if (g.anchor, x) not in cache:
            cache[g.anchor, x] = _weight_entries(index, g, x, options)
        tensors.update(cache[g.anchor, x])
    for c in g.consts:
        if c not in tensors:
            value = index.array(c)
            p = weight_params(value, None) if index.is_float(c) else None
            if p is not None:
                tensors[c] = TensorEntry("constant", p, "max", (-p.scale[0] * 127, p.scale[0] * 127), _extremes(value))


def _weight_entries(index, g: Group, x: QuantParams | None, options: CalibrationOptions) -> dict[str, TensorEntry]:
    """A group's weight and bias entries, its input's parameters being ``x`` (None: no bias)."""
    w = index.array(g.weight)
    axis = g.weight_axis if options.per_channel else None
    floor = 0.0 if g.bias is None else bias_floor(index.array(g.bias), x, axis is not None)
    wp = weight_params(w, axis, min_scale=floor, bits=options.weight_bits)
    method = "max"
    if Target(options.cpu).pairs_saturate and options.weight_bits == 8:
        wp, raised = _pair_safe(index.node_by_name[g.anchor], w, wp)
        method = "max-pairs" if raised else method
    amax = float(np.abs(w).max()) if w.size else 0.0
    out = {g.weight: TensorEntry("weight", wp, method, (-amax, amax), _extremes(w))}
    if g.bias is not None:
        b = index.array(g.bias)
        out[g.bias] = TensorEntry("bias", bias_params(x, wp, b.size, b.ndim - 1), None, None, _extremes(b))
    return out


def _pair_safe(node, w: np.ndarray, wp: QuantParams) -> tuple[QuantParams, bool]:
    """``wp`` with the scales raised where two weight codes that x86 AVX2 kernels add in one
    int16 pair could saturate it (``ptqcli.targets``), and whether any was raised."""
    rows = reduction_rows(node.op_type, w, group=int(attr(node, "group", 1)), trans_b=bool(attr(node, "transB", 0)))
    if rows is None or (wp.axis is not None and wp.axis != _channel_axis(node, w)):
        return wp, False
    scales = np.asarray(wp.scale, dtype=np.float32)
    safe = pair_safe_scales(rows, scales)
    if np.array_equal(safe, scales):
        return wp, False
    return replace(wp, scale=tuple(float(s) for s in safe)), True


def _channel_axis(node, w: np.ndarray) -> int:
    """The weight axis of the output channels, as :func:`ptqcli.targets.reduction_rows` orders them."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    return w.ndim - 1


def _options_json(options: CalibrationOptions) -> dict:
    raw = asdict(options)
    raw["method_for"] = {k: v for k, v in sorted(options.method_for)}
    raw["fixed_ranges"] = {k: [lo, hi] for k, lo, hi in sorted(options.fixed_ranges)}
    raw["int16"] = sorted(options.int16)
    raw["exclude"] = sorted(options.exclude)
    return raw

