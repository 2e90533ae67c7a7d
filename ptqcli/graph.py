"""Load, check and prepare an ONNX model; index its graph.

Preparation makes the float graph that every later stage works on:

1. load (external data included) and ``onnx.checker``;
2. raise the default-domain opset to at least 13 (per-channel QuantizeLinear needs ``axis``);
3. ONNX Runtime's *basic* graph optimizations, run offline: constant folding (weights that live
   in ``Constant`` nodes or behind ``Transpose`` become initializers), BatchNormalization folded
   into the preceding Conv, Identity/Dropout removed.  Basic optimizations only rewrite with
   standard ONNX operators, so the result runs anywhere;
4. fold per-channel Add and BatchNormalization into a preceding ConvTranspose (or a Conv the
   runtime left alone), see ``ptqcli.fold``;
5. drop the opset imports of unused domains, give every node a unique name, infer shapes.

The result is deterministic for a given model and onnx/onnxruntime version; its fingerprint
(SHA-256 of the serialized graph) ties a scale table to it.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptqcli.errors import ModelError

MIN_OPSET = 13


@dataclass(frozen=True)
class InputSpec:
    """A model input: its name, numpy dtype and shape (an int per static dim, else a str or None)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class Prepared:
    """The prepared float model and what later stages need to know about it."""

    model: onnx.ModelProto
    source: pathlib.Path
    fingerprint: str
    inputs: tuple[InputSpec, ...]
    index: "GraphIndex" = field(repr=False)


def _dims(type_proto: onnx.TypeProto) -> tuple[int | str | None, ...]:
    dims = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:  # some exporters write -1 for "dynamic"
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


class GraphIndex:
    """Read-only lookups over a graph: producers, consumers, initializers, element types, shapes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.nodes: tuple[onnx.NodeProto, ...] = tuple(graph.node)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.input_names: tuple[str, ...] = tuple(
            i.name for i in graph.input if i.name not in self.initializers)
        self.output_names: tuple[str, ...] = tuple(o.name for o in graph.output)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.elem_type: dict[str, int] = {}
        self.shape: dict[str, tuple[int | str | None, ...]] = {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            if vi.type.HasField("tensor_type"):
                self.elem_type[vi.name] = vi.type.tensor_type.elem_type
                if vi.type.tensor_type.HasField("shape"):
                    self.shape[vi.name] = _dims(vi.type)
        for name, init in self.initializers.items():
            self.elem_type[name] = init.data_type
            self.shape[name] = tuple(init.dims)
        self.node_by_name: dict[str, onnx.NodeProto] = {n.name: n for n in self.nodes}

    def is_float(self, name: str) -> bool:
        return self.elem_type.get(name) == onnx.TensorProto.FLOAT

    def array(self, name: str) -> np.ndarray:
        """The value of an initializer as a numpy array."""
        return numpy_helper.to_array(self.initializers[name])

    def const(self, name: str) -> np.ndarray | None:
        """The initializer's value, or None when ``name`` is computed at run time."""
        return self.array(name) if name in self.initializers else None


def attr(node: onnx.NodeProto, name: str, default=None):
    """The value of a node attribute, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def text_attr(node: onnx.NodeProto, name: str, default: str) -> str:
    """A string attribute (ONNX stores bytes) as text, or ``default``."""
    value = attr(node, name)
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def input_specs(model: onnx.ModelProto) -> tuple[InputSpec, ...]:
    """The model's real inputs (graph inputs that are not initializers)."""
    inits = {t.name for t in model.graph.initializer}
    return tuple(
        InputSpec(vi.name, helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type), _dims(vi.type))
        for vi in model.graph.input if vi.name not in inits)


def opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


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
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="ptq-prepare-") as tmp:
        out = os.path.join(tmp, "prepared.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = out
        options.log_severity_level = 3
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"{path}: ONNX Runtime cannot load the model ({_first_line(exc)})") from None
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
    from ptqcli.fold import fold  # fold uses attr() from this module

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
