"""From clipping ranges and weights to scales and zero points, and the quantize arithmetic.

Conventions (ONNX QuantizeLinear / DequantizeLinear, opset 13+):

- ``q = saturate(round_half_to_even(x / scale) + zero_point)``, ``x' = (q - zero_point) * scale``;
- scales are float32 (what an ONNX initializer holds), zero points integers of the dtype;
- symmetric ranges ``[-t, t]`` use ``scale = t / qmax`` and zero point 0 (int8: codes -127..127,
  -128 unused, so the range stays symmetric);
- asymmetric uint8 ``[lo, hi]`` (with ``lo <= 0 <= hi``) uses ``scale = (hi - lo) / 255`` and
  ``zero_point = round(-lo / scale)``, so that 0.0 is exactly representable;
- weights: int8 symmetric, one scale per output channel (or per tensor);
- biases: int32 with ``scale = s_x * s_w`` (per channel), zero point 0, so they add straight into
  the int32 accumulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibrators import Range

LIMITS = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "int16": (-32768, 32767),
    "int32": (-(2 ** 31), 2 ** 31 - 1),
}
NUMPY = {"uint8": np.uint8, "int8": np.int8, "int16": np.int16, "int32": np.int32}


@dataclass(frozen=True)
class QuantParams:
    """Scale(s) and zero point(s) of one tensor; ``axis`` is None for per-tensor parameters."""

    dtype: str
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None

    @property
    def symmetric(self) -> bool:
        return self.dtype != "uint8" and not any(self.zero_point)

    def arrays(self, rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scale (float32) and zero point (int64) shaped to broadcast against a tensor of ``rank``
        whose channel axis is ``axis``."""
        scale = np.asarray(self.scale, dtype=np.float32)
        zero = np.asarray(self.zero_point, dtype=np.int64)
        if self.axis is None or rank is None:
            return (scale.reshape(()), zero.reshape(())) if scale.size == 1 else (scale, zero)
        shape = [1] * rank
        shape[self.axis] = -1
        return scale.reshape(shape), zero.reshape(shape)


def _f32(x: float) -> float:
    return float(np.float32(x))


def activation_params(r: Range, dtype: str) -> QuantParams:
    """Per-tensor parameters that cover ``r`` with ``dtype`` codes."""
    qmin, qmax = LIMITS[dtype]
    if dtype == "uint8":
        span = r.hi - r.lo
        scale = _f32(span / (qmax - qmin)) if span > 0 else 1.0
        zero = int(np.clip(np.rint(-r.lo / scale), qmin, qmax))
        return QuantParams(dtype, (scale,), (zero,))
    t = max(abs(r.lo), abs(r.hi))
    scale = _f32(t / qmax) if t > 0 else 1.0
    return QuantParams(dtype, (scale,), (0,))


#: A bias code may use at most this magnitude, leaving the int32 accumulator room for the products.
BIAS_CODE_LIMIT = 2 ** 30


def weight_params(w: np.ndarray, axis: int | None, *, min_scale: np.ndarray | float = 0.0, bits: int = 8) -> QuantParams:
    """int8 symmetric per-channel (``axis``) or per-tensor (``axis=None``) parameters of ``w``;
    with ``bits=4``, ``scale = amax / 7`` so that the codes are -7..7, held in int8.

    A channel whose weights are all zero gets the median scale of the others; no scale falls below
    ``min_scale`` (per channel), which ``bias_floor`` sets so that the int32 bias stays
    representable: a channel of nearly-zero weights would otherwise get a scale near 1e-19 and
    saturate its bias code."""
    if axis is None:
        amax = np.array([np.abs(w).max()]) if w.size else np.zeros(1)
    else:
        amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    scale = (amax / float(2 ** (bits - 1) - 1)).astype(np.float32)
    nonzero = scale[scale > 0]
    scale[scale == 0] = np.median(nonzero) if nonzero.size else 1.0
    scale = np.maximum(scale, np.asarray(min_scale, dtype=np.float32))
    return QuantParams("int8", tuple(float(s) for s in scale), (0,) * len(scale), axis)


def bias_floor(bias: np.ndarray, x: QuantParams, per_channel: bool) -> np.ndarray | float:
    """The smallest weight scale(s) for which ``|bias| / (s_x * s_w)`` stays within
    ``BIAS_CODE_LIMIT`` (one per output channel, or one for a per-tensor weight scale)."""
    # 1e-6 above the bound: float32 rounding of the scale must not push a code past it
    need = np.abs(np.asarray(bias, dtype=np.float64)).reshape(-1) / (x.scale[0] * BIAS_CODE_LIMIT) * (1 + 1e-6)
    return need.astype(np.float32) if per_channel else float(need.max(initial=0.0))


def bias_params(x: QuantParams, w: QuantParams, channels: int, axis: int = 0) -> QuantParams:
    """int32 parameters for a bias added to the product of ``x`` and ``w``: ``s_x * s_w`` for each
    of ``channels`` output channels, which lie along ``axis`` of the bias tensor."""
    s_w = np.asarray(w.scale, dtype=np.float32)
    if s_w.size == 1:
        s_w = np.repeat(s_w, channels)
    scale = (np.float32(x.scale[0]) * s_w).astype(np.float32)
    return QuantParams("int32", tuple(float(s) for s in scale), (0,) * channels, axis if channels > 1 else None)


def quantize(x: np.ndarray, params: QuantParams) -> np.ndarray:
    """ONNX QuantizeLinear: round half to even, add the zero point, saturate."""
    scale, zero = params.arrays(np.ndim(x))
    qmin, qmax = LIMITS[params.dtype]
    q = np.rint(np.asarray(x, dtype=np.float32) / scale) + zero
    return np.clip(q, qmin, qmax).astype(NUMPY[params.dtype])


def quantize_bias(b: np.ndarray, params: QuantParams) -> np.ndarray:
    """int32 bias codes ``round(b / (s_x * s_w))``, computed in float64 and saturated."""
    scale = np.asarray(params.scale, dtype=np.float64)
    q = np.rint(np.asarray(b, dtype=np.float64) / (scale if scale.size > 1 else scale[0]))
    qmin, qmax = LIMITS["int32"]
    return np.clip(q, qmin, qmax).astype(np.int32)


def dequantize(q: np.ndarray, params: QuantParams) -> np.ndarray:
    """ONNX DequantizeLinear: ``(q - zero_point) * scale`` in float32."""
    scale, zero = params.arrays(np.ndim(q))
    return ((np.asarray(q, dtype=np.int64) - zero).astype(np.float32) * scale).astype(np.float32)
