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
5. drop the opset imports of unused domains, give every node a unique name;
6. HardSigmoid and HardSwish written out as ``Clip(x + 3, 0, 6) / 6`` and ``x * Clip(x + 3, 0,
   6) / 6`` become ``HardSigmoid(x)`` and ``x * HardSigmoid(x)``, see ``ptqcli.graph.activations``;
7. infer shapes.

The result is deterministic for a given model and onnx/onnxruntime version; its fingerprint
(SHA-256 of the serialized graph) ties a scale table to it.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from dataclasses import dataclass, field

import onnx

from ptqcli import runtime
from ptqcli.errors import ModelError
from ptqcli.graph.activations import hard_sigmoid
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


def fingerprint(model: onnx.ModelProto) -> str:
    return "sha256:" + hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def prepare(path: str | os.PathLike) -> Prepared:
    """Load ``path`` and return the prepared float model (see module docstring)."""
    path = pathlib.Path(path)
    model = load(path)
    if opset(model) < MIN_OPSET:
        model = _raise_opset(model, path, MIN_OPSET)
    model = hard_sigmoid(_tidy(fold(_ort_basic(model, path))))
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
