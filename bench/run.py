"""The benchmark: ptq and ONNX Runtime's quantize_static side by side on the real models.

    python -m bench.run            # all four models, 100 calibration samples, scaling rows at 500
    python -m bench.run --smoke    # cls and Magika, 50 samples, no scaling rows (CI, < 5 minutes)

Every quantizer, export and evaluation runs in its own process (``bench.procs``) with a memory
cap and a timeout; its peak RSS and wall time are measured, and a failure (exception, "OOM",
"timeout") is recorded as that variant's result.  Writes bench/results.json and bench/results.md
(``--out`` changes the stem).  Run ``python -m bench.fetch`` and ``python -m bench.data`` first.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy
import onnx
import onnxruntime

from bench import procs, report
from bench.common import BENCH, ROOT, TASKS, WORK, Task, read_json, write_results

PY = sys.executable
PTQ = str(pathlib.Path(sys.executable).with_name("ptq"))
ORT_VARIANTS = (  # (column, method, pre-process)
    ("ort-minmax", "MinMax", False), ("ort-entropy", "Entropy", False), ("ort-percentile", "Percentile", False),
    ("ort-pre-minmax", "MinMax", True), ("ort-pre-entropy", "Entropy", True), ("ort-pre-percentile", "Percentile", True),
)
PTQ_METHODS = ("max", "percentile", "kl", "mse", "auto")


@dataclass(frozen=True)
class RunConfig:
    """What one benchmark run covers and how hard it may push the machine."""

    tasks: tuple[str, ...]
    calib: int               # calibration samples for the main rows
    scale: int | None        # calibration samples for the scaling rows (None: no scaling rows)
    eval_limit: int | None   # evaluation samples (None: the whole folder)
    timeout: float           # seconds per quantizer / export / evaluation process
    mem_gib: float           # address-space cap per process
    ort: bool = True         # also run ONNX Runtime's quantize_static variants


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _json_line(text: str) -> dict:
    """The last JSON document printed on stdout (the CLIs print one)."""
    text = text.strip()
    start = text.find("{")
    return json.loads(text[start:]) if start >= 0 else {}


def _outcome_fields(o: procs.Outcome) -> dict:
    fields = {"status": o.status, "wall_seconds": round(o.seconds, 3), "peak_rss_mb": round(o.peak_rss_mb, 1)}
    if o.status != "ok":
        fields["error"] = o.stderr_tail.splitlines()[-1][:300] if o.stderr_tail else f"exit code {o.returncode}"
    return fields


def evaluate(task: Task, quant: pathlib.Path | None, cfg: RunConfig, out: pathlib.Path) -> dict:
    """Run bench.evaluate in its own process; its JSON, or a status when it failed."""
    cmd = [PY, "-m", "bench.evaluate", task.name, str(task.model_path)] + ([str(quant)] if quant else [])
    cmd += ["--out", str(out)] + (["--limit", str(cfg.eval_limit)] if cfg.eval_limit else [])
    o = procs.run(cmd, timeout=cfg.timeout, mem_gib=cfg.mem_gib, log=out.with_suffix(".log"))
    if o.status != "ok":
        return {"eval_status": "load/run error" if o.status == "error" else o.status,
                "eval_error": o.stderr_tail.splitlines()[-1][:300] if o.stderr_tail else ""}
    return read_json(out)


def ort_variant(task: Task, method: str, pre: bool, samples: int, cfg: RunConfig, wdir: pathlib.Path,
                with_eval: bool = True) -> dict:
    """quantize_static in its own process, then (if it worked) the evaluation of its model."""
    out = wdir / f"{'pre-' if pre else ''}{method.lower()}-{samples}.onnx"
    cmd = [PY, "-m", "bench.ort_quant", str(task.model_path), str(task.calib_dir), str(out),
           "--method", method, "--limit", str(samples)] + (["--pre"] if pre else [])
    o = procs.run(cmd, timeout=cfg.timeout, mem_gib=cfg.mem_gib, log=out.with_suffix(".log"))
    result = _outcome_fields(o)
    if o.status == "ok":
        result["calib_seconds"] = _json_line(o.stdout).get("seconds")
        if with_eval:
            result.update(evaluate(task, out, cfg, out.with_suffix(".eval.json")))
    return result


def ptq_observe(task: Task, samples: int, wdir: pathlib.Path, cfg: RunConfig) -> tuple[dict, pathlib.Path | None]:
    """One observation pass (``ptq calibrate --data``, method max); its result and observations file."""
    table = wdir / f"max-{samples}.json"
    cmd = [PTQ, "calibrate", str(task.model_path), "--data", str(task.calib_dir), "--limit", str(samples),
           "-o", str(table), "--method", "max", "--json"]
    o = procs.run(cmd, timeout=cfg.timeout, mem_gib=cfg.mem_gib, log=table.with_suffix(".log"))
    result = _outcome_fields(o)
    if o.status != "ok":
        return result, None
    summary = _json_line(o.stdout)
    result["calib_seconds"] = summary["seconds"]["observe"]
    result["observed_tensors"] = summary.get("observed_tensors")
    return result, pathlib.Path(summary["observations"])


def ptq_method(task: Task, method: str, observations: pathlib.Path | None, samples: int, cfg: RunConfig,
               wdir: pathlib.Path) -> tuple[dict, pathlib.Path | None]:
    """``ptq calibrate --observations`` for one method (max reuses the observing run's table)."""
    table = wdir / f"{method}-{samples}.json"
    if method == "max":
        return {"status": "ok"}, table
    cmd = [PTQ, "calibrate", str(task.model_path), "--observations", str(observations), "-o", str(table),
           "--method", method, "--json"]
    if method == "auto":  # the search scores candidate tables on calibration samples
        cmd += ["--data", str(task.calib_dir), "--limit", str(samples)]
    o = procs.run(cmd, timeout=cfg.timeout, mem_gib=cfg.mem_gib, log=table.with_suffix(".log"))
    result = _outcome_fields(o)
    if o.status == "ok":
        result["table_seconds"] = _json_line(o.stdout)["seconds"]["total"]
        return result, table
    return result, None


def ptq_export(task: Task, table: pathlib.Path, cfg: RunConfig) -> tuple[dict, pathlib.Path | None]:
    """``ptq export`` in its own process."""
    out = table.with_suffix(".onnx")
    cmd = [PTQ, "export", str(task.model_path), "--table", str(table), "-o", str(out), "-q"]
    o = procs.run(cmd, timeout=cfg.timeout, mem_gib=cfg.mem_gib, log=table.with_suffix(".export.log"))
    if o.status != "ok":
        return {"status": f"export {o.status}", "error": o.stderr_tail.splitlines()[-1][:300] if o.stderr_tail else ""}, None
    return {}, out


def clipped_mass(task: Task, observations: pathlib.Path, tables: dict[str, pathlib.Path], samples: int,
                 cfg: RunConfig, wdir: pathlib.Path) -> dict:
    """``bench.clipped_mass`` over every ptq table in one process: per column, the largest
    difference between the clipped mass the histograms predict and the mass counted on every value."""
    cmd = [PY, "-m", "bench.clipped_mass", str(task.model_path), str(observations), str(task.calib_dir),
           "--limit", str(samples)]
    for table in tables.values():
        cmd += ["--table", str(table)]
    o = procs.run(cmd, timeout=cfg.timeout, mem_gib=cfg.mem_gib, log=wdir / "clipped-mass.log")
    if o.status != "ok":
        return {column: {"status": o.status} for column in tables}
    found = _json_line(o.stdout)["tables"]
    return {column: found[str(table)] for column, table in tables.items()}


def float_time(task: Task, samples: int, cfg: RunConfig, wdir: pathlib.Path) -> dict:
    """Plain float inference over the calibration samples, in its own process."""
    o = procs.run([PY, "-m", "bench.float_time", str(task.model_path), str(task.calib_dir), "--limit", str(samples)],
                  timeout=cfg.timeout, mem_gib=cfg.mem_gib, log=wdir / f"float-time-{samples}.log")
    result = _outcome_fields(o)
    if o.status == "ok":
        result["seconds"] = _json_line(o.stdout)["seconds"]
    return result


def run_task(task: Task, cfg: RunConfig) -> dict:
    """Every variant of one model: float, six ORT baselines, four ptq methods, scaling rows."""
    wdir = WORK / task.name
    shutil.rmtree(wdir, ignore_errors=True)
    (wdir / "ort").mkdir(parents=True)
    (wdir / "ptq").mkdir(parents=True)
    _log(f"{task.name}: float")
    result: dict = {"metric": task.metric, "calib_samples": cfg.calib, "variants": {}, "scaling": {}}
    result["float_eval"] = evaluate(task, None, cfg, wdir / "float.eval.json")
    result["float_time"] = float_time(task, cfg.calib, cfg, wdir)
    for column, method, pre in ORT_VARIANTS if cfg.ort else ():
        _log(f"{task.name}: {column}")
        result["variants"][column] = ort_variant(task, method, pre, cfg.calib, cfg, wdir / "ort")
    _log(f"{task.name}: ptq observe")
    observed, obs_path = ptq_observe(task, cfg.calib, wdir / "ptq", cfg)
    tables = {}
    for method in PTQ_METHODS:
        _log(f"{task.name}: ptq-{method}")
        if obs_path is None:
            result["variants"][f"ptq-{method}"] = dict(observed)
            continue
        entry, table = ptq_method(task, method, obs_path, cfg.calib, cfg, wdir / "ptq")
        if method == "max":
            entry = dict(observed)
        if table is not None:
            tables[f"ptq-{method}"] = table
            exported, model = ptq_export(task, table, cfg)
            entry.update(exported)
            if model is not None:
                entry.update(evaluate(task, model, cfg, model.with_suffix(".eval.json")))
        result["variants"][f"ptq-{method}"] = entry
    if tables:
        _log(f"{task.name}: clipped mass, predicted vs counted")
        for column, mass in clipped_mass(task, obs_path, tables, cfg.calib, cfg, wdir / "ptq").items():
            result["variants"][column]["clipped_mass"] = mass
    if cfg.scale:
        result["scaling"] = run_scaling(task, cfg, wdir, result["variants"])
    return result


def run_scaling(task: Task, cfg: RunConfig, wdir: pathlib.Path, variants: dict) -> dict:
    """Calibration time and peak RSS at ``cfg.scale`` samples: ptq's observation pass and the plain
    ORT variants (those that failed at the smaller count are not tried again)."""
    samples = cfg.scale
    rows = {"float_time": float_time(task, samples, cfg, wdir)}
    _log(f"{task.name}: scaling ptq observe @{samples}")
    rows["ptq"], _ = ptq_observe(task, samples, wdir / "ptq", cfg)
    for column, method, pre in ORT_VARIANTS if cfg.ort else ():
        if pre:
            continue
        if variants[column]["status"] != "ok":
            rows[column] = {"status": f"skipped ({variants[column]['status']} at {cfg.calib})"}
            continue
        _log(f"{task.name}: scaling {column} @{samples}")
        rows[column] = ort_variant(task, method, pre, samples, cfg, wdir / "ort", with_eval=False)
    return rows


def environment() -> dict:
    """Machine and versions line of the report."""
    return {"python": platform.python_version(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
            "platform": platform.platform(), "ptq": _ptq_revision()}


def _ptq_revision() -> str:
    """The commit ptq was at, with "+changes" when its tree had uncommitted edits outside bench/."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", ".", ":!bench"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ptq vs ONNX Runtime quantize_static on real models.")
    parser.add_argument("--smoke", action="store_true", help="cls and Magika, 50 samples, no scaling rows")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of " + ",".join(TASKS))
    parser.add_argument("--calib", type=int, default=None, help="calibration samples (default 100; smoke 50)")
    parser.add_argument("--scale", type=int, default=None, help="samples of the scaling rows (default 500; smoke none)")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluation samples (default all; smoke 200)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per process (default 900; smoke 120)")
    parser.add_argument("--mem-gib", type=float, default=16.0, help="address-space cap per process in GiB")
    parser.add_argument("--ptq-only", action="store_true", help="skip ONNX Runtime's quantize_static variants")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="results stem (default bench/results[-smoke])")
    args = parser.parse_args(argv)
    default_tasks = ("cls", "magika") if args.smoke else tuple(TASKS)
    cfg = RunConfig(tasks=tuple(args.tasks.split(",")) if args.tasks else default_tasks,
                    calib=args.calib or (50 if args.smoke else 100),
                    scale=None if args.smoke and args.scale is None else (args.scale or 500),
                    eval_limit=args.eval_limit or (200 if args.smoke else None),
                    timeout=args.timeout or (120.0 if args.smoke else 900.0), mem_gib=args.mem_gib,
                    ort=not args.ptq_only)
    for name in cfg.tasks:
        if not TASKS[name].model_path.exists() or not TASKS[name].calib_dir.exists():
            sys.exit(f"bench: {name}: model or data missing; run python -m bench.fetch and python -m bench.data")
    start = time.perf_counter()
    results = {"command": "python -m bench.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
               "config": cfg.__dict__, "environment": environment(), "tasks": {}}
    for name in cfg.tasks:
        results["tasks"][name] = run_task(TASKS[name], cfg)
    results["seconds"] = round(time.perf_counter() - start, 1)
    stem = args.out or BENCH / ("results-smoke" if args.smoke else "results")
    written = write_results(stem, results, report.markdown(results))
    _log(f"wrote {written.relative_to(ROOT) if written.is_relative_to(ROOT) else written} "
         f"in {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
