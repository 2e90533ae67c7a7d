"""x86 AVX2 int16 pair saturation: what each remedy costs, on the benchmark models.

    python -m bench.saturation [--tasks cls,magika,rec,det] [--qemu cls,magika] [--eval-limit N]

On an x86 CPU without VNNI, ONNX Runtime adds uint8 x int8 products in saturating int16 pairs
(``ptqcli.targets``).  For each model, one observation pass (ptq defaults, 100 calibration
samples) gives four scale tables that differ only in their weights:

- ``8-bit``: full 8-bit weights (``--cpu x86-vnni``), which pairs can saturate;
- ``pairs``: ptq's default (``--cpu any``): a channel's scale is raised just enough that none of
  its pairs can saturate;
- ``7-bit``: every channel that could saturate gets 7-bit codes (|q| <= 63), as ONNX Runtime's
  ``reduce_range`` does for every layer;
- ``u8u8``: 8-bit weights stored as uint8 with zero point 128, which ONNX Runtime multiplies with
  its exact uint8 x uint8 kernels.

Each is exported and scored on the evaluation set with ONNX Runtime's default session on this
CPU (on a VNNI CPU: the exact arithmetic) and, for the models named by ``--qemu``, under
``qemu-x86_64 -cpu Haswell`` (the AVX2 kernels; about ten times slower, so the large models are
left out by default).  Latency is measured natively, interleaved, at 1 and 2 threads.  Updates
bench/results-saturation.json (a run of some models keeps the others' results) and writes .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

from bench.common import BENCH, TASKS, WORK, sample_files, write_json
from ptqcli import api, runtime, targets
from ptqcli.graph import attr, prepare
from ptqcli.quantize import scale_table
from ptqcli.quantize.decide import CalibrationOptions
from ptqcli.quantize.qparams import QuantParams, bias_params

VARIANTS = ("8-bit", "pairs", "7-bit", "u8u8")


def _risky(rows: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Channels whose 8-bit codes hold a pair that can saturate."""
    s = np.broadcast_to(np.asarray(scales, dtype=np.float64), (rows.shape[0],))
    codes = np.clip(np.rint(rows / s[:, None, None]), -128, 127)
    return targets.pair_peaks(codes) > targets.PAIR_LIMIT


def _weights_rewritten(table: scale_table.ScaleTable, prepared, how: str) -> scale_table.ScaleTable:
    """``table`` (8-bit weights) with every weight as ``how`` says ("7-bit" or "u8u8"), and the
    biases rescaled to match."""
    tensors = dict(table.tensors)
    for anchor, group in table.groups.items():
        if group.weight is None:
            continue
        entry = tensors[group.weight]
        p = entry.params
        if how == "u8u8":
            zeros = (128,) * len(p.scale)
            params = QuantParams("uint8", p.scale, zeros, p.axis)
        else:
            node = prepared.index.node_by_name[anchor]
            w = prepared.index.array(group.weight)
            rows = targets.reduction_rows(node.op_type, w, group=int(attr(node, "group", 1)),
                                          trans_b=bool(attr(node, "transB", 0)))
            if rows is None:
                continue
            risky = _risky(rows, np.asarray(p.scale))
            if not risky.any():
                continue
            scale = np.asarray(p.scale, dtype=np.float32)
            amax = np.abs(rows).reshape(rows.shape[0], -1).max(axis=1)
            if scale.size == 1:
                scale = np.float32(amax.max() / 63.0).reshape(1)
            else:
                scale = np.where(risky, (amax / 63.0).astype(np.float32), scale)
            params = dataclasses.replace(p, scale=tuple(float(s) for s in scale))
        tensors[group.weight] = dataclasses.replace(entry, params=params, method=f"max-{how}")
        if group.bias is not None:
            b = tensors[group.bias]
            x = tensors[group.inputs[0]].params
            tensors[group.bias] = dataclasses.replace(b, params=bias_params(
                x, params, len(b.params.scale), b.params.axis or 0))
    return dataclasses.replace(table, tensors=tensors)


def _latency(paths: dict[str, pathlib.Path], files: list[pathlib.Path], threads: int, rounds: int) -> dict[str, float]:
    """Median seconds per sample of each model, runs interleaved model by model and round by round."""
    sessions = {}
    for name, path in paths.items():
        sessions[name] = runtime.session(path, threads=threads)
    feeds = [np.load(f) for f in files]
    input_name = next(iter(sessions.values())).get_inputs()[0].name
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for s in sessions.values():
        s.run(None, {input_name: feeds[0]})
    for _ in range(rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            for x in feeds:
                s.run(None, {input_name: x})
            times[name].append((time.perf_counter() - start) / len(feeds))
    return {n: float(np.median(t)) for n, t in times.items()}


def _evaluate(task: str, model: pathlib.Path, quant: pathlib.Path, out: pathlib.Path, limit: int | None,
              qemu: bool, optimization: str = "all") -> dict:
    cmd = [sys.executable, "-m", "bench.evaluate", task, str(model), str(quant), "--out", str(out),
           "--optimization", optimization] + (["--limit", str(limit)] if limit else [])
    if qemu:
        cmd = ["qemu-x86_64", "-cpu", "Haswell"] + cmd
    subprocess.run(cmd, check=True, cwd=BENCH.parent, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def run_task(task_name: str, *, calib: int, eval_limit: int | None, qemu_limit: int | None, qemu: bool,
             rounds: int) -> dict:
    task = TASKS[task_name]
    wdir = WORK / "saturation" / task_name
    shutil.rmtree(wdir, ignore_errors=True)
    wdir.mkdir(parents=True)
    base = api.calibrate(task.model_path, data=task.calib_dir, output=wdir / "8-bit.json",
                         options=CalibrationOptions(cpu="x86-vnni"),
                         data_options=api.DataOptions(limit=calib))
    pairs = api.calibrate(task.model_path, observations=base.observations_path, output=wdir / "pairs.json",
                          options=CalibrationOptions(cpu="any"))
    prepared = prepare(task.model_path)
    tables = {"8-bit": base.table_path, "pairs": pairs.table_path}
    for how in ("7-bit", "u8u8"):
        scale_table.write(_weights_rewritten(base.table, prepared, how), wdir / f"{how}.json")
        tables[how] = wdir / f"{how}.json"
    models = {v: api.export(task.model_path, tables[v], wdir / f"{v}.onnx") for v in VARIANTS}
    result: dict = {"variants": {}}
    for v in VARIANTS:
        row = {"native": _evaluate(task_name, task.model_path, models[v], wdir / f"{v}.native.json", eval_limit, False),
               "reference": _evaluate(task_name, task.model_path, models[v], wdir / f"{v}.ref.json", eval_limit, False,
                                      "none")}
        if qemu:
            row["qemu_avx2"] = _evaluate(task_name, task.model_path, models[v], wdir / f"{v}.qemu.json", qemu_limit, True)
        result["variants"][v] = row
    files = sample_files(task.eval_dir, 20)
    result["latency"] = {str(t): _latency({"float": task.model_path, **models}, files, t, rounds) for t in (1, 2)}
    return result


def _metric(row: dict, task: str) -> float:
    return row["quant"][TASKS[task].metric]


def markdown(results: dict) -> str:
    lines = ["# int16 pair saturation on x86 AVX2: the remedies", "",
             "Commands: " + "; ".join(f"{t}: `{c}`" for t, c in results["commands"].items()) + ".  ",
             f"CPU: {results['cpu']}.", "",
             "Task metric (and output SQNR, dB) of each export: ONNX Runtime reference arithmetic "
             "(optimizations off), default session on this CPU, default session under qemu Haswell (AVX2, "
             "no VNNI); latency of the default session on this CPU, ms per sample, median of interleaved rounds.", "",
             "| model | weights | reference | this CPU | AVX2 (qemu) | ms @1 thread | ms @2 threads |",
             "|---|---|---|---|---|---|---|"]
    for task, r in results["tasks"].items():
        lat = r["latency"]
        lines.append(f"| {task} | float | {r['variants']['8-bit']['reference']['float'][TASKS[task].metric]:.4f} | | | "
                     f"{lat['1']['float'] * 1e3:.2f} | {lat['2']['float'] * 1e3:.2f} |")
        for v in VARIANTS:
            row = r["variants"][v]

            def cell(key: str) -> str:
                if key not in row:
                    return "–"
                return f"{_metric(row[key], task):.4f} ({row[key]['sqnr_db']:.1f})"
            lines.append(f"| {task} | {v} | {cell('reference')} | {cell('native')} | {cell('qemu_avx2')} | "
                         f"{lat['1'][v] * 1e3:.2f} | {lat['2'][v] * 1e3:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Cost of each remedy for x86 AVX2 int16 pair saturation.")
    parser.add_argument("--tasks", default="cls,magika,rec,det")
    parser.add_argument("--calib", type=int, default=100)
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluation samples natively (default all)")
    parser.add_argument("--qemu", default="", help="comma-separated models also scored under qemu-x86_64 -cpu Haswell")
    parser.add_argument("--qemu-limit", type=int, default=None, help="evaluation samples under qemu")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds")
    parser.add_argument("--out", type=pathlib.Path, default=BENCH / "results-saturation")
    args = parser.parse_args(argv)
    out_json = args.out.with_suffix(".json")
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    results.setdefault("tasks", {})
    results.setdefault("commands", {})
    command = "python -m bench.saturation " + " ".join(argv if argv is not None else sys.argv[1:])
    results["cpu"] = runtime.int8_arithmetic().describe() + f"; {platform.machine()}, onnxruntime {ort.__version__}"
    qemu = set(filter(None, args.qemu.split(",")))
    for name in args.tasks.split(","):
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        results["tasks"][name] = run_task(name, calib=args.calib, eval_limit=args.eval_limit,
                                          qemu_limit=args.qemu_limit, qemu=name in qemu, rounds=args.rounds)
        results["commands"][name] = command
        write_json(out_json, results)
        args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
