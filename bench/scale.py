"""Calibration at scale: 5,000 samples of a benchmark model (issue 14's targets).

- memory: peak RSS of ``ptq calibrate`` on 5,000 samples against 100 (target at most 1.1 x);
- throughput: ``--workers 2`` against one worker (``--workers 1`` pinned to one core with
  ``taskset``: a worker's share of the 2-worker cluster, so the ratio is the scale-out, target at
  least 1.6 x) and against one process without Dask on both cores, run side by side in
  alternating rounds with the load average of the machine before each run;
- resume: a run stopped by SIGINT at a random point and finished with ``--resume``, against an
  uninterrupted run (target at most 1.1 x the time);
- every table byte-identical to the single-process one.

The samples are the cls benchmark's (``bench.data.build_cls``, the calibration seed): the first
500 are the benchmark's own calibration pool.  Each run is a separate ``ptq`` process
(``bench.procs``: peak RSS from ``wait4``).

    python -m bench.scale [--task cls] [--samples 5000] [--rounds 2] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

from bench import procs, render
from bench.common import BENCH, TASKS, WORK, read_json, write_json
from bench.data import SEEDS, build_cls

RESULTS = BENCH / "results-scale.json"


def data(task: str, count: int) -> pathlib.Path:
    """``count`` calibration samples of ``task``, built once (a manifest says what is there)."""
    folder = WORK / "scale" / f"{task}-{count}"
    manifest = folder / "manifest.json"
    if manifest.exists() and read_json(manifest) == {"task": task, "count": count, "seed": SEEDS[task][0]}:
        return folder
    if task != "cls":
        raise SystemExit(f"bench.scale: only cls samples are generated here, not {task!r}")
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    build_cls(folder, count, SEEDS[task][0], render.vocabulary())
    write_json(manifest, {"task": task, "count": count, "seed": SEEDS[task][0]})
    print(f"built {count} {task} samples in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def ptq() -> list[str]:
    return [sys.executable, "-m", "ptqcli"]


def calibrate(task: str, folder: pathlib.Path, table: pathlib.Path, *extra: str, cores: int | None = None) -> dict:
    """One ``ptq calibrate`` process (on its first ``cores`` allowed cores when given): its JSON
    summary, wall seconds, peak RSS and load."""
    load = os.getloadavg()[0]
    pin = ["taskset", "-c", ",".join(map(str, sorted(os.sched_getaffinity(0))[:cores]))] if cores else []
    cmd = [*pin, *ptq(), "calibrate", str(TASKS[task].model_path), "--data", str(folder), "-o", str(table),
           "--json", "-q", *extra]
    out = procs.run(cmd, timeout=3600, log=table.with_suffix(".log"))
    if out.status != "ok":
        raise SystemExit(f"bench.scale: {' '.join(cmd)} failed ({out.status}): {out.stderr_tail}")
    summary = json.loads(out.stdout)
    return {"seconds": round(out.seconds, 2), "observe_seconds": summary["seconds"]["observe"],
            "peak_rss_mb": round(out.peak_rss_mb, 1), "load_before": round(load, 2), "samples": summary["samples"]}


def interrupted(task: str, folder: pathlib.Path, table: pathlib.Path, after: float) -> dict:
    """Start a pass, SIGINT it ``after`` seconds in, then ``--resume``: both wall times."""
    for stale in (table, table.with_name(table.stem + ".obs.ckpt.npz")):
        stale.unlink(missing_ok=True)
    cmd = [*ptq(), "calibrate", str(TASKS[task].model_path), "--data", str(folder), "-o", str(table), "-q"]
    start = time.perf_counter()
    process = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate()
    first = time.perf_counter() - start
    if process.returncode != 130:
        raise SystemExit(f"bench.scale: the interrupted run ended with {process.returncode}: {stderr}")
    resumed = calibrate(task, folder, table, "--resume")
    return {"interrupted_seconds": round(first, 2), "stopped_with": stderr.strip().splitlines()[-1],
            "resume": resumed, "total_seconds": round(first + resumed["seconds"], 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="cls")
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="alternating 1-process / 2-worker rounds")
    parser.add_argument("--seed", type=int, default=None, help="seed of the interruption point")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    folder = data(args.task, args.samples)
    work = WORK / "scale" / "runs"
    work.mkdir(parents=True, exist_ok=True)
    tables = {}

    def run(name: str, *extra: str, cores: int | None = None) -> dict:
        tables[name] = work / f"{name}.json"
        result = calibrate(args.task, folder, tables[name], *extra, cores=cores)
        print(f"{name}: {result}", flush=True)
        return result

    small = run("small", "--limit", str(args.small))
    rounds = []
    for r in range(args.rounds):
        order = [("one", ()), ("two", ("--workers", "2")), ("worker", ("--workers", "1"))]
        runs = {name: run(f"{name}-{r}", *extra, cores=1 if name == "worker" else None)
                for name, extra in (order if r % 2 == 0 else order[::-1])}  # neither goes first every time
        one, two, worker = runs["one"], runs["two"], runs["worker"]
        rounds.append({"one": one, "two": two, "worker": worker,
                       "scaleout_wall": round(worker["seconds"] / two["seconds"], 3),
                       "scaleout_observe": round(worker["observe_seconds"] / two["observe_seconds"], 3),
                       "speedup_wall": round(one["seconds"] / two["seconds"], 3),
                       "speedup_observe": round(one["observe_seconds"] / two["observe_seconds"], 3)})
    whole = rounds[-1]["one"]
    after = random.Random(seed).uniform(0.2, 0.8) * whole["seconds"]
    resume = interrupted(args.task, folder, work / "resumed.json", after)
    tables["resumed"] = work / "resumed.json"
    print(f"resumed: {resume}", flush=True)
    reference = tables["one-0"].read_bytes()
    identical = {name: path.read_bytes() == reference for name, path in tables.items() if name != "small"}
    big = max(r["one"]["peak_rss_mb"] for r in rounds)
    result = {
        "task": args.task, "samples": args.samples, "small": args.small, "cores": os.cpu_count(),
        "memory": {"small_mb": small["peak_rss_mb"], "large_mb": big, "ratio": round(big / small["peak_rss_mb"], 3),
                   "target": 1.1},
        "workers": {"rounds": rounds, "target": 1.6},
        "resume": {**resume, "seed": seed, "interrupt_after_seconds": round(after, 2),
                   "uninterrupted_seconds": whole["seconds"],
                   "ratio": round(resume["total_seconds"] / whole["seconds"], 3), "target": 1.1},
        "tables_identical": identical,
    }
    write_json(RESULTS, result)
    print(json.dumps({k: v for k, v in result.items() if k != "workers"}, indent=1))
    print("2 workers over 1 worker on 1 core (wall, observe):", [(r["scaleout_wall"], r["scaleout_observe"]) for r in rounds])
    print("2 workers over 1 process on 2 cores (wall, observe):", [(r["speedup_wall"], r["speedup_observe"]) for r in rounds])


if __name__ == "__main__":
    main()
