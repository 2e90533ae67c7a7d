"""Score one model on a task's evaluation folder, against ground truth and against the float model.

Run as its own process by ``bench.run`` (so a crash of ONNX Runtime on a quantized model is a
result, not the end of the benchmark):

    python -m bench.evaluate TASK FLOAT.onnx [QUANT.onnx] [--limit N] --out RESULT.json

Task metrics: cls and magika accuracy (top-1 against the label); rec char accuracy (1 - normalized
edit distance) and line accuracy; det hmean of box precision and recall at IoU > 0.5.  Against the
float model: SQNR in dB over all output elements of all samples, mean per-sample cosine, and
agreement of the decoded result (same class, same string, or det hmean against the float boxes).
"""

from __future__ import annotations

import argparse
import csv
import math
import pathlib
import time

import numpy as np
import onnx
import onnxruntime as ort

from bench import decode
from bench.common import MODELS, TASKS, read_json, sample_files, write_json


def _session(path: pathlib.Path, logits: str, optimization: str = "all") -> ort.InferenceSession:
    """A session whose outputs are the model's first output and the ``logits`` tensor;
    ``optimization`` "none" runs a QDQ model's reference arithmetic (no fused kernels)."""
    model = onnx.load(str(path))
    if logits not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    if optimization == "none":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _outputs(session: ort.InferenceSession, files: list[pathlib.Path], logits: str) -> tuple[list, list]:
    """Per sample, the first output and the logits."""
    name, first = session.get_inputs()[0].name, session.get_outputs()[0].name
    pairs = [session.run([first, logits], {name: np.load(f)}) for f in files]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _labels(folder: pathlib.Path) -> dict[str, str]:
    with open(folder / "labels.csv", newline="") as f:
        return {row[0]: row[1] for row in csv.reader(f) if row}


class Decoder:
    """Per task: turn raw outputs into results, and score results against truth or float."""

    def __init__(self, task: str, folder: pathlib.Path) -> None:
        self.task = task
        if task in ("cls", "magika"):
            self.truth = _labels(folder)
            names = (["0", "1"] if task == "cls"
                     else read_json(MODELS / "magika_config.json")["target_labels_space"])
            self.names = names
        elif task == "rec":
            self.truth = read_json(folder / "texts.json")
            lines = (MODELS / "rec_dict.txt").read_text(encoding="utf-8").splitlines()
            self.charset = lines + [" "]
        else:
            self.truth = {k: v["boxes"] for k, v in read_json(folder / "boxes.json").items()}

    def decode(self, out: np.ndarray):
        """One sample's raw output -> class name, string or boxes (N, 4, 2)."""
        if self.task in ("cls", "magika"):
            return self.names[int(out.reshape(-1).argmax())]
        if self.task == "rec":
            return decode.ctc_decode(out[0], self.charset).strip()  # the model pads lines with spaces
        return decode.db_boxes(out[0, 0])

    def score(self, results: list, files: list[pathlib.Path]) -> dict[str, float]:
        """The task metrics of decoded results against the ground truth."""
        truth = [self.truth[f.name] for f in files]
        if self.task in ("cls", "magika"):
            return {"accuracy": float(np.mean([r == t for r, t in zip(results, truth)]))}
        if self.task == "rec":
            return {"char_accuracy": float(np.mean([decode.char_accuracy(r, t) for r, t in zip(results, truth)])),
                    "line_accuracy": float(np.mean([r == t for r, t in zip(results, truth)]))}
        return {"hmean": self._hmean(results, [np.asarray(t, dtype=np.float64).reshape(-1, 4) for t in truth])}

    @staticmethod
    def _hmean(pred: list[np.ndarray], truth: list[np.ndarray]) -> float:
        matches = sum(decode.match_boxes(p, t) for p, t in zip(pred, truth))
        return decode.hmean(matches, sum(len(p) for p in pred), sum(len(t) for t in truth))

    def agreement(self, quant: list, ref: list) -> float:
        """How often the quantized model's result equals the float model's."""
        if self.task == "det":
            return self._hmean(quant, [decode.quads_to_boxes(r) for r in ref])
        return float(np.mean([q == r for q, r in zip(quant, ref)]))


def fidelity(ref: list[np.ndarray], quant: list[np.ndarray]) -> dict[str, float]:
    """SQNR (dB) over all elements and mean per-sample cosine of quantized against float outputs."""
    signal = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)
    noise = sum(float(np.sum((r.astype(np.float64) - q) ** 2)) for r, q in zip(ref, quant))
    cosines = []
    for r, q in zip(ref, quant):
        r64, q64 = r.ravel().astype(np.float64), q.ravel().astype(np.float64)
        denom = np.linalg.norm(r64) * np.linalg.norm(q64)
        cosines.append(float(r64 @ q64 / denom) if denom else 0.0)
    sqnr = 10 * math.log10(signal / noise) if noise > 0 else float("inf")
    return {"sqnr_db": sqnr, "cosine": float(np.mean(cosines))}


def check(path: pathlib.Path) -> str:
    """"ok", or the first line of onnx.checker's full check failure."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        return "ok"
    except Exception as exc:  # the checker raises several types; all of them are a result here
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]


def evaluate(task: str, float_path: pathlib.Path, quant_path: pathlib.Path | None, limit: int | None,
             optimization: str = "all") -> dict:
    """Metrics of the float model, and of the quantized one against truth and against float
    (run with ONNX Runtime's default optimizations, or ``optimization="none"``)."""
    folder = TASKS[task].eval_dir
    files = sample_files(folder, limit)
    dec = Decoder(task, folder)
    logits = TASKS[task].logits
    ref, ref_logits = _outputs(_session(float_path, logits), files, logits)
    ref_results = [dec.decode(o) for o in ref]
    result = {"samples": len(files), "float": dec.score(ref_results, files)}
    if quant_path is not None:
        result["checker"] = check(quant_path)
        start = time.perf_counter()
        quant, quant_logits = _outputs(_session(quant_path, logits, optimization), files, logits)
        result["seconds_quant_inference"] = time.perf_counter() - start
        results = [dec.decode(o) for o in quant]
        result["quant"] = dec.score(results, files)
        result["agreement"] = dec.agreement(results, ref_results)
        result.update(fidelity(ref, quant))
        result["logits_sqnr_db"] = fidelity(ref_logits, quant_logits)["sqnr_db"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a float (and a quantized) model on a bench task.")
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("float_model", type=pathlib.Path)
    parser.add_argument("quant_model", type=pathlib.Path, nargs="?")
    parser.add_argument("--limit", type=int, default=None, help="first N evaluation samples only")
    parser.add_argument("--optimization", choices=("all", "none"), default="all",
                        help="ONNX Runtime graph optimizations for the quantized model: 'all' (default) runs the "
                             "fused int8 kernels of this CPU, 'none' the reference arithmetic")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)
    write_json(args.out, evaluate(args.task, args.float_model, args.quant_model, args.limit, args.optimization))


if __name__ == "__main__":
    main()
