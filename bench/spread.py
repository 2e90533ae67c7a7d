"""How much a model's quantized quality moves with the calibration set: the same methods on
disjoint calibration subsets.

    python -m bench.spread --task rec [--subsets 3] [--size 100] [--methods mse,kl,percentile,max]

The task's calibration files (sorted) are cut into ``--subsets`` disjoint runs of ``--size``
files (files 0-99, 100-199, ... by default).  On each, ``ptq calibrate`` observes once (the first
method) and every other method reuses its observations; each table is exported and scored by
``bench.evaluate`` on the whole evaluation folder (through ``bench.run``'s export and evaluation steps).  Prints one JSON document and, on stderr, per
method: the task metric and output SQNR on every subset and their spread.  A difference between
two methods, or two versions of one, smaller than that spread is not a measured difference.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

from bench import procs, run
from bench.common import TASKS, sample_files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Quality over disjoint calibration subsets.")
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--subsets", type=int, default=3)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--methods", default="mse,kl,percentile,max")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    cfg = run.RunConfig((task.name,), args.size, None, None, args.timeout, 16.0, ort=False)
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
                o = procs.run([run.PTQ, "calibrate", str(task.model_path), *source, "-o", str(table), "--method",
                               method, "-q"], timeout=cfg.timeout, mem_gib=cfg.mem_gib, log=work / "run.log")
                if o.status != "ok":
                    raise SystemExit(f"bench.spread: calibrate subset {k} {method}: {o.status}: {o.stderr_tail}")
                failed, model = run.ptq_export(task, table, cfg)
                if model is None:
                    raise SystemExit(f"bench.spread: subset {k} {method}: {failed}")
                doc = run.evaluate(task, model, cfg, table.with_suffix(".eval.json"))
                if "eval_status" in doc:
                    raise SystemExit(f"bench.spread: evaluate subset {k} {method}: {doc}")
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
