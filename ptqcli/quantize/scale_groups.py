"""Which activation tensors are quantized, and which of them must share a scale.

Given the groups that run in integers, the quantized activations are their inputs and outputs.
Walking the graph backwards, a pass-through operator or a Concat whose output is quantized pulls
its inputs into the output's *scale group* (union-find), so that integer codes flow through it
unchanged.  A scale group's range comes from the merged histograms of its *sources*: members
that are not mere pass-through copies of another member.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptqcli.graph import GraphIndex, ops
from ptqcli.quantize.plan import Group, Structure


@dataclass(frozen=True)
class ScaleGroups:
    """``root[t]``: the representative of tensor ``t``'s scale group (every quantized activation
    is a key); ``sources[r]``: the tensors whose histograms make up group ``r``'s range;
    ``consts[r]``: initializers that share group ``r``'s scale (constant inputs of a Concat)."""

    root: dict[str, str]
    sources: dict[str, tuple[str, ...]]
    consts: dict[str, tuple[str, ...]]

    def members(self, rep: str) -> tuple[str, ...]:
        return tuple(t for t, r in self.root.items() if r == rep)


def integer_groups(index: GraphIndex, structure: Structure, enabled: set[str],
                   float_nodes: set[str] = frozenset()) -> tuple[set[str], set[str]]:
    """Drop quantization points that only feed float: returns ``(enabled, float_outputs)``.

    A quantized tensor pays a rounding error; it is worth it only where an integer operation
    reads it.  Walking the groups from the outputs backwards, a table, elementwise or pooling
    group none of whose outputs reaches an integer group (directly or through pass-through and
    Concat nodes) runs in float instead, and a matrix product in that position keeps its
    integer inputs but writes a float output (int32 accumulator times scale, as a final
    classifier does) where its integer kernel can (``ops.FLOAT_OUTPUT``); a Conv keeps its
    quantized output, without which runtimes do not run it in integers at all.  This keeps,
    for example, the statistics of a LayerNorm written out as ReduceSum / Mul / Sub in float,
    where quantizing E[x^2] and E[x]^2 before their difference would destroy the variance."""
    enabled = set(enabled)
    by_anchor = {g.anchor: g for g in structure.groups}
    movers = (set(structure.passthrough) | set(structure.concats)) - set(float_nodes)
    float_outputs: set[str] = set()

    def reaches_integer(tensor: str, seen: set[str]) -> bool:
        for consumer in index.consumers.get(tensor, []):
            anchor = structure.group_of.get(consumer.name)
            if anchor in enabled and tensor in by_anchor[anchor].inputs:
                return True
            if consumer.name in movers and consumer.name not in seen:
                seen.add(consumer.name)
                if any(reaches_integer(o, seen) for o in consumer.output if o):
                    return True
        return False

    for group in reversed(structure.groups):
        if group.anchor not in enabled or any(reaches_integer(t, set()) for t in group.outputs):
            continue
        if group.kind == "compute":
            if index.node_by_name[group.anchor].op_type in ops.FLOAT_OUTPUT:
                float_outputs.add(group.anchor)
        else:
            enabled.discard(group.anchor)
    return enabled, float_outputs


def scale_groups(index: GraphIndex, structure: Structure, enabled: set[str],
                 float_nodes: set[str] = frozenset(), float_outputs: set[str] = frozenset()) -> ScaleGroups:
    """Scale groups for the groups whose anchors are in ``enabled`` (those in ``float_outputs``
    quantize their inputs only); nodes in ``float_nodes`` (excluded pass-through or Concat
    nodes) do not join scales."""
    order = {n.name: i for i, n in enumerate(index.nodes)}
    needed: set[str] = set()
    for group in structure.groups:
        if group.anchor in enabled:
            needed.update(group.inputs)
            if group.anchor not in float_outputs:
                needed.update(group.outputs)
    parent: dict[str, str] = {t: t for t in needed}

    def find(t: str) -> str:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    def join(a: str, b: str) -> None:
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb, key=lambda t: _position(index, order, t))] = min(
                ra, rb, key=lambda t: _position(index, order, t))

    copies: set[str] = set()
    concat_consts: dict[str, list[str]] = {}
    movers = [index.node_by_name[n] for n in structure.passthrough + structure.concats
              if n not in float_nodes]
    for node in sorted(movers, key=lambda n: order[n.name], reverse=True):
        outs = [o for o in node.output if o in needed]
        if not outs:
            continue
        if node.op_type == "Concat":
            for name in node.input:
                if name in index.initializers:
                    concat_consts.setdefault(outs[0], []).append(name)
                elif index.is_float(name):
                    needed.add(name)
                    join(outs[0], name)
            activations = [n for n in node.input if n not in index.initializers]
            if activations and all(index.is_float(n) for n in activations):
                copies.add(outs[0])  # its values are its inputs' values: nothing new to observe
        else:
            data = node.input[0]
            needed.add(data)
            for out in outs:
                join(data, out)
                copies.add(out)
    root = {t: find(t) for t in sorted(needed, key=lambda t: _position(index, order, t))}
    sources: dict[str, list[str]] = {}
    for t, r in root.items():
        if t not in copies:
            sources.setdefault(r, []).append(t)
    consts = {}
    for out, names in concat_consts.items():
        consts.setdefault(root[out], []).extend(names)
    return ScaleGroups(root, {r: tuple(s) for r, s in sources.items()},
                       {r: tuple(dict.fromkeys(c)) for r, c in consts.items()})


def _position(index: GraphIndex, order: dict[str, int], tensor: str) -> tuple[int, str]:
    """Sort key: graph inputs first, then by producing node, then by name."""
    node = index.producer.get(tensor)
    return (-1 if node is None else order[node.name], tensor)


def observed_tensors(index: GraphIndex, structure: Structure) -> tuple[str, ...]:
    """Every tensor whose histogram any choice of options may need (all groups enabled)."""
    enabled, float_outputs = integer_groups(index, structure, {g.anchor for g in structure.groups})
    groups = scale_groups(index, structure, enabled, float_outputs=float_outputs)
    return tuple(t for r in groups.sources.values() for t in r)


def observation_plan(index: GraphIndex, structure: Structure) -> tuple[tuple[str, ...], dict[str, Group]]:
    """``(observed, derived)``: the tensors the observation pass measures, and the table outputs
    whose histograms follow from their input's instead (``derived[output] = lut group``).

    A table group is a fixed function of one observed tensor, so its output distribution is that
    function applied to the input's histogram: measuring it again in the runtime would cost a
    probe (and often a layout conversion) for nothing."""
    needed = observed_tensors(index, structure)
    measured = set(needed)
    derived = {}
    for group in structure.groups:
        out = group.outputs[0]
        if group.kind == "lut" and out in measured and group.inputs[0] in measured and len(group.outputs) == 1:
            derived[out] = group
    return tuple(t for t in needed if t not in derived), derived
