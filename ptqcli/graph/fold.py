"""Fold per-channel affine operators into the convolution before them.

ONNX Runtime's basic optimizations fold BatchNormalization and a bias Add into a Conv, but not
into a ConvTranspose (as in the DB head of PP-OCR detectors).  This pass handles both operators:

- ``Conv|ConvTranspose -> Add(c)`` with ``c`` one value per output channel: ``c`` joins the bias;
- ``Conv|ConvTranspose -> BatchNormalization``: with ``s = gamma / sqrt(var + eps)``, the
  weights of output channel ``k`` are scaled by ``s[k]`` and the bias becomes
  ``(b - mean) * s + beta`` (Ioffe & Szegedy 2015, inference form).

A folded operator must be the only consumer of the convolution's output, so nothing else sees
the intermediate value.  Rewrites repeat until none applies.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ptqcli.graph.index import attr

_CONV = {"Conv", "ConvTranspose"}


def _scale_channels(op_type: str, group: int, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Multiply output channel ``k`` of the weight by ``s[k]``."""
    if op_type == "Conv":  # [C_out, C_in / group, ...]
        return w * s.reshape(-1, *([1] * (w.ndim - 1)))
    # ConvTranspose [C_in, C_out / group, ...]: output channel g * (C_out / group) + k
    c_in, per_group = w.shape[0], w.shape[1]
    view = w.reshape(group, c_in // group, per_group, *w.shape[2:])
    return (view * s.reshape(group, 1, per_group, *([1] * (w.ndim - 2)))).reshape(w.shape)


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as a vector of ``channels`` if it broadcasts as ``[1, C, 1, ...]`` over an output
    of ``rank`` dimensions, else None."""
    shape = (1,) * (rank - value.ndim) + value.shape
    if len(shape) != rank or shape[1] != channels or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return value.reshape(channels).astype(np.float32)


def _affine(nxt: onnx.NodeProto, out: str, inits: dict, channels: int, rank: int):
    """``(scale, shift)`` per channel if ``nxt`` computes ``out * scale + shift``, else None."""
    def const(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    if nxt.op_type == "Add" and len(nxt.input) == 2:
        other = nxt.input[1] if nxt.input[0] == out else nxt.input[0]
        c = const(other)
        shift = _per_channel(c, channels, rank) if c is not None else None
        return None if shift is None else (np.ones(channels, np.float32), shift)
    if nxt.op_type == "BatchNormalization" and nxt.input[0] == out and len(nxt.output) == 1:
        values = [const(n) for n in nxt.input[1:5]]
        if any(v is None or v.shape != (channels,) for v in values):
            return None
        gamma, beta, mean, var = (v.astype(np.float64) for v in values)
        s = gamma / np.sqrt(var + attr(nxt, "epsilon", 1e-5))
        return s.astype(np.float32), (beta - mean * s).astype(np.float32)
    return None


def fold(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with per-channel Add and BatchNormalization folded into convolutions (in place)."""
    while _fold_once(model):
        pass
    return model


def _fold_once(model: onnx.ModelProto) -> bool:
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    names = set(inits) | {o for n in graph.node for o in n.output}
    for conv in graph.node:
        if conv.op_type not in _CONV or len(conv.input) < 2 or conv.input[1] not in inits:
            continue
        out = conv.output[0]
        users = consumers.get(out, [])
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        if len(users) != 1 or out in graph_outputs or (has_bias and conv.input[2] not in inits):
            continue
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float32)
        group = attr(conv, "group", 1)
        channels = w.shape[0] if conv.op_type == "Conv" else w.shape[1] * group
        affine = _affine(users[0], out, inits, channels, w.ndim)
        if affine is None:
            continue
        scale, shift = affine
        b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float32) if has_bias else np.zeros(channels, np.float32)
        w_name, b_name = _fresh(names, conv.name + "_weight_folded"), _fresh(names, conv.name + "_bias_folded")
        graph.initializer.extend([numpy_helper.from_array(_scale_channels(conv.op_type, group, w, scale), w_name),
                                  numpy_helper.from_array((b * scale + shift).astype(np.float32), b_name)])
        displaced = [n for n in list(conv.input[1:]) + list(users[0].input) if n in inits]
        data = conv.input[0]
        del conv.input[:]
        conv.input.extend([data, w_name, b_name])
        conv.output[0] = users[0].output[0]
        graph.node.remove(users[0])
        _drop_unused(graph, displaced)
        return True
    return False


def _fresh(names: set[str], base: str) -> str:
    name, k = base, 1
    while name in names:
        name, k = f"{base}_{k}", k + 1
    names.add(name)
    return name


def _referenced(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node reads, subgraphs (If, Loop, Scan bodies) included."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for a in node.attribute:
            for sub in list(a.graphs) + ([a.g] if a.HasField("g") else []):
                names |= _referenced(sub)
    return names


def _drop_unused(graph: onnx.GraphProto, candidates: list[str]) -> None:
    """Remove the initializers in ``candidates`` that nothing reads any more."""
    unused = set(candidates) - _referenced(graph)
    keep = [t for t in graph.initializer if t.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(keep)
