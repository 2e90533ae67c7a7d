"""Resize, nearest and (multi)linear, on integer codes.

Source coordinates follow the ONNX ``coordinate_transformation_mode`` (half_pixel,
half_pixel_symmetric, pytorch_half_pixel, align_corners, asymmetric) computed in float32 as
ONNX Runtime does; linear coordinates are clamped to ``[0, L-1]``.

- nearest: the selected codes, requantized by ``M = s_x / s_y`` when the output's parameters
  differ from the input's (``y = zp_y + M (q - zp_x)``);
- linear: per resized axis the two neighbours get weights ``w1 = round(frac * 2**F)`` and
  ``w0 = 2**F - w1`` (``F = 15``); the weighted sums of the centered codes are formed exactly in
  int64 axis after axis, then requantized once by ``M = s_x / s_y * 2**(-F * axes)``.

With the ``fp32`` arithmetic a linear Resize runs as ONNX Runtime's CPU provider runs it: in
float32 on the dequantized codes (it has no integer Resize), then quantized.

tf_crop_and_resize, cubic, antialias and keep_aspect_ratio_policy other than stretch run in
float (fallback).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ptqcli.graph import attr, text_attr
from ptqcli.quantize.qparams import QuantParams, dequantize, quantize
from ptqcli.quantize.scale_table import GroupEntry
from ptqcli.sim import floatops
from ptqcli.sim.base import Context, Log, NoKernel, scalar
from ptqcli.sim.fixed import multiplier, saturate, span

WEIGHT_BITS = 15
MODES = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"}


def source_coords(mode: str, length_in: int, length_out: int, scale: float) -> np.ndarray:
    """Source coordinate (float32) of each output index along one axis."""
    f = np.float32
    y = np.arange(length_out, dtype=f)
    s = f(scale)
    if mode == "asymmetric":
        return y / s
    if mode == "align_corners":
        if length_out == 1:
            return np.zeros(1, dtype=f)
        return y * f(length_in - 1) / f(length_out - 1)
    if mode == "pytorch_half_pixel" and length_out == 1:
        return np.full(1, -0.5, dtype=f)
    x = (y + f(0.5)) / s - f(0.5)
    if mode == "half_pixel_symmetric":
        adjustment = f(length_out) / (s * f(length_in))
        x = x + f(length_in) / f(2) * (f(1) - adjustment)
    return x


def nearest_index(x: np.ndarray, mode: str, length_in: int) -> np.ndarray:
    """Nearest source index for ``nearest_mode``; ties at .5 go down for round_prefer_floor."""
    if mode == "floor":
        i = np.floor(x)
    elif mode == "ceil":
        i = np.ceil(x)
    elif mode == "round_prefer_ceil":
        i = np.floor(x + np.float32(0.5))
    elif mode == "round_prefer_floor":
        i = np.ceil(x - np.float32(0.5))
    else:
        raise NoKernel(f"nearest_mode {mode!r}")
    return np.clip(i, 0, length_in - 1).astype(np.int64)


def linear_weights(x: np.ndarray, length_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Neighbours ``i0, i1`` and integer weights ``w0 + w1 = 2**WEIGHT_BITS`` per output index."""
    x = np.clip(x, np.float32(0), np.float32(length_in - 1))
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, length_in - 1)
    frac = (x - i0.astype(np.float32)).astype(np.float64)
    w1 = np.rint(frac * 2 ** WEIGHT_BITS).astype(np.int64)
    return i0, i1, 2 ** WEIGHT_BITS - w1, w1


@dataclass(frozen=True)
class ResizeKernel:
    node: onnx.NodeProto
    linear: bool
    coord_mode: str
    nearest_mode: str
    axes: tuple[int, ...] | None
    zeros: tuple[int, int]
    ratio: float          # s_x / s_y
    same: bool            # output parameters equal the input's: nearest moves codes
    span: int
    dtype: str

    def _targets(self, shape: tuple[int, ...], scales, sizes) -> tuple[list[float], list[int]]:
        rank = len(shape)
        axes = list(self.axes) if self.axes is not None else list(range(rank))
        full_scales = [1.0] * rank
        full_sizes = list(shape)
        if sizes is not None and np.size(sizes):
            for a, n in zip(axes, np.asarray(sizes).reshape(-1)):
                full_sizes[a % rank] = int(n)
                full_scales[a % rank] = float(np.float32(n) / np.float32(shape[a % rank]))
        elif scales is not None and np.size(scales):
            for a, s in zip(axes, np.asarray(scales, dtype=np.float32).reshape(-1)):
                full_scales[a % rank] = float(s)
                full_sizes[a % rank] = int(np.float32(s) * np.float32(shape[a % rank]))
        else:
            raise NoKernel(f"node {self.node.name!r}: neither scales nor sizes")
        return full_scales, full_sizes

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        x = inputs[0]
        scales = inputs[2] if len(inputs) > 2 else None
        sizes = inputs[3] if len(inputs) > 3 else None
        full_scales, full_sizes = self._targets(x.shape, scales, sizes)
        moved = [a for a in range(x.ndim) if full_sizes[a] != x.shape[a] or full_scales[a] != 1.0]
        if not self.linear:
            for a in moved:
                coords = source_coords(self.coord_mode, x.shape[a], full_sizes[a], full_scales[a])
                x = np.take(x, nearest_index(coords, self.nearest_mode, x.shape[a]), axis=a)
            if self.same:
                return [x]
            mult = multiplier(self.ratio, self.span, where=f"node {self.node.name!r}")
            return [saturate(mult.apply(x.astype(np.int64) - self.zeros[0]) + self.zeros[1], self.dtype)]
        acc = x.astype(np.int64) - self.zeros[0]
        for a in moved:
            coords = source_coords(self.coord_mode, acc.shape[a], full_sizes[a], full_scales[a])
            i0, i1, w0, w1 = linear_weights(coords, acc.shape[a])
            shape = [1] * acc.ndim
            shape[a] = -1
            acc = np.take(acc, i0, axis=a) * w0.reshape(shape) + np.take(acc, i1, axis=a) * w1.reshape(shape)
        bits = WEIGHT_BITS * len(moved)
        mult = multiplier(self.ratio * 2.0 ** -bits, self.span << bits, where=f"node {self.node.name!r}")
        return [saturate(mult.apply(acc) + self.zeros[1], self.dtype)]


@dataclass(frozen=True)
class Float32ResizeKernel:
    """A linear Resize as ONNX Runtime's CPU provider runs it (``fp32``): it fuses no integer
    Resize, so the node runs in float32 between DequantizeLinear and QuantizeLinear.  ``inner``
    is that node cut out; ``positions`` picks its feeds from the step's inputs (0: the codes)."""

    inner: floatops.FloatKernel
    positions: tuple[int, ...]
    params: tuple[QuantParams, QuantParams]

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        args = [dequantize(inputs[0], self.params[0]) if i == 0 else inputs[i] for i in self.positions]
        return [quantize(self.inner.run(args, log)[0], self.params[1])]


def resize(ctx: Context, group: GroupEntry):
    """A Resize of a requantize group (its output has parameters of its own)."""
    node = ctx.node(group.nodes[0])
    where = f"node {node.name!r}"
    pin, pout = ctx.activation(group.inputs[0], where), ctx.activation(group.outputs[0], where)
    kernel = _kernel(node, pin, pout)
    if ctx.requant != "fp32" or not kernel.linear:
        return kernel
    inner = floatops.float_kernel(ctx, [node], [node.output[0]])
    return Float32ResizeKernel(inner, tuple(list(node.input).index(f) for f in inner.feeds), (pin, pout))


def resize_move(ctx: Context, node: onnx.NodeProto, params: QuantParams) -> ResizeKernel:
    """A nearest Resize outside any group: a pass-through that moves codes at its input's scale."""
    return _kernel(node, params, params)


def _kernel(node: onnx.NodeProto, pin: QuantParams, pout: QuantParams) -> ResizeKernel:
    where = f"node {node.name!r}"
    mode = text_attr(node, "mode", "nearest")
    coord = text_attr(node, "coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear"):
        raise NoKernel(f"{where}: Resize mode {mode!r}")
    if coord not in MODES:
        raise NoKernel(f"{where}: coordinate_transformation_mode {coord!r}")
    if attr(node, "antialias", 0):
        raise NoKernel(f"{where}: antialias")
    if text_attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        raise NoKernel(f"{where}: keep_aspect_ratio_policy")
    if mode == "linear" and attr(node, "exclude_outside", 0):
        raise NoKernel(f"{where}: exclude_outside")
    (s_x, zp_x), (s_y, zp_y) = scalar(pin), scalar(pout)
    axes = attr(node, "axes")
    same = pin == pout
    return ResizeKernel(node, mode == "linear", coord, text_attr(node, "nearest_mode", "round_prefer_floor"),
                        tuple(axes) if axes is not None else None, (zp_x, zp_y), s_x / s_y, same,
                        span(pin.dtype, zp_x), pout.dtype)
