"""Conv and ConvTranspose kernels on integer codes (the arithmetic: ``ptqcli.sim.compute``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptqcli.graph import attr, text_attr
from ptqcli.quantize.scale_table import GroupEntry
from ptqcli.sim import window
from ptqcli.sim.base import Context, Log, NoKernel, Requant, scalar
from ptqcli.sim.compute import bias_codes, epilogue, raw_codes, weight_codes
from ptqcli.sim.fixed import accumulator_dtype, span
from ptqcli.sim.pairs import ConvPairs, conv_pairs


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
    w, wp = weight_codes(ctx, group.weight)
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
    bias = bias_codes(ctx, group, acc_scale)
    total = -zp_x * w.reshape(cout, -1).sum(axis=1) + (0 if bias is None else bias.reshape(-1))
    epi = epilogue(ctx, group, acc_bound=acc_bound, factors=(s_x, s_w), shape=shape,
                    bias=total.reshape(shape) if np.any(total) else None)
    weight = w.reshape(g, cout // g, -1).astype(dtype)
    pairs = conv_pairs(node, raw_codes(w, wp), g, x, node.name) if ctx.cpu == "x86-avx2" else None
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
    w, wp = weight_codes(ctx, group.weight)  # [C_in, C_out/g, *k]
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
    bias = bias_codes(ctx, group, acc_scale)
    epi = epilogue(ctx, group, acc_bound=acc_bound, factors=(s_x, s_w), shape=shape,
                    bias=None if bias is None else bias.reshape(shape))
    weight = w.reshape(g, cin // g, cout_g * int(np.prod(kernel))).transpose(0, 2, 1).astype(dtype)
    return ConvTransposeKernel(node, np.ascontiguousarray(weight), kernel, cout, zp_x, dtype, epi)
