"""The rounding benchmark: nearest vs AdaRound vs AdaRound + bias correction at W8A8 and W4A8,
per-tensor weights with and without cross-layer equalization, and the data-free mode, on every
benchmark model and the two sample models.

    python -m bench.rounding                      # all models (hours on a shared 2-core machine)
    python -m bench.rounding --task digits_cnn --task cls

Every calibration, export and evaluation runs ``ptq`` or ``bench.evaluate`` in its own process
(``bench.procs``: memory cap, timeout, wall time).  Writes bench/results-rounding.json and .md
(``--out`` changes the stem).  The data-free runs need each model's input range and, where the
model does not fix it, its spatial size: that is what the preprocessing produces (``INPUTS``),
which a user of ``--data-free`` knows without data.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Callable

from bench import procs
from bench.common import BENCH, DATA, MODELS, ROOT, TASKS, WORK, write_json, write_results
from bench.rounding_report import markdown
from bench.run import environment

PY = sys.executable
PTQ = str(pathlib.Path(sys.executable).with_name("ptq"))
SAMPLES = ROOT / "sample_models"


@dataclass(frozen=True)
class Model:
    """One benchmarked model: ``kind`` "bench" (scored by bench.evaluate) or "sample" (ptq evaluate
    with the digits labels); ``data_free``: its input, range and size for --data-free, or None
    when it has no BatchNorm."""

    name: str
    path: pathlib.Path
    calib: pathlib.Path
    eval: pathlib.Path
    metric: str
    kind: str
    data_free: tuple[str, str, str | None] | None


#: Input name, range (bench/ocr_prep.py normalizes pixels to [-1, 1]; the digits to [-1, 1]) and
#: spatial size (the sizes bench/data.py renders) for --data-free.
INPUTS = {"digits_cnn": ("image", "-1:1", None), "cls": ("x", "-1:1", "48x192"), "rec": ("x", "-1:1", "48x320"),
          "det": ("x", "-1:1", "480x640")}


def models() -> dict[str, Model]:
    out = {}
    for name in ("digits_cnn", "digits_transformer"):
        out[name] = Model(name, SAMPLES / f"{name}.onnx", SAMPLES / "digits" / "calib", SAMPLES / "digits" / "eval",
                          "accuracy", "sample", INPUTS.get(name))
    for name, task in TASKS.items():
        out[name] = Model(name, MODELS / task.model, DATA / name / "calib", DATA / name / "eval", task.metric,
                          "bench", INPUTS.get(name))
    return out


#: (column, ptq calibrate arguments); data-free columns get the input options appended.
VARIANTS = (
    ("w8-nearest", []),
    ("w8-adaround", ["--weights", "adaround"]),
    ("w8-adaround-bc", ["--weights", "adaround", "--bias-correction"]),
    ("w4-nearest", ["--weight-bits", "4"]),
    ("w4-adaround", ["--weight-bits", "4", "--weights", "adaround"]),
    ("w4-adaround-bc", ["--weight-bits", "4", "--weights", "adaround", "--bias-correction"]),
    ("pt-nearest", ["--per-tensor-weights"]),
    ("pt-cle", ["--per-tensor-weights", "--equalize"]),
    ("pt-cle-bc", ["--per-tensor-weights", "--equalize", "--bias-correction"]),
    ("max", ["--method", "max"]),
    ("df-mse", ["--data-free"]),
    ("df-max", ["--data-free", "--method", "max"]),
    ("df-cle-bc", ["--data-free", "--equalize", "--bias-correction"]),
)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _json(text: str) -> dict:
    start = text.find("{")
    return json.loads(text[start:]) if start >= 0 else {}


def _failure(o: procs.Outcome) -> dict:
    return {"status": o.status, "error": o.stderr_tail.splitlines()[-1][:300] if o.stderr_tail else f"exit {o.returncode}"}


def evaluate(model: Model, quant: pathlib.Path | None, out: pathlib.Path, timeout: float) -> dict:
    """Task metric (and, for a quantized model, SQNR against float) in its own process."""
    if model.kind == "bench":
        cmd = [PY, "-m", "bench.evaluate", model.name, str(model.path)] + ([str(quant)] if quant else [])
        o = procs.run(cmd + ["--out", str(out)], timeout=timeout, log=out.with_suffix(".log"))
        if o.status != "ok":
            return _failure(o)
        doc = json.loads(out.read_text())
        result = {"float": doc["float"].get(model.metric)}
        if quant is not None:
            result.update(metric=doc["quant"].get(model.metric), sqnr_db=doc.get("sqnr_db"),
                          logits_sqnr_db=doc.get("logits_sqnr_db"))
            if "line_accuracy" in doc["quant"]:
                result["line_accuracy"] = doc["quant"]["line_accuracy"]
        return result
    cmd = [PTQ, "evaluate", str(model.path), str(quant or model.path), "--data", str(model.eval),
           "--labels", str(model.eval / "labels.csv"), "--json", "-q"]
    o = procs.run(cmd, timeout=timeout, log=out.with_suffix(".log"))
    if o.status != "ok":
        return _failure(o)
    doc = _json(o.stdout)
    agreement = next(iter(doc["outputs"].values()))
    return {"float": doc["accuracy"]["float"], "metric": doc["accuracy"]["quantized"],
            "sqnr_db": agreement["sqnr_db"]}


def float_seconds(model: Model, samples: int, timeout: float, wdir: pathlib.Path) -> float | None:
    """The fastest of three plain float passes over the calibration samples (bench.float_time)."""
    o = procs.run([PY, "-m", "bench.float_time", str(model.path), str(model.calib), "--limit", str(samples)],
                  timeout=timeout, log=wdir / "float-time.log")
    return _json(o.stdout).get("seconds") if o.status == "ok" else None


def variant(model: Model, column: str, args: list[str], cfg: argparse.Namespace, wdir: pathlib.Path) -> dict:
    """Calibrate, export and evaluate one variant; its figures or its failure."""
    if column.startswith("df-"):
        if model.data_free is None:
            return {"status": "no BatchNorm"}
        name, span, size = model.data_free
        args = args + ["--fixed-range", f"{name}={span}"] + (["--size", size] if size else [])
    else:
        args = args + ["--data", str(model.calib), "--limit", str(cfg.samples)]
    if "adaround" in args:
        args = args + ["--adaround-iters", str(cfg.iters)]
    table = wdir / f"{column}.json"
    load = os.getloadavg()[0]  # the machine is shared: a wall time means little without the load
    o = procs.run([PTQ, "calibrate", str(model.path), "-o", str(table), "--json"] + args, timeout=cfg.timeout,
                  log=wdir / f"{column}.calibrate.log")
    if o.status != "ok":
        return _failure(o)
    summary = _json(o.stdout)
    result = {"status": "ok", "wall_seconds": round(o.seconds, 2), "peak_rss_mb": round(o.peak_rss_mb),
              "load": [round(load, 2), round(os.getloadavg()[0], 2)]}
    rounding = summary.get("rounding")
    if rounding:
        layers = rounding["layers"]
        result.update(rounding_seconds=rounding["seconds"], passes=rounding["passes"], rows_samples=rounding["samples"],
                      layers=len(layers), learned=sum(x["learned"] for x in layers),
                      iterations=max((x["iterations"] for x in layers), default=0),
                      adaround_seconds=round(sum(x["seconds"] for x in layers), 2))
    if "equalized" in summary:
        result["equalized_pairs"] = summary["equalized"]["pairs"]
    onnx_path = table.with_suffix(".onnx")
    e = procs.run([PTQ, "export", str(model.path), "--table", str(table), "-o", str(onnx_path), "-q"],
                  timeout=cfg.timeout, log=wdir / f"{column}.export.log")
    if e.status != "ok":
        return {**result, **_failure(e), "status": f"export {e.status}"}
    result.update(evaluate(model, onnx_path, wdir / f"{column}.eval.json", cfg.timeout))
    return result


def run_model(model: Model, cfg: argparse.Namespace, save: Callable[[dict], None]) -> dict:
    """Every variant of ``model`` (those of ``--only``, in the order given); ``save(partial)``
    after each, so that a run stopped part-way keeps the variants it finished."""
    wdir = WORK / "rounding" / model.name
    shutil.rmtree(wdir, ignore_errors=True)
    wdir.mkdir(parents=True)
    _log(f"{model.name}: float")
    out = {"metric": model.metric, "float": evaluate(model, None, wdir / "float.eval.json", cfg.timeout).get("float"),
           "float_seconds": float_seconds(model, cfg.samples, cfg.timeout, wdir), "variants": {}}
    arguments = dict(VARIANTS)
    for column in cfg.only or arguments:
        _log(f"{model.name}: {column}")
        out["variants"][column] = variant(model, column, list(arguments[column]), cfg, wdir)
        save(out)
    return out


def main(argv: list[str] | None = None) -> None:
    known = models()
    parser = argparse.ArgumentParser(description="Weight rounding (nearest, AdaRound, bias correction, CLE, data-free).")
    parser.add_argument("--task", action="append", choices=sorted(known), help="model (repeatable; default all)")
    parser.add_argument("--only", action="append", choices=[c for c, _ in VARIANTS], help="variant (repeatable; run in the order given)")
    parser.add_argument("--samples", type=int, default=100, help="calibration samples (default 100)")
    parser.add_argument("--iters", type=int, default=1000, help="AdaRound iterations per layer (default 1000)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per process (default 3600)")
    parser.add_argument("--out", type=pathlib.Path, default=BENCH / "results-rounding", help="results stem")
    cfg = parser.parse_args(argv)
    names = cfg.task or list(known)
    start = time.perf_counter()
    results = {"command": "python -m bench.rounding " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
               "config": {"samples": cfg.samples, "iters": cfg.iters, "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS")},
               "environment": environment(), "models": {}}
    def save(partial: dict, name: str) -> None:  # a long run keeps what it has
        results["models"][name] = partial
        write_json(cfg.out.with_suffix(".json"), results)

    for name in names:
        run_model(known[name], cfg, lambda partial, name=name: save(partial, name))
    results["seconds"] = round(time.perf_counter() - start, 1)
    report = write_results(cfg.out, results, markdown(results))
    _log(f"wrote {report} in {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
