"""The baseline: ONNX Runtime's ``quantize_static`` on one model, run as its own process.

    python -m bench.ort_quant MODEL CALIB_DIR OUT.onnx --method MinMax|Entropy|Percentile
                              [--limit N] [--pre]

QDQ format, per-channel int8 weights, uint8 activations, the given calibration method, the
same calibration files as ptq (first N in sorted order).  ``--pre`` runs ``quant_pre_process``
first (ONNX shape inference, symbolic shape inference when sympy is installed, and ORT's
graph optimizations) and raises the opset to 13 when it is lower,
the first opset whose DequantizeLinear has an ``axis`` for per-channel weights.  Prints a JSON
line with the seconds spent; any exception ends the process with a non-zero code.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import numpy as np
import onnx
from onnx import version_converter
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quant_pre_process, quantize_static)

from bench.common import sample_files

METHODS = {"MinMax": CalibrationMethod.MinMax, "Entropy": CalibrationMethod.Entropy,
           "Percentile": CalibrationMethod.Percentile}


class FolderReader(CalibrationDataReader):
    """Streams one sample file at a time as ``{input name: array}``."""

    def __init__(self, files: list[pathlib.Path], input_name: str) -> None:
        self._files = iter(files)
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self._files, None)
        return None if path is None else {self._name: np.load(path)}


def _input_name(model: onnx.ModelProto) -> str:
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def _has_sympy() -> bool:
    """Symbolic shape inference needs sympy, which is not a dependency of ptq or onnxruntime."""
    try:
        import sympy  # noqa: F401
    except ImportError:
        return False
    return True


def prepare(model_path: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    """quant_pre_process, then the opset raised to 13 if it is lower."""
    pre = workdir / "pre.onnx"
    quant_pre_process(str(model_path), str(pre), skip_symbolic_shape=not _has_sympy())
    model = onnx.load(str(pre))
    version = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if version < 13:
        model = version_converter.convert_version(model, 13)
        onnx.save(model, str(pre))
    return pre


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ONNX Runtime quantize_static baseline.")
    parser.add_argument("model", type=pathlib.Path)
    parser.add_argument("calib", type=pathlib.Path)
    parser.add_argument("output", type=pathlib.Path)
    parser.add_argument("--method", choices=sorted(METHODS), required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--pre", action="store_true", help="quant_pre_process (and opset 13) first")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.output.parent) as tmp:
        source = prepare(args.model, pathlib.Path(tmp)) if args.pre else args.model
        seconds_pre = time.perf_counter() - start
        files = sample_files(args.calib, args.limit)
        reader = FolderReader(files, _input_name(onnx.load(str(source), load_external_data=False)))
        quantize_static(str(source), str(args.output), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=METHODS[args.method])
    print(json.dumps({"seconds": time.perf_counter() - start, "seconds_pre_process": seconds_pre,
                      "samples": len(files), "symbolic_shape": args.pre and _has_sympy()}))


if __name__ == "__main__":
    main()
