"""ONNX Runtime latency of the exported models: float, ORT quantize_static, ptq's default export.

    python -m bench.latency                      # all four models, 1 and 2 threads
    python -m bench.latency --tasks cls,magika --rounds 9 --limit 200

Per model: the float model, every ``quantize_static`` variant of ``bench.run`` that produced a
model (MinMax, Entropy, Percentile, each with and without ``quant_pre_process``), and ptq's
default export (``ptq calibrate --data`` with default options, then ``ptq export``), all
calibrated on the same first ``--calib`` samples.  "ORT best" is the most accurate ORT export
on the whole evaluation folder (task metric, ties broken by output SQNR); "ORT fastest" is the
quickest ORT export measured here, whatever its accuracy.

Timing: every model in one process, ONNX Runtime's default session options except
``intra_op_num_threads``; one sample at a time over the first ``--limit`` evaluation samples.
For each sample the models run one after the other, the order rotating from sample to sample,
so load from other processes hits every model alike; a round is one pass over the samples.
A model's latency is the median of its runs (every sample, every round), with the lowest and
highest per-round median as the spread.  The ratio ptq / ORT is taken run by run (the same
sample, moments apart) and summarized the same way.

Exports and their evaluations go to bench/work/latency/TASK/; ORT's exports are reused when a
previous run left them there (``--rebuild`` makes them again), ptq's are always made afresh.
Writes bench/results-latency.json and .md (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import sys
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from bench import procs, run
from bench.common import BENCH, ROOT, TASKS, WORK, Task, read_json, sample_files, write_json, write_results

PTQ = run.PTQ


@dataclass(frozen=True)
class Model:
    """One model to time: its column key, file and (for quantized models) evaluation result."""

    key: str
    path: pathlib.Path
    evaluation: dict


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def vnni() -> list[str]:
    """The VNNI flags of this CPU (``avx512_vnni``, ``avx_vnni``), empty without VNNI."""
    try:
        flags = next(line for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    return sorted({f for f in flags if f in ("avx512_vnni", "avx_vnni")})


def cpu_name() -> str:
    try:
        line = next(x for x in pathlib.Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"
    return line.split(":", 1)[1].strip()


def _cfg(args: argparse.Namespace) -> run.RunConfig:
    return run.RunConfig(tasks=(), calib=args.calib, scale=None, eval_limit=None, timeout=args.timeout,
                         mem_gib=args.mem_gib)


def ort_models(task: Task, cfg: run.RunConfig, wdir: pathlib.Path, rebuild: bool) -> list[Model]:
    """Every quantize_static variant that produced a model that was evaluated (built unless present)."""
    models = []
    for column, method, pre in run.ORT_VARIANTS:
        path = wdir / f"{'pre-' if pre else ''}{method.lower()}-{cfg.calib}.onnx"
        result_path = path.with_suffix(".result.json")
        if rebuild or not result_path.exists():
            _log(f"{task.name}: {column}")
            write_json(result_path, run.ort_variant(task, method, pre, cfg.calib, cfg, wdir))
        result = read_json(result_path)
        if result.get("status") == "ok" and "quant" in result:
            models.append(Model(column, path, result))
        else:
            _log(f"{task.name}: {column} left out ({result.get('status')}, {result.get('eval_status', '')})")
    return models


def ptq_model(task: Task, cfg: run.RunConfig, wdir: pathlib.Path) -> Model | None:
    """``ptq calibrate --data`` with default options, then ``ptq export``, then its evaluation."""
    _log(f"{task.name}: ptq default")
    table = wdir / f"default-{cfg.calib}.json"
    cmd = [PTQ, "calibrate", str(task.model_path), "--data", str(task.calib_dir), "--limit", str(cfg.calib),
           "-o", str(table), "-q"]
    o = procs.run(cmd, timeout=cfg.timeout, mem_gib=cfg.mem_gib, log=table.with_suffix(".log"))
    if o.status != "ok":
        _log(f"{task.name}: ptq calibrate {o.status}: {o.stderr_tail}")
        return None
    exported, path = run.ptq_export(task, table, cfg)
    if path is None:
        _log(f"{task.name}: ptq export failed: {exported}")
        return None
    result = run.evaluate(task, path, cfg, path.with_suffix(".eval.json"))
    return Model("ptq-default", path, result) if "quant" in result else None


def best_ort(task: Task, models: list[Model]) -> Model | None:
    """The most accurate ORT export: task metric, then output SQNR."""
    orts = [m for m in models if m.key.startswith("ort")]
    return max(orts, key=lambda m: (m.evaluation["quant"][task.metric], m.evaluation.get("sqnr_db", -1e9)),
               default=None)


def _session(path: pathlib.Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # the float models carry unused initializers ORT warns about
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_models(models: list[Model], samples: list[np.ndarray], threads: int, rounds: int) -> dict[str, np.ndarray]:
    """Per model, ms of every run: an array [rounds, samples] (see the module docstring)."""
    sessions = [_session(m.path, threads) for m in models]
    names = [s.get_inputs()[0].name for s in sessions]
    for s, n in zip(sessions, names):  # warm-up: first-run allocations and thread start
        for x in samples[:3]:
            s.run(None, {n: x})
    k = len(models)
    ms = np.zeros((k, rounds, len(samples)))
    for r in range(rounds):
        for i, x in enumerate(samples):
            for step in range(k):
                j = (step + i + r) % k
                start = time.perf_counter()
                sessions[j].run(None, {names[j]: x})
                ms[j, r, i] = 1000.0 * (time.perf_counter() - start)
    return {m.key: ms[j] for j, m in enumerate(models)}


def summary(runs: np.ndarray) -> dict:
    """Median over every run of ``runs`` [rounds, samples]; the lowest and highest round's median."""
    per_round = np.median(runs, axis=1)
    return {"median": float(np.median(runs)), "min": float(per_round.min()), "max": float(per_round.max()),
            "rounds": [float(v) for v in per_round]}


def measure_task(task: Task, args: argparse.Namespace) -> dict:
    cfg = _cfg(args)
    wdir = WORK / "latency" / task.name
    (wdir / "ort").mkdir(parents=True, exist_ok=True)
    (wdir / "ptq").mkdir(parents=True, exist_ok=True)
    models = [Model("float", task.model_path, {})] + ort_models(task, cfg, wdir / "ort", args.rebuild)
    ptq = ptq_model(task, cfg, wdir / "ptq")
    if ptq is not None:
        models.append(ptq)
    best = best_ort(task, models)
    samples = [np.load(f) for f in sample_files(task.eval_dir, args.limit)]
    result = {"samples": len(samples), "best_ort": best.key if best else None,
              "accuracy": {m.key: m.evaluation["quant"][task.metric] for m in models if m.evaluation},
              "sqnr_db": {m.key: m.evaluation.get("sqnr_db") for m in models if m.evaluation},
              "threads": {}}
    for threads in args.threads:
        _log(f"{task.name}: timing {len(models)} models, {threads} thread(s), {args.rounds} rounds "
                 f"of {len(samples)} samples")
        load = os.getloadavg()[0]
        ms = time_models(models, samples, threads, args.rounds)
        entry = {"load_before": load, "load_after": os.getloadavg()[0],
                 "ms": {key: summary(v) for key, v in ms.items()}}
        orts = [m.key for m in models if m.key.startswith("ort")]
        if orts:
            fastest = min(orts, key=lambda key: entry["ms"][key]["median"])
            entry["fastest_ort"] = fastest
            if "ptq-default" in ms:
                for label, key in (("best", best.key), ("fastest", fastest)):
                    entry[f"ratio_{label}"] = summary(ms["ptq-default"] / ms[key])
        result["threads"][str(threads)] = entry
    return result


def _cell(s: dict | None, digits: int = 2) -> str:
    if not s:
        return "–"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


COLUMN_NAMES = {"ort-minmax": "MinMax", "ort-entropy": "Entropy", "ort-percentile": "Percentile",
                "ort-pre-minmax": "pre+MinMax", "ort-pre-entropy": "pre+Entropy",
                "ort-pre-percentile": "pre+Percentile"}


def markdown(results: dict) -> str:
    env = results["environment"]
    flags = results["vnni"]
    out = ["# ONNX Runtime latency of the exported models", "",
           f"Command: `{results['command']}` ({results['seconds']:.0f} s).  ",
           f"Machine: {env['cpus']} CPUs ({results['cpu']}), VNNI: "
           f"{'yes (' + ', '.join(flags) + ')' if flags else 'no'}; onnxruntime {env['onnxruntime']}; "
           f"ptq at {env['ptq']}.  ",
           f"Calibration: first {results['config']['calib']} samples; timing: first {results['config']['limit']} "
           f"evaluation samples, one at a time, {results['config']['rounds']} rounds, models interleaved.", "",
           "ms per sample: median over every run (lowest–highest median of one round).  Ratio: ptq / ORT "
           "run by run (same sample, moments apart), summarized the same way.", "",
           "| model | threads | float | ORT best | ORT fastest | ptq default | ptq / ORT best | ptq / ORT fastest | load |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name, t in results["tasks"].items():
        for threads, e in t["threads"].items():
            ms = e["ms"]
            best, fastest = t["best_ort"], e.get("fastest_ort")
            out.append(f"| {name} | {threads} | {_cell(ms.get('float'))} | "
                       f"{_cell(ms.get(best))} {COLUMN_NAMES.get(best, '')} | "
                       f"{_cell(ms.get(fastest))} {COLUMN_NAMES.get(fastest, '')} | {_cell(ms.get('ptq-default'))} | "
                       f"{_cell(e.get('ratio_best'))} | {_cell(e.get('ratio_fastest'))} | "
                       f"{e['load_before']:.1f}→{e['load_after']:.1f} |")
    out += ["", "Accuracy of each timed export on the whole evaluation folder (the task metric; output SQNR dB):", ""]
    for name, t in results["tasks"].items():
        cells = [f"{COLUMN_NAMES.get(k, k)} {v:.3f} ({t['sqnr_db'][k]:.1f} dB)" for k, v in t["accuracy"].items()]
        out.append(f"- {name}: " + "; ".join(cells))
    out += ["", "Every model's ms per sample, 1 thread / 2 threads:", ""]
    for name, t in results["tasks"].items():
        keys = next(iter(t["threads"].values()))["ms"].keys()
        cells = [f"{COLUMN_NAMES.get(k, k)} " + " / ".join(f"{e['ms'][k]['median']:.2f}" for e in t["threads"].values())
                 for k in keys]
        out.append(f"- {name}: " + "; ".join(cells))
    out += ["", "## Target (issue 10)", ""]
    for name, t in results["tasks"].items():
        for threads, e in t["threads"].items():
            r, f = e.get("ratio_best"), e.get("ratio_fastest")
            if r:
                out.append(f"- {'PASS' if r['median'] <= 1.05 else 'MISS'} {name} @{threads} thread(s): ptq / ORT best "
                           f"{r['median']:.3f} (needs <= 1.05); ptq / ORT fastest {f['median']:.3f}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ONNX Runtime latency of float, ORT and ptq exports.")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts (default 1,2)")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the samples (default 5)")
    parser.add_argument("--limit", type=int, default=100, help="evaluation samples timed (default 100)")
    parser.add_argument("--calib", type=int, default=100, help="calibration samples (default 100, as bench.run)")
    parser.add_argument("--rebuild", action="store_true", help="make ORT's exports again even if present")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per quantizer/export/evaluation")
    parser.add_argument("--mem-gib", type=float, default=16.0, help="address-space cap per process in GiB")
    parser.add_argument("--out", type=pathlib.Path, default=BENCH / "results-latency", help="results stem")
    args = parser.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    tasks = args.tasks.split(",")
    for name in tasks:
        if name not in TASKS:
            sys.exit(f"bench.latency: unknown task {name!r}; known: {', '.join(TASKS)}")
        if not TASKS[name].model_path.exists() or not TASKS[name].eval_dir.exists():
            sys.exit(f"bench.latency: {name}: model or data missing; run python -m bench.fetch and python -m bench.data")
    start = time.perf_counter()
    results = {"command": "python -m bench.latency " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
               "config": {"calib": args.calib, "limit": args.limit, "rounds": args.rounds, "threads": args.threads},
               "environment": run.environment(), "cpu": cpu_name(), "vnni": vnni(), "tasks": {}}
    for name in tasks:
        results["tasks"][name] = measure_task(TASKS[name], args)
    results["seconds"] = round(time.perf_counter() - start, 1)
    report = write_results(args.out, results, markdown(results))
    _log(f"wrote {report.relative_to(ROOT) if report.is_relative_to(ROOT) else report}")


if __name__ == "__main__":
    main()
