"""bench/results.md from the results document: one table, the command, the machine, the targets."""

from __future__ import annotations

import math

COLUMNS = ("ort-minmax", "ort-entropy", "ort-percentile", "ort-pre-minmax", "ort-pre-entropy",
           "ort-pre-percentile", "ptq-max", "ptq-percentile", "ptq-kl", "ptq-mse", "ptq-auto")
HEADERS = ("ORT MinMax", "ORT Entropy", "ORT Percentile", "ORT pre+MinMax", "ORT pre+Entropy",
           "ORT pre+Percentile", "ptq max", "ptq percentile", "ptq kl", "ptq mse (default)", "ptq auto")
TOLERANCE = {"magika": 0.01}     # task metric within this of float; others 0.005 (half a point)
DEFAULT_METHOD = "ptq-mse"


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _status(v: dict) -> str | None:
    """The cell text of a failed variant, or None if it produced a model that was evaluated."""
    if v.get("status", "ok") != "ok":
        return v["status"]
    if "eval_status" in v:
        return f"eval {v['eval_status']}"
    return None


def _clipped_cell(v: dict) -> str:
    """The largest difference, over the observed tensors, between the clipped mass the histogram
    predicts for the chosen range and the mass counted on every value; the counted mass there."""
    mass = v.get("clipped_mass")
    if not mass:
        return "–"
    if "worst" not in mass:
        return mass.get("status", "–")
    worst = mass["worst"]
    if worst is None:
        return "none observed"
    flag = "" if not mass["outside_bound"] else f", {len(mass['outside_bound'])} outside"
    return f"{100 * worst['difference']:.4f} % ({100 * worst['counted']:.3f} %{flag})"


def _rows(name: str, t: dict, cfg: dict) -> list[list[str]]:
    metric = t["metric"]
    fl = t["float_eval"].get("float", {})
    ft = t["float_time"].get("seconds")
    variants = [t["variants"].get(c, {"status": "–"}) for c in COLUMNS]

    def row(label: str, float_cell: str, cell) -> list[str]:
        cells = []
        for v in variants:
            failed = _status(v)
            cells.append(failed if failed else cell(v))
        return [name, label, float_cell] + cells

    def ratio(seconds, base):
        return f"{seconds / base:.2f}×" if seconds is not None and base else "–"

    rows = [row(metric, _num(fl.get(metric)), lambda v: _num(v.get("quant", {}).get(metric)))]
    if metric == "char_accuracy":
        rows.append(row("line_accuracy", _num(fl.get("line_accuracy")),
                        lambda v: _num(v.get("quant", {}).get("line_accuracy"))))
    rows.append(row("agreement with float", "1", lambda v: _num(v.get("agreement"))))
    rows.append(row("SQNR dB", "–", lambda v: _num(v.get("sqnr_db"), 1)))
    rows.append(row("SQNR dB, logits", "–", lambda v: _num(v.get("logits_sqnr_db"), 1)))
    rows.append(row("cosine", "1", lambda v: _num(v.get("cosine"), 4)))
    rows.append(row("onnx.checker full", "–", lambda v: v.get("checker", "–").split(":")[0]))
    rows.append(row("clipped mass: worst \\|predicted − counted\\| (counted)", "–", _clipped_cell))
    rows.append(row(f"calib time ×float @{cfg['calib']}", f"1× = {_num(ft, 2)} s",
                    lambda v: ratio(v.get("calib_seconds"), ft) if "calib_seconds" in v
                    else f"+{v['table_seconds']:.1f} s" if "table_seconds" in v else "–"))
    rows.append(row(f"peak RSS MB @{cfg['calib']}", _num(t["float_time"].get("peak_rss_mb"), 0),
                    lambda v: _num(v.get("peak_rss_mb"), 0)))
    s = t.get("scaling") or {}
    if s:
        sft = s["float_time"].get("seconds")
        cells = {c: s.get("ptq" if c == "ptq-max" else c) for c in COLUMNS}

        def scaled(label: str, fcell: str, fn) -> list[str]:
            out = []
            for c in COLUMNS:
                v = cells[c]
                out.append("–" if v is None else (v["status"] if v.get("status") != "ok" else fn(v)))
            return [name, label, fcell] + out
        rows.append(scaled(f"calib time ×float @{cfg['scale']}", f"1× = {_num(sft, 2)} s",
                           lambda v: ratio(v.get("calib_seconds"), sft)))
        rows.append(scaled(f"peak RSS MB @{cfg['scale']}", _num(s["float_time"].get("peak_rss_mb"), 0),
                           lambda v: _num(v.get("peak_rss_mb"), 0)))
    return rows


def targets(name: str, t: dict, cfg: dict) -> list[str]:
    """Issue 4's targets for ptq on one model, each as a line starting with PASS or MISS."""
    metric = t["metric"]
    v = t["variants"]
    ok = lambda c: _status(v.get(c, {"status": "–"})) is None  # noqa: E731
    ort = [c for c in COLUMNS if c.startswith("ort") and ok(c)]
    lines = []

    def line(passed: bool, text: str) -> None:
        lines.append(f"- {'PASS' if passed else 'MISS'} {name}: {text}")

    float_value = t["float_eval"].get("float", {}).get(metric)
    best_ort = max((v[c]["quant"][metric] for c in ort), default=None)
    best_ort_sqnr = max((v[c]["sqnr_db"] for c in ort), default=None)
    tol = TOLERANCE.get(name, 0.005)
    if ok(DEFAULT_METHOD) and float_value is not None:
        value = v[DEFAULT_METHOD]["quant"][metric]
        line((best_ort is None or value >= best_ort) and value >= float_value - tol - 1e-9,  # 0.995 vs 1 - 0.005
             f"{metric} of {DEFAULT_METHOD} (default) {value:.4f}; float {float_value:.4f} (needs >= "
             f"{float_value - tol:.4f}); best ORT {_num(best_ort, 4)}")
        sq = v[DEFAULT_METHOD]["sqnr_db"]
        line(best_ort_sqnr is None or sq >= best_ort_sqnr, f"SQNR of {DEFAULT_METHOD} {sq:.1f} dB; best ORT {_num(best_ort_sqnr, 1)} dB")
    else:
        line(False, f"{DEFAULT_METHOD} produced no evaluated model ({_status(v.get(DEFAULT_METHOD, {}))})")
    mass = v.get(DEFAULT_METHOD, {}).get("clipped_mass") or {}
    if "worst" in mass and mass["worst"] is not None:
        w = mass["worst"]
        line(not mass["outside_bound"],
             f"clipped mass of {DEFAULT_METHOD}: histogram predicts {100 * w['predicted']:.4f} %, every value counted "
             f"{100 * w['counted']:.4f} % on {w['tensor']} (largest difference of {mass['tensors']} tensors; needs "
             f"within 10 % or 0.01 %)" + (f"; outside: {', '.join(mass['outside_bound'][:5])}" if mass["outside_bound"] else ""))
    failed = [c for c in COLUMNS if c.startswith("ptq") and not ok(c)]
    line(not failed, "every ptq method runs from one observation pass" + (f" (failed: {', '.join(failed)})" if failed else ""))
    checks = {c: v[c].get("checker") for c in COLUMNS if c.startswith("ptq") and ok(c)}
    bad = [c for c, r in checks.items() if r != "ok"]
    line(not bad and not failed, "every ptq export passes onnx.checker full check and loads in ORT"
         + (f" (not: {', '.join(bad)})" if bad else ""))
    ft = t["float_time"].get("seconds")
    obs = v.get("ptq-max", {}).get("calib_seconds")
    if ft and obs is not None:
        line(obs <= 1.5 * ft, f"observation pass {obs:.2f} s = {obs / ft:.2f}× float inference {ft:.2f} s (needs <= 1.5×)")
    s = t.get("scaling") or {}
    if s and s.get("ptq", {}).get("status") == "ok" and v.get("ptq-max", {}).get("status") == "ok":
        r100, r500 = v["ptq-max"]["peak_rss_mb"], s["ptq"]["peak_rss_mb"]
        orts = s.get("ort-minmax", {})
        ort_rss = orts.get("peak_rss_mb") if orts.get("status") == "ok" else None
        line(r500 <= 1.1 * r100 and (ort_rss is None or r500 < ort_rss),
             f"peak RSS {r500:.0f} MB @{cfg['scale']} vs {r100:.0f} MB @{cfg['calib']} (needs <= 1.1×) and "
             f"ORT MinMax @{cfg['scale']} {_num(ort_rss, 0)} MB")
    return lines


def markdown(results: dict) -> str:
    """The whole results.md."""
    cfg = results["config"]
    env = results["environment"]
    head = ["model", "row", "float"] + list(HEADERS)
    out = ["# ptq benchmark on real models", "",
           f"Command: `{results['command']}` ({results['seconds']:.0f} s).  ",
           f"Machine: {env['cpus']} CPUs, {env['memory_gib']} GiB, {env['platform']}; Python {env['python']}, "
           f"onnx {env['onnx']}, onnxruntime {env['onnxruntime']}, numpy {env['numpy']}; ptq at {env.get('ptq', '?')}.  ",
           f"Calibration: first {cfg['calib']} samples of each calibration folder"
           + (f" ({cfg['scale']} for the @{cfg['scale']} rows)" if cfg.get("scale") else "")
           + f"; evaluation: {'all' if not cfg['eval_limit'] else 'first ' + str(cfg['eval_limit'])} evaluation samples; "
           f"each process capped at {cfg['mem_gib']:g} GiB of address space and {cfg['timeout']:g} s.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, t in results["tasks"].items():
        for r in _rows(name, t, cfg):
            out.append("| " + " | ".join(r) + " |")
    out += ["", "Calibration time is the quantizer's own measure (ptq: the observation pass, `seconds.observe`; "
            "ORT: the whole `quantize_static` call, plus `quant_pre_process` for pre) over plain float "
            "ONNX Runtime inference of the same samples one by one (the fastest of 3 passes; the quantizers run once, "
            "so load from other processes on the machine inflates their ratios, never the yardstick).  ptq percentile, kl, mse and auto reuse the "
            "observations of the max run (`--observations`): their time cell is the seconds that step took "
            "(auto also runs the model on the calibration samples to score its candidates), their RSS that step's.",
            "", "Metrics: cls and magika top-1 accuracy against the label; rec char accuracy (1 - normalized edit "
            "distance) and line accuracy (exact match); det hmean of box precision and recall at IoU > 0.5 against "
            "the rendered line boxes after DB post-processing.  Agreement: the decoded result equals the float "
            "model's (det: hmean against the float model's boxes).  SQNR over all output elements of all samples; "
            "\"SQNR dB, logits\" over the tensor the output Softmax/Sigmoid squashes (a saturated probability "
            "hides the error behind it: on cls three borderline samples of 400 carry 80 % of the output noise); "
            "cosine averaged over samples.",
            "", "## Targets (issue 4)", ""]
    for name, t in results["tasks"].items():
        out += targets(name, t, cfg)
    out += ["", "## Failures (last line of the process's stderr)", ""]
    out += failures(results) or ["none"]
    return "\n".join(out) + "\n"


def failures(results: dict) -> list[str]:
    """One line per variant that did not produce an evaluated model."""
    lines = []
    for name, t in results["tasks"].items():
        groups = [("", t["variants"]), (f" @{results['config'].get('scale')}", t.get("scaling") or {})]
        for suffix, variants in groups:
            for column, v in variants.items():
                if not isinstance(v, dict) or column == "float_time":
                    continue
                failed = _status(v)
                if failed and not failed.startswith("skipped"):
                    detail = v.get("error") or v.get("eval_error") or ""
                    lines.append(f"- {name} {column}{suffix}: {failed}: `{detail}`")
    return lines
