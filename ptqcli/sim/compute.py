"""Compute groups: Conv, ConvTranspose, Gemm, MatMul (+ bias, + fused Relu/Clip).

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

from ptqcli.graph import attr, text_attr
from ptqcli.quantize.qparams import QuantParams, quantize, quantize_bias
from ptqcli.quantize.scale_table import GroupEntry
from ptqcli.sim import window
from ptqcli.sim.base import Context, Log, NoKernel, Overflow, Requant, clamp_bounds, scalar
from ptqcli.sim.fixed import INT32_MAX, Float32Scale, accumulator_dtype, f32, multiplier, span, wrap_int32
from ptqcli.sim.pairs import ConvPairs, MatMulPairs, conv_pairs, matmul_pairs


def _weight_codes(ctx: Context, name: str) -> tuple[np.ndarray, QuantParams]:
    """Centered weight codes ``q_w - zp_w`` (int64, the initializer's shape) and parameters."""
    p = ctx.params(name)
    q = quantize(ctx.const(name), p).astype(np.int64)
    _, zero = p.arrays(q.ndim)
    return q - zero, p


def _raw_codes(centered: np.ndarray, p: QuantParams) -> np.ndarray:
    """The weight codes as stored (``q_w``), from the centered ``q_w - zp_w`` of ``_weight_codes``."""
    return centered + p.arrays(centered.ndim)[1]


def _bias_codes(ctx: Context, group: GroupEntry, acc_scale: np.ndarray) -> np.ndarray | None:
    """int32 bias codes at the accumulator scale ``s_x * s_w`` (one per channel)."""
    if group.bias is None:
        return None
    p = ctx.params(group.bias)
    b = quantize_bias(ctx.const(group.bias), p).astype(np.int64)
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


def _epilogue(ctx: Context, group: GroupEntry, *, acc_bound: int, factors: tuple, bias: np.ndarray | None,
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
        if node.op_type == "Relu":
            lo = max(lo, 0.0)
        elif node.op_type == "Clip":
            a = ctx.const(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "min")
            b = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else attr(node, "max")
            lo = max(lo, float(a)) if a is not None else lo
            hi = min(hi, float(b)) if b is not None else hi
        else:
            raise NoKernel(f"node {name!r}: {node.op_type} cannot be fused into a matrix product")
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


#: Values per block of the depthwise accumulation (32K float32: 128 KiB, about an L2 share).
DEPTHWISE_BLOCK = 32768


@dataclass(frozen=True)
class ConvKernel:
    """Conv: ``weight`` ``[g, C_out/g, C_in/g * K]`` centered codes in ``dtype``."""

    node: object
    weight: np.ndarray
    kernel: tuple[int, ...]
    group: int
    x_zero: int
    dtype: type
    epilogue: Requant
    pairs: ConvPairs | None = None

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        x = inputs[0]
        return [self.epilogue.run(self._sums(x) if self.pairs is None else self.pairs.apply(x, self._sums(x), log),
                                  log)]

    def _sums(self, x: np.ndarray) -> np.ndarray:
        """The exact accumulators ``[N, C_out, *out]``, bias excluded."""
        n, c = x.shape[:2]
        g, cout_g, _ = self.weight.shape
        geo = window.geometry(self.node, x.shape[2:], self.kernel)
        out_sp = tuple(geo.out_shape(x.shape[2:]))
        k = int(np.prod(self.kernel))
        # Raw codes, padded with the zero point (the code of 0.0); the zero point's share
        # zp_x * sum(q_w - zp_w) is already subtracted from the bias (gemmlowp's decomposition).
        if k == 1 and all(s == 1 for s in geo.strides) and not any(geo.begin + geo.end):
            cols = x.reshape(n, g, c // g, -1).astype(self.dtype)  # pointwise: its own im2col
            acc = np.matmul(self.weight, cols)  # [N, g, C_out/g, P]: one GEMM per sample and group
            return acc.reshape((n, g * cout_g) + out_sp)
        flat = window.flat_windows(x, geo, self.x_zero, self.dtype)
        if flat is not None:  # stride 1: contiguous taps over padded rows, cropped at the end
            taps, tap_shape, finish = flat.taps, (n, c, flat.length), flat.crop
        else:  # padded on the narrow codes and converted once; each tap a strided view
            padded = window.pad(x, geo, self.x_zero, dtype=self.dtype)
            taps, tap_shape = tuple(window.taps(padded, geo)), (n, c) + out_sp

            def finish(acc: np.ndarray) -> np.ndarray:
                return acc.reshape((n, -1) + out_sp)
        if c == g and cout_g == 1:
            return finish(self._depthwise(taps, tap_shape))
        cols = np.empty((n, c, k) + tap_shape[2:], dtype=self.dtype)  # im2col: one copy per tap
        for i, tap in enumerate(taps):
            cols[:, :, i] = tap
        acc = np.matmul(self.weight, cols.reshape(n, g, (c // g) * k, -1))
        return finish(acc.reshape(n, g * cout_g, -1))

    def _depthwise(self, taps: tuple[np.ndarray, ...], shape: tuple[int, ...]) -> np.ndarray:
        """A multiply-add per kernel tap over ``shape`` (the taps' shape), in blocks of
        channels of about ``DEPTHWISE_BLOCK`` values: the block's accumulator stays in cache
        across the taps (2-3x faster than whole-tensor passes on large feature maps)."""
        w = self.weight.reshape(shape[1], -1)
        bshape = (1, -1) + (1,) * (len(shape) - 2)
        acc = np.empty(shape, dtype=self.dtype)
        per_channel = int(np.prod(shape[2:]))
        step = max(1, DEPTHWISE_BLOCK // per_channel)
        blocks = [(slice(b, b + 1), slice(c, c + step)) for b in range(shape[0]) for c in range(0, shape[1], step)] \
            if acc.size > 4 * DEPTHWISE_BLOCK else [(slice(None), slice(None))]
        for rows, chans in blocks:
            out = acc[rows, chans]
            tmp = np.empty_like(out)
            for i, tap in enumerate(taps):
                np.multiply(tap[rows, chans], w[chans, i].reshape(bshape), out=out if i == 0 else tmp)
                if i:
                    out += tmp
        return acc


def conv(ctx: Context, group: GroupEntry) -> ConvKernel:
    node = ctx.node(group.nodes[0])
    if group.weight is None:
        raise NoKernel(f"node {node.name!r}: Conv weights computed at run time")
    x = ctx.activation(group.inputs[0], f"node {node.name!r}")
    s_x, zp_x = scalar(x)
    w, wp = _weight_codes(ctx, group.weight)
    if wp.axis not in (None, 0):
        raise NoKernel(f"node {node.name!r}: weight parameters along axis {wp.axis}")
    g = int(attr(node, "group", 1))
    cout, kernel = w.shape[0], tuple(w.shape[2:])
    per_out = np.abs(w).reshape(cout, -1).sum(axis=1)
    # The kernel sums raw codes q_x (|q_x| <= raw) and corrects by zp_x * sum(q_w - zp_w).
    raw = span(x.dtype, 0)
    acc_bound = int(per_out.max(initial=0)) * raw
    dtype = accumulator_dtype(acc_bound)
    s_w = np.broadcast_to(np.asarray(wp.scale, dtype=np.float64), (cout,))
    acc_scale = s_x * s_w
    shape = (1, cout) + (1,) * len(kernel)
    bias = _bias_codes(ctx, group, acc_scale)
    total = -zp_x * w.reshape(cout, -1).sum(axis=1) + (0 if bias is None else bias.reshape(-1))
    epi = _epilogue(ctx, group, acc_bound=acc_bound, factors=(s_x, s_w), shape=shape,
                    bias=total.reshape(shape) if np.any(total) else None)
    weight = w.reshape(g, cout // g, -1).astype(dtype)
    pairs = conv_pairs(node, _raw_codes(w, wp), g, x, node.name) if ctx.cpu == "x86-avx2" else None
    return ConvKernel(node, weight, kernel, g, zp_x, dtype, epi, pairs)


@dataclass(frozen=True)
class ConvTransposeKernel:
    """ConvTranspose: ``weight`` ``[g, C_out/g * K, C_in/g]`` centered codes in ``dtype``."""

    node: object
    weight: np.ndarray
    kernel: tuple[int, ...]
    cout: int
    x_zero: int
    dtype: type
    epilogue: Requant

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        x = inputs[0]
        n, c = x.shape[:2]
        spatial = x.shape[2:]
        g = self.weight.shape[0]
        nk = len(self.kernel)
        strides = tuple(attr(self.node, "strides", [1] * nk))
        dil = tuple(attr(self.node, "dilations", [1] * nk))
        outpad = tuple(attr(self.node, "output_padding", [0] * nk))
        full = tuple(s * (i - 1) + op + (k - 1) * d + 1
                     for s, i, op, k, d in zip(strides, spatial, outpad, self.kernel, dil))
        begin, end = _transpose_pads(self.node, full, nk)
        xc = x.astype(self.dtype).reshape(n, g, c // g, -1) - self.dtype(self.x_zero)
        cols = np.matmul(self.weight, xc).reshape((n, self.cout) + self.kernel + tuple(spatial))
        acc = np.zeros((n, self.cout) + full, dtype=self.dtype)
        for offset in np.ndindex(*self.kernel):
            index = (slice(None), slice(None)) + tuple(
                slice(o * d, o * d + s * (i - 1) + 1, s) for o, d, s, i in zip(offset, dil, strides, spatial))
            acc[index] += cols[(slice(None), slice(None)) + offset]
        crop = (slice(None), slice(None)) + tuple(slice(b, f - e) for b, e, f in zip(begin, end, full))
        return [self.epilogue.run(acc[crop], log)]


def _transpose_pads(node, full: tuple[int, ...], nk: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Begin/end crop of the full ConvTranspose output (ONNX: ``pads``, ``output_shape``, auto_pad)."""
    shape = attr(node, "output_shape")
    auto_pad = text_attr(node, "auto_pad", "NOTSET")
    if shape is None and auto_pad in ("NOTSET", "VALID"):
        pads = list(attr(node, "pads", [0] * (2 * nk)))
        return tuple(pads[:nk]), tuple(pads[nk:])
    if shape is None:
        raise NoKernel(f"node {node.name!r}: ConvTranspose auto_pad {auto_pad} without output_shape")
    total = [f - o for f, o in zip(full, list(shape)[-nk:])]
    if auto_pad == "SAME_UPPER":
        return tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
    return tuple(t - t // 2 for t in total), tuple(t // 2 for t in total)


def conv_transpose(ctx: Context, group: GroupEntry) -> ConvTransposeKernel:
    node = ctx.node(group.nodes[0])
    if group.weight is None:
        raise NoKernel(f"node {node.name!r}: ConvTranspose weights computed at run time")
    x = ctx.activation(group.inputs[0], f"node {node.name!r}")
    s_x, zp_x = scalar(x)
    w, wp = _weight_codes(ctx, group.weight)  # [C_in, C_out/g, *k]
    g = int(attr(node, "group", 1))
    cin, cout_g, kernel = w.shape[0], w.shape[1], tuple(w.shape[2:])
    cout = cout_g * g
    if wp.axis not in (None, 1) or (wp.axis == 1 and g != 1):
        raise NoKernel(f"node {node.name!r}: weight parameters along axis {wp.axis} with group {g}")
    # Each output sums over its group's input channels and the kernel taps that reach it.
    per_out = np.abs(w).reshape(g, cin // g, cout_g, -1).sum(axis=(1, 3)).reshape(-1)
    acc_bound = int(per_out.max(initial=0)) * span(x.dtype, zp_x)
    dtype = accumulator_dtype(acc_bound)
    s_w = np.broadcast_to(np.asarray(wp.scale, dtype=np.float64), (cout,))
    acc_scale = s_x * s_w
    shape = (1, cout) + (1,) * len(kernel)
    bias = _bias_codes(ctx, group, acc_scale)
    epi = _epilogue(ctx, group, acc_bound=acc_bound, factors=(s_x, s_w), shape=shape,
                    bias=None if bias is None else bias.reshape(shape))
    weight = w.reshape(g, cin // g, cout_g * int(np.prod(kernel))).transpose(0, 2, 1).astype(dtype)
    return ConvTransposeKernel(node, np.ascontiguousarray(weight), kernel, cout, zp_x, dtype, epi)


@dataclass(frozen=True)
class MatMulKernel:
    """MatMul / Gemm with a constant right operand ``weight`` (centered codes, ``[K, N]`` or
    batched) and an int64 ``addend`` (bias or Gemm C) folded into the epilogue."""

    weight: np.ndarray
    x_zero: int
    trans_a: bool
    dtype: type
    epilogue: Requant
    pairs: MatMulPairs | None = None

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        x = inputs[0]
        xc = x.astype(self.dtype) - self.dtype(self.x_zero)
        acc = np.matmul(xc.T if self.trans_a else xc, self.weight)
        return [self.epilogue.run(acc if self.pairs is None else self.pairs.apply(x, acc, log), log)]


def _gemm_c(ctx: Context, node, acc_scale: np.ndarray, beta: float) -> np.ndarray | None:
    """Gemm's C when the table does not quantize it: int32 codes at the accumulator scale."""
    if len(node.input) < 3 or not node.input[2]:
        return None
    c = ctx.const(node.input[2])
    if c is None:
        raise NoKernel(f"node {node.name!r}: Gemm C computed at run time")
    return np.rint(beta * c.astype(np.float64) / acc_scale).astype(np.int64)


def matmul(ctx: Context, group: GroupEntry):
    """MatMul or Gemm group: weight constant, or two quantized activations."""
    node = ctx.node(group.nodes[0])
    where = f"node {node.name!r}"
    is_gemm = node.op_type == "Gemm"
    alpha = float(attr(node, "alpha", 1.0)) if is_gemm else 1.0
    beta = float(attr(node, "beta", 1.0)) if is_gemm else 1.0
    trans_a = bool(attr(node, "transA", 0)) if is_gemm else False
    trans_b = bool(attr(node, "transB", 0)) if is_gemm else False
    if alpha == 0.0:
        raise NoKernel(f"{where}: Gemm with alpha 0")
    x = ctx.activation(group.inputs[0], where)
    s_x, zp_x = scalar(x)
    if group.weight is None:
        return _two_activations(ctx, group, node, alpha, beta, trans_a, trans_b)
    w, wp = _weight_codes(ctx, group.weight)
    pairs = matmul_pairs(node.op_type, _raw_codes(w, wp), trans_a, trans_b, x, node.name,
                         negate=alpha < 0) if ctx.cpu == "x86-avx2" else None
    if trans_b:
        w = w.T
    n_out = w.shape[-1]
    per_channel = len(wp.scale) > 1
    expected_axis = (0 if trans_b else 1) if is_gemm else w.ndim - 1
    if per_channel and (w.ndim != 2 or wp.axis != expected_axis):
        raise NoKernel(f"{where}: weight parameters along axis {wp.axis}")
    sign = -1 if alpha < 0 else 1  # fold a negative alpha into the weights: M stays positive
    s_w = np.broadcast_to(np.asarray(wp.scale, dtype=np.float64), (n_out,) if per_channel else (1,))
    acc_scale = abs(alpha) * s_x * s_w
    if group.bias is not None:
        bias = _bias_codes(ctx, group, s_x * s_w)  # [N]: broadcasts along the last axis
    else:
        bias = _gemm_c(ctx, node, acc_scale, beta) if is_gemm else None
    k = w.shape[-2] if w.ndim >= 2 else w.shape[0]
    col_abs = np.abs(w).reshape(-1, k, n_out).sum(axis=1) if w.ndim >= 2 else np.abs(w).sum(keepdims=True)
    acc_bound = int(col_abs.max(initial=0)) * span(x.dtype, zp_x)
    dtype = accumulator_dtype(acc_bound)
    factors = (s_x, s_w) if abs(alpha) == 1.0 else (abs(alpha), s_x, s_w)
    epi = _epilogue(ctx, group, acc_bound=acc_bound, factors=factors, bias=bias,
                    shape=(n_out,) if per_channel else ())
    return MatMulKernel(np.ascontiguousarray((sign * w).astype(dtype)), zp_x, trans_a, dtype, epi, pairs)


@dataclass(frozen=True)
class ActivationMatMulKernel:
    """MatMul / Gemm of two quantized activations: ``(q_a - zp_a) @ (q_b - zp_b)``."""

    zeros: tuple[int, int]
    spans: tuple[int, int]
    trans: tuple[bool, bool]
    epilogue: Requant

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        a, b = inputs
        k = a.shape[-2] if self.trans[0] else a.shape[-1]
        dtype = accumulator_dtype(k * self.spans[0] * self.spans[1])
        ac = a.astype(dtype) - dtype(self.zeros[0])
        bc = b.astype(dtype) - dtype(self.zeros[1])
        acc = np.matmul(ac.T if self.trans[0] else ac, bc.T if self.trans[1] else bc)
        return [self.epilogue.run(acc, log)]


def _two_activations(ctx: Context, group: GroupEntry, node, alpha: float, beta: float, trans_a: bool,
                     trans_b: bool) -> ActivationMatMulKernel:
    where = f"node {node.name!r}"
    if len(group.inputs) != 2:
        raise NoKernel(f"{where}: expected two quantized inputs, the table lists {len(group.inputs)}")
    (s_a, zp_a), (s_b, zp_b) = (scalar(ctx.activation(t, where)) for t in group.inputs)
    pa, pb = (ctx.params(t) for t in group.inputs)
    acc_scale = abs(alpha) * s_a * s_b
    addend = _gemm_c(ctx, node, np.asarray(acc_scale), beta) if node.op_type == "Gemm" else None
    if alpha < 0:
        raise NoKernel(f"{where}: Gemm of two activations with negative alpha")
    # K is known at run time only, so the int32 range of the sum is checked on every run.
    factors = (s_a, s_b) if alpha == 1.0 else (alpha, s_a, s_b)
    epi = _epilogue(ctx, group, acc_bound=INT32_MAX + 1, factors=factors, bias=addend, shape=())
    return ActivationMatMulKernel((zp_a, zp_b), (span(pa.dtype, zp_a), span(pb.dtype, zp_b)),
                                  (trans_a, trans_b), epi)
