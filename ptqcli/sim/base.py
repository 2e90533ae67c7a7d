"""What every kernel builder and kernel shares: the build context, the run log, the epilogue.

A *builder* turns a table group or a node into a *kernel*: a frozen dataclass holding the
integer constants it needs (weight codes, multipliers, tables) with a ``run(inputs, log)`` method
from input arrays to output arrays.  A builder that cannot express the node in integers raises
:class:`NoKernel`; the program then runs that node in float and reports it as a fallback.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import onnx

from ptqcli.errors import TableError
from ptqcli.graph import GraphIndex, attr
from ptqcli.quantize.qparams import LIMITS, NUMPY, QuantParams, quantize
from ptqcli.quantize.scale_table import ScaleTable
from ptqcli.sim.fixed import FLOAT64_EXACT, Float32Scale, Multiplier, wrap_int32


class NoKernel(Exception):
    """The simulator has no integer kernel for this node or group; the message says why."""


@dataclass(frozen=True)
class Context:
    """Read-only lookups a builder needs: the prepared graph, the table, the default-domain
    opset, the model's opset imports and IR version (for cut-out float models), and the
    requantization arithmetic (``fixed`` or ``fp32``, see :mod:`ptqcli.sim.fixed`) and the
    accumulation (``exact``, or ``x86-avx2``: int16 pair sums, see :mod:`ptqcli.sim.pairs`)."""

    index: GraphIndex
    table: ScaleTable
    opset: int
    opset_imports: tuple[onnx.OperatorSetIdProto, ...]
    ir_version: int
    requant: str = "fixed"
    cpu: str = "exact"

    def node(self, name: str) -> onnx.NodeProto:
        return self.index.node_by_name[name]

    def params(self, tensor: str) -> QuantParams:
        entry = self.table.tensors.get(tensor)
        if entry is None:
            raise TableError(f"the scale table has no parameters for tensor {tensor!r}")
        return entry.params

    def const(self, name: str) -> np.ndarray | None:
        """An initializer's value (None for a tensor computed at run time or an empty name)."""
        return self.index.array(name) if name and name in self.index.initializers else None

    def activation(self, tensor: str, where: str) -> QuantParams:
        """Per-tensor parameters of a quantized activation (the kernels assume one scale)."""
        p = self.params(tensor)
        if len(p.scale) != 1:
            raise NoKernel(f"{where}: activation {tensor!r} has per-channel parameters")
        return p


@dataclass(frozen=True)
class Overflow:
    """An int32 accumulator that left the int32 range and was wrapped (two's complement)."""

    node: str
    count: int
    peak: int


@dataclass
class Log:
    """One run's context and observations: the batch size (samples in the run), the overflows
    and the int16 pair saturations seen.  One instance per run, never shared."""

    batch: int | None = None
    overflows: list[Overflow] = field(default_factory=list)
    saturations: list = field(default_factory=list)  # ptqcli.sim.pairs.Saturation


def scalar(p: QuantParams) -> tuple[float, int]:
    return float(p.scale[0]), int(p.zero_point[0])


def clamp_bounds(ctx: Context, nodes: tuple[str, ...], out: QuantParams) -> tuple[int, int]:
    """Output-code bounds of fused Relu / Clip nodes: ``quantize`` is monotonic, so
    ``quantize(clip(v, a, b)) == clamp(quantize(v), quantize(a), quantize(b))`` exactly."""
    lo, hi = LIMITS[out.dtype]
    for name in nodes:
        node = ctx.node(name)
        if node.op_type == "Relu":
            lo = max(lo, int(quantize(np.float32(0.0), out)))
        elif node.op_type == "Clip":
            named = [node.input[i] if len(node.input) > i else "" for i in (1, 2)]
            if any(n and n not in ctx.index.initializers for n in named):
                raise NoKernel(f"node {name!r}: Clip bounds computed at run time")
            a = ctx.const(named[0]) if named[0] else attr(node, "min")
            b = ctx.const(named[1]) if named[1] else attr(node, "max")
            if a is not None:
                lo = max(lo, int(quantize(np.float32(a), out)))
            if b is not None:
                hi = min(hi, int(quantize(np.float32(b), out)))
        else:
            raise NoKernel(f"node {name!r}: {node.op_type} cannot be fused into a requantization")
    return lo, hi


@dataclass(frozen=True)
class Requant:
    """Epilogue: ``clamp(zero_point + M(acc + bias), lo, hi)`` in the output dtype.

    ``acc`` holds exact integers (float or int64); ``bias`` is int64 broadcastable to it;
    ``bound`` is a static bound of ``|acc + bias|``.  Beyond int32 the sum is wrapped and the
    overflow logged (``check``)."""

    mult: Multiplier | Float32Scale
    bias: np.ndarray | None
    zero_point: int
    lo: int
    hi: int
    dtype: str
    check: bool
    where: str

    def run(self, acc: np.ndarray, log: Log) -> np.ndarray:
        lo, hi = max(self.lo, LIMITS[self.dtype][0]), min(self.hi, LIMITS[self.dtype][1])
        if isinstance(self.mult, Float32Scale) and not self.check:
            # |acc + bias| < 2**53: the sum is exact in float64, then converted to float32;
            # the rounded codes are small integers, exact in float32 for the clamp and the offset
            total = acc if self.bias is None else np.add(acc, self.bias, dtype=np.float64)
            y = self.mult.apply(total)
            np.clip(y, lo - self.zero_point, hi - self.zero_point, out=y)
            y += self.zero_point
            return y.astype(NUMPY[self.dtype])
        if isinstance(self.mult, Multiplier) and self.mult.scale is not None and not self.check:
            # |acc + bias| * m < 2**53: acc * s + bias * s is the exact product in float64, and
            # so is its sum with the zero point where the point's 2**shift multiple fits too.
            y = np.multiply(acc, self.mult.scale, dtype=np.float64)
            offset, folded = self._offset
            if offset is not None:
                y += offset
            np.rint(y, out=y)
            if folded:
                np.clip(y, lo, hi, out=y)
                return y.astype(NUMPY[self.dtype])
        else:
            total = acc.astype(np.int64)
            if self.bias is not None:
                total += self.bias
            if self.check:
                total, count, peak = wrap_int32(total)
                if count:
                    log.overflows.append(Overflow(self.where, count, peak))
            y = self.mult.apply(total).astype(np.float64)
        np.clip(y, lo - self.zero_point, hi - self.zero_point, out=y)
        y += self.zero_point
        return y.astype(NUMPY[self.dtype])

    @functools.cached_property
    def _offset(self) -> tuple[np.ndarray | None, bool]:
        """The addend of the exact float64 path, ``bias * s`` (or None), and whether the zero
        point is folded into it: exact when ``bound * m + |zp| * 2**shift < 2**53``."""
        m, shift = self.mult.m, self.mult.shift
        folded = self.mult.bound * int(np.max(m)) + abs(self.zero_point) * 2 ** int(np.max(shift)) < FLOAT64_EXACT
        offset = None if self.bias is None else self.bias * self.mult.scale
        if folded and self.zero_point:
            offset = (0.0 if offset is None else offset) + np.float64(self.zero_point)
        return offset, folded
