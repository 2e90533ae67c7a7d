"""Compare a quantized model with its float original on a folder of samples."""

from __future__ import annotations

import csv
import pathlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ptqcli import runtime
from ptqcli.analysis.metrics import Agreement, class_scores, top1
from ptqcli.errors import DataError
from ptqcli.graph import InputSpec
from ptqcli.observe.dataset import ImageSpec, batches


@dataclass(frozen=True)
class Evaluation:
    """Per output: agreement of the quantized model with float; top-1 figures for output 0."""

    outputs: dict[str, Agreement]
    samples: int
    top1_agreement: float | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # "float" / "quantized" -> accuracy
    arithmetic: str = ""  # what ONNX Runtime computed the quantized model with (``describe_run``)


def read_labels(path: str | pathlib.Path) -> dict[str, int]:
    """``file,label`` rows (a header row is allowed): sample file name -> integer class."""
    path = pathlib.Path(path)
    labels: dict[str, int] = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for lineno, row in enumerate(csv.reader(f), start=1):
                if not row or (lineno == 1 and row[-1].strip().lower() == "label"):
                    continue
                if len(row) != 2:
                    raise DataError(f"{path}:{lineno}: expected 'file,label', got {','.join(row)!r}")
                try:
                    labels[row[0].strip()] = int(row[1])
                except ValueError:
                    raise DataError(f"{path}:{lineno}: label {row[1]!r} is not an integer") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read labels ({exc.strerror})") from None
    return labels


Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def ort_runner(model_path: str | pathlib.Path,
               optimization: runtime.Optimization = runtime.Optimization.ALL) -> tuple[Runner, list[str]]:
    session = runtime.session(model_path, optimization=optimization)
    names = [o.name for o in session.get_outputs()]
    return (lambda feeds: session.run(names, feeds)), names


def describe_run(optimization: runtime.Optimization) -> str:
    """What ONNX Runtime computes a QDQ model with at ``optimization``, on this machine."""
    if optimization is runtime.Optimization.ALL:
        return "this CPU's fused int8 kernels: " + runtime.int8_arithmetic().describe().removeprefix(
            "ONNX Runtime's fused int8 kernels ")
    return "the reference arithmetic (graph optimizations off: DequantizeLinear, the float operator, " \
           "QuantizeLinear)"


def evaluate(reference: Runner, candidate: Runner, output_names: Sequence[str], files: Sequence[pathlib.Path],
             inputs: Sequence[InputSpec], *, labels: dict[str, int] | None = None, batch_size: int = 1,
             image: ImageSpec | None = None, progress: Callable[[int], None] | None = None) -> Evaluation:
    """Run both models over ``files``; accumulate agreement and, with ``labels``, accuracy."""
    if labels is not None:
        missing = [f.name for f in files if f.name not in labels]
        if missing:
            raise DataError(f"no label for sample {missing[0]!r} (and {len(missing) - 1} more)")
    sums = {name: Agreement() for name in output_names}
    agree = correct_ref = correct_q = samples = 0
    classified = False
    for batch in batches(files, inputs, batch_size=batch_size, image=image):
        ref, got = reference(batch.feeds), candidate(batch.feeds)
        for name, r, g in zip(output_names, ref, got):
            sums[name] = sums[name].add(r, g)
        if class_scores(ref[0], batch.count):
            classified = True
            pr, pq = top1(ref[0]), top1(got[0])
            agree += int((pr == pq).sum())
            if labels is not None:
                truth = np.array([labels[f.name] for f in batch.files])
                if len(truth) == len(pr):
                    correct_ref += int((pr == truth).sum())
                    correct_q += int((pq == truth).sum())
        samples += batch.count
        if progress is not None:
            progress(batch.count)
    classified = classified and samples > 0
    accuracy = {"float": correct_ref / samples, "quantized": correct_q / samples} \
        if labels is not None and classified else {}
    return Evaluation(sums, samples, agree / samples if classified else None, accuracy)
