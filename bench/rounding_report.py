"""bench/results-rounding.md from the results document: the metric table, the time table and the
targets of issue 13, line by line.

    python -m bench.rounding_report A.json B.json --out bench/results-rounding

joins the documents of runs made apart (say, the small models and one large model run side by side)
into one: models in the order given, each run's command and configuration kept."""

from __future__ import annotations

import argparse
import json
import pathlib

from bench.common import write_results
from bench.report import _num  # the number format of bench/results.md

COLUMNS = (("w8-nearest", "W8 nearest"), ("w8-adaround", "W8 AdaRound"), ("w8-adaround-bc", "W8 AdaRound+BC"),
           ("w4-nearest", "W4 nearest"), ("w4-adaround", "W4 AdaRound"), ("w4-adaround-bc", "W4 AdaRound+BC"),
           ("pt-nearest", "per-tensor W8"), ("pt-cle", "per-tensor +CLE"), ("pt-cle-bc", "per-tensor +CLE+BC"),
           ("max", "max (calibrated)"), ("df-mse", "data-free mse"), ("df-max", "data-free max"),
           ("df-cle-bc", "data-free +CLE+BC"))
TIMED = ("w8-adaround", "w8-adaround-bc", "w4-adaround", "w4-adaround-bc", "pt-cle-bc")
BUDGET_SECONDS = 15 * 60


def _cell(v: dict | None, key: str, digits: int) -> str:
    if v is None:
        return "–"
    if v.get("status", "ok") != "ok":
        return v["status"]
    return _num(v.get(key), digits)


def _metric_rows(name: str, m: dict) -> list[str]:
    v = m["variants"]
    rows = [f"| {name} | {m['metric']} | {_num(m['float'])} | "
            + " | ".join(_cell(v.get(c), "metric", 3) for c, _ in COLUMNS) + " |",
            f"| {name} | SQNR dB | – | " + " | ".join(_cell(v.get(c), "sqnr_db", 1) for c, _ in COLUMNS) + " |"]
    if any((x or {}).get("logits_sqnr_db") is not None for x in v.values()):
        rows.append(f"| {name} | logits SQNR dB | – | "
                    + " | ".join(_cell(v.get(c), "logits_sqnr_db", 1) for c, _ in COLUMNS) + " |")
    return rows


def _time_rows(name: str, m: dict) -> list[str]:
    rows = []
    base = m.get("float_seconds")
    for c in TIMED:
        v = m["variants"].get(c)
        if not v or v.get("status") != "ok":
            continue
        wall = v["wall_seconds"]
        learned = f"{v['learned']}/{v['layers']}" if v.get("iterations") else "–"
        ratio = f"{wall / base:.0f}×" if base else "–"
        load = "-".join(f"{x:.1f}" for x in v["load"]) if v.get("load") else "–"
        rows.append(f"| {name} | {c} | {_num(base, 2)} | {wall:.0f} | {_num(v.get('rounding_seconds'), 0)} | "
                    f"{_num(v.get('adaround_seconds'), 0)} | {v.get('iterations', '–')} | {v.get('passes', '–')} | "
                    f"{v.get('rows_samples', '–')} | {learned} | {ratio} | {load} |")
    return rows


def _points(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def targets(results: dict) -> list[str]:
    """The issue's targets, checked per model."""
    lines = []
    for name, m in results["models"].items():
        v, fl = m["variants"], m["float"]

        def metric(c):
            e = v.get(c) or {}
            return e.get("metric") if e.get("status", "ok") == "ok" else None

        n4, a4, b4 = metric("w4-nearest"), metric("w4-adaround"), metric("w4-adaround-bc")
        if None not in (fl, n4, a4):
            gap = fl - n4
            rec = (a4 - n4) / gap if gap > 0 else None
            rec_bc = (b4 - n4) / gap if gap > 0 and b4 is not None else None
            worse = "" if a4 >= n4 else "; AdaRound below nearest: NOT met"
            verdict = ("gap below 1 pt: recovery not judged" if gap < 0.01 else
                       ("90 % recovered: met" if rec >= 0.9 else "90 % recovered: NOT met")) + worse
            lines.append(f"- {name} W4A8: nearest {_num(n4)}, AdaRound {_num(a4)}, +BC {_num(b4)}, float {_num(fl)}; "
                         f"gap recovered {_num(_points(rec), 0)} % (+BC {_num(_points(rec_bc), 0)} %): {verdict}")
        n8, a8, b8 = metric("w8-nearest"), metric("w8-adaround"), metric("w8-adaround-bc")
        if None not in (n8, a8):
            s = [(v.get(c) or {}).get("sqnr_db") for c in ("w8-nearest", "w8-adaround", "w8-adaround-bc")]
            lg = [(v.get(c) or {}).get("logits_sqnr_db") for c in ("w8-nearest", "w8-adaround", "w8-adaround-bc")]
            logits = (f", logits SQNR {_num(lg[0], 1)} -> {_num(lg[1], 1)} (+BC {_num(lg[2], 1)}) dB"
                      if None not in lg[:2] else "")
            lines.append(f"- {name} W8A8: AdaRound {_num(_points(a8 - n8), 2)} pt "
                         f"(+BC {_num(_points(b8 - n8) if b8 is not None else None, 2)} pt), SQNR "
                         f"{_num(s[0], 1)} -> {_num(s[1], 1)} (+BC {_num(s[2], 1)}) dB{logits}: "
                         f"{'never worse: met' if a8 >= n8 else 'worse than nearest: NOT met'}")
        pc, pt, cle, cbc = metric("w8-nearest"), metric("pt-nearest"), metric("pt-cle"), metric("pt-cle-bc")
        if None not in (pc, pt, cle):
            best = max(x for x in (cle, cbc) if x is not None)
            lines.append(f"- {name} per-tensor: {_num(pt)} -> CLE {_num(cle)} -> CLE+BC {_num(cbc)} vs per-channel "
                         f"{_num(pc)}: {'within 1 pt: met' if pc - best <= 0.01 else 'NOT within 1 pt'}")
        walls = [(c, (v.get(c) or {}).get("wall_seconds")) for c in ("w8-adaround", "w8-adaround-bc", "w4-adaround",
                                                                       "w4-adaround-bc")]
        walls = [(c, w) for c, w in walls if w is not None]
        if walls:
            worst = max(w for _, w in walls)
            lines.append(f"- {name} AdaRound wall time: at most {worst / 60:.1f} min: "
                         f"{'within 15 min' if worst <= BUDGET_SECONDS else 'OVER 15 min'}")
    return lines


def _run_line(run: dict, cells: list[str] | None = None) -> str:
    """One run's command and setting; ``cells``: the model/variant cells of the tables it gave (None:
    a single run, every cell is its; empty: every variant it ran was replaced by a later run)."""
    env, config = run["environment"], run["config"]
    seconds = f"{run['seconds'] / 60:.0f} min" if "seconds" in run else "stopped part-way"
    gave = "" if cells is None else ("; gives: " + ", ".join(cells) if cells else
                                     "; every cell replaced by a later run")
    return (f"`{run['command']}` ({seconds}; ptq {env['ptq']}, onnxruntime {env['onnxruntime']}, numpy "
            f"{env['numpy']}, {env['cpus']} CPUs; {config['samples']} calibration samples, {config['iters']} "
            f"AdaRound iterations per layer, OPENBLAS_NUM_THREADS={config.get('openblas_threads')}{gave})")


def _cells(results: dict, run: int) -> list[str]:
    """The cells run ``run`` of a joined document gave: ``model variant, variant`` per model."""
    out = []
    for name, m in results["models"].items():
        mine = [c for c, v in m["variants"].items() if v.get("run") == run]
        if mine:
            out.append(f"{name} {' '.join(mine)}")
    return out


def joined(documents: list[dict]) -> dict:
    """One results document from several runs: their models and, under ``runs``, each run's
    command, configuration and environment.  Runs of one model join variant by variant (a later
    run's variant replaces an earlier run's of the same name; the model's float figures are the
    later run's), so a model's columns can come from runs made apart; each variant records the
    run it came from (``run``: its index in ``runs``)."""
    out: dict = {"runs": [], "models": {}}
    for doc in documents:
        runs = doc.get("runs") or [{k: doc[k] for k in ("command", "config", "environment", "seconds") if k in doc}]
        first = len(out["runs"])
        out["runs"] += runs
        for name, model in doc["models"].items():
            variants = {c: {**v, "run": v.get("run", 0) + first} for c, v in model["variants"].items()}
            if name in out["models"]:
                variants = {**out["models"][name]["variants"], **variants}
            out["models"][name] = {**model, "variants": variants}
    return out


def markdown(results: dict) -> str:
    runs = results.get("runs")
    lines = [_run_line(r, _cells(results, i)) for i, r in enumerate(runs)] if runs else [_run_line(results)]
    head = ["# Weight rounding benchmark", ""] + [f"- {line}" for line in lines] + ["",
            "## Task metric and output SQNR", "",
            "SQNR: of the model's first output against float over the evaluation folder; for a classifier "
            "that ends in a softmax (cls, magika) that is probabilities, whose error a handful of samples near "
            "the decision boundary make (cls W8 AdaRound at 22434bc: five of the 400 evaluation samples made "
            "97 % of it), so it moves by a dB when one of them does. logits SQNR: of the task's logits "
            "tensor (bench/common.py), the same samples.", "",
            "| model | row | float | " + " | ".join(h for _, h in COLUMNS) + " |",
            "|" + "---|" * (3 + len(COLUMNS))]
    for name, m in results["models"].items():
        head += _metric_rows(name, m)
    head += ["", "## Time", "",
             "Wall: the whole `ptq calibrate` process (observation pass included); rounding: the sequential "
             "pass; AdaRound: the layers' optimization alone; × float: wall over one float pass over the "
             "calibration samples; load: the 1-minute load average at the start and end of the variant "
             "(2 cores, shared).", "",
             "| model | variant | float pass s | wall s | rounding s | AdaRound s | iterations/layer | passes | "
             "samples | learned kept | × float | load |", "|" + "---|" * 12]
    for name, m in results["models"].items():
        head += _time_rows(name, m)
    head += ["", "## Targets (issue 13)", ""] + targets(results) + [""]
    return "\n".join(head)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Join rounding benchmark results and write their report.")
    parser.add_argument("results", nargs="+", type=pathlib.Path, help="results documents (.json) of bench.rounding")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="stem of the joined .json and .md")
    args = parser.parse_args(argv)
    doc = joined([json.loads(p.read_text()) for p in args.results])
    write_results(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
