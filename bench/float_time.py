"""Plain float inference time, the yardstick for calibration time, run as its own process.

    python -m bench.float_time MODEL CALIB_DIR [--limit N]

ONNX Runtime with default session options runs the first N calibration samples one at a time;
the time counted is loading each file and running it (session creation and one warm-up run are
not counted; ``session_seconds`` gives the session's creation apart).  The pass is repeated (``--repeat``, default 3) and the fastest one counts, so a
burst of load from elsewhere on the machine does not shrink the yardstick's ratios.  Prints a
JSON line: seconds (the fastest pass), every pass, and samples.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
import onnxruntime as ort

from bench.common import sample_files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Float ONNX Runtime inference time over calibration samples.")
    parser.add_argument("model", type=pathlib.Path)
    parser.add_argument("calib", type=pathlib.Path)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    session_seconds = time.perf_counter() - start
    name = session.get_inputs()[0].name
    files = sample_files(args.calib, args.limit)
    session.run(None, {name: np.load(files[0])})
    passes = []
    for _ in range(max(1, args.repeat)):
        start = time.perf_counter()
        for path in files:
            session.run(None, {name: np.load(path)})
        passes.append(time.perf_counter() - start)
    print(json.dumps({"seconds": min(passes), "passes": passes, "samples": len(files),
                      "session_seconds": session_seconds}))


if __name__ == "__main__":
    main()
