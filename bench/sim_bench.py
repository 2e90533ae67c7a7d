"""Benchmark of the integer simulator (issue 5): agreement with ONNX Runtime's QDQ execution,
task metric, determinism and speed, one row per model, all measured in one run.

    python bench/sim_bench.py                                  # the bundled digits models
    python bench/sim_bench.py MODEL:TABLE:DATA[:TASK] ...      # any models
    python bench/sim_bench.py --task cls --task rec ...        # bench/cache tasks (ptq calibrate first)
    python bench/sim_bench.py --requant fp32 ...               # one arithmetic (default: both)

``TABLE`` may be ``calibrate=DIR``: the table is made by ``ptq calibrate`` on the samples in DIR
(default options) into ``bench/work/sim/``.  ``TASK`` (cls, rec, det, magika) scores decoded
outputs with ``bench.evaluate.Decoder``; without it, a ``labels.csv`` of integer classes in DATA
gives top-1 accuracy.  Targets (printed as PASS/FAIL): >= 99 % of output codes within 1 of ORT,
task metric within 0.5 point of ORT's, bit-identical re-runs and batch sizes, simulator time
per sample <= 5x ORT's.  Every model is run with each requantization arithmetic asked for:
``fixed`` (int32 multiplier and shift, integer hardware) and ``fp32`` (float32 factors, as
ONNX Runtime's CPU kernels apply them).  Times are interleaved batch by batch, so machine load hits both alike.
"local" is every integer kernel fed ORT's own input codes (ptq simulate --per-layer): where it is
~100 % while the output codes drift, the drift is rare one-code rounding differences carried
and amplified through the network, not a different arithmetic.  "ORT fused vs unfused" measures the same spread between two
correct runtimes: ONNX Runtime with its default optimizations (QLinear kernels) against the same
QDQ model run node by node (QuantizeLinear, DequantizeLinear, float operators).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from ptqcli import api  # noqa: E402
from ptqcli.analysis.evaluate import read_labels  # noqa: E402
from ptqcli.graph import prepare  # noqa: E402
from ptqcli.observe.dataset import batches, list_samples  # noqa: E402
from ptqcli.quantize import scale_table  # noqa: E402
from ptqcli.sim import build, run  # noqa: E402
from ptqcli.sim.compare import compare  # noqa: E402
from ptqcli.sim.fixed import REQUANT  # noqa: E402

WORK = ROOT / "bench" / "work" / "sim"
SAMPLES = ROOT / "sample_models"
DIGITS = [f"{SAMPLES / m}.onnx:calibrate={SAMPLES / 'digits' / 'calib'}:{SAMPLES / 'digits' / 'eval'}"
          for m in ("digits_cnn", "digits_transformer")]


def _case(text: str) -> tuple[pathlib.Path, str, pathlib.Path, str | None]:
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise SystemExit(f"{text!r}: expected MODEL:TABLE:DATA[:TASK]")
    return pathlib.Path(parts[0]), parts[1], pathlib.Path(parts[2]), parts[3] if len(parts) == 4 else None


def _table(model: pathlib.Path, spec: str, limit: int | None) -> pathlib.Path:
    if not spec.startswith("calibrate="):
        return pathlib.Path(spec)
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / f"{model.stem}.table.json"
    api.calibrate(model, data=spec.split("=", 1)[1], output=out,
                  data_options=api.DataOptions(limit=limit))
    return out


def _int_labels(data: pathlib.Path) -> dict[str, int] | None:
    path = data / "labels.csv"
    if not path.is_file():
        return None
    try:
        return read_labels(path)
    except Exception:  # labels that are not integer classes (a task decoder scores those)
        return None


def _task_metrics(task: str, prepared, table, files, batch_size, requant) -> dict[str, dict[str, float]]:
    """Decode the first output of the float model, ORT QDQ and the simulator per sample and
    score the three."""
    import onnxruntime as ort

    from bench.evaluate import Decoder
    from ptqcli.export.qdq import export

    decoder = Decoder(task, files[0].parent)
    session = ort.InferenceSession(export(prepared, table).SerializeToString(), providers=["CPUExecutionProvider"])
    float_session = ort.InferenceSession(prepared.model.SerializeToString(), providers=["CPUExecutionProvider"])
    program = build(prepared, table, requant=requant)
    name = prepared.index.output_names[0]
    got: dict[str, list] = {"float": [], "ort": [], "sim": []}
    for batch in batches(files, prepared.inputs, batch_size=batch_size):
        outs = {"float": float_session.run([name], batch.feeds)[0], "ort": session.run([name], batch.feeds)[0],
                "sim": run(program, batch.feeds).tensors[name].values}
        for key, out in outs.items():
            got[key].extend(decoder.decode(out[i:i + 1]) for i in range(batch.count))
    return {k: decoder.score(v, list(files)) for k, v in got.items()}


def _speed(prepared, table, files, batch_size, requant, repeats: int = 3, max_batches: int = 16) -> dict[str, float]:
    """Milliseconds per sample of the QDQ model in ONNX Runtime and of the simulator: each batch
    run ``repeats`` times by both, interleaved, keeping each one's fastest (the machine's other
    load only ever adds time)."""
    import onnxruntime as ort

    from ptqcli.export.qdq import export

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(export(prepared, table).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    program = build(prepared, table, requant=requant)
    total = {"ort": 0.0, "sim": 0.0}
    samples = 0
    for i, batch in enumerate(batches(files, prepared.inputs, batch_size=batch_size)):
        if i == max_batches:
            break
        best = {"ort": float("inf"), "sim": float("inf")}
        for _ in range(repeats):
            t0 = time.perf_counter()
            session.run(None, batch.feeds)
            t1 = time.perf_counter()
            run(program, batch.feeds)
            t2 = time.perf_counter()
            best["ort"], best["sim"] = min(best["ort"], t1 - t0), min(best["sim"], t2 - t1)
        for k in total:
            total[k] += best[k]
        samples += batch.count
    return {k: 1e3 * v / max(samples, 1) for k, v in total.items()}


def _runtime_spread(prepared, table, files, batch_size, requant) -> dict[str, float]:
    """How far ONNX Runtime is from itself: the output codes of the QDQ model with every graph
    optimization (fused QLinear kernels, the default) against the same model with none (each
    QuantizeLinear/DequantizeLinear run as written, the operators in float), and the simulator
    against the latter.  Both runtimes are correct; where they disagree, the 99 % target measures
    how a network amplifies one-code rounding differences, not the simulator's arithmetic."""
    import onnxruntime as ort

    from ptqcli.export.qdq import export
    from ptqcli.sim.compare import ELEM, Codes, _code_tensors, _with_outputs, output_code_tensors

    acts = [n for n, e in table.tensors.items() if e.role == "activation"]
    program = build(prepared, table, keep=acts, requant=requant)  # keeping codes alive costs memory, not time
    names = list(dict.fromkeys(n for v in output_code_tensors(program).values() for n in v))
    qdq = export(prepared, table)
    code_names = _code_tensors(qdq, names)
    if not code_names:
        return {}
    probe = _with_outputs(qdq, {c: ELEM[program.params[t].dtype] for t, c in code_names.items()}).SerializeToString()
    sessions = {}
    for key, level in (("fused", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                       ("unfused", ort.GraphOptimizationLevel.ORT_DISABLE_ALL)):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = level
        sessions[key] = ort.InferenceSession(probe, options, providers=["CPUExecutionProvider"])
    fetch = list(code_names.values())
    pairs = {"fused_vs_unfused": Codes(), "sim_vs_unfused": Codes(), "sim_vs_fused": Codes()}
    for batch in batches(files, prepared.inputs, batch_size=batch_size):
        got = {k: dict(zip(fetch, s.run(fetch, batch.feeds))) for k, s in sessions.items()}
        sim = run(program, batch.feeds, keep=list(code_names)).tensors
        for t, c in code_names.items():
            pairs["fused_vs_unfused"] = pairs["fused_vs_unfused"].add(got["fused"][c], got["unfused"][c])
            pairs["sim_vs_unfused"] = pairs["sim_vs_unfused"].add(sim[t].codes, got["unfused"][c])
            pairs["sim_vs_fused"] = pairs["sim_vs_fused"].add(sim[t].codes, got["fused"][c])
    return {k: v.within1_fraction for k, v in pairs.items()}


def _deterministic(prepared, table, files, requant) -> bool:
    """Same outputs, bit for bit, on a re-run and with batch sizes 1 and all."""
    program = build(prepared, table, requant=requant)
    files = files[:6]

    def outputs(size):  # per sample (samples of different shapes are never stacked)
        samples = []
        for b in batches(files, prepared.inputs, batch_size=size):
            out = run(program, b.feeds)
            samples.extend([out.tensors[n].values[i] for n in prepared.index.output_names] for i in range(b.count))
        return samples

    first = outputs(len(files))
    return all(all(np.array_equal(a, b) for x, y in zip(first, outputs(size)) for a, b in zip(x, y))
               for size in (len(files), 1))


def bench_case(model: pathlib.Path, table_spec: str, data: pathlib.Path, task: str | None, *,
               batch_size: int | None, limit: int | None, requant: str = "fixed") -> dict:
    start = time.perf_counter()
    table_path = _table(model, table_spec, limit)
    prepared = prepare(model)
    table = scale_table.load(table_path)
    files = list_samples(data, limit=limit)
    labels = None if task else _int_labels(data)
    result = compare(prepared, table, files, batch_size=batch_size, labels=labels, per_layer=True, requant=requant)
    local = [t.local for t in result.layers if t.local is not None and t.local.count]
    row = {
        "model": model.name, "requant": requant, "table": str(table_path), "samples": result.samples,
        "output_codes_within_1": result.output_codes_within1,
        "output_codes_equal": _equal(result),
        "top1_sim_vs_ort": result.top1.get("sim_vs_ort"),
        # every integer kernel fed ORT's own input codes: agreement of the arithmetic itself
        "local_equal_min": min((c.equal_fraction for c in local), default=None),
        "local_within_1_min": min((c.within1_fraction for c in local), default=None),
        "local_equal_all": sum(c.equal for c in local) / max(sum(c.count for c in local), 1),
        "first_divergence": result.first_divergence,
        "sqnr_db_sim_vs_float": {t.name: _finite(t.sim_vs_float.sqnr_db) for t in result.outputs},
        "sqnr_db_ort_vs_float": {t.name: _finite(t.ort_vs_float.sqnr_db) for t in result.outputs},
        "ms_per_sample": {k: 1e3 * v / max(result.samples, 1) for k, v in result.seconds.items()},
        "batch_size": batch_size or "auto",
        "fallbacks": [f"{f.node} ({f.op_type}): {f.reason}" for f in result.fallbacks],
        "overflows": [f"{o.node}: {o.count}" for o in result.overflows],
    }
    if result.accuracy:
        row["metric"] = {"name": "accuracy", "ort": result.accuracy["ort"], "sim": result.accuracy["sim"],
                         "float": result.accuracy["float"]}
    if task:
        scores = _task_metrics(task, prepared, table, files, batch_size, requant)
        key = next(iter(scores["ort"]))
        row["metric"] = {"name": key, "ort": scores["ort"][key], "sim": scores["sim"][key],
                         "float": scores["float"][key]}
    row["runtime_within_1"] = _runtime_spread(prepared, table, files, batch_size, requant)
    row["deterministic"] = _deterministic(prepared, table, files, requant)
    row["ms_per_sample_single_pass"] = row["ms_per_sample"]
    row["ms_per_sample"] = per = _speed(prepared, table, files, batch_size, requant)
    row["speed_ratio"] = per["sim"] / per["ort"] if per["ort"] else None
    row["threads"] = {"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
                      "ORT intra-op": "default"}
    row["targets"] = {
        "codes_within_1": row["output_codes_within_1"] is not None and row["output_codes_within_1"] >= 0.99,
        "metric_within_0.5pt": "metric" not in row or abs(row["metric"]["sim"] - row["metric"]["ort"]) <= 0.005 + 1e-9,
        "deterministic": row["deterministic"],
        "speed_5x": row["speed_ratio"] is not None and row["speed_ratio"] <= 5.0,
    }
    row["seconds"] = time.perf_counter() - start
    return row


def _equal(result) -> float | None:
    total = sum(t.sim_vs_ort.count for t in result.output_codes if t.sim_vs_ort is not None)
    return sum(t.sim_vs_ort.equal for t in result.output_codes if t.sim_vs_ort is not None) / total if total else None


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def print_table(rows: list[dict]) -> None:
    head = ("model", "requant", "samples", "codes=ORT %", "within 1 %", "ORT fused vs unfused within 1 %",
            "sim vs ORT unfused within 1 %", "local = % (all / worst layer)", "metric float", "metric ORT",
            "metric sim", "re-run/batch",
            "ms/sample sim", "ms/sample ORT", "ratio", "fallbacks", "targets")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        m = r.get("metric")
        failed = [k for k, ok in r["targets"].items() if not ok]
        lines.append(" | ".join(str(v) for v in (
            r["model"], r["requant"], r["samples"], _pct(r["output_codes_equal"]), _pct(r["output_codes_within_1"]),
            _pct(r["runtime_within_1"].get("fused_vs_unfused")), _pct(r["runtime_within_1"].get("sim_vs_unfused")),
            f"{_pct(r['local_equal_all'])} / {_pct(r['local_equal_min'])}",
            f"{m['name']} {_pct(m['float'])}" if m else "-", _pct(m["ort"]) if m else "-",
            _pct(m["sim"]) if m else "-",
            "identical" if r["deterministic"] else "DIFFERENT",
            f"{r['ms_per_sample']['sim']:.3f}", f"{r['ms_per_sample']['ort']:.3f}",
            f"{r['speed_ratio']:.1f}x" if r["speed_ratio"] else "-", len(r["fallbacks"]),
            "PASS" if not failed else "FAIL: " + ", ".join(failed))))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help="MODEL:TABLE:DATA[:TASK]; TABLE may be calibrate=DIR")
    parser.add_argument("--task", action="append", default=[],
                        help="a bench/cache task (cls, rec, det, magika): its model, calib and eval folders")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per run (default: automatic)")
    parser.add_argument("--limit", type=int, default=None, help="first N samples of each folder")
    parser.add_argument("--requant", action="append", choices=REQUANT, default=[],
                        help="requantization arithmetic to run (repeatable; default: every one)")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write the rows here too")
    args = parser.parse_args(argv)
    cases = [_case(c) for c in args.cases]
    if args.task:
        from bench.common import TASKS

        for name in args.task:
            t = TASKS[name]
            cases.append((t.model_path, f"calibrate={t.calib_dir}", t.eval_dir, name))
    if not cases:
        cases = [_case(c) for c in DIGITS]
    rows = []
    for model, table, data, task in cases:
        for requant in args.requant or REQUANT:
            print(f"{model.name} ({requant}): ...", file=sys.stderr, flush=True)
            rows.append(bench_case(model, table, data, task, batch_size=args.batch_size, limit=args.limit,
                                   requant=requant))
            table = rows[-1]["table"]  # calibrated once per model
            print(json.dumps(rows[-1], sort_keys=True), file=sys.stderr, flush=True)
    print_table(rows)
    for r in rows:
        if r["fallbacks"] or r["overflows"]:
            print(f"\n{r['model']} ({r['requant']}): fallbacks {r['fallbacks']}; overflows {r['overflows']}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
