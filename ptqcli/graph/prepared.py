"""Load, check and prepare an ONNX model; index its graph.

Preparation makes the float graph that every later stage works on:

1. load (external data included) and ``onnx.checker``;
2. raise the default-domain opset to at least 13 (per-channel QuantizeLinear needs ``axis``);
3. ONNX Runtime's *basic* graph optimizations, run offline: constant folding (weights that live
   in ``Constant`` nodes or behind ``Transpose`` become initializers), BatchNormalization folded
   into the preceding Conv, Identity/Dropout removed.  Basic optimizations only rewrite with
   standard ONNX operators, so the result runs anywhere;
4. fold per-channel Add and BatchNormalization into a preceding ConvTranspose (or a Conv the
   runtime left alone), see ``ptqcli.graph.fold``;
5. drop the opset imports of unused domains, give every node a unique name, infer shapes.

The result is deterministic for a given model and onnx/onnxruntime version; its fingerprint
(SHA-256 of the serialized graph) ties a scale table to it.
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import os
import pathlib
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import onnx

from ptqcli import runtime
from ptqcli.errors import ModelError
from ptqcli.graph.fold import fold
from ptqcli.graph.index import GraphIndex, InputSpec, input_specs, opset
from ptqcli.runtime import Optimization

MIN_OPSET = 13


@dataclass(frozen=True)
class Prepared:
    """The prepared float model and what later stages need to know about it."""

    model: onnx.ModelProto
    source: pathlib.Path
    fingerprint: str
    inputs: tuple[InputSpec, ...]
    index: GraphIndex = field(repr=False)


def load(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and check an ONNX model; any failure is a ``ModelError`` naming the file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError... depending on damage
        raise ModelError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"{path}: the ONNX checker rejects the model ({_first_line(exc)})") from None
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _raise_opset(model: onnx.ModelProto, path: pathlib.Path, target: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, target)
    except Exception as exc:
        raise ModelError(f"{path}: cannot convert opset {opset(model)} to {target} "
                         f"({_first_line(exc)})") from None


def _ort_basic(model: onnx.ModelProto, path: pathlib.Path) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory(prefix="ptq-prepare-") as tmp:
        out = os.path.join(tmp, "prepared.onnx")
        runtime.session(model, optimization=Optimization.BASIC, optimized_path=out, where=str(path))
        return onnx.load(out)


def _tidy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Keep only the opset imports that nodes use; name unnamed nodes; clear stale shapes."""
    used = {n.domain for n in model.graph.node} | {""}
    keep = [imp for imp in model.opset_import if imp.domain in used or imp.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    del model.graph.value_info[:]
    return model


#: Operators that only a quantized model holds: QDQ pairs, ONNX's integer operators and ONNX
#: Runtime's quantized contrib operators (by name prefix: QLinearConv, DynamicQuantizeLSTM, ...).
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "ConvInteger", "MatMulInteger", "QGemm", "QAttention"}
QUANTIZED_PREFIXES = ("QLinear", "DynamicQuantize")

#: Operators named when a subgraph holds them: the ones that carry a model's compute.
HEAVY_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "Attention")


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _nested(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node inside the subgraphs (If branches, Loop and Scan bodies) of ``graph``'s nodes."""
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from sub.node
            yield from _nested(sub)


def _counted(nodes: Iterable[onnx.NodeProto], keep: Callable[[str], bool]) -> str:
    counts = collections.Counter(n.op_type for n in nodes if keep(n.op_type))
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def subgraph_note(model: onnx.ModelProto) -> str:
    """How many nodes sit in subgraphs, which ptq leaves in float (``""`` if none)."""
    nested = list(_nested(model.graph))
    if not nested:
        return ""
    owning = [n for n in model.graph.node if any(True for _ in _subgraphs(n))]
    owners = _counted(owning, lambda op: True)
    heavy = _counted(nested, lambda op: op in HEAVY_OPS)
    return (f"{len(nested)} nodes sit inside the subgraphs of {owners} node{'s' if len(owning) > 1 else ''}"
            f"{f' ({heavy} among them)' if heavy else ''}, and ptq does not quantize subgraphs yet")


def _refuse_quantized(model: onnx.ModelProto, path: pathlib.Path) -> None:
    def quantized(op: str) -> bool:
        return op in QUANTIZED_OPS or op.startswith(QUANTIZED_PREFIXES)

    found = _counted(itertools.chain(model.graph.node, _nested(model.graph)), quantized)
    if found:
        raise ModelError(f"{path}: the model is already quantized ({found}); give ptq the float model")


def fingerprint(model: onnx.ModelProto) -> str:
    return "sha256:" + hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def prepare(path: str | os.PathLike) -> Prepared:
    """Load ``path`` and return the prepared float model (see module docstring)."""
    path = pathlib.Path(path)
    model = load(path)
    _refuse_quantized(model, path)
    if opset(model) < MIN_OPSET:
        model = _raise_opset(model, path, MIN_OPSET)
    model = _tidy(fold(_ort_basic(model, path)))
    digest = fingerprint(model)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        raise ModelError(f"{path}: shape inference failed ({_first_line(exc)})") from None
    index = GraphIndex(model)
    inputs = input_specs(model)
    if not inputs:
        raise ModelError(f"{path}: the model has no inputs")
    return Prepared(model, path, digest, inputs, index)
