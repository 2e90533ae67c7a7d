"""A weighted layer as the rounding algorithms see it: a grouped matrix product on rows.

Conv, ConvTranspose, Gemm and MatMul all compute, at each output position, ``y = W x + b`` with
``x`` a row of the input (a patch for a convolution): ``calibrators.adaround`` takes weights
``[G, O, K]``, input rows ``[G, R, K]`` and output rows ``[G, R, O]`` (``G`` convolution groups).
:class:`LayerView` maps a layer's weight to and from that form and cuts rows out of its input and
output tensors at chosen positions (the patch layout follows ONNX Conv: channel, then kernel taps
in row-major order, exactly the order of ``W[m].reshape(-1)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ptqcli.graph import GraphIndex, activation_bounds, attr, text_attr
from ptqcli.quantize.qparams import QuantParams
from ptqcli.quantize.scale_table import GroupEntry
from ptqcli.sim import window


class Unsupported(Exception):
    """The layer's form is one the rounding algorithms do not handle; the message says why."""


@dataclass(frozen=True)
class LayerView:
    """One compute group.  ``pre``: the float tensor before the fused activation, whose bounds
    are ``clamp``; ``shape``: the weight's shape; ``groups``: ``G``."""

    anchor: str
    op_type: str
    node: onnx.NodeProto
    weight: str
    bias: str | None
    input: str
    pre: str
    clamp: tuple[float, float]
    shape: tuple[int, ...]
    groups: int

    # --- the weight ------------------------------------------------------------------------
    def view(self, w: np.ndarray) -> np.ndarray:
        """The weight (or codes) ``[G, O, K]``."""
        if self.op_type == "Conv":
            return w.reshape(self.groups, self.shape[0] // self.groups, -1)
        if self.op_type == "ConvTranspose":  # [C, O, *k] -> [O, C * taps]
            return np.moveaxis(w, 1, 0).reshape(1, self.shape[1], -1)
        if self.op_type == "Gemm" and attr(self.node, "transB", 0):
            return w[None]
        return w.T[None]  # Gemm [K, N], MatMul [K, N]

    def unview(self, v: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`view`."""
        if self.op_type == "Conv":
            return v.reshape(self.shape)
        if self.op_type == "ConvTranspose":
            moved = (self.shape[1], self.shape[0]) + tuple(self.shape[2:])
            return np.moveaxis(v.reshape(moved), 0, 1)
        if self.op_type == "Gemm" and attr(self.node, "transB", 0):
            return v[0]
        return v[0].T

    @property
    def outputs(self) -> int:
        """Output channels."""
        if self.op_type == "Conv" or (self.op_type == "Gemm" and attr(self.node, "transB", 0)):
            return self.shape[0]
        return self.shape[1]

    def scale(self, p: QuantParams) -> np.ndarray:
        """The weight scale ``[G, O, 1]`` (one per output channel, or one for all)."""
        s = np.broadcast_to(np.asarray(p.scale, dtype=np.float32), (self.outputs,))
        return s.reshape(self.groups, -1, 1).copy()

    def per_channel(self, values: np.ndarray) -> np.ndarray:
        """A vector of the ``O`` output channels as ``[G, 1, O/G]``."""
        return np.asarray(values, dtype=np.float32).reshape(self.groups, 1, -1)

    # --- rows -----------------------------------------------------------------------------
    def positions(self, out_shape: tuple[int, ...]) -> int:
        """Output positions (rows) per sample of an output of ``out_shape``."""
        if self.op_type in ("Conv", "ConvTranspose"):
            return int(np.prod(out_shape[2:]))
        if self.op_type == "Gemm":
            return 1
        return int(np.prod(out_shape[1:-1]))

    def targets(self, pre: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Output rows ``[G, R, O/G]`` of the pre-activation tensor at flat positions ``rows``
        (sample-major) of this batch."""
        if self.op_type in ("Conv", "ConvTranspose"):
            flat = pre.reshape(pre.shape[0], pre.shape[1], -1)
            per = flat.shape[2]
            picked = flat[rows // per, :, rows % per]  # [R, O]
        else:
            picked = pre.reshape(-1, pre.shape[-1])[rows]
        return np.ascontiguousarray(picked.reshape(len(rows), self.groups, -1).transpose(1, 0, 2), dtype=np.float32)

    def rows(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Input rows ``[G, R, K]`` at flat output positions ``rows`` of this batch."""
        if self.op_type == "Conv":
            picked = self._conv_rows(x, rows)
        elif self.op_type == "ConvTranspose":
            picked = self._transpose_rows(x, rows)
        elif self.op_type == "Gemm":
            picked = (x.T if attr(self.node, "transA", 0) else x)[rows]
        else:
            picked = x.reshape(-1, x.shape[-1])[rows]
        return np.ascontiguousarray(picked.reshape(len(rows), self.groups, -1).transpose(1, 0, 2), dtype=np.float32)

    def mean_row(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """The sum over every output position of this batch of the input rows ``[G, K]`` (float64),
        and the number of positions: what bias correction needs for ``E[x]``."""
        if self.op_type == "Conv":
            return self._conv_row_sum(x)
        if self.op_type in ("Gemm", "MatMul"):
            flat = (x.T if attr(self.node, "transA", 0) else x) if self.op_type == "Gemm" else x.reshape(-1, x.shape[-1])
            return flat.astype(np.float64).sum(axis=0).reshape(self.groups, -1), flat.shape[0]
        total, count = None, 0
        per = self.positions(self._out_shape(x))
        for start in range(0, x.shape[0] * per, 4096):
            part = self.rows(x, np.arange(start, min(start + 4096, x.shape[0] * per)))
            s = part.astype(np.float64).sum(axis=1)
            total = s if total is None else total + s
            count += part.shape[1]
        return total, count

    def _geometry(self, spatial: tuple[int, ...]) -> window.Geometry:
        return window.geometry(self.node, spatial, tuple(self.shape[2:]))

    def _conv_rows(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        spatial = x.shape[2:]
        geo = self._geometry(spatial)
        out = geo.out_shape(spatial)
        padded = window.pad(x, geo, 0.0)
        n, rest = rows // int(np.prod(out)), rows % int(np.prod(out))
        where = np.stack(np.unravel_index(rest, out), axis=1) * np.asarray(geo.strides)  # [R, d]
        taps = np.stack(np.unravel_index(np.arange(int(np.prod(geo.kernel))), geo.kernel), axis=1) \
            * np.asarray(geo.dilations)  # [T, d]
        coords = where[:, None, :] + taps[None, :, :]  # [R, T, d]
        index = (n[:, None, None], np.arange(x.shape[1])[None, :, None]) + tuple(
            coords[:, None, :, i] for i in range(len(spatial)))
        return padded[index].reshape(len(rows), -1)  # [R, C * T]: channel, then taps

    def _conv_row_sum(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Sum of every patch: per kernel tap, one strided slice of the padded input summed."""
        spatial = x.shape[2:]
        geo = self._geometry(spatial)
        padded = window.pad(x.astype(np.float64), geo, 0.0)
        sums = np.stack([t.sum(axis=tuple(i for i in range(t.ndim) if i != 1)) for t in window.taps(padded, geo)],
                        axis=1)  # [C, T]
        count = x.shape[0] * int(np.prod(geo.out_shape(spatial)))
        return sums.reshape(self.groups, -1), count

    def _out_shape(self, x: np.ndarray) -> tuple[int, ...]:
        spatial = x.shape[2:]
        strides = attr(self.node, "strides", [1] * len(spatial))
        dil = attr(self.node, "dilations", [1] * len(spatial))
        outpad = attr(self.node, "output_padding", [0] * len(spatial))
        pads = list(attr(self.node, "pads", [0] * (2 * len(spatial))))
        k = self.shape[2:]
        full = [s * (i - 1) + op + (kk - 1) * d + 1 for s, i, op, kk, d in zip(strides, spatial, outpad, k, dil)]
        return (x.shape[0], self.shape[1]) + tuple(f - b - e for f, b, e in zip(full, pads[:len(k)], pads[len(k):]))

    def _transpose_rows(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """ConvTranspose: output ``y`` (per axis) receives input ``i`` through tap ``t`` where
        ``y + begin = i * stride + t * dilation``; the patch holds zeros for taps that no input
        reaches."""
        spatial = x.shape[2:]
        nd = len(spatial)
        strides = np.asarray(attr(self.node, "strides", [1] * nd))
        dil = np.asarray(attr(self.node, "dilations", [1] * nd))
        begin = np.asarray(list(attr(self.node, "pads", [0] * (2 * nd)))[:nd])
        out = self._out_shape(x)[2:]
        kernel = tuple(self.shape[2:])
        n, rest = rows // int(np.prod(out)), rows % int(np.prod(out))
        where = np.stack(np.unravel_index(rest, out), axis=1) + begin  # [R, d]
        taps = np.stack(np.unravel_index(np.arange(int(np.prod(kernel))), kernel), axis=1) * dil  # [T, d]
        shifted = where[:, None, :] - taps[None, :, :]  # [R, T, d]
        src = shifted // strides
        valid = np.all((shifted % strides == 0) & (src >= 0) & (src < np.asarray(spatial)), axis=2)  # [R, T]
        src = np.where(valid[:, :, None], src, 0)
        index = (n[:, None, None], np.arange(x.shape[1])[None, :, None]) + tuple(src[:, None, :, i] for i in range(nd))
        return (x[index] * valid[:, None, :]).reshape(len(rows), -1)


def _clamp(index: GraphIndex, nodes: list[onnx.NodeProto]) -> tuple[float, float]:
    lo, hi = -np.inf, np.inf
    for node in nodes:
        a, b = activation_bounds(index, node)
        lo, hi = max(lo, a), min(hi, b)
    return lo, hi


def view(index: GraphIndex, group: GroupEntry) -> LayerView:
    """The :class:`LayerView` of a compute group with a constant weight; :class:`Unsupported`
    for a form the rounding algorithms do not handle (the message says which)."""
    node = index.node_by_name[group.nodes[0]]
    if group.kind != "compute" or group.weight is None:
        raise Unsupported("no constant weight")
    shape = tuple(index.shape[group.weight])
    g = int(attr(node, "group", 1))
    if node.op_type == "ConvTranspose" and (g != 1 or attr(node, "output_shape") is not None
                                            or text_attr(node, "auto_pad", "NOTSET") != "NOTSET"):
        raise Unsupported("ConvTranspose with groups, output_shape or auto_pad")
    if node.op_type == "Gemm":
        if attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
            raise Unsupported("Gemm with alpha or beta other than 1")
        if len(node.input) > 2 and node.input[2] and node.input[2] != group.bias:
            raise Unsupported("Gemm whose C is not a per-channel bias")
    if node.op_type == "MatMul" and len(shape) != 2:
        raise Unsupported("MatMul with a batched weight")
    tail = [index.node_by_name[n] for n in group.nodes[1:]]
    acts = [n for n in tail if n.op_type in ("Relu", "Clip")]
    pre = acts[0].input[0] if acts else group.outputs[0]
    return LayerView(group.nodes[0], node.op_type, node, group.weight, group.bias, group.inputs[0], pre,
                     _clamp(index, acts), shape, g if node.op_type == "Conv" else 1)
