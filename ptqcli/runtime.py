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
            error: type[PtqError] = ModelError, where: str | None = None) -> "onnxruntime.InferenceSession":
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
