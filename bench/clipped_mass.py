"""Is the subsampled histogram honest?  The clipped mass it predicts against the clipped mass
counted on every value of the same samples.

    python -m bench.clipped_mass MODEL OBSERVATIONS CALIB_DIR --table T.json [--table U.json ...] [--limit N]

For every tensor the observation pass measured and each table's range ``[lo, hi]`` of it, the
prediction is the fraction of the histogram's counted values outside the range (the bin that
straddles a bound counts in proportion to the part outside, as the range methods read it); the
count runs the prepared model over the first N calibration samples and counts, inside ONNX
Runtime, every value below ``lo`` or above ``hi`` (int64 sums, so no count is rounded).
Prints one JSON document: per table, the largest difference and the tensor it is on, and
whether every tensor is within the issue's bound (10 % relative or 0.01 % absolute); the same
over the subsampled tensors alone (stride > 1, or unknown in a version 1 observation file): on a
tensor whose every value was counted, a difference comes from the bin that straddles a bound
(its values are not spread evenly over it), not from the subsample.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper

from ptqcli import runtime
from ptqcli.graph import prepare
from ptqcli.observe import observations
from ptqcli.observe.dataset import batches, list_samples
from ptqcli.quantize import scale_table
from ptqcli.quantize.plan import analyse
from ptqcli.quantize.scale_groups import observation_plan

RELATIVE, ABSOLUTE = 0.10, 1e-4


def predicted(hist, lo: float, hi: float) -> float:
    """Fraction of the histogram's mass below ``lo`` or above ``hi``: a bin's mass is spread
    evenly over the bin cut to the exact extremes (the end bins hold values up to the extreme
    only, often a spike exactly there: a saturated pixel, a Clip bound)."""
    if hist.total == 0:
        return 0.0
    edges = hist.edges()
    left, right = np.maximum(edges[:-1], hist.minimum), np.minimum(edges[1:], hist.maximum)
    span = right - left
    with np.errstate(divide="ignore", invalid="ignore"):
        below = np.where(span > 0, np.clip((lo - left) / span, 0.0, 1.0), (left < lo).astype(float))
        above = np.where(span > 0, np.clip((right - hi) / span, 0.0, 1.0), (right > hi).astype(float))
    return float((hist.counts * (below + above)).sum() / hist.total)


def counting_model(prepared, ranges: dict[tuple[str, float, float], str]) -> onnx.ModelProto:
    """The prepared model whose outputs count, per (tensor, lo, hi), the values outside the range,
    and every tensor's size."""
    model = onnx.ModelProto()
    model.CopyFrom(prepared.model)
    del model.graph.output[:]
    graph = model.graph
    sizes = {}
    for (tensor, lo, hi), key in ranges.items():
        graph.initializer.extend([helper.make_tensor(f"{key}::lo", TensorProto.FLOAT, [], [lo]),
                                  helper.make_tensor(f"{key}::hi", TensorProto.FLOAT, [], [hi])])
        for op, bound, side in (("Less", "lo", "below"), ("Greater", "hi", "above")):
            graph.node.extend([
                helper.make_node(op, [tensor, f"{key}::{bound}"], [f"{key}::{side}::mask"]),
                helper.make_node("Cast", [f"{key}::{side}::mask"], [f"{key}::{side}::int"], to=TensorProto.INT64),
                helper.make_node("ReduceSum", [f"{key}::{side}::int"], [f"{key}::{side}"], keepdims=0),
            ])
            graph.output.append(helper.make_tensor_value_info(f"{key}::{side}", TensorProto.INT64, []))
        if tensor not in sizes:
            sizes[tensor] = f"{key}::size"
            graph.node.append(helper.make_node("Size", [tensor], [sizes[tensor]]))
            graph.output.append(helper.make_tensor_value_info(sizes[tensor], TensorProto.INT64, []))
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Predicted vs counted clipped mass per observed tensor.")
    parser.add_argument("model", type=pathlib.Path)
    parser.add_argument("observations", type=pathlib.Path)
    parser.add_argument("calib", type=pathlib.Path)
    parser.add_argument("--table", type=pathlib.Path, action="append", required=True)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    prepared = prepare(args.model)
    obs = observations.load(args.observations)
    measured, _ = observation_plan(prepared.index, analyse(prepared.index))
    tables = {str(p): scale_table.load(p) for p in args.table}
    ranges: dict[tuple[str, float, float], str] = {}
    for table in tables.values():
        for t in measured:
            entry = table.tensors.get(t)
            if entry is not None and entry.range is not None and t in obs.histograms:
                ranges.setdefault((t, float(entry.range[0]), float(entry.range[1])), f"cm::{len(ranges)}")
    session = runtime.session(counting_model(prepared, ranges))
    names = [o.name for o in session.get_outputs()]
    totals = dict.fromkeys(names, 0)
    files = list_samples(args.calib, limit=args.limit)
    for batch in batches(files, prepared.inputs, batch_size=1):
        for name, value in zip(names, session.run(names, batch.feeds)):
            totals[name] += int(value)
    sizes = {t: totals[k + "::size"] for (t, _, _), k in ranges.items() if k + "::size" in totals}
    result = {"samples": len(files), "tables": {}}
    for path, table in tables.items():
        rows = []
        for t in measured:
            entry = table.tensors.get(t)
            if entry is None or entry.range is None or t not in obs.histograms:
                continue
            lo, hi = float(entry.range[0]), float(entry.range[1])
            key = ranges[(t, lo, hi)]
            counted = (totals[key + "::below"] + totals[key + "::above"]) / sizes[t]
            guess = predicted(obs.histograms[t], lo, hi)
            diff = abs(guess - counted)
            rows.append({"tensor": t, "predicted": guess, "counted": counted, "difference": diff,
                         "within": diff <= max(RELATIVE * counted, ABSOLUTE), "stride": obs.strides.get(t, 0)})
        sampled = [r for r in rows if r["stride"] != 1]
        result["tables"][path] = {
            "tensors": len(rows), "worst": max(rows, key=lambda r: r["difference"], default=None),
            "outside_bound": [r["tensor"] for r in rows if not r["within"]],
            "largest_counted": max((r["counted"] for r in rows), default=math.nan),
            # where every value was counted, a difference is the histogram's bin resolution alone
            "subsampled": {"tensors": len(sampled), "worst": max(sampled, key=lambda r: r["difference"], default=None),
                           "outside_bound": [r["tensor"] for r in sampled if not r["within"]]}}
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
