"""Deployment CPUs, and the one place where their int8 kernels differ: int16 pair sums.

ONNX Runtime's CPU kernels (MLAS) compute a quantized Conv, Gemm or MatMul with a constant int8
weight differently by CPU:

- x86 with AVX2 but without VNNI (Haswell to Skylake client, AMD Zen 1-3): uint8 activation
  codes times int8 weight codes go through VPMADDUBSW, which adds each adjacent pair of
  products along the reduction axis and saturates the pair to int16 before VPMADDWD widens it
  to int32.  ``255 * 127 * 2 = 64,770`` does not fit in ``32,767``: such a pair is clipped.
- x86 with AVX-VNNI or AVX512-VNNI (VPDPBUSD) and ARM: every product reaches the int32 sum.

Facts about MLAS this module relies on (read in onnxruntime/core/mlas/lib and confirmed against
ONNX Runtime 1.32 run under ``qemu-x86_64 -cpu Haswell``, code for code):

- the products are taken on the *raw* activation codes; the zero point is corrected afterwards
  from the weight sums, so saturation depends on the codes, not on ``q - zp``.  Int8 activations
  are turned into uint8 first (code + 128, zero point + 128), so raw codes are always 0..255;
- a Conv runs in NHWC: its reduction index is ``tap * (C_in / group) + c``, channel fastest, over
  the kernel taps in row-major order; padded taps read the activation zero point's code; an odd
  reduction length is padded with a zero product.  Gemm and MatMul reduce along K in order;
- a depthwise Conv (one input and one output channel per group) is computed in int32 (no
  pairs), a MatMul of two activations by the exact uint8 x uint8 kernel, and a ConvTranspose in
  float (ONNX Runtime does not fuse it).

A pair of weight codes ``(w1, w2)`` can therefore saturate only when both have the same sign
and ``255 * (|w1| + |w2|) > 32,767``, that is ``|w1| + |w2| > 128`` (a pair of opposite signs
stays within ``255 * 127``).  ``pair_safe_scales`` raises a channel's weight scale just enough
that none of its pairs can.
"""

from __future__ import annotations

import enum

import numpy as np

#: Largest raw activation code MLAS multiplies (uint8, or int8 shifted by 128).
ACTIVATION_CODE_MAX = 255
#: Largest ``|w1| + |w2|`` of a same-sign pair whose products cannot leave int16.
PAIR_LIMIT = 32767 // ACTIVATION_CODE_MAX  # 128; the negative side allows 32768 // 255 = 128 too
INT16_MIN, INT16_MAX = -32768, 32767


class Target(str, enum.Enum):
    """The CPU a model is calibrated for (``ptq calibrate --cpu``).

    ``any`` and ``x86-avx2`` keep every weight pair within int16 (``pairs_saturate``);
    ``x86-vnni`` and ``arm`` keep full 8-bit weights."""

    ANY = "any"
    X86_AVX2 = "x86-avx2"
    X86_VNNI = "x86-vnni"
    ARM = "arm"

    @property
    def pairs_saturate(self) -> bool:
        return self in (Target.ANY, Target.X86_AVX2)


def reduction_rows(op_type: str, weight: np.ndarray, *, group: int = 1, trans_b: bool = False) -> np.ndarray | None:
    """``weight`` as ``[channels, rows, K]``: for each output channel (the axis its per-channel
    scale runs along), the rows of the reduction in the order MLAS pairs them (columns ``2j``
    and ``2j + 1``; an odd K gets a zero column).  None where MLAS forms no pairs (depthwise
    Conv, ConvTranspose) or for an operator it does not run in integers.

    Conv ``[M, C/g, *k]``: one row per channel, ``K = taps * C/g`` with the channel fastest.
    Gemm ``[K, N]`` (``trans_b``: ``[N, K]``) and MatMul ``[..., K, N]``: the columns of N, one
    row per batch of a batched weight."""
    w = np.asarray(weight)
    if op_type == "Conv":
        if w.ndim < 3 or (w.shape[1] == 1 and w.shape[0] == group):  # depthwise: int32 products
            return None
        rows = np.moveaxis(w, 1, -1).reshape(w.shape[0], 1, -1)  # [M, 1, taps * C/g]
    elif op_type == "Gemm" and w.ndim == 2:
        rows = (w if trans_b else w.T)[:, None, :]
    elif op_type == "MatMul" and w.ndim >= 2:
        k, n = w.shape[-2:]
        rows = np.moveaxis(w.reshape(-1, k, n), 2, 0)  # [N, batches, K]
    else:
        return None
    if rows.shape[-1] % 2:
        rows = np.concatenate([rows, np.zeros(rows.shape[:-1] + (1,), rows.dtype)], axis=-1)
    return rows


def pair_peaks(rows: np.ndarray) -> np.ndarray:
    """Per channel, the largest same-sign ``|w1| + |w2|`` over its pairs (``rows`` from
    :func:`reduction_rows`, in any units: codes or float weights)."""
    pairs = rows.reshape(rows.shape[0], -1, 2)
    up = np.where(pairs > 0, pairs, 0).sum(axis=-1)
    down = np.where(pairs < 0, -pairs, 0).sum(axis=-1)
    return np.maximum(up, down).max(axis=-1, initial=0)


def pair_safe_scales(rows: np.ndarray, scales: np.ndarray, *, qmax: int = 127) -> np.ndarray:
    """``scales`` (float32, one per channel, or one for all) raised where a pair of the codes
    ``round(w / s)`` could saturate: to ``P / 128`` when that rounds safely, else ``P / 127``
    (then ``|q1| + |q2| <= P / s + 1 = 128`` whatever the rounding), with ``P`` the channel's
    :func:`pair_peaks` of the float weights.  Channels already safe keep their scale.  A single
    scale (per-tensor weights) is raised for the worst channel."""
    rows = np.asarray(rows, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float32)
    peaks = pair_peaks(rows)
    per_tensor = scales.size == 1
    if per_tensor:
        peaks = peaks.max(keepdims=True, initial=0.0)

    def unsafe(s: np.ndarray) -> np.ndarray:
        s = np.broadcast_to(s.astype(np.float64), (rows.shape[0],))
        codes = np.clip(np.rint(rows / s[:, None, None]), -qmax - 1, qmax)
        bad = pair_peaks(codes) > PAIR_LIMIT
        return bad.any(keepdims=True) if per_tensor else bad

    out = scales.copy()
    for divisor in (PAIR_LIMIT, PAIR_LIMIT - 1):
        bad = unsafe(out)
        if not bad.any():
            break
        out = np.where(bad, np.maximum(out, (peaks / divisor).astype(np.float32)), out)
    while unsafe(out).any():  # float32 rounding of P / 127 itself: nudge up by one ulp
        bad = unsafe(out)
        out = np.where(bad, np.nextafter(out, np.float32(np.inf)), out)
    return out
