"""Cross-layer equalization (Nagel et al., 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", arXiv:1906.04721, section 4.1).

Two consecutive layers ``y = W2 f(W1 x + b1) + b2`` with ``f`` positively homogeneous per channel
(``f(s z) = s f(z)`` for ``s > 0``: Relu, identity, and what only moves, takes maxima or averages
of a channel: MaxPool, AveragePool, GlobalAveragePool, a Flatten of ``[N, C, 1, 1]``) compute the
same function after ``W1[i] /= s_i``, ``b1[i] /= s_i`` and ``W2[:, i] *= s_i``.  With ``r1_i`` the
range (largest magnitude) of output channel ``i`` of ``W1`` and ``r2_i`` that of input channel ``i``
of ``W2``, ``s_i = sqrt(r1_i / r2_i)`` makes both ``sqrt(r1_i r2_i)`` (eq. 11): each channel's
range matches across the pair, which is what a single scale per tensor needs (a channel far
narrower than the tensor's widest gets few codes).  A layer in two pairs (as ``W2`` of one and
``W1`` of the next) changes the other's ranges, so the pairs are equalized in turn until no
scale moves by more than ``TOLERANCE`` (the paper iterates the same way).

Pairs are Conv -> Conv (depthwise and grouped included) and Conv -> Gemm / MatMul, where the first
layer's output reaches only the second.  A Clip(0, c) between them (ReLU6) is not positively
homogeneous: DFQ replaces it with a Relu, which changes the float model, so such pairs are left
alone and counted.  Everything here works on weight arrays and the graph; the float model's
outputs are unchanged up to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from ptqcli.graph import GraphIndex, attr

#: Equalization stops when every scale of a round is within this factor of 1.
TOLERANCE = 1e-4
MAX_ROUNDS = 100
#: Operators between the two layers that commute with a positive per-channel scale.
HOMOGENEOUS = {"Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
_SECOND = {"Conv", "Gemm", "MatMul"}


@dataclass(frozen=True)
class Pair:
    """``first`` (a Conv) feeds ``second`` through ``between`` (operator types)."""

    first: str
    second: str
    between: tuple[str, ...]


@dataclass(frozen=True)
class Equalized:
    """The equalized initializers (name -> float32 array), the pairs, the rounds taken, the pairs
    left alone with the reason, and per output tensor of a pair's first layer the factors its
    channels were divided by (all rounds together)."""

    values: dict[str, np.ndarray]
    pairs: tuple[Pair, ...]
    rounds: int
    skipped: tuple[tuple[str, str], ...]
    scales: dict[str, np.ndarray]


def _own_weights(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """A constant float weight (and bias) that no other node reads."""
    names = [n for n in node.input[1:3] if n]
    return len(node.input) > 1 and all(n in index.initializers and index.is_float(n)
                                       and len(index.consumers.get(n, [])) == 1 for n in names)


def find_pairs(index: GraphIndex) -> tuple[list[Pair], list[tuple[str, str]]]:
    """The equalizable pairs of the graph, and the Conv outputs that stop at a Clip."""
    pairs, skipped = [], []
    for node in index.nodes:
        if node.op_type != "Conv" or not _own_weights(index, node):
            continue
        tensor, between = node.output[0], []
        while True:
            users = index.consumers.get(tensor, [])
            if len(users) != 1 or tensor in index.output_names:
                break
            user = users[0]
            # a matrix product reduces over channels only once they are the last axis (Flatten)
            second = user.op_type == "Conv" or (user.op_type in ("Gemm", "MatMul") and "Flatten" in between
                                                and not attr(user, "transA", 0))
            if user.op_type in _SECOND and second and user.input[0] == tensor and _own_weights(index, user):
                pairs.append(Pair(node.name, user.name, tuple(between)))
                break
            if user.op_type == "Clip":
                skipped.append((node.name, "a Clip (ReLU6) before the next layer is not positively homogeneous"))
                break
            flat = user.op_type == "Flatten" and all(d == 1 for d in index.shape.get(tensor, (0, 0, 0))[2:])
            if user.op_type not in HOMOGENEOUS and not flat:
                break
            between.append(user.op_type)
            tensor = user.output[0]
    return pairs, skipped


def _in_channels(op_type: str, node: onnx.NodeProto, w: np.ndarray) -> tuple[np.ndarray, Callable]:
    """Per input channel ``i`` of the second layer: the largest magnitude of its weights, and a
    function that scales those weights by a vector ``s`` (returns the new weight)."""
    if op_type == "Conv":
        g = int(attr(node, "group", 1))
        per = w.shape[1]  # input channels per group
        m = w.shape[0] // g
        grouped = w.reshape(g, m, per, -1)  # [g, M/g, C/g, taps]
        ranges = np.abs(grouped).max(axis=(1, 3)).reshape(-1)  # channel g * per + j

        def scale(s: np.ndarray) -> np.ndarray:
            return (grouped * s.reshape(g, 1, per, 1)).reshape(w.shape)
        return ranges, scale
    rows = w.T if op_type == "Gemm" and attr(node, "transB", 0) else w  # [K, N]
    ranges = np.abs(rows).max(axis=1)

    def scale_rows(s: np.ndarray) -> np.ndarray:
        out = rows * s[:, None]
        return out.T if op_type == "Gemm" and attr(node, "transB", 0) else out
    return ranges, scale_rows


def equalize(index: GraphIndex) -> Equalized:
    """Equalize every pair of ``index`` (module docstring); the graph itself is not changed."""
    pairs, skipped = find_pairs(index)
    values: dict[str, np.ndarray] = {}
    scales: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        return values[name] if name in values else index.array(name).astype(np.float64)

    rounds = 0
    for rounds in range(1, MAX_ROUNDS + 1):
        moved = 0.0
        for pair in pairs:
            first, second = index.node_by_name[pair.first], index.node_by_name[pair.second]
            w1 = get(first.input[1])
            r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1)  # per output channel of the Conv
            w2 = get(second.input[1])
            r2, scale_second = _in_channels(second.op_type, second, w2)
            if r2.shape != r1.shape:
                continue
            # s_i = sqrt(r1 / r2) (Nagel et al. 2019, eq. 11): both ranges become sqrt(r1 r2)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1.0)), 1.0)
            values[first.input[1]] = w1 / s.reshape((-1,) + (1,) * (w1.ndim - 1))
            if len(first.input) > 2 and first.input[2]:
                values[first.input[2]] = get(first.input[2]) / s
            values[second.input[1]] = scale_second(s)
            scales[first.output[0]] = scales.get(first.output[0], 1.0) * s
            moved = max(moved, float(np.abs(np.log(s)).max(initial=0.0)))
        if moved < TOLERANCE:
            break
    out = {k: v.astype(np.float32) for k, v in values.items()}
    return Equalized(out, tuple(pairs), rounds if pairs else 0, tuple(skipped), scales)


def equalized_model(prepared):
    """``prepared`` with its pairs equalized, and what was done.  The copy's fingerprint joins the
    original's and the values' digest, so observations made on it are never taken for the
    original's (``Prepared`` of ``ptqcli.graph``)."""
    import hashlib

    from ptqcli.quantize.stored import Stored, with_values

    done = equalize(prepared.index)
    digest = Stored(values=done.values).digest()
    fingerprint = "sha256:" + hashlib.sha256(f"{prepared.fingerprint} {digest}".encode()).hexdigest()
    return with_values(prepared, done.values, fingerprint), done


def restore(table, user, done: Equalized):
    """``table`` (built on the equalized copy) tied back to the user's model ``user``: its
    fingerprint, with the equalized values stored for export and the simulator."""
    from dataclasses import replace

    from ptqcli.quantize.stored import Stored

    stored = (table.stored or Stored()).merged(values=done.values)
    return replace(table, fingerprint=user.fingerprint, stored=stored if stored else None)
