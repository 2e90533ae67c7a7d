"""Which kernel runs which table group or node: literal registries.

A group of the scale table is built by ``GROUPS[kind]`` and, within a kind, by its anchor
operator; a node that only moves codes by ``MOVES`` (a data-movement function) or
``MOVE_KERNELS`` (a builder).  Anything not listed runs in float and is reported as a fallback.
"""

from __future__ import annotations

from ptqcli.sim import conv, elementwise, matmul, movement, normalize, pool, resize

#: compute groups by anchor operator: builder(ctx, group) -> kernel
COMPUTE = {
    "Conv": conv.conv,
    "ConvTranspose": conv.conv_transpose,
    "Gemm": matmul.matmul,
    "MatMul": matmul.matmul,
}

#: binary groups by anchor operator
BINARY = {
    "Add": elementwise.add,
    "Mul": elementwise.mul,
}

#: requantize groups by operator
REQUANTIZE = {
    "AveragePool": pool.average_pool,
    "GlobalAveragePool": pool.global_average_pool,
    "LayerNormalization": normalize.layer_norm,
    "ReduceMean": pool.reduce_mean,
    "Resize": resize.resize,
    "Softmax": normalize.softmax,
}

#: group kinds; ``lut`` groups are tables built from the group's float nodes
KINDS = {"compute": COMPUTE, "binary": BINARY, "requantize": REQUANTIZE, "lut": None}

#: data movement on codes: function(node, inputs) -> codes
MOVES = {
    "DepthToSpace": movement.depth_to_space,
    "Expand": movement.expand,
    "Flatten": movement.flatten,
    "Gather": movement.gather,
    "Identity": movement.identity,
    "Reshape": movement.reshape,
    "Slice": movement.slice_,
    "SpaceToDepth": movement.space_to_depth,
    "Split": movement.split,
    "Squeeze": movement.squeeze,
    "Tile": movement.tile,
    "Transpose": movement.transpose,
    "Unsqueeze": movement.unsqueeze,
}

#: data movement with a builder of its own: builder(ctx, node, data params) -> kernel
MOVE_KERNELS = {
    "GlobalMaxPool": pool.global_max_pool,
    "MaxPool": pool.max_pool,
    "Pad": movement.pad,
    "ReduceMax": pool.reduce_max,
    "ReduceMin": pool.reduce_min,
    "Resize": resize.resize_move,  # nearest only: a linear Resize is a requantize group
}
