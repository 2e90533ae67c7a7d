"""The scale table: the JSON contract between calibration, export and the simulator.

Versioned (``schema_version``), tied to one prepared model (``model.fingerprint``), validated
against ``schema/scale_table.schema.json`` on every load, and written atomically and
deterministically: sorted keys, one entry per line, floats in shortest round-trip form.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ptqcli import __version__
from ptqcli.errors import TableError
from ptqcli.files import staged, write_text_atomic
from ptqcli.quantize import stored as stored_io
from ptqcli.quantize.qparams import LIMITS, QuantParams
from ptqcli.quantize.stored import Stored

#: 2 adds a tensor's ``guard``; version 1 tables (which never have it) still load.
SCHEMA_VERSION = 2
FORMAT = "ptq-scale-table"


@dataclass(frozen=True)
class TensorEntry:
    """Quantization of one tensor.  ``role``: activation, weight, bias or constant.

    ``range``: the clipping range the parameters cover (activations; ``[-amax, amax]`` of the
    whole tensor for weights); ``observed``: the extremes seen; ``method``: how the range was
    chosen; ``scale_group``: the tensor whose scale this one shares (itself if none);
    ``guard``: set when the histogram's subsample missed extremes far beyond its body
    (``calibrators.guard``): ``"recounted"``, every value was counted in a second pass before
    the method chose, or ``"widened"``, the range was widened to the exact extremes it missed."""

    role: str
    params: QuantParams
    method: str | None = None
    range: tuple[float, float] | None = None
    observed: tuple[float, float] | None = None
    scale_group: str | None = None
    guard: str | None = None


@dataclass(frozen=True)
class NodeEntry:
    op_type: str
    precision: str
    group: str | None = None


@dataclass(frozen=True)
class GroupEntry:
    """One integer operation (see ``ptqcli.quantize.plan``)."""

    kind: str
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    precision: str
    weight: str | None = None
    bias: str | None = None
    consts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScaleTable:
    fingerprint: str
    model_file: str
    opset: int
    samples: int
    options: dict[str, Any]
    tensors: dict[str, TensorEntry]
    nodes: dict[str, NodeEntry]
    groups: dict[str, GroupEntry]
    tool_version: str = field(default=__version__)
    #: Learned codes and equalized values (``ptqcli.quantize.stored``), written to a sidecar file.
    stored: Stored | None = None

    def params(self, tensor: str) -> QuantParams | None:
        entry = self.tensors.get(tensor)
        return entry.params if entry is not None else None


def _float(x: float) -> float:
    if not math.isfinite(x):
        raise TableError(f"non-finite value {x!r} cannot be written to a scale table")
    return float(x)


def _tensor_json(e: TensorEntry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "role": e.role, "dtype": e.params.dtype, "axis": e.params.axis,
        "scale": [_float(s) for s in e.params.scale], "zero_point": [int(z) for z in e.params.zero_point],
    }
    if e.method is not None:
        out["method"] = e.method
    if e.range is not None:
        out["range"] = [_float(v) for v in e.range]
    if e.observed is not None:
        out["observed"] = [_float(v) for v in e.observed]
    if e.scale_group is not None:
        out["scale_group"] = e.scale_group
    if e.guard is not None:
        out["guard"] = e.guard
    return out


def _group_json(g: GroupEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": g.kind, "nodes": list(g.nodes), "inputs": list(g.inputs),
                           "outputs": list(g.outputs), "precision": g.precision}
    if g.weight is not None:
        out["weight"] = g.weight
    if g.bias is not None:
        out["bias"] = g.bias
    if g.consts:
        out["consts"] = list(g.consts)
    return out


def to_json(table: ScaleTable, sidecar: str | None = None) -> str:
    """Deterministic text: sorted keys, one tensor/node/group per line.  ``sidecar``: the file
    name the table's stored tensors are written to (required when it has any)."""
    def dump(value: Any) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)

    def section(name: str, entries: dict[str, Any], last: bool = False) -> str:
        lines = [f"  {dump(k)}: {dump(v)}" for k, v in sorted(entries.items())]
        body = ",\n".join(lines)
        return f' {dump(name)}: {{\n{body}\n }}' + ("" if last else ",")

    head = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "ptq", "version": table.tool_version},
        "model": {"fingerprint": table.fingerprint, "file": table.model_file, "opset": table.opset},
        "calibration": {"samples": table.samples, "options": table.options},
    }
    if table.stored:
        if sidecar is None:
            raise TableError("a table with stored codes or values needs the name of its weights file")
        head["weights"] = {"file": sidecar, "sha256": table.stored.digest(),
                           "codes": sorted(table.stored.codes), "values": sorted(table.stored.values)}
    parts = ["{"]
    parts += [f" {dump(k)}: {dump(v)}," for k, v in sorted(head.items())]
    parts.append(section("groups", {k: _group_json(v) for k, v in table.groups.items()}))
    parts.append(section("nodes", {k: {"op_type": v.op_type, "precision": v.precision, "group": v.group}
                                   for k, v in table.nodes.items()}))
    parts.append(section("tensors", {k: _tensor_json(v) for k, v in table.tensors.items()}, last=True))
    parts.append("}")
    return "\n".join(parts) + "\n"


def write(table: ScaleTable, path: str | os.PathLike) -> None:
    """Write ``table`` to ``path``, and its stored tensors, if any, to the sidecar beside it
    (``ptqcli.quantize.stored``): both whole or neither (``ptqcli.files.staged``), the sidecar
    renamed into place first so that a table never names a sidecar that is not there."""
    path = pathlib.Path(path)
    if not table.stored:
        write_text_atomic(path, to_json(table, None))
        return
    side = stored_io.sidecar_path(path)
    with staged(side, path) as (tmp_side, tmp):
        with open(tmp_side, "wb") as f:
            stored_io.write_npz(table.stored, f)
        tmp.write_bytes(to_json(table, side.name).encode("utf-8"))


def schema() -> dict[str, Any]:
    text = resources.files("ptqcli.quantize.schema").joinpath("scale_table.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def _check_params(path: pathlib.Path, name: str, p: dict[str, Any]) -> QuantParams:
    scale, zero, axis, dtype = p["scale"], p["zero_point"], p["axis"], p["dtype"]
    if len(scale) != len(zero):
        raise TableError(f"{path}: tensor {name!r} has {len(scale)} scales but {len(zero)} zero points")
    if len(scale) > 1 and axis is None:
        raise TableError(f"{path}: tensor {name!r} has {len(scale)} scales but no axis")
    if not all(s > 0 and math.isfinite(s) for s in scale):
        raise TableError(f"{path}: tensor {name!r} has a scale that is not a positive finite number")
    qmin, qmax = LIMITS[dtype]
    if not all(qmin <= z <= qmax for z in zero):
        raise TableError(f"{path}: tensor {name!r} has a zero point outside {dtype}")
    return QuantParams(dtype, tuple(float(s) for s in scale), tuple(int(z) for z in zero), axis)


def load(path: str | os.PathLike) -> ScaleTable:
    """Read and validate a scale table; every problem is a ``TableError`` naming the file."""
    import jsonschema

    path = pathlib.Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TableError(f"{path}: no such scale table") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TableError(f"{path}: not a JSON scale table ({exc})") from None
    try:
        jsonschema.validate(doc, schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise TableError(f"{path}: does not match the scale table schema at {where}: {exc.message}") from None
    tensors = {}
    for name, t in doc["tensors"].items():
        tensors[name] = TensorEntry(
            t["role"], _check_params(path, name, t), t.get("method"),
            tuple(t["range"]) if "range" in t else None, tuple(t["observed"]) if "observed" in t else None,
            t.get("scale_group"), t.get("guard"))
    nodes = {k: NodeEntry(v["op_type"], v["precision"], v.get("group")) for k, v in doc["nodes"].items()}
    groups = {k: GroupEntry(v["kind"], tuple(v["nodes"]), tuple(v["inputs"]), tuple(v["outputs"]),
                            v["precision"], v.get("weight"), v.get("bias"), tuple(v.get("consts", ())))
              for k, v in doc["groups"].items()}
    stored = None
    if "weights" in doc:
        side = doc["weights"]
        stored = stored_io.load(path.parent / side["file"], side["sha256"], path,
                                {n: e.params.dtype for n, e in tensors.items()})
        if sorted(stored.codes) != side["codes"] or sorted(stored.values) != side["values"]:
            raise TableError(f"{path}: its weights file holds other tensors than the table lists")
    model = doc["model"]
    return ScaleTable(model["fingerprint"], model["file"], model["opset"], doc["calibration"]["samples"],
                      doc["calibration"]["options"], tensors, nodes, groups, doc["tool"]["version"], stored)
