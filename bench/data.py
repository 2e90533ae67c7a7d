"""Build the benchmark's calibration and evaluation folders under bench/cache/data/.

One sample per ``.npy`` file ([1, ...], the model input with its batch axis), named in the order
the samples were drawn, so the first N files of a calibration folder are its N-sample subset.
Calibration and evaluation sets come from different seeds (rendered data) or different files
(Magika), so they are disjoint.  Ground truth sits beside the evaluation samples:
``labels.csv`` (cls, magika: ``file,label``), ``texts.json`` (rec), ``boxes.json`` (det).

    python -m bench.data [--force] [--only cls,rec,det,magika]
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import time

import numpy as np

from bench import magika_files, ocr_prep, render
from bench.common import DATA, TASKS, write_json, read_json

VERSION = 2                      # bump when the data recipe changes
CALIB = 500                      # calibration pool; runs use its first 50, 100 or 500 files
EVAL = {"cls": 400, "rec": 300, "det": 150, "magika": 400}
SEEDS = {"cls": (11, 12), "rec": (21, 22), "det": (31, 32), "magika": (41, 42)}   # (calib, eval)
MAGIKA_CAP = 40                  # files per label at most (both sets together)


def _save(folder: pathlib.Path, index: int, array: np.ndarray) -> str:
    name = f"{index:05d}.npy"
    np.save(folder / name, array)
    return name


def build_cls(folder: pathlib.Path, count: int, seed: int, words: list[str]) -> None:
    """Lines turned by 0 or 180 degrees (label 0 or 1), as the cls model's input."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        line = render.render_line(rng, words, max_chars=int(rng.integers(3, 25)))
        flipped = bool(rng.random() < 0.5)
        pixels = line.pixels[::-1, ::-1] if flipped else line.pixels
        rows.append(f"{_save(folder, i, ocr_prep.cls_input(np.ascontiguousarray(pixels)))},{int(flipped)}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


def build_rec(folder: pathlib.Path, count: int, seed: int, words: list[str]) -> None:
    """Upright lines of varying length, as the rec model's input (height 48, width from the line)."""
    rng = np.random.default_rng(seed)
    texts = {}
    for i in range(count):
        line = render.render_line(rng, words, max_chars=int(rng.integers(4, 40)))
        texts[_save(folder, i, ocr_prep.rec_input(line.pixels))] = line.text
    write_json(folder / "texts.json", texts)


def build_det(folder: pathlib.Path, count: int, seed: int, words: list[str]) -> None:
    """480 x 640 pages with 3-8 lines at known boxes, as the det model's input."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for i in range(count):
        page = render.render_page(rng, words)
        boxes[_save(folder, i, ocr_prep.det_input(page.pixels))] = {"boxes": [list(b) for b in page.boxes],
                                                                    "texts": list(page.texts)}
    write_json(folder / "boxes.json", boxes)


def build_magika(calib: pathlib.Path, evaluation: pathlib.Path, seeds: tuple[int, int]) -> None:
    """Real files, at most MAGIKA_CAP per label; a third of each label (at most 12) is evaluated."""
    cfg = magika_files.load_config()
    ext_map = magika_files.extension_map(cfg.labels)
    groups = magika_files.candidates(ext_map, cfg.labels)
    rng = np.random.default_rng(seeds[0])
    seen: set[str] = set()
    eval_rows, calib_rows = [], []
    for label, paths in groups.items():
        picked = magika_files.pick(paths, cfg, rng, MAGIKA_CAP, seen)
        n_eval = min(12, len(picked) // 3)
        eval_rows += [(label, p, row) for p, row in picked[:n_eval]]
        calib_rows += [(label, p, row) for p, row in picked[n_eval:]]
    order = np.random.default_rng(seeds[1])
    sources = {}
    for folder, rows in ((evaluation, eval_rows), (calib, calib_rows)):
        rows = [rows[int(i)] for i in order.permutation(len(rows))]
        if folder is calib:
            rows = rows[:CALIB]
        lines = []
        for i, (label, path, row) in enumerate(rows):
            name = _save(folder, i, row[None, :])
            lines.append(f"{name},{label}")
            sources[f"{folder.name}/{name}"] = str(path)
        (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    write_json(calib.parent / "sources.json", sources)


def build(task: str, words: list[str]) -> dict:
    """Build one task's folders from scratch and return its manifest."""
    root = DATA / task
    shutil.rmtree(root, ignore_errors=True)
    calib, evaluation = TASKS[task].calib_dir, TASKS[task].eval_dir
    calib.mkdir(parents=True)
    evaluation.mkdir(parents=True)
    seeds = SEEDS[task]
    if task == "magika":
        build_magika(calib, evaluation, seeds)
    else:
        builder = {"cls": build_cls, "rec": build_rec, "det": build_det}[task]
        builder(calib, CALIB, seeds[0], words)
        builder(evaluation, EVAL[task], seeds[1], words)
    return {"version": VERSION, "seeds": list(seeds), "calib": len(list(calib.glob("*.npy"))),
            "eval": len(list(evaluation.glob("*.npy")))}


def main(argv: list[str] | None = None) -> None:
    """Build every task's data unless its manifest says it is already there (``--force`` rebuilds)."""
    parser = argparse.ArgumentParser(description="Build the benchmark's calibration and evaluation data.")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--only", default=",".join(TASKS), help="comma-separated tasks (default: all)")
    args = parser.parse_args(argv)
    if any(t != "magika" for t in args.only.split(",")) and render.missing_fonts():
        raise SystemExit(f"bench.data: missing fonts {render.missing_fonts()}; install the Debian packages: "
                         f"apt-get install {render.FONT_PACKAGES}")
    words = render.vocabulary()
    for task in args.only.split(","):
        manifest_path = DATA / task / "manifest.json"
        if not args.force and manifest_path.exists() and read_json(manifest_path).get("version") == VERSION:
            print(f"{task}: cached ({read_json(manifest_path)})")
            continue
        start = time.perf_counter()
        manifest = build(task, words)
        write_json(manifest_path, manifest)
        print(f"{task}: {manifest['calib']} calibration, {manifest['eval']} evaluation samples "
              f"in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
