"""From the prepared float model and its scale table to a :class:`Program`: the steps to run.

Nodes are visited in graph order.  A node of a table group is computed with its whole group at
the group's anchor (its first node); a node the table keeps in integers without a group moves
codes; everything else, and any group or node the registry has no integer kernel for, runs in
float between dequantized inputs and quantized outputs and is listed in ``fallbacks``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx

from ptqcli.errors import Option, OptionError, TableError
from ptqcli.export.qdq import check_params
from ptqcli.graph import InputSpec, Prepared, attr, opset
from ptqcli.quantize.qparams import QuantParams, dequantize, quantize
from ptqcli.quantize.scale_table import GroupEntry, ScaleTable
from ptqcli.sim import elementwise, floatops, registry
from ptqcli.sim.base import Context, Log, NoKernel, scalar
from ptqcli.sim.fixed import REQUANT, multiplier, saturate, span
from ptqcli.sim.movement import ConcatKernel, Move
from ptqcli.sim.pairs import CPUS

CODES, VALUE = "codes", "value"


@dataclass(frozen=True)
class Fallback:
    """A node computed in float: its name, operator and why."""

    node: str
    op_type: str
    reason: str


@dataclass(frozen=True)
class Step:
    """One kernel call.  ``reads``: (tensor, CODES | VALUE), "" for an omitted input;
    ``params``: the parameters of each written tensor's codes (None: a plain value);
    ``release``: tensors no later step reads."""

    nodes: tuple[str, ...]
    reads: tuple[tuple[str, str], ...]
    writes: tuple[str, ...]
    params: tuple[QuantParams | None, ...]
    kernel: object
    integer: bool
    release: tuple[str, ...] = ()


@dataclass(frozen=True)
class Program:
    """Everything a run needs; built once per (model, table)."""

    steps: tuple[Step, ...]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    params: dict[str, QuantParams]        # quantized activations
    constants: dict[str, np.ndarray]      # initializers read as values
    const_codes: dict[str, np.ndarray]    # initializers read as codes
    fallbacks: tuple[Fallback, ...]
    integer_nodes: int
    other_nodes: int                      # float-free nodes (shape arithmetic) run as they are
    keep: tuple[str, ...] = ()            # tensors a run returns besides the graph outputs


def check(prepared: Prepared, table: ScaleTable) -> None:
    """Refuse a table that does not describe ``prepared``; name the first mismatch."""
    label = f"scale table for {table.model_file}"
    if table.fingerprint != prepared.fingerprint:
        raise TableError(f"{label}: made for another model ({table.fingerprint[:19]}...); "
                         f"{prepared.source.name} prepares to {prepared.fingerprint[:19]}...")
    index = prepared.index
    for node in index.nodes:
        if node.name not in table.nodes:
            raise TableError(f"{label}: node {node.name!r} of the model is not in the table")
    for name, entry in table.nodes.items():
        if name not in index.node_by_name:
            raise TableError(f"{label}: node {name!r} is not in {prepared.source.name}")
        if entry.group is not None and entry.group not in table.groups:
            raise TableError(f"{label}: node {name!r} names group {entry.group!r}, which the table lacks")
    for anchor, group in table.groups.items():
        for name in group.nodes:
            if name not in index.node_by_name:
                raise TableError(f"{label}: group {anchor!r} names node {name!r}, which the model lacks")
        # A matrix product may write a float output (a classifier head); all else is quantized.
        outputs = group.outputs if group.kind != "compute" else ()
        for name in group.inputs + outputs + tuple(n for n in (group.weight, group.bias) if n):
            if name not in table.tensors:
                raise TableError(f"{label}: group {anchor!r} uses tensor {name!r}, which has no parameters")
    for name in table.tensors:
        if name not in index.producer and name not in index.initializers and name not in index.input_names:
            raise TableError(f"{label}: tensor {name!r} is not in {prepared.source.name}")
    check_params(prepared, table, label)


@dataclass(frozen=True)
class Rescale:
    """Codes of one parameter set moved to another: ``zp_out + M (q - zp_in)``, M = s_in / s_out."""

    inner: object
    maps: tuple

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        outs = self.inner.run(inputs, log)
        return [q if f is None else f(q) for q, f in zip(outs, self.maps)]


def _rescaler(ctx: Context, pin: QuantParams, pout: QuantParams, where: str):
    if pin == pout:
        return None
    (s_in, zp_in), (s_out, zp_out) = scalar(pin), scalar(pout)
    if ctx.requant == "fp32":  # DequantizeLinear then QuantizeLinear, in float32
        def requantize(q: np.ndarray) -> np.ndarray:
            return quantize(dequantize(q, pin), pout)
        return requantize
    mult = multiplier(s_in / s_out, span(pin.dtype, zp_in), where=where)

    def rescale(q: np.ndarray) -> np.ndarray:
        return saturate(mult.apply(q.astype(np.int64) - zp_in) + zp_out, pout.dtype)
    return rescale


def _group_step(ctx: Context, group: GroupEntry) -> Step:
    anchor = ctx.node(group.nodes[0])
    if group.kind == "lut":
        kernel = elementwise.lut(ctx, group, functools.partial(floatops.evaluate, ctx))
        reads = ((group.inputs[0], CODES),)
    else:
        builders = registry.KINDS.get(group.kind)
        if builders is None or anchor.op_type not in builders:
            raise NoKernel(f"no integer kernel for a {group.kind} group of {anchor.op_type}")
        kernel = builders[anchor.op_type](ctx, group)
        if group.kind == "compute":
            reads = tuple((t, CODES) for t in group.inputs)
        elif group.kind == "binary":
            reads = tuple((t, CODES) for t in anchor.input)
        else:
            reads = ((anchor.input[0], CODES),) + tuple((t, VALUE) for t in anchor.input[1:])
    params = tuple(ctx.activation(t, f"group {anchor.name!r}") if t in ctx.table.tensors else None
                   for t in group.outputs)
    return Step(group.nodes, reads, group.outputs, params, kernel, True)


def _move_step(ctx: Context, node: onnx.NodeProto, params: dict[str, QuantParams]) -> Step:
    data = node.input[0] if node.input else ""
    if data not in params and not (node.op_type == "Concat" and any(n in ctx.table.tensors for n in node.input)):
        raise NoKernel(f"its input {data!r} is not quantized")
    writes = tuple(o for o in node.output if o)
    where = f"node {node.name!r}"
    if node.op_type == "Concat":
        out = ctx.activation(writes[0], where)
        maps = tuple(_rescaler(ctx, ctx.activation(n, where), out, where) for n in node.input)
        kernel = ConcatKernel(int(attr(node, "axis", 0)), maps)
        return Step((node.name,), tuple((n, CODES) for n in node.input), writes, (out,), kernel, True)
    pin = ctx.activation(data, where)
    if node.op_type in registry.MOVE_KERNELS:
        kernel = registry.MOVE_KERNELS[node.op_type](ctx, node, pin)
    elif node.op_type in registry.MOVES:
        kernel = Move(node, registry.MOVES[node.op_type])
    else:
        raise NoKernel(f"no integer kernel for {node.op_type}")
    outs = tuple(params.get(o, pin) for o in writes)
    maps = tuple(_rescaler(ctx, pin, p, where) for p in outs)
    if any(maps):
        kernel = Rescale(kernel, maps)
    reads = ((data, CODES),) + tuple((n, VALUE) for n in node.input[1:])
    return Step((node.name,), reads, writes, outs, kernel, True)


def _float_step(ctx: Context, nodes: list[onnx.NodeProto], outputs: Iterable[str]) -> Step:
    outputs = tuple(o for o in outputs if o)
    kernel = floatops.float_kernel(ctx, nodes, outputs)
    return Step(tuple(n.name for n in nodes), tuple((f, VALUE) for f in kernel.feeds), outputs,
                (None,) * len(outputs), kernel, False)


def _touches_float(ctx: Context, node: onnx.NodeProto) -> bool:
    return any(n and ctx.index.is_float(n) for n in list(node.input) + list(node.output))


def build(prepared: Prepared, table: ScaleTable, *, keep: Iterable[str] = (), requant: str = "fixed",
          cpu: str = "exact") -> Program:
    """The program for ``prepared`` quantized by ``table``; ``keep``: tensors a run must return
    besides the graph outputs; ``requant``: the arithmetic of requantization, ``fixed`` or
    ``fp32`` (see :mod:`ptqcli.sim.fixed`); ``cpu``: the accumulation, ``exact`` or
    ``x86-avx2`` (see :mod:`ptqcli.sim.pairs`)."""
    if requant not in REQUANT:
        raise OptionError(Option("requant", requant), f": expected one of {', '.join(REQUANT)}")
    if cpu not in CPUS:
        raise OptionError(Option("cpu", cpu), f": expected one of {', '.join(CPUS)}")
    check(prepared, table)
    index = prepared.index
    ctx = Context(index, table, opset(prepared.model), tuple(prepared.model.opset_import), prepared.model.ir_version,
                  requant, cpu)
    params = {n: e.params for n, e in table.tensors.items() if e.role == "activation"}
    steps: list[Step] = []
    fallbacks: list[Fallback] = []
    done: set[str] = set()
    integer = other = 0
    for node in index.nodes:
        entry = table.nodes[node.name]
        if entry.group is not None and entry.precision != "fp32":
            if entry.group in done:
                continue
            done.add(entry.group)
            group = table.groups[entry.group]
            try:
                steps.append(_group_step(ctx, group))
                integer += len(group.nodes)
            except NoKernel as exc:
                members = [ctx.node(n) for n in group.nodes]
                steps.append(_float_step(ctx, members, group.outputs))
                fallbacks.extend(Fallback(m.name, m.op_type, f"no integer kernel: {exc}") for m in members)
        elif entry.precision != "fp32":
            try:
                steps.append(_move_step(ctx, node, params))
                integer += 1
            except NoKernel as exc:
                steps.append(_float_step(ctx, [node], node.output))
                fallbacks.append(Fallback(node.name, node.op_type, f"no integer kernel: {exc}"))
        else:
            steps.append(_float_step(ctx, [node], node.output))
            if _touches_float(ctx, node):
                fallbacks.append(Fallback(node.name, node.op_type, "float in the table"))
            else:
                other += 1
    keep = tuple(dict.fromkeys(keep))
    written = {w for s in steps for w in s.writes} | set(index.input_names)
    for name in keep:
        if name not in written:
            where = table.nodes.get(index.producer[name].name) if name in index.producer else None
            inside = f" (inside group {where.group!r}, whose intermediates are not quantized)" if where and where.group else ""
            raise OptionError(f"tensor {name!r} is not computed by the simulator{inside}")
    steps = _with_releases(steps, set(index.output_names) | set(keep))
    constants: dict[str, np.ndarray] = {}
    const_codes: dict[str, np.ndarray] = {}
    for step in steps:
        for name, mode in step.reads:
            if name in index.initializers:
                if mode == CODES:
                    const_codes[name] = quantize(index.array(name), ctx.params(name))
                else:
                    constants[name] = index.array(name)
    return Program(tuple(steps), prepared.inputs, index.output_names, params, constants, const_codes,
                   tuple(fallbacks), integer, other, keep)


def _with_releases(steps: list[Step], kept: set[str]) -> list[Step]:
    last: dict[str, int] = {}
    for i, step in enumerate(steps):
        for name, _ in step.reads:
            last[name] = i
    for i, step in enumerate(steps):
        for name in step.writes:
            last.setdefault(name, i)  # written but never read: drop at once
    releases: dict[int, list[str]] = {}
    for name, i in last.items():
        if name and name not in kept:
            releases.setdefault(i, []).append(name)
    return [dataclasses.replace(s, release=tuple(releases.get(i, ()))) for i, s in enumerate(steps)]
