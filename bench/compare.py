"""Two benchmark results side by side: the ptq columns of ``bench.run`` before and after a change.

    python -m bench.compare BEFORE.json AFTER.json

Prints a Markdown table: per model and ptq method, the task metric, output SQNR and the clipped
mass column (``bench.clipped_mass``: the largest difference between the clipped mass the
histograms predict and the mass counted on every value, and the mass counted there) of each
result; then, per model, the observation pass's peak RSS at both sample counts.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from bench.report import _clipped_cell, _num


def _cells(v: dict, metric: str) -> list[str]:
    if v.get("status", "ok") != "ok" and "quant" not in v:
        return [v.get("status", "–")] * 3
    return [_num(v.get("quant", {}).get(metric), 3), _num(v.get("sqnr_db"), 1), _clipped_cell(v)]


def _rss(t: dict) -> str:
    """Peak RSS of the observing run at the calibration and the scaling sample counts."""
    values = [t.get("variants", {}).get("ptq-max", {}).get("peak_rss_mb"),
              t.get("scaling", {}).get("ptq", {}).get("peak_rss_mb")]
    return " / ".join(_num(v, 0) for v in values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ptq columns of two bench.run results side by side.")
    parser.add_argument("before", type=pathlib.Path)
    parser.add_argument("after", type=pathlib.Path)
    args = parser.parse_args(argv)
    before, after = (json.loads(p.read_text()) for p in (args.before, args.after))
    print("| model | method | metric (before → after) | SQNR dB | clipped mass, before | clipped mass, after |")
    print("|---|---|---|---|---|---|")
    for name, t in after["tasks"].items():
        old = before["tasks"].get(name, {"variants": {}})
        metric = t["metric"]
        for column in sorted(c for c in t["variants"] if c.startswith("ptq-")):
            b = _cells(old["variants"].get(column, {}), metric)
            a = _cells(t["variants"][column], metric)
            print(f"| {name} | {column[4:]} | {metric} {b[0]} → {a[0]} | {b[1]} → {a[1]} | {b[2]} | {a[2]} |")
    print()
    print("| model | observation pass peak RSS MB @calib / @scale, before | after |")
    print("|---|---|---|")
    for name, t in after["tasks"].items():
        print(f"| {name} | {_rss(before['tasks'].get(name, {}))} | {_rss(t)} |")

if __name__ == "__main__":
    main()
