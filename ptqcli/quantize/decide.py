"""From observations and options to a scale table (the QuantPlan with its numbers)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

import calibrators
from calibrators import Range, RangeSpec, guard, histogram
from ptqcli.errors import ObservationError, OptionError
from ptqcli.graph import Prepared, opset
from ptqcli.observe.observations import Observations
from ptqcli.quantize.plan import Group, Structure, analyse
from ptqcli.quantize.qparams import activation_params, bias_floor, bias_params, weight_params
from ptqcli.quantize.scale_groups import ScaleGroups, integer_groups, scale_groups
from ptqcli.quantize.scale_table import GroupEntry, NodeEntry, ScaleTable, TensorEntry

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
    (tensor, lo, hi) ranges given by the user."""

    method: str = "mse"
    method_for: tuple[tuple[str, str], ...] = ()
    percentile: float = 99.99
    symmetric: bool = False
    per_channel: bool = True
    int16: tuple[str, ...] = ()
    sensitive_int16: bool = True
    exclude: tuple[str, ...] = ()
    fixed_ranges: tuple[tuple[str, float, float], ...] = ()

    def validate(self) -> None:
        if self.method not in calibrators.METHODS and self.method != "auto":
            raise OptionError(f"unknown range method {self.method!r}; known: "
                              f"{', '.join(calibrators.METHODS)}, auto")
        for _, name in self.method_for:
            if name not in calibrators.METHODS:
                raise OptionError(f"unknown range method {name!r}; known: {', '.join(calibrators.METHODS)}")
        if not 0.0 < self.percentile <= 100.0:
            raise OptionError(f"--percentile must be in (0, 100], got {self.percentile!r}")
        for name, lo, hi in self.fixed_ranges:
            if not lo <= 0.0 <= hi or lo == hi:
                raise OptionError(f"--fixed-range {name}={lo}:{hi}: the range must contain 0 and not be empty")


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
        raise OptionError(f"{prepared.source}: nothing to quantize (no float Conv, MatMul, Gemm, "
                          f"Add, Mul, pooling or activation operators)")
    op_types = {n.op_type for n in index.nodes}
    for name in options.exclude:
        if name not in index.node_by_name and name not in op_types:
            raise OptionError(f"--exclude {name!r}: no node or operator type of that name in {prepared.source.name}")
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
            raise OptionError(f"--int16 {name!r}: not a quantized tensor or node of {prepared.source.name}")
    for name, _ in options.method_for:
        if name not in scales.root:
            raise OptionError(f"--method-for {name!r}: not a quantized activation of {prepared.source.name}")
    for name, _, _ in options.fixed_ranges:
        if name not in scales.root:
            raise OptionError(f"--fixed-range {name!r}: not a quantized activation of {prepared.source.name}")
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
        raise OptionError(f"--fixed-range: tensors sharing the scale of {rep!r} were given different ranges")
    if fixed:
        lo, hi = fixed.pop()
        return Range(lo, hi), "fixed", False
    chosen = sorted({m for name, m in options.method_for if name in members})
    if len(chosen) > 1:
        raise OptionError(f"--method-for: tensors sharing the scale of {rep!r} were given methods {chosen}")
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


def build_table(prepared: Prepared, obs: Observations, options: CalibrationOptions) -> ScaleTable:
    """The scale table for ``prepared`` from its observations (``auto``: see ``ptqcli.quantize.autosearch``)."""
    options.validate()
    if options.method == "auto":
        raise OptionError("method 'auto' needs model runs: use ptqcli.quantize.autosearch.search (or api.calibrate)")
    if obs.fingerprint != prepared.fingerprint:
        raise ObservationError(f"the observations were made on another model (fingerprint "
                               f"{obs.fingerprint[:19]}..., {prepared.source.name} has {prepared.fingerprint[:19]}...)")
    index = prepared.index
    d = decide(prepared, options)
    tensors: dict[str, TensorEntry] = {}
    for rep, sources in d.scales.sources.items():
        missing = [t for t in sources if t not in obs.histograms]
        if missing:
            raise ObservationError(f"the observations lack tensor {missing[0]!r}; observe again with "
                                   f"--data instead of --observations")
        hist = histogram.empty()
        for t in sources:
            hist = histogram.merge(hist, obs.histograms[t])
        for c in d.scales.consts.get(rep, ()):
            hist = histogram.update(hist, index.array(c).astype(np.float32))
        dtype = "int16" if rep in d.int16_roots else ("int8" if options.symmetric else "uint8")
        r, method, widened = _group_range(rep, hist, dtype, d.scales, options, all(obs.dense(t) for t in sources))
        params = activation_params(r, dtype)
        checked = "widened" if widened else "recounted" if obs.recounted.intersection(sources) else None
        for t in d.scales.members(rep):
            own = obs.histograms.get(t, hist)
            tensors[t] = TensorEntry("activation", params, method, (r.lo, r.hi), (own.minimum, own.maximum), rep,
                                     checked)
        for c in d.scales.consts.get(rep, ()):
            tensors[c] = TensorEntry("constant", params, "max", (r.lo, r.hi), _extremes(index.array(c)), rep)
    groups: dict[str, GroupEntry] = {}
    for g in d.structure.groups:
        if g.anchor not in d.precision:
            continue
        _weights(prepared, g, tensors, options)
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


def _weights(prepared: Prepared, g: Group, tensors: dict[str, TensorEntry], options: CalibrationOptions) -> None:
    """Table entries for a group's weight, bias and constant operands."""
    index = prepared.index
    if g.weight is not None:
        w = index.array(g.weight)
        axis = g.weight_axis if options.per_channel else None
        floor = 0.0
        if g.bias is not None:
            floor = bias_floor(index.array(g.bias), tensors[g.inputs[0]].params, axis is not None)
        wp = weight_params(w, axis, min_scale=floor)
        amax = float(np.abs(w).max()) if w.size else 0.0
        tensors[g.weight] = TensorEntry("weight", wp, "max", (-amax, amax), _extremes(w))
        if g.bias is not None:
            b = index.array(g.bias)
            bp = bias_params(tensors[g.inputs[0]].params, wp, b.size, b.ndim - 1)
            tensors[g.bias] = TensorEntry("bias", bp, None, None, _extremes(b))
    for c in g.consts:
        if c not in tensors:
            value = index.array(c)
            p = weight_params(value, None) if index.is_float(c) else None
            if p is not None:
                tensors[c] = TensorEntry("constant", p, "max", (-p.scale[0] * 127, p.scale[0] * 127), _extremes(value))


def _options_json(options: CalibrationOptions) -> dict:
    raw = asdict(options)
    raw["method_for"] = {k: v for k, v in sorted(options.method_for)}
    raw["fixed_ranges"] = {k: [lo, hi] for k, lo, hi in sorted(options.fixed_ranges)}
    raw["int16"] = sorted(options.int16)
    raw["exclude"] = sorted(options.exclude)
    return raw

