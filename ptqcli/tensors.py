"""Which activation tensors are quantized, and which of them must share a scale.

Given the groups that run in integers, the quantized activations are their inputs and outputs.
Walking the graph backwards, a pass-through operator or a Concat whose output is quantized pulls
its inputs into the output's *scale group* (union-find), so that integer codes flow through it
unchanged.  A scale group's range comes from the merged histograms of its *sources*: members
that are not mere pass-through copies of another member.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptqcli.graph import GraphIndex
from ptqcli.plan import Group, Structure


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


def scale_groups(index: GraphIndex, structure: Structure, enabled: set[str],
                 float_nodes: set[str] = frozenset()) -> ScaleGroups:
    """Scale groups for the groups whose anchors are in ``enabled``; nodes in ``float_nodes``
    (excluded pass-through or Concat nodes) do not join scales."""
    order = {n.name: i for i, n in enumerate(index.nodes)}
    needed: set[str] = set()
    for group in structure.groups:
        if group.anchor in enabled:
            needed.update(group.inputs)
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
    groups = scale_groups(index, structure, {g.anchor for g in structure.groups})
    return tuple(t for r in groups.sources.values() for t in r)


def group_tensors(group: Group) -> tuple[str, ...]:
    return group.inputs + group.outputs
