"""Does ONNX Runtime run 4-bit weights, and how fast?  One QDQ Conv and one QDQ MatMul whose
weight codes lie in -7..7, stored as int8 (opset 13 and 21) and as int4 (opset 21, where
DequantizeLinear takes int4), timed on the same inputs:

    python -m bench.int4_probe

Prints, per case, the fastest of 20 runs, the nodes ONNX Runtime's optimized graph holds (a fused
QLinearConv / QLinearMatMul is its integer kernel) and whether the outputs equal the int8 ones.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

CASES = (("int8", 13), ("int8", 21), ("int4", 21))


def model(op: str, storage: str, opset: int) -> tuple[onnx.ModelProto, list[int]]:
    """x -> Q/DQ -> op(x, DQ(w)) -> Q/DQ, with weights of 4-bit range stored as ``storage``."""
    rng = np.random.default_rng(0)
    if op == "Conv":
        w = rng.integers(-7, 8, (64, 64, 3, 3))
        x_shape, y_shape, axis, cout = [8, 64, 56, 56], [8, 64, 56, 56], 0, 64
    else:
        w = rng.integers(-7, 8, (768, 768))
        x_shape, y_shape, axis, cout = [256, 768], [256, 768], 1, 768
    if storage == "int4":
        codes = helper.make_tensor("w_q", TensorProto.INT4, w.shape, w.flatten().tolist())
        zero = helper.make_tensor("w_z", TensorProto.INT4, [cout], [0] * cout)
    else:
        codes, zero = numpy_helper.from_array(w.astype(np.int8), "w_q"), numpy_helper.from_array(np.zeros(cout, np.int8), "w_z")
    inits = [codes, zero, numpy_helper.from_array(np.full(cout, 0.01, np.float32), "w_s"),
             numpy_helper.from_array(np.array(0.02, np.float32), "x_s"), numpy_helper.from_array(np.array(128, np.uint8), "x_z"),
             numpy_helper.from_array(np.array(0.05, np.float32), "y_s"), numpy_helper.from_array(np.array(128, np.uint8), "y_z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=axis),
             helper.make_node(op, ["xd", "w"], ["y"], **({"pads": [1, 1, 1, 1]} if op == "Conv" else {})),
             helper.make_node("QuantizeLinear", ["y", "y_s", "y_z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["out"])]
    graph = helper.make_graph(nodes, "int4-probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, y_shape)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m, full_check=True)
    return m, x_shape


def main() -> None:
    print(f"onnxruntime {ort.__version__}")
    for op in ("Conv", "MatMul"):
        reference = None
        for storage, opset in CASES:
            m, x_shape = model(op, storage, opset)
            with tempfile.TemporaryDirectory() as tmp:
                options = ort.SessionOptions()
                options.log_severity_level = 3
                options.optimized_model_filepath = f"{tmp}/optimized.onnx"
                session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                kernels = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
            x = np.random.default_rng(1).normal(size=x_shape).astype(np.float32)
            y = session.run(None, {"x": x})[0]
            times = []
            for _ in range(20):
                start = time.perf_counter()
                session.run(None, {"x": x})
                times.append(time.perf_counter() - start)
            reference = y if reference is None else reference
            same = "equal to int8" if np.array_equal(y, reference) else \
                f"{np.mean(y != reference) * 100:.1f} % of outputs differ from int8 (max {np.abs(y - reference).max():.3f})"
            print(f"{op} {storage} opset {opset}: {min(times) * 1e3:.2f} ms; {' '.join(kernels)}; {same}")


if __name__ == "__main__":
    main()
