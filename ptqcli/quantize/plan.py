"""What to quantize: operator groups, the tensors they read and write as integers, shared scales.

The prepared graph is cut into *groups*, each one integer operation as hardware runs it:

- ``compute``: Conv / ConvTranspose / Gemm / MatMul with its weight, bias (a MatMul's bias is the
  following Add of a 1-D constant) and a fused Relu/Clip; only the final output is quantized;
- ``binary``: Add / Mul of two tensors (a constant tensor operand is quantized too), plus a
  fused Relu/Clip;
- ``lut``: a connected set of elementwise operators that is a function of a single input tensor
  (HardSwish, SiLU, GELU written as Erf, ...), evaluated from a table over the input codes;
- ``requantize``: pooling, linear Resize, ReduceMean, Softmax, LayerNormalization: input 0 and
  output.

Pass-through operators (Reshape, Transpose, MaxPool, Slice, nearest Resize, ...) give their output the scale of
their input, and a Concat gives one scale to its inputs and output: such tensors are joined into
one *scale group* (union-find) whose range comes from the merged histograms of its members.

The structure depends on the graph only; options (exclusions, int16) then switch groups to
float or 16 bits, so the observations of one pass serve every choice of options.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ptqcli.graph import GraphIndex, attr, ops, text_attr


@dataclass(frozen=True)
class Group:
    """One integer operation.  ``anchor`` is its first node; tensors are ONNX names."""

    anchor: str
    kind: str
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weight: str | None = None
    weight_axis: int | None = None
    bias: str | None = None
    consts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Structure:
    """The groups of a prepared graph, and the nodes that only move values."""

    groups: tuple[Group, ...]
    passthrough: tuple[str, ...]
    concats: tuple[str, ...]
    group_of: dict[str, str] = field(repr=False)  # node name -> anchor of its group


def _scalar_const(index: GraphIndex, name: str) -> bool:
    return name in index.initializers and int(np.prod(index.shape[name])) == 1


def _sole_consumer(index: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    users = index.consumers.get(tensor, [])
    if len(users) != 1 or tensor in index.output_names:
        return None
    return users[0]


def _fusable_after(index: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    """A Relu/Clip that alone consumes ``tensor`` (with constant bounds), or None."""
    node = _sole_consumer(index, tensor)
    if node is None or node.op_type not in ops.FUSABLE:
        return None
    if any(name and name not in index.initializers for name in node.input[1:]):
        return None
    return node


def _weight_axis(index: GraphIndex, node: onnx.NodeProto, weight: str) -> int | None:
    rank = len(index.shape[weight])
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1 if attr(node, "group", 1) == 1 else None
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    return rank - 1 if rank == 2 else None  # MatMul [K, N]: one scale per output column


def _output_channels(index: GraphIndex, node: onnx.NodeProto, weight: str) -> int:
    shape = index.shape[weight]
    if node.op_type == "Conv":
        return shape[0]
    if node.op_type == "ConvTranspose":
        return shape[1] * attr(node, "group", 1)
    if node.op_type == "Gemm":
        return shape[0] if attr(node, "transB", 0) else shape[1]
    return shape[-1]


def _is_bias(index: GraphIndex, name: str, channels: int | None) -> bool:
    """A float constant of ``channels`` values along its last axis (shape ``[1, ..., 1, C]``)."""
    if channels is None or name not in index.initializers or not index.is_float(name):
        return False
    shape = tuple(index.shape[name])
    return len(shape) >= 1 and shape[-1] == channels and all(d == 1 for d in shape[:-1])


def _compute_group(index: GraphIndex, node: onnx.NodeProto) -> Group:
    x_idx, w_idx, b_idx = ops.COMPUTE[node.op_type]
    names = [node.name]
    inputs = [node.input[x_idx]]
    weight = node.input[w_idx]
    axis = None
    if weight in index.initializers and index.is_float(weight):
        axis = _weight_axis(index, node, weight)
    else:
        inputs.append(weight)
        weight = None
    bias = None
    n_out = _output_channels(index, node, weight) if weight else None
    if b_idx is not None and len(node.input) > b_idx and node.input[b_idx]:
        candidate = node.input[b_idx]
        plain_gemm = node.op_type != "Gemm" or (attr(node, "alpha", 1.0) == 1.0 and attr(node, "beta", 1.0) == 1.0)
        if weight and plain_gemm and _is_bias(index, candidate, n_out):
            bias = candidate
    out = node.output[0]
    if node.op_type == "MatMul" and weight is not None and len(index.shape[weight]) == 2:
        add = _sole_consumer(index, out)
        if add is not None and add.op_type == "Add":
            other = add.input[1] if add.input[0] == out else add.input[0]
            if _is_bias(index, other, n_out):
                bias = other
                names.append(add.name)
                out = add.output[0]
    act = _fusable_after(index, out)
    if act is not None:
        names.append(act.name)
        out = act.output[0]
    return Group(node.name, "compute", tuple(names), tuple(inputs), (out,), weight, axis, bias)


def _binary_group(index: GraphIndex, node: onnx.NodeProto, taken: set[str]) -> Group:
    inputs = tuple(n for n in node.input if n not in index.initializers)
    consts = tuple(n for n in node.input if n in index.initializers)
    names = [node.name]
    out = node.output[0]
    act = _fusable_after(index, out)
    if act is not None and act.name not in taken:
        names.append(act.name)
        out = act.output[0]
    return Group(node.name, "binary", tuple(names), inputs, (out,), consts=consts)


def _elementwise_candidate(index: GraphIndex, node: onnx.NodeProto) -> bool:
    if node.op_type not in ops.ELEMENTWISE or len(node.output) != 1 or not index.is_float(node.output[0]):
        return False
    acts = [n for n in node.input if n and n not in index.initializers]
    consts = [n for n in node.input if n and n in index.initializers]
    return bool(acts) and all(index.is_float(a) for a in acts) and all(
        _scalar_const(index, c) for c in consts if index.is_float(c))


def _lut_groups(index: GraphIndex, candidates: list[onnx.NodeProto]) -> list[Group]:
    """Connected sets of elementwise candidates that are functions of one tensor, with one output.

    A candidate's *source* is the set of tensors it depends on through single-source candidates;
    candidates with a single source ``x`` that are linked by their own tensors form a set that
    reads only ``x``.  A set with more than one escaping output is split into single nodes."""
    by_name = {n.name: n for n in candidates}
    source: dict[str, frozenset[str]] = {}
    for node in candidates:  # graph order is topological
        deps: set[str] = set()
        for name in node.input:
            if not name or name in index.initializers:
                continue
            src = index.producer.get(name)
            inherited = src is not None and src.name in by_name and len(source[src.name]) == 1
            deps |= source[src.name] if inherited else {name}
        source[node.name] = frozenset(deps)
    parent = {n.name: n.name for n in candidates}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for node in candidates:
        if len(source[node.name]) != 1:
            continue
        for name in node.input:
            src = index.producer.get(name)
            if src is not None and src.name in by_name and source[src.name] == source[node.name]:
                parent[find(node.name)] = find(src.name)
    components: dict[str, list[onnx.NodeProto]] = {}
    for node in candidates:
        if len(source[node.name]) == 1:
            components.setdefault(find(node.name), []).append(node)
    groups = []
    for members in components.values():
        group = _as_lut(index, members)
        if group is not None:
            groups.append(group)
        else:
            groups.extend(g for g in (_as_lut(index, [m]) for m in members) if g is not None)
    return groups


def _as_lut(index: GraphIndex, members: list[onnx.NodeProto]) -> Group | None:
    names = {m.name for m in members}
    produced = {o for m in members for o in m.output}
    external = {i for m in members for i in m.input
                if i and i not in produced and i not in index.initializers}
    escaping = [o for o in produced if o in index.output_names or any(
        c.name not in names for c in index.consumers.get(o, []))]
    if len(external) != 1 or len(escaping) != 1:
        return None
    return Group(members[0].name, "lut", tuple(m.name for m in members), tuple(external), tuple(escaping))


def _requantize_group(index: GraphIndex, node: onnx.NodeProto) -> Group | None:
    data = node.input[0]
    if data in index.initializers or not index.is_float(data) or not index.is_float(node.output[0]):
        return None
    return Group(node.name, "requantize", (node.name,), (data,), (node.output[0],))


def _nearest_resize(node: onnx.NodeProto) -> bool:
    """A nearest-neighbour Resize: every output value is one of its input's values."""
    return node.op_type == "Resize" and text_attr(node, "mode", "nearest") == "nearest"


def _is_passthrough(index: GraphIndex, node: onnx.NodeProto) -> bool:
    if not (node.op_type in ops.PASS_THROUGH or _nearest_resize(node)) or not node.input \
            or node.input[0] in index.initializers:
        return False
    if not index.is_float(node.input[0]):
        return False
    if node.op_type == "Pad" and text_attr(node, "mode", "constant") == "constant":
        value = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if value is not None and (value not in index.initializers or np.any(index.array(value) != 0)):
            return False
    return True


def analyse(index: GraphIndex) -> Structure:
    """Cut the graph into groups (see module docstring); pure function of the graph."""
    taken: set[str] = set()
    groups: list[Group] = []

    def add(group: Group | None) -> None:
        if group is not None:
            groups.append(group)
            taken.update(group.nodes)

    for node in index.nodes:
        if node.op_type in ops.COMPUTE and index.is_float(node.output[0]) and index.is_float(node.input[0]):
            add(_compute_group(index, node))
    candidates = [n for n in index.nodes if n.name not in taken and _elementwise_candidate(index, n)]
    # A Relu/Clip right after a binary op fuses into it rather than becoming a table of its own.
    luts = _lut_groups(index, candidates)
    binaries = [n for n in index.nodes if n.name not in taken and n.op_type in ops.BINARY
                and index.is_float(n.output[0]) and not any(n.name in g.nodes for g in luts)]
    binary_outputs = {n.output[0] for n in binaries}
    for group in luts:
        fusable_only = len(group.nodes) == 1 and index.node_by_name[group.anchor].op_type in ops.FUSABLE
        if not (fusable_only and group.inputs[0] in binary_outputs and
                _fusable_after(index, group.inputs[0]) is not None):
            add(group)
    for node in binaries:
        add(_binary_group(index, node, taken))
    for node in index.nodes:
        if node.name not in taken and node.op_type in ops.REQUANTIZING and not _nearest_resize(node):
            add(_requantize_group(index, node))
    passthrough = tuple(n.name for n in index.nodes if n.name not in taken and _is_passthrough(index, n))
    concats = tuple(n.name for n in index.nodes if n.name not in taken and n.op_type in ops.CONCAT
                    and index.is_float(n.output[0]))
    order = {n.name: i for i, n in enumerate(index.nodes)}
    groups.sort(key=lambda g: order[g.anchor])
    group_of = {name: g.anchor for g in groups for name in g.nodes}
    return Structure(tuple(groups), passthrough, concats, group_of)
