"""Paths, the benchmark's tasks and small helpers shared by the bench scripts."""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / "cache"
MODELS = CACHE / "models"
DATA = CACHE / "data"
WORK = BENCH / "work"


@dataclass(frozen=True)
class Task:
    """One benchmarked model: its file, the metric that judges it and its data folders."""

    name: str
    model: str            # file name under bench/cache/models/
    metric: str           # name of the task metric (higher is better)
    logits: str           # the tensor the output squashes (Softmax, Sigmoid): SQNR is also read here

    @property
    def model_path(self) -> pathlib.Path:
        return MODELS / self.model

    @property
    def calib_dir(self) -> pathlib.Path:
        return DATA / self.name / "calib"

    @property
    def eval_dir(self) -> pathlib.Path:
        return DATA / self.name / "eval"


TASKS = {
    "cls": Task("cls", "ch_ppocr_mobile_v2.0_cls_infer.onnx", "accuracy", "linear_1.tmp_1"),
    "magika": Task("magika", "magika_standard_v3_3.onnx", "accuracy",
                   "jax2tf_get_logits_/pjit_get_logits_/MagikaV2/Dense_1/AddV2:0"),
    "rec": Task("rec", "ch_PP-OCRv4_rec_infer.onnx", "char_accuracy", "p2o.Add.277"),
    "det": Task("det", "ch_PP-OCRv4_det_infer.onnx", "hmean", "p2o.Add.281"),
}


def sample_files(folder: pathlib.Path, limit: int | None = None) -> list[pathlib.Path]:
    """Sample files (.npy/.npz) of ``folder`` in sorted order, the first ``limit`` of them."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".npy", ".npz"))
    return files[:limit] if limit else files


def write_json(path: pathlib.Path, payload: object) -> None:
    """Write ``payload`` as sorted, indented JSON, atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, sort_keys=True, indent=1) + "\n")
    os.replace(tmp, path)


def write_results(stem: pathlib.Path, payload: object, markdown: str) -> pathlib.Path:
    """A benchmark's results: ``stem``.json (see ``write_json``) and its report ``stem``.md;
    returns the report's path."""
    write_json(stem.with_suffix(".json"), payload)
    report = stem.with_suffix(".md")
    report.write_text(markdown)
    return report


def read_json(path: pathlib.Path) -> object:
    """The JSON document at ``path``."""
    return json.loads(path.read_text())
