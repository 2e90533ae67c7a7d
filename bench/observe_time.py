"""The observation pass over float inference, measured side by side on a shared machine.

    python -m bench.observe_time [--tasks cls,rec] [--samples 100,500] [--rounds 5] [--ptq PATH ...]

One round runs, each in its own process and one right after the other, plain float inference
over the first N calibration samples (``bench.float_time``, one pass), ``ptq calibrate``'s
observation pass over the same samples (its ``seconds.observe``, session creation included)
once per ``--ptq`` executable given (default: the one beside this Python; their order
alternates from round to round), and float inference again; a round's yardstick is the mean of
its two float passes, so that two versions of ptq are compared under the same load.  The ratio of a round compares measurements taken
under nearly the same load from elsewhere on the machine; the rounds show how much that load
moves it.  Prints one JSON document and, on stderr, per model, sample count and ptq: the ratio
of every round, their median and their range, and the median against float inference whose
session creation is counted too (as the observation pass counts its own).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile

from bench import procs
from bench.common import TASKS

PY = sys.executable
PTQ = str(pathlib.Path(sys.executable).with_name("ptq"))


def _json(cmd: list[str], timeout: float, log: pathlib.Path) -> dict:
    o = procs.run(cmd, timeout=timeout, log=log)  # without a log, procs.run sends stdout to /dev/null
    if o.status != "ok":
        raise SystemExit(f"bench.observe_time: {' '.join(cmd[:4])}...: {o.status}: {o.stderr_tail}")
    return json.loads(o.stdout[o.stdout.find("{"):])


def _float(cmd: list[str], timeout: float, log: pathlib.Path) -> tuple[float, float]:
    """Float inference seconds over the samples, without and with creating its session."""
    doc = _json(cmd, timeout, log)
    return doc["seconds"], doc["seconds"] + doc["session_seconds"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Observation pass / float inference, interleaved rounds.")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--samples", default="100,500")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--ptq", action="append", default=None, help="a ptq executable (repeat to compare)")
    args = parser.parse_args(argv)
    ptqs = args.ptq or [PTQ]
    out: dict = {"rounds": args.rounds, "ptq": ptqs, "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        log = pathlib.Path(tmp) / "run.log"
        for name in args.tasks.split(","):
            task = TASKS[name]
            for n in (int(s) for s in args.samples.split(",")):
                rows = []
                float_cmd = [PY, "-m", "bench.float_time", str(task.model_path), str(task.calib_dir),
                             "--limit", str(n), "--repeat", "1"]
                for r in range(args.rounds):
                    before = _float(float_cmd, args.timeout, log)
                    seconds = {}
                    for ptq in (ptqs if r % 2 == 0 else ptqs[::-1]):  # neither goes first every time
                        seconds[ptq] = _json([ptq, "calibrate", str(task.model_path), "--data",
                                              str(task.calib_dir), "--limit", str(n), "-o",
                                              str(pathlib.Path(tmp) / "t.json"), "--method", "max", "--json",
                                              "-q"], args.timeout, log)["seconds"]["observe"]
                    after = _float(float_cmd, args.timeout, log)
                    fl, fs = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2  # float before and after
                    row = {"float": round(fl, 3), "float_with_session": round(fs, 3)}
                    row.update({ptq: {"observe": round(ob, 3), "ratio": round(ob / fl, 3),
                                      "ratio_with_session": round(ob / fs, 3)} for ptq, ob in seconds.items()})
                    rows.append(row)
                entry = {"rounds": rows}
                for ptq in ptqs:
                    ratios = [r[ptq]["ratio"] for r in rows]
                    with_session = [r[ptq]["ratio_with_session"] for r in rows]
                    entry[ptq] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                  "median_with_session": statistics.median(with_session)}
                    print(f"{name} @{n} {ptq}: ratios {' '.join(f'{r:.2f}' for r in ratios)}; median "
                          f"{statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}; against "
                          f"float with its session created: median {statistics.median(with_session):.2f}",
                          file=sys.stderr, flush=True)
                out["tasks"].setdefault(name, {})[str(n)] = entry
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
