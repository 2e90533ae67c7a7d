"""How much a model's quantized quality moves with the calibration set: the same methods on
disjoint calibration subsets.

    python -m bench.spread --task rec [--subsets 3] [--size 100] [--methods mse,kl,percentile,max]

The task's calibration files (sorted) are cut into ``--subsets`` disjoint runs of ``--size``
files (files 0-99, 100-199, ... by default).  On each, ``ptq calibrate`` observes once (the first
method) and every other method reuses its observations; each table is exported and scored by
``bench.evaluate`` on the whole evaluation folder.  Prints one JSON document and, on stderr, per
method: the task metric and output SQNR on every subset and their spread.  A difference between
two methods, or two versions of one, smaller than that spread is not a measured difference.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

from bench import procs
from bench.common import TASKS, sample_files

PY = sys.executable
PTQ = str(pathlib.Path(sys.executable).with_name("ptq"))


def _ok(o: procs.Outcome, what: str) -> None:
    if o.status != "ok":
        raise SystemExit(f"bench.spread: {what}: {o.status}: {o.stderr_tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Quality over disjoint calibration subsets.")
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--subsets", type=int, default=3)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--methods", default="mse,kl,percentile,max")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    methods = args.methods.split(",")
    files = sample_files(task.calib_dir)
    if len(files) < args.subsets * args.size:
        raise SystemExit(f"bench.spread: {task.calib_dir} has {len(files)} samples, fewer than "
                         f"{args.subsets} x {args.size}")
    out: dict = {"task": task.name, "size": args.size, "methods": {m: [] for m in methods}}
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        for k in range(args.subsets):
            folder = work / f"subset{k}"
            folder.mkdir()
            for f in files[k * args.size:(k + 1) * args.size]:
                (folder / f.name).symlink_to(f.resolve())
            obs = work / f"subset{k}-{methods[0]}.obs.npz"  # written beside the first table
            for i, method in enumerate(methods):
                table = work / f"subset{k}-{method}.json"
                source = ["--data", str(folder)] if i == 0 else ["--observations", str(obs)]
                o = procs.run([PTQ, "calibrate", str(task.model_path), *source, "-o", str(table), "--method",
                               method, "-q"], timeout=args.timeout, log=work / "run.log")
                _ok(o, f"calibrate subset {k} {method}")
                model = table.with_suffix(".onnx")
                _ok(procs.run([PTQ, "export", str(task.model_path), "--table", str(table), "-o", str(model), "-q"],
                              timeout=args.timeout, log=work / "run.log"), f"export subset {k} {method}")
                scored = table.with_suffix(".eval.json")
                _ok(procs.run([PY, "-m", "bench.evaluate", task.name, str(task.model_path), str(model),
                               "--out", str(scored)], timeout=args.timeout, log=work / "run.log"),
                    f"evaluate subset {k} {method}")
                doc = json.loads(scored.read_text())
                out["methods"][method].append({"subset": [k * args.size, (k + 1) * args.size],
                                               task.metric: doc["quant"][task.metric],
                                               "sqnr_db": doc["sqnr_db"], "logits_sqnr_db": doc["logits_sqnr_db"]})
    for method, rows in out["methods"].items():
        metric = [r[task.metric] for r in rows]
        sqnr = [r["sqnr_db"] for r in rows]
        print(f"{task.name} {method}: {task.metric} {' '.join(f'{v:.4f}' for v in metric)} "
              f"(spread {max(metric) - min(metric):.4f}); SQNR dB {' '.join(f'{v:.2f}' for v in sqnr)} "
              f"(spread {max(sqnr) - min(sqnr):.2f})", file=sys.stderr, flush=True)
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
