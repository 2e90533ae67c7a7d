"""The one place that makes ONNX Runtime sessions.

Every stage that runs a model (the observation pass, the auto-search, evaluation, sensitivity,
the simulator's float fallbacks and its comparison with ONNX Runtime) asks for a session here,
so that the optimization level, threads and logging are chosen in one place, and so that a
measurement can say which arithmetic ONNX Runtime used (``Optimization``).
"""

from __future__ import annotations

import enum
import os
import pathlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

from ptqcli.errors import ModelError, PtqError

if TYPE_CHECKING:
    import onnxruntime


class Optimization(enum.Enum):
    """ONNX Runtime graph optimization levels, as this tool uses them.

    ``ALL``: ONNX Runtime's default; a QDQ model runs its fused integer kernels (QLinearConv,
    QGemm, ...), whose arithmetic depends on the CPU (see ``int8_arithmetic``).
    ``BASIC``: constant folding and standard-ONNX rewrites only (no fused integer kernels).
    ``NONE``: every node as written; a QDQ model then computes the reference arithmetic
    (DequantizeLinear, the float operator, QuantizeLinear)."""

    ALL = "all"
    BASIC = "basic"
    NONE = "none"


def session(model: onnx.ModelProto | str | os.PathLike, *, optimization: Optimization = Optimization.ALL,
            threads: int | None = None, optimized_path: str | os.PathLike | None = None,
            error: type[PtqError] = ModelError, where: str | None = None) -> onnxruntime.InferenceSession:
    """A CPU session for ``model`` (a ModelProto or a file).

    ``threads``: intra- and inter-op threads (None: ONNX Runtime's default, one per core);
    ``optimized_path``: where ONNX Runtime writes the optimized graph.  A model ONNX Runtime
    refuses raises ``error`` naming ``where`` (default: the file, or "the model")."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = {
        Optimization.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        Optimization.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        Optimization.NONE: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        if where is None:
            where = "the model" if isinstance(model, onnx.ModelProto) else str(pathlib.Path(model))
        text = str(exc).strip().splitlines()
        raise error(f"{where}: ONNX Runtime cannot load it ({text[0] if text else type(exc).__name__})") from None


@dataclass(frozen=True)
class Int8Arithmetic:
    """What ONNX Runtime's fused uint8 x int8 kernels compute on this machine.

    ``saturating``: products are added in adjacent pairs with int16 saturation before the int32
    sum (MLAS on x86 with AVX2 but without VNNI: VPMADDUBSW), measured by :func:`int8_arithmetic`;
    otherwise the sum is exact (VNNI, ARM, or no fused kernel).  ``vnni``: the CPU flags list
    AVX-VNNI or AVX512-VNNI (None where ``/proc/cpuinfo`` is not available).  The two can
    disagree under an emulator, which shows ONNX Runtime other CPU flags than the host's."""

    saturating: bool
    vnni: bool | None

    @property
    def cpu(self) -> str:
        """The simulator's name for this arithmetic (``ptq simulate --cpu``)."""
        return "x86-avx2" if self.saturating else "exact"

    def describe(self) -> str:
        if self.saturating:
            note = "; /proc/cpuinfo lists VNNI, which ONNX Runtime does not see here (an emulator?)" if self.vnni else ""
            return f"ONNX Runtime's fused int8 kernels add uint8 x int8 products in saturating int16 pairs " \
                   f"(x86 AVX2 without VNNI{note})"
        flags = {None: "", True: "; the CPU has VNNI", False: "; the CPU lists no VNNI"}[self.vnni]
        return f"ONNX Runtime's fused int8 kernels accumulate exactly{flags}"


def cpu_has_vnni() -> bool | None:
    """Whether ``/proc/cpuinfo`` lists AVX-VNNI or AVX512-VNNI (None: no such file)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return bool(re.search(r"\b(avx512_vnni|avx_vnni)\b", text))


#: Probe: eight uint8 codes of 255 times eight int8 weights of 127.  The exact sum is
#: 8 * 255 * 127 = 259,080; summed in saturating int16 pairs it is 4 * 32,767 = 131,068.
_PROBE_CHANNELS = 8


def _probe_model() -> onnx.ModelProto:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    c = _PROBE_CHANNELS
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(2048.0, np.float32), "out_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "zero_u8"),
             numpy_helper.from_array(np.array(0, np.int8), "zero_i8"),
             numpy_helper.from_array(np.full((1, c, 1, 1), 127, np.int8), "w_q")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zero_u8"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "one", "zero_u8"], ["x_d"]),
             helper.make_node("DequantizeLinear", ["w_q", "one", "zero_i8"], ["w"]),
             helper.make_node("Conv", ["x_d", "w"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "out_scale", "zero_u8"], ["y_q"]),
             helper.make_node("DequantizeLinear", ["y_q", "out_scale", "zero_u8"], ["out"])]
    graph = helper.make_graph(nodes, "ptq-int8-probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 1, 1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def int8_arithmetic() -> Int8Arithmetic:
    """Measure what this machine's ONNX Runtime computes for a uint8 x int8 convolution whose
    pairs of products exceed int16: one run of a one-pixel QDQ Conv (milliseconds)."""
    import numpy as np

    out = session(_probe_model(), threads=1).run(None, {"x": np.full((1, _PROBE_CHANNELS, 1, 1), 255.0, np.float32)})
    # exact: 259,080 / 2,048 = 126.5 -> 126; saturated: 131,068 / 2,048 = 64.0
    return Int8Arithmetic(saturating=float(out[0].ravel()[0]) < 100 * 2048.0, vnni=cpu_has_vnni())
