"""Compute groups: Conv, ConvTranspose, Gemm, MatMul (+ bias, + fused Relu/Clip): what their
kernels (``ptqcli.sim.conv``, ``ptqcli.sim.matmul``) share.

``acc = sum (q_x - zp_x)(q_w - zp_w)`` over the reduction (int32), ``+ bias`` (int32 codes at
scale ``s_x * s_w``), then the :class:`~ptqcli.sim.base.Requant` epilogue with
``M = s_x * s_w / s_y`` per output channel.  Conv sums the raw input codes and subtracts
``zp_x * sum(q_w - zp_w)`` with the bias (the same integer; zero padding is padding with
``zp_x``), which spares a pass over its largest tensor.

The sums are formed by BLAS on float copies of the centered codes, which is exact when every
partial sum is an integer the float type represents: each output's partial sums are bounded by
``sum_k |q_w - zp_w| * max |q_x - zp_x|`` (computed from the actual weight codes), so float32 is
used below 2**24, float64 below 2**53 and int64 matmul beyond (never reached by real layers).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ptqcli.graph import activation_bounds
from ptqcli.quantize.qparams import QuantParams
from ptqcli.quantize.scale_table import GroupEntry
from ptqcli.quantize.stored import codes
from ptqcli.sim.base import Context, Log, NoKernel, Overflow, Requant, clamp_bounds, scalar
from ptqcli.sim.fixed import INT32_MAX, Float32Scale, f32, multiplier, wrap_int32


def weight_codes(ctx: Context, name: str) -> tuple[np.ndarray, QuantParams]:
    """Centered weight codes ``q_w - zp_w`` (int64, the initializer's shape) and parameters."""
    p = ctx.params(name)
    q = codes(ctx.table, name, ctx.const(name)).astype(np.int64)
    _, zero = p.arrays(q.ndim)
    return q - zero, p


def raw_codes(centered: np.ndarray, p: QuantParams) -> np.ndarray:
    """The weight codes as stored (``q_w``), from the centered ``q_w - zp_w`` of ``weight_codes``."""
    return centered + p.arrays(centered.ndim)[1]


def bias_codes(ctx: Context, group: GroupEntry, acc_scale: np.ndarray) -> np.ndarray | None:
    """int32 bias codes at the accumulator scale ``s_x * s_w`` (one per channel)."""
    if group.bias is None:
        return None
    p = ctx.params(group.bias)
    b = codes(ctx.table, group.bias, ctx.const(group.bias)).astype(np.int64)
    s_b = np.broadcast_to(np.asarray(p.scale, dtype=np.float64), b.shape)
    if np.allclose(s_b, acc_scale, rtol=1e-6, atol=0):
        return b
    # A table whose bias scale is not s_x * s_w: move the codes to the accumulator scale.
    return np.rint(b * s_b / acc_scale).astype(np.int64)


def _tail(ctx: Context, group: GroupEntry) -> tuple[str, ...]:
    """The fused activations: group nodes after the anchor and its bias Add."""
    rest = []
    for name in group.nodes[1:]:
        node = ctx.node(name)
        if node.op_type == "Add" and group.bias is not None and group.bias in node.input:
            continue
        rest.append(name)
    return tuple(rest)


def epilogue(ctx: Context, group: GroupEntry, *, acc_bound: int, factors: tuple, bias: np.ndarray | None,
              shape: tuple[int, ...]):
    """Requantization to the group's output with the accumulator scale ``prod(factors)`` (``s_x``
    and the per-channel ``s_w``, and Gemm's alpha when not 1) reshaped to ``shape``; ``bias``
    (int64) is already shaped to broadcast against the accumulator.  A group whose output the
    table leaves in float gets a :class:`FloatOut`."""
    real = np.asarray(functools.reduce(np.multiply, [np.asarray(f, dtype=np.float64) for f in factors]))
    real = real.reshape(shape) if real.size > 1 else real.reshape(())
    bound = acc_bound + (int(np.abs(bias).max()) if bias is not None and bias.size else 0)
    if group.outputs[0] not in ctx.table.tensors:
        return FloatOut(real, bias, _float_clamp(ctx, _tail(ctx, group)), bound > INT32_MAX, group.nodes[0])
    out = ctx.activation(group.outputs[0], f"group {group.nodes[0]!r}")
    s_y, zp_y = scalar(out)
    lo, hi = clamp_bounds(ctx, _tail(ctx, group), out)
    if ctx.requant == "fp32":  # ONNX Runtime: output_scale = x_scale * w_scale / y_scale (float)
        steps = [x for f in factors for x in ("*", f)][1:] + ["/", s_y]
        scale = f32(*steps)
        mult = Float32Scale(scale.reshape(shape) if scale.size > 1 else scale.reshape(()))
    else:
        mult = multiplier(real / s_y, min(bound, INT32_MAX + 1), where=f"node {group.nodes[0]!r}")
    return Requant(mult, bias, zp_y, lo, hi, out.dtype, bound > INT32_MAX, group.nodes[0])


def _float_clamp(ctx: Context, names: tuple[str, ...]) -> tuple[float, float]:
    """Bounds of fused Relu / Clip nodes for a float output."""
    lo, hi = -np.inf, np.inf
    for name in names:
        node = ctx.node(name)
        bounds = activation_bounds(ctx.index, node)
        if bounds is None:
            raise NoKernel(f"node {name!r}: {node.op_type} cannot be fused into a matrix product")
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return lo, hi


@dataclass(frozen=True)
class FloatOut:
    """Epilogue of a matrix product whose output stays float: ``(acc + bias) * s_x * s_w`` in
    float32 (what a classifier head computes from its int32 accumulator), then Relu / Clip."""

    unit: np.ndarray
    bias: np.ndarray | None
    clamp: tuple[float, float]
    check: bool
    where: str

    def run(self, acc: np.ndarray, log: Log) -> np.ndarray:
        total = acc.astype(np.int64 if self.check else np.float64)
        if self.bias is not None:
            total = total + self.bias
        if self.check:
            total, count, peak = wrap_int32(total)
            if count:
                log.overflows.append(Overflow(self.where, count, peak))
        y = (total * self.unit).astype(np.float32)
        lo, hi = self.clamp
        return np.clip(y, lo, hi) if lo > -np.inf or hi < np.inf else y
