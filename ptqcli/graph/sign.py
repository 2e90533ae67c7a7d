"""Tensors that cannot be negative, read off the graph (no run needed).

The observation pass does not reduce the minimum of such a tensor: every range this tool picks
contains zero, so for non-negative data an asymmetric range is ``[0, hi]`` and a symmetric one
``[-hi, hi]``, and the exact minimum decides nothing (one read of the tensor saved).
"""

from __future__ import annotations

import onnx

from ptqcli.graph.index import GraphIndex, attr, text_attr

#: Operators whose output is never negative, whatever their input.
NONNEGATIVE = {"Abs", "Exp", "HardSigmoid", "Relu", "Sigmoid", "Softmax", "Softplus"}

#: Operators each of whose output values is one of their data input's values, a maximum, minimum
#: or mean of them: a non-negative input gives a non-negative output.
KEEPS_SIGN = {
    "AveragePool", "DepthToSpace", "Expand", "Flatten", "Gather", "GlobalAveragePool", "GlobalMaxPool",
    "Identity", "MaxPool", "ReduceMax", "ReduceMean", "ReduceMin", "Reshape", "Slice", "SpaceToDepth",
    "Split", "Squeeze", "Tile", "Transpose", "Unsqueeze",
}


def clip_bounds(index: GraphIndex, node: onnx.NodeProto) -> tuple[float | None, float | None] | None:
    """The constant ``(min, max)`` of a Clip (None for an absent bound), or None when a bound is
    computed at run time.  Bounds are inputs from opset 11, attributes before."""
    named = [node.input[i] if len(node.input) > i else "" for i in (1, 2)]
    if any(n and n not in index.initializers for n in named):
        return None
    lo = float(index.array(named[0])) if named[0] else attr(node, "min")
    hi = float(index.array(named[1])) if named[1] else attr(node, "max")
    return lo, hi


def nonnegative(index: GraphIndex, tensor: str, _depth: int = 0) -> bool:
    """Whether every value of ``tensor`` is >= 0 (or NaN) for any input, by the operators that
    produce it; False when that cannot be read off the graph."""
    node = index.producer.get(tensor)
    if node is None or _depth > 64:
        return False
    op = node.op_type
    if op in NONNEGATIVE:
        return True
    if op == "Clip":
        bounds = clip_bounds(index, node)
        return bounds is not None and bounds[0] is not None and bounds[0] >= 0.0
    if op == "Concat":
        return all(nonnegative(index, t, _depth + 1) for t in node.input if t)
    if op == "Pad" and text_attr(node, "mode", "constant") == "constant":
        name = node.input[2] if len(node.input) > 2 else ""
        if name and name not in index.initializers:
            return False
        if (float(index.array(name)) if name else attr(node, "value", 0.0)) < 0.0:
            return False
        return nonnegative(index, node.input[0], _depth + 1)
    if op == "Resize" and text_attr(node, "mode", "nearest") not in ("nearest", "linear"):
        return False  # cubic interpolation overshoots
    if op in KEEPS_SIGN or op == "Resize":
        return nonnegative(index, node.input[0], _depth + 1)
    return False
