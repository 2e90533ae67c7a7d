"""MatMul and Gemm kernels on integer codes, with a constant weight or two quantized activations
(the arithmetic: ``ptqcli.sim.compute``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptqcli.graph import attr
from ptqcli.quantize.scale_table import GroupEntry
from ptqcli.sim.base import Context, Log, NoKernel, Requant, scalar
from ptqcli.sim.compute import bias_codes, epilogue, raw_codes, weight_codes
from ptqcli.sim.fixed import INT32_MAX, accumulator_dtype, span
from ptqcli.sim.pairs import MatMulPairs, matmul_pairs


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
    w, wp = weight_codes(ctx, group.weight)
    pairs = matmul_pairs(node.op_type, raw_codes(w, wp), trans_a, trans_b, x, node.name,
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
        bias = bias_codes(ctx, group, s_x * s_w)  # [N]: broadcasts along the last axis
    else:
        bias = _gemm_c(ctx, node, acc_scale, beta) if is_gemm else None
    k = w.shape[-2] if w.ndim >= 2 else w.shape[0]
    col_abs = np.abs(w).reshape(-1, k, n_out).sum(axis=1) if w.ndim >= 2 else np.abs(w).sum(keepdims=True)
    acc_bound = int(col_abs.max(initial=0)) * span(x.dtype, zp_x)
    dtype = accumulator_dtype(acc_bound)
    factors = (s_x, s_w) if abs(alpha) == 1.0 else (abs(alpha), s_x, s_w)
    epi = epilogue(ctx, group, acc_bound=acc_bound, factors=factors, bias=bias,
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
    epi = epilogue(ctx, group, acc_bound=INT32_MAX + 1, factors=factors, bias=addend, shape=())
    return ActivationMatMulKernel((zp_a, zp_b), (span(pa.dtype, zp_a), span(pb.dtype, zp_b)),
                                  (trans_a, trans_b), epi)
