"""Pooling and reductions.

Averages (AveragePool, GlobalAveragePool, ReduceMean) sum the centered codes ``q - zp_x`` in
int32 and requantize once: ``y = zp_y + round_half_even(sum * M_c)`` with
``M_c = s_x / (s_y * c)`` for a window of ``c`` elements (a fixed-point multiplier per distinct
``c``).  With the ``fp32`` arithmetic the factor is ONNX Runtime's float32 ``s_x / (s_y * c)``
and ``y = zp_y + round_half_even(float32(sum) * factor)``.  Maxima (MaxPool, GlobalMaxPool,
ReduceMax, ReduceMin) are taken on the codes directly: quantization is monotonic, so the code
of the maximum is the maximum of the codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ptqcli.graph import attr
from ptqcli.quantize.qparams import LIMITS, QuantParams
from ptqcli.quantize.scale_table import GroupEntry
from ptqcli.sim import window
from ptqcli.sim.base import Context, Log, NoKernel, Overflow, scalar
from ptqcli.sim.fixed import (
    INT32_MAX,
    Float32Scale,
    accumulator_dtype,
    f32,
    multiplier,
    saturate,
    shift_round,
    span,
    wrap_int32,
)


@dataclass(frozen=True)
class Mean:
    """Shared requantization of window sums: input ``zero``/``span``, ``ratio = s_x / s_y``;
    ``fp32``: the scales ``(s_x, s_y)`` for float32 requantization, or None for fixed point."""

    zero: int
    span: int
    ratio: float
    zero_point: int
    dtype: str
    where: str
    fp32: tuple[float, float] | None = None

    def requantize(self, sums: np.ndarray, counts: np.ndarray | int, log: Log) -> np.ndarray:
        """``zp_y + round(sums * ratio / counts)``; ``counts`` broadcasts against ``sums``."""
        counts = np.asarray(counts, dtype=np.int64)
        bound = int(counts.max(initial=1)) * self.span
        if bound > INT32_MAX:
            sums, count, peak = wrap_int32(np.asarray(sums).astype(np.int64))
            if count:
                log.overflows.append(Overflow(self.where, count, peak))
            bound = INT32_MAX + 1
        if self.fp32 is not None:  # ONNX Runtime: x_scale / (y_scale * count), float32
            factor = f32(self.fp32[0], "/", f32(self.fp32[1], "*", counts))
            y = Float32Scale(factor).apply(sums)
            return saturate(y + self.zero_point, self.dtype)
        uniq, inverse = np.unique(counts, return_inverse=True)
        mults = [multiplier(self.ratio / int(c), bound, where=self.where) for c in uniq]
        if len(mults) == 1:
            y = mults[0].apply(sums)
        else:
            m = np.array([x.m for x in mults], dtype=np.int64)[inverse].reshape(counts.shape)
            s = np.array([x.shift for x in mults], dtype=np.int64)[inverse].reshape(counts.shape)
            y = shift_round(np.asarray(sums).astype(np.int64) * m, s)
        return saturate(y + self.zero_point, self.dtype)


def _mean(ctx: Context, group: GroupEntry) -> Mean:
    where = f"node {group.nodes[0]!r}"
    pin = ctx.activation(group.inputs[0], where)
    pout = ctx.activation(group.outputs[0], where)
    (s_x, zp_x), (s_y, zp_y) = scalar(pin), scalar(pout)
    return Mean(zp_x, span(pin.dtype, zp_x), s_x / s_y, zp_y, pout.dtype, group.nodes[0],
                (s_x, s_y) if ctx.requant == "fp32" else None)


@dataclass(frozen=True)
class AveragePoolKernel:
    node: onnx.NodeProto
    kernel: tuple[int, ...]
    include_pad: bool
    mean: Mean

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        x = inputs[0]
        geo = window.geometry(self.node, x.shape[2:], self.kernel, pooling=True)
        dtype = accumulator_dtype(int(np.prod(self.kernel)) * self.mean.span)
        xc = x.astype(dtype) - dtype(self.mean.zero)
        sums = _tap_sum(window.pad(xc, geo, 0), geo)
        # Divisor per output: the window's elements inside the input (and inside the explicit
        # padding with count_include_pad); positions that only ceil_mode reaches never count.
        ones = np.ones((1, 1) + x.shape[2:], dtype=np.int64)
        counts = _tap_sum(window.pad(ones, geo, 1 if self.include_pad else 0, extra_value=0), geo)
        return [self.mean.requantize(sums, counts, log)]


def _tap_sum(padded: np.ndarray, geo: window.Geometry) -> np.ndarray:
    total = None
    for tap in window.taps(padded, geo):
        total = tap.copy() if total is None else np.add(total, tap, out=total)
    return total


def average_pool(ctx: Context, group: GroupEntry) -> AveragePoolKernel:
    node = ctx.node(group.nodes[0])
    if len(node.output) > 1 and node.output[1]:
        raise NoKernel(f"node {node.name!r}: second output")
    kernel = tuple(attr(node, "kernel_shape"))
    return AveragePoolKernel(node, kernel, bool(attr(node, "count_include_pad", 0)), _mean(ctx, group))


@dataclass(frozen=True)
class GlobalAveragePoolKernel:
    mean: Mean

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        x = inputs[0]
        count = int(np.prod(x.shape[2:]))
        # sum(q - zp) = sum(q) - count * zp, the sums as a product with ones (BLAS), exact in
        # the accumulator type for the largest possible sum
        dtype = accumulator_dtype(count * span(str(x.dtype), 0))
        flat = x.reshape(x.shape[:2] + (count,)).astype(dtype)
        sums = np.matmul(flat, np.ones(count, dtype=dtype)).reshape(x.shape[:2] + (1,) * (x.ndim - 2))
        return [self.mean.requantize(sums - dtype(count * self.mean.zero), count, log)]


def global_average_pool(ctx: Context, group: GroupEntry) -> GlobalAveragePoolKernel:
    return GlobalAveragePoolKernel(_mean(ctx, group))


def reduce_axes(node: onnx.NodeProto, rank: int, axes_input: np.ndarray | None, opset: int) -> tuple[int, ...] | None:
    """The reduced axes of a Reduce* node (attribute before opset 18, input after), or None
    for "no reduction" (``noop_with_empty_axes``)."""
    axes = attr(node, "axes") if axes_input is None else list(np.asarray(axes_input).reshape(-1))
    if axes is None or len(axes) == 0:
        return None if attr(node, "noop_with_empty_axes", 0) else tuple(range(rank))
    return tuple(sorted(int(a) % rank for a in axes))


@dataclass(frozen=True)
class ReduceMeanKernel:
    node: onnx.NodeProto
    opset: int
    mean: Mean

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        x = inputs[0]
        axes = reduce_axes(self.node, x.ndim, inputs[1] if len(inputs) > 1 else None, self.opset)
        keep = bool(attr(self.node, "keepdims", 1))
        if axes is None:
            return [self.mean.requantize(x.astype(np.float64) - self.mean.zero, 1, log)]
        count = int(np.prod([x.shape[a] for a in axes]))
        # sum(q - zp) = sum(q) - count * zp; float64 sums any count below 2**37 exactly
        sums = x.sum(axis=axes, keepdims=keep, dtype=np.float64) - count * self.mean.zero
        return [self.mean.requantize(sums, count, log)]


def reduce_mean(ctx: Context, group: GroupEntry) -> ReduceMeanKernel:
    return ReduceMeanKernel(ctx.node(group.nodes[0]), ctx.opset, _mean(ctx, group))


# ---- maxima: integer pass-through ---------------------------------------------------------

@dataclass(frozen=True)
class MaxPoolKernel:
    node: onnx.NodeProto
    kernel: tuple[int, ...]
    lowest: int  # ONNX pads MaxPool with -inf: the lowest code is never selected over data

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        x = inputs[0]
        geo = window.geometry(self.node, x.shape[2:], self.kernel, pooling=True)
        best = None
        for tap in window.taps(window.pad(x, geo, self.lowest), geo):
            best = tap.copy() if best is None else np.maximum(best, tap, out=best)
        return [best]


def max_pool(ctx: Context, node: onnx.NodeProto, params: QuantParams) -> MaxPoolKernel:
    if len(node.output) > 1 and node.output[1]:
        raise NoKernel(f"node {node.name!r}: MaxPool Indices output")
    return MaxPoolKernel(node, tuple(attr(node, "kernel_shape")), LIMITS[params.dtype][0])


@dataclass(frozen=True)
class GlobalMaxPoolKernel:
    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        x = inputs[0]
        return [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)]


def global_max_pool(ctx: Context, node: onnx.NodeProto, params: QuantParams) -> GlobalMaxPoolKernel:
    return GlobalMaxPoolKernel()


@dataclass(frozen=True)
class ReduceExtremeKernel:
    node: onnx.NodeProto
    opset: int
    largest: bool

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        x = inputs[0]
        axes = reduce_axes(self.node, x.ndim, inputs[1] if len(inputs) > 1 else None, self.opset)
        if axes is None:
            return [x]
        fn = np.max if self.largest else np.min
        return [fn(x, axis=axes, keepdims=bool(attr(self.node, "keepdims", 1)))]


def reduce_max(ctx: Context, node: onnx.NodeProto, params: QuantParams) -> ReduceExtremeKernel:
    return ReduceExtremeKernel(node, ctx.opset, True)


def reduce_min(ctx: Context, node: onnx.NodeProto, params: QuantParams) -> ReduceExtremeKernel:
    return ReduceExtremeKernel(node, ctx.opset, False)
