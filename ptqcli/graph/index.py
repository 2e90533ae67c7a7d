"""Read-only views of an ONNX graph: the model's inputs, a producer/consumer index, attribute
readers and the opset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class InputSpec:
    """A model input: its name, numpy dtype and shape (an int per static dim, else a str or None)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

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


def activation_bounds(index: GraphIndex, node: onnx.NodeProto) -> tuple[float, float] | None:
    """``(lo, hi)`` that a Relu (``(0, inf)``) or a Clip with constant bounds clamps to; None for
    any other operator."""
    if node.op_type == "Relu":
        return 0.0, np.inf
    if node.op_type != "Clip":
        return None
    a = index.const(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "min")
    b = index.const(node.input[2]) if len(node.input) > 2 and node.input[2] else attr(node, "max")
    return (-np.inf if a is None else float(a)), (np.inf if b is None else float(b))


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
