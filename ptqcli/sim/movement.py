"""Operators that only move or select values: they run on integer codes unchanged.

Each kernel takes the data codes first and the node's other inputs (shapes, indices, axes) as
plain values, and follows the ONNX operator of the same name.  The codes keep the scale and
zero point of the data input.  (MaxPool and the other maxima live in ``pool.py``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ptqcli.graph import attr, text_attr
from ptqcli.quantize.qparams import quantize
from ptqcli.sim.base import Context, Log, NoKernel


def _axes(node: onnx.NodeProto, inputs: list, position: int) -> list[int] | None:
    """Axes from input ``position`` (newer opsets) or the ``axes`` attribute (older)."""
    if len(inputs) > position and inputs[position] is not None:
        return [int(a) for a in np.asarray(inputs[position]).reshape(-1)]
    value = attr(node, "axes")
    return None if value is None else [int(a) for a in value]


@dataclass(frozen=True)
class Move:
    """A data-movement kernel: ``fn(node, codes, inputs)`` returns the output codes."""

    node: onnx.NodeProto
    fn: object

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        out = self.fn(self.node, inputs)
        return list(out) if isinstance(out, (list, tuple)) else [out]


def identity(node, inputs):
    return inputs[0]


def reshape(node, inputs):
    x, shape = inputs[0], [int(s) for s in np.asarray(inputs[1]).reshape(-1)]
    if not attr(node, "allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def transpose(node, inputs):
    perm = attr(node, "perm")
    return np.transpose(inputs[0], perm)


def flatten(node, inputs):
    x = inputs[0]
    axis = int(attr(node, "axis", 1)) % (x.ndim + 1) if x.ndim else 0
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def squeeze(node, inputs):
    x = inputs[0]
    axes = _axes(node, inputs, 1)
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(a % x.ndim for a in axes))


def unsqueeze(node, inputs):
    x = inputs[0]
    axes = _axes(node, inputs, 1)
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(a % rank for a in axes)))


def gather(node, inputs):
    x, idx = inputs[0], np.asarray(inputs[1]).astype(np.int64)
    axis = int(attr(node, "axis", 0)) % x.ndim
    return np.take(x, np.where(idx < 0, idx + x.shape[axis], idx), axis=axis)


def slice_(node, inputs):
    x = inputs[0]
    if len(inputs) > 1:
        starts, ends = (np.asarray(v).reshape(-1) for v in inputs[1:3])
        axes = np.asarray(inputs[3]).reshape(-1) if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
        steps = np.asarray(inputs[4]).reshape(-1) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    else:  # opset < 10 attributes
        starts, ends = attr(node, "starts"), attr(node, "ends")
        axes, steps = attr(node, "axes", range(len(starts))), [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis, dim, step = int(axis) % x.ndim, x.shape[int(axis) % x.ndim], int(step)
        start, end = int(start), int(end)
        if step > 0:  # ONNX clamps to [0, dim] for positive steps, [-1, dim - 1] for negative
            start = min(max(start + dim if start < 0 else start, 0), dim)
            end = min(max(end + dim if end < 0 else end, 0), dim)
        else:
            start = min(max(start + dim if start < 0 else start, -1), dim - 1)
            end = min(max(end + dim if end < 0 else end, -1), dim - 1)
            end = None if end < 0 else end
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


def split(node, inputs):
    x = inputs[0]
    axis = int(attr(node, "axis", 0)) % x.ndim
    sizes = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attr(node, "split")
    if sizes is None:
        parts = int(attr(node, "num_outputs", len(node.output)))
        step = -(-x.shape[axis] // parts)
        sizes = [min(step, x.shape[axis] - i * step) for i in range(parts)]
    cuts = np.cumsum([int(s) for s in np.asarray(sizes).reshape(-1)])[:-1]
    return np.split(x, cuts, axis=axis)


def expand(node, inputs):
    x, shape = inputs[0], [int(s) for s in np.asarray(inputs[1]).reshape(-1)]
    return np.array(np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(shape))))


def tile(node, inputs):
    return np.tile(inputs[0], [int(r) for r in np.asarray(inputs[1]).reshape(-1)])


def depth_to_space(node, inputs):
    x = inputs[0]
    b = int(attr(node, "blocksize"))
    n, c, h, w = x.shape
    if text_attr(node, "mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


def space_to_depth(node, inputs):
    x = inputs[0]
    b = int(attr(node, "blocksize"))
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


@dataclass(frozen=True)
class PadKernel:
    """Pad on codes; constant padding writes the code of the constant (the zero point for 0)."""

    node: onnx.NodeProto
    fill: int
    mode: str

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        x = inputs[0]
        pads = [int(p) for p in np.asarray(inputs[1] if len(inputs) > 1 else attr(self.node, "pads")).reshape(-1)]
        axes = _axes(self.node, inputs, 3) or list(range(x.ndim))
        widths = [(0, 0)] * x.ndim
        for i, a in enumerate(axes):
            widths[a % x.ndim] = (pads[i], pads[i + len(axes)])
        crop = tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(widths))
        x = x[crop]  # negative pads remove elements
        widths = [(max(b, 0), max(e, 0)) for b, e in widths]
        if self.mode == "constant":
            return [np.pad(x, widths, constant_values=self.fill)]
        return [np.pad(x, widths, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[self.mode])]


def pad(ctx: Context, node: onnx.NodeProto, params) -> PadKernel:
    mode = text_attr(node, "mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise NoKernel(f"node {node.name!r}: Pad mode {mode!r}")
    fill = 0.0
    if len(node.input) > 2 and node.input[2]:
        value = ctx.const(node.input[2])
        if value is None:
            raise NoKernel(f"node {node.name!r}: pad value computed at run time")
        fill = float(np.asarray(value).reshape(-1)[0])
    else:
        fill = float(attr(node, "value", 0.0))
    return PadKernel(node, int(quantize(np.float32(fill), params)), mode)


@dataclass(frozen=True)
class ConcatKernel:
    """Concat of codes that share the output's parameters (``requant[i]``: rescaling for an
    input whose parameters differ, else None)."""

    axis: int
    requant: tuple

    def run(self, inputs: list[np.ndarray], log: Log) -> list[np.ndarray]:
        parts = [x if r is None else r(x) for x, r in zip(inputs, self.requant)]
        return [np.concatenate(parts, axis=self.axis)]


#: Data-movement functions by ONNX operator (MaxPool, GlobalMaxPool, ReduceMax/Min, Pad and
#: Concat have kernels of their own).
FUNCTIONS = {
    "DepthToSpace": depth_to_space, "Expand": expand, "Flatten": flatten, "Gather": gather,
    "Identity": identity, "Reshape": reshape, "Slice": slice_, "SpaceToDepth": space_to_depth,
    "Split": split, "Squeeze": squeeze, "Tile": tile, "Transpose": transpose, "Unsqueeze": unsqueeze,
}
