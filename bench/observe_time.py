"""The observation pass over float inference, measured side by side on a shared machine.

    python -m bench.observe_time [--tasks cls,rec] [--samples 100,500] [--rounds 5]

One round runs, each in its own process and one right after the other, plain float inference
over the first N calibration samples (``bench.float_time``, one pass) and ``ptq calibrate``'s
observation pass over the same samples (its ``seconds.observe``, session creation included).
The ratio of a round compares two measurements taken under nearly the same load from elsewhere
on the machine; the rounds show how much that load moves it.  Prints one JSON document and a
table: per model and sample count, the ratio of every round, their median and their range.
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


def _seconds(cmd: list[str], key: str, timeout: float) -> float:
    o = procs.run(cmd, timeout=timeout)
    if o.status != "ok":
        raise SystemExit(f"bench.observe_time: {' '.join(cmd[:4])}...: {o.status}: {o.stderr_tail}")
    doc = json.loads(o.stdout[o.stdout.find("{"):])
    return doc["seconds"]["observe"] if key == "observe" else doc["seconds"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Observation pass / float inference, interleaved rounds.")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--samples", default="100,500")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    out: dict = {"rounds": args.rounds, "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks.split(","):
            task = TASKS[name]
            for n in (int(s) for s in args.samples.split(",")):
                rows = []
                for _ in range(args.rounds):
                    fl = _seconds([PY, "-m", "bench.float_time", str(task.model_path), str(task.calib_dir),
                                   "--limit", str(n), "--repeat", "1"], "float", args.timeout)
                    ob = _seconds([PTQ, "calibrate", str(task.model_path), "--data", str(task.calib_dir),
                                   "--limit", str(n), "-o", str(pathlib.Path(tmp) / "t.json"), "--method", "max",
                                   "--json", "-q"], "observe", args.timeout)
                    rows.append({"float": round(fl, 3), "observe": round(ob, 3), "ratio": round(ob / fl, 3)})
                ratios = [r["ratio"] for r in rows]
                out["tasks"].setdefault(name, {})[str(n)] = {
                    "rounds": rows, "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
                print(f"{name} @{n}: ratios {' '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}, "
                      f"range {min(ratios):.2f}-{max(ratios):.2f}", file=sys.stderr, flush=True)
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
