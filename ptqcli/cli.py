"""The ``ptq`` command: a thin layer over ``ptqcli.api``.

Exit codes and error messages: ``ptqcli.cli_exits``; the option types and flags the commands
share: ``ptqcli.cli_options``.

The library is imported inside the commands, so that ``ptq --help``, ``--version`` and usage
errors do not wait for onnx and ONNX Runtime to load.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

import click

import calibrators
from ptqcli import __version__
from ptqcli.choices import CHECKPOINT_EVERY, ON_BAD_SAMPLE, REQUANT, SIM_CPUS, WEIGHTS
from ptqcli.cli_exits import Failure, reported
from ptqcli.cli_options import Pair, data_flags, data_options, emit_json, lo_hi, stage_progress
from ptqcli.rounding.options import RoundingOptions
from ptqcli.targets import Target

if TYPE_CHECKING:
    from ptqcli import api


class _InOrder(click.Group):
    """Lists the commands in the order of the workflow, not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_InOrder, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ptq")
def main() -> None:
    """Post-training quantization of ONNX models: calibrate, export, evaluate, simulate,
    sensitivity, and run (all of them from one TOML file, with a gate, for CI).

    Exit codes: 0 success, 1 failure (bad model, data or table), 2 bad usage (or a bad run
    configuration), 3 the gate of ptq run failed (the model was written), 130 interrupted
    (Ctrl-C), 143 terminated (SIGTERM).
    """


@main.command(short_help="Observe a model on samples and write its scale table.")
@click.argument("model", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option("--data", type=click.Path(path_type=pathlib.Path), default=None,
              help="Folder of calibration samples (.npy, .npz, .pb, .png, .jpg), read in sorted order; "
                   "hidden files are skipped.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=pathlib.Path), default=None,
              help="Scale table to write [default: MODEL with suffix .table.json]; observations go "
                   "beside it as .table.obs.npz.")
@click.option("--observations", type=click.Path(dir_okay=False, path_type=pathlib.Path), default=None,
              help="Reuse the histograms of an earlier run instead of --data (--method auto needs "
                   "--data as well, to score its candidates).")
@click.option("--method", type=click.Choice([*calibrators.METHODS, "auto"]), default="mse",
              show_default=True, help="Range method for activations; auto picks per scale group by the "
                                      "output SQNR on up to 64 calibration samples spread over the folder.")
@click.option("--method-for", "method_for", multiple=True, type=Pair("NAME=METHOD", "NAME=METHOD", str),
              help="Range method for one tensor (repeatable).")
@click.option("--percentile", type=float, default=99.99, show_default=True,
              help="Mass kept by the percentile method, in percent.")
@click.option("--symmetric", is_flag=True, help="int8 symmetric activations instead of uint8 asymmetric.")
@click.option("--per-tensor-weights", is_flag=True, help="One weight scale per tensor instead of per channel.")
@click.option("--int16", multiple=True, metavar="NAME", help="Tensor or node computed with int16 activations (repeatable).")
@click.option("--all-int8", is_flag=True,
              help="Also compute Softmax and LayerNormalization in 8 bits (default: 16 bits on their inputs and outputs).")
@click.option("--exclude", multiple=True, metavar="NAME|OPTYPE", help="Node name or operator type kept in float (repeatable).")
@click.option("--fixed-range", "fixed_range", multiple=True, type=Pair("NAME=LO:HI", "NAME=LO:HI", lo_hi),
              help="Fixed range for a tensor with physical meaning (repeatable).")
@click.option("--cpu", type=click.Choice([t.value for t in Target]), default=Target.ANY.value, show_default=True,
              help="Deployment CPU. 'any' and 'x86-avx2' raise the scale of weight channels whose codes could "
                   "saturate the int16 pair sums of x86 CPUs without VNNI; 'x86-vnni' and 'arm' keep full "
                   "8-bit weights.")
@click.option("--on-bad-sample", type=click.Choice(ON_BAD_SAMPLE), default="fail", show_default=True,
              help="A sample that cannot be read or fails its checks (shape, dtype, finite values): stop with an "
                   "error naming it, or skip it (named on stderr, counted in the summary).")
@click.option("--weights", "weight_rounding", type=click.Choice(WEIGHTS), default="nearest", show_default=True,
              help="Weight rounding: to nearest, or learned per weight on --data (AdaRound, layer by layer).")
@click.option("--bias-correction", is_flag=True,
              help="Shift each bias by its layer's mean output error on --data (empirical bias correction).")
@click.option("--weight-bits", type=click.Choice(["8", "4"]), default="8", show_default=True,
              help="Weight precision: 4 keeps codes in -7..7 (stored in int8).")
@click.option("--equalize", is_flag=True,
              help="Cross-layer equalization: rescale consecutive layers so that their per-channel weight "
                   "ranges match (for --per-tensor-weights); the float model computes the same.")
@click.option("--data-free", is_flag=True,
              help="No calibration data: activation ranges (and, with --bias-correction, the expected layer "
                   "errors) from the BatchNorm statistics; each model input needs --fixed-range NAME=LO:HI, "
                   "and --size HxW where its spatial size is not fixed.")
@click.option("--adaround-iters", type=click.IntRange(min=1), default=RoundingOptions.adaround_iters,
              show_default=True, help="AdaRound: Adam steps per layer.")
@click.option("--adaround-samples", type=click.IntRange(min=16), default=RoundingOptions.adaround_samples,
              show_default=True, help="AdaRound: input rows (patches) per layer, spread over the samples.")
@click.option("--checkpoint-every", default=CHECKPOINT_EVERY, show_default=True,
              metavar="N|Ts", help="Save the pass's state beside the table (.table.obs.ckpt.npz) every N samples "
                                   "or every T seconds (0: never); it is removed when the pass ends.")
@click.option("--resume", is_flag=True,
              help="Continue the pass from the checkpoint an interrupted run left (same model, data and "
                   "options); the table is the one an uninterrupted run writes.")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Shard the samples over N local Dask worker processes (pip install ptq[dask]).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Shard the samples over the workers of a running Dask scheduler (pip install ptq[dask]).")
@data_flags
@reported
def calibrate(model, data, output, observations, method, method_for, percentile, symmetric, per_tensor_weights,
              int16, all_int8, exclude, fixed_range, cpu, on_bad_sample, weight_rounding, bias_correction,
              weight_bits, equalize, data_free, adaround_iters, adaround_samples, checkpoint_every, resume, workers,
              scheduler, batch_size, limit, size, mean, std, layout, bgr, quiet, as_json) -> None:
    """Observe MODEL on --data once and write its scale table."""
    from ptqcli import api
    from ptqcli.analysis.report import skipped_json

    rounding = RoundingOptions(weights=weight_rounding, bias_correction=bias_correction, equalize=equalize,
                               data_free=data_free, adaround_iters=adaround_iters, adaround_samples=adaround_samples)
    options = api.CalibrationOptions(
        method=method, method_for=tuple(method_for), percentile=percentile, symmetric=symmetric,
        per_channel=not per_tensor_weights, int16=tuple(int16), sensitive_int16=not all_int8,
        exclude=tuple(exclude),
        fixed_ranges=tuple((n, lo, hi) for n, (lo, hi) in fixed_range), cpu=cpu, weight_bits=int(weight_bits),
        rounding=rounding)
    silent = quiet or as_json
    ranges = stage_progress("searching (auto)", silent, unit="steps") if method == "auto" else \
        stage_progress("choosing ranges", silent, unit="scale groups")
    result = api.calibrate(model, data=data, output=output, observations=observations, options=options,
                           data_options=data_options(batch_size, limit, size, mean, std, layout, bgr),
                           on_bad_sample=on_bad_sample, progress=stage_progress("observing", silent),
                           range_progress=ranges,
                           rounding_progress=stage_progress("rounding weights", silent, unit="weights"),
                           pass_options=api.PassOptions(checkpoint_every, resume, workers, scheduler))
    table = result.table
    roles: dict[str, int] = {}
    for entry in table.tensors.values():
        roles[entry.role] = roles.get(entry.role, 0) + 1
    precisions: dict[str, int] = {}
    for node in table.nodes.values():
        precisions[node.precision] = precisions.get(node.precision, 0) + 1
    if as_json:
        emit_json({"table": str(result.table_path), "observations": str(result.observations_path),
                    "samples": table.samples, "method": method, "tensors": roles, "nodes": precisions,
                    "groups": len(table.groups), "observed_tensors": result.observed_tensors,
                    "skipped_samples": skipped_json(result.skipped),
                    "seconds": {"observe": round(result.seconds_observe, 3), "total": round(result.seconds_total, 3)},
                    **({"rounding": _rounding_json(result.rounding)} if result.rounding else {}),
                    **({"equalized": {"pairs": len(result.equalized.pairs), "rounds": result.equalized.rounds,
                                      "skipped": len(result.equalized.skipped)}} if result.equalized else {})})
    elif not quiet:
        parts = ", ".join(f"{n} {r}{'es' if r.endswith('s') else 's'}" for r, n in sorted(roles.items()))
        nodes = ", ".join(f"{n} {p}" for p, n in sorted(precisions.items()))
        bad = f"; {len(result.skipped)} bad samples skipped" if result.skipped else ""
        click.echo(f"wrote {result.table_path} ({method}; {table.samples} samples{bad}; {parts}; nodes: {nodes})",
                   err=True)
        if result.equalized is not None:
            e = result.equalized
            click.echo(f"equalized {len(e.pairs)} layer pairs in {e.rounds} rounds"
                       + (f"; {len(e.skipped)} left alone ({e.skipped[0][1]})" if e.skipped else ""), err=True)
        if result.rounding:
            r = result.rounding
            learned = sum(x.learned for x in r.layers)
            corrected = sum(x.bias_shift is not None for x in r.layers)
            click.echo(f"rounding: {len(r.layers)} layers on {r.samples} samples in {r.passes} passes, "
                       f"{r.seconds:.1f} s; learned codes kept on {learned}, biases corrected on {corrected}"
                       + (f"; {len(r.skipped)} left at nearest ({r.skipped[0][1]}, ...)" if r.skipped else ""),
                       err=True)


def _rounding_json(r) -> dict:
    from ptqcli.analysis.metrics import finite_or_none

    def num(x):
        return None if x is None else finite_or_none(x)

    return {"passes": r.passes, "samples": r.samples, "seconds": round(r.seconds, 3),
            "skipped": [{"layer": a, "reason": why} for a, why in r.skipped],
            "layers": [{"layer": x.anchor, "op_type": x.op_type, "weights": x.weights, "rows": x.rows,
                        "iterations": x.iterations, "learnings": x.learnings, "loss_nearest": num(x.loss_nearest),
                        "loss_learned": num(x.loss_learned), "learned": x.learned,
                        "repaired": x.repaired, "bias_shift": num(x.bias_shift),
                        "weight_range": num(x.weight_range), "seconds": round(x.seconds, 3)} for x in r.layers]}


@main.command(short_help="Write the QDQ ONNX model a scale table describes.")
@click.argument("model", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option("--table", "table_path", required=True, type=click.Path(dir_okay=False, path_type=pathlib.Path),
              help="Scale table written by ptq calibrate for this model.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=pathlib.Path),
              help="QDQ ONNX model to write (a model over 2 GiB keeps its weights in OUTPUT.data beside it).")
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
@reported
def export(model, table_path, output, quiet) -> None:
    """Write MODEL as a QDQ ONNX model quantized with --table."""
    from ptqcli import api

    api.export(model, table_path, output)
    if not quiet:
        click.echo(f"wrote {output}", err=True)


@main.command(short_help="Compare a quantized model with its float original.")
@click.argument("float_model", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.argument("quantized_model", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option("--data", required=True, type=click.Path(path_type=pathlib.Path), help="Folder of samples.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=pathlib.Path), default=None,
              help="CSV of 'file,label' rows: report top-1 accuracy of both models.")
@click.option("--reference", is_flag=True,
              help="Run the quantized model with ONNX Runtime's graph optimizations off: the reference "
                   "arithmetic (DequantizeLinear, float operator, QuantizeLinear) instead of this CPU's fused "
                   "int8 kernels.")
@data_flags
@reported
def evaluate(float_model, quantized_model, data, labels, reference, batch_size, limit, size, mean, std, layout, bgr,
             quiet, as_json) -> None:
    """Compare QUANTIZED_MODEL with FLOAT_MODEL on --data: SQNR, cosine, top-1 agreement, accuracy."""
    from ptqcli import api
    from ptqcli.analysis.report import EvaluationReport

    evaluation = api.evaluate(float_model, quantized_model, data, labels=labels, reference=reference,
                              data_options=data_options(batch_size, limit, size, mean, std, layout, bgr),
                              progress=stage_progress("evaluating", quiet or as_json))
    report = EvaluationReport(str(float_model), str(quantized_model), evaluation)
    if as_json:
        emit_json(report.as_json())
    else:
        click.echo(report.as_text())


@main.command(short_help="Run the integer simulator; compare with ONNX Runtime.")
@click.argument("model", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option("--table", "table_path", required=True, type=click.Path(dir_okay=False, path_type=pathlib.Path),
              help="Scale table written by ptq calibrate for this model.")
@click.option("--data", required=True, type=click.Path(path_type=pathlib.Path), help="Folder of samples.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=pathlib.Path), default=None,
              help="CSV of 'file,label' rows: report top-1 accuracy of float, ORT QDQ and the simulator.")
@click.option("--per-layer", is_flag=True, help="Compare every quantized tensor, not only the model outputs.")
@click.option("--requant", type=click.Choice(REQUANT), default="fixed", show_default=True,
              help="Requantization arithmetic: 'fixed' is an int32 multiplier and a rounding shift (integer "
                   "hardware); 'fp32' is a float32 factor as ONNX Runtime's CPU kernels and XNNPACK apply it.")
@click.option("--cpu", type=click.Choice(SIM_CPUS), default="exact", show_default=True,
              help="Accumulation: 'exact' int32 (x86 with VNNI, ARM, integer accelerators); 'x86-avx2' adds "
                   "uint8 x int8 products in saturating int16 pairs as ONNX Runtime does on x86 CPUs without "
                   "VNNI; 'native' is whichever of the two this machine's ONNX Runtime uses.")
@data_flags
@reported
def simulate(model, table_path, data, labels, per_layer, requant, cpu, batch_size, limit, size, mean, std, layout,
             bgr, quiet, as_json) -> None:
    """Run MODEL quantized with --table in the NumPy integer simulator on --data; compare it with
    float and with ONNX Runtime running the exported QDQ model."""
    from ptqcli.sim.report import simulation_report

    options = data_options(batch_size, limit, size, mean, std, layout, bgr)
    report = simulation_report(model, table_path, data, labels=labels, batch_size=options.batch_size,
                               limit=options.limit, image=options.image, per_layer=per_layer, requant=requant,
                               cpu=cpu, progress=stage_progress("simulating", quiet or as_json))
    if as_json:
        emit_json(report.as_json())
    else:
        click.echo(report.as_text())


@main.command(short_help="Rank quantization points by the error each causes.")
@click.argument("model", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option("--table", "table_path", required=True, type=click.Path(dir_okay=False, path_type=pathlib.Path),
              help="Scale table written by ptq calibrate for this model.")
@click.option("--data", required=True, type=click.Path(path_type=pathlib.Path), help="Folder of samples.")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True,
              help="Print the N most sensitive quantization points.")
@data_flags
@reported
def sensitivity(model, table_path, data, top, batch_size, limit, size, mean, std, layout, bgr, quiet, as_json) -> None:
    """Quantize one scale group (or one weight) of MODEL at a time and report the SQNR and cosine
    of the outputs against float: the most sensitive points first."""
    from ptqcli import api
    from ptqcli.analysis.metrics import finite_or_none

    result = api.sensitivity(model, table_path, data, data_options(batch_size, limit or 16, size, mean, std, layout, bgr),
                             stage_progress("analysing", quiet or as_json, unit="quantization points"))
    everything = result.all_quantized
    if as_json:
        emit_json({"arithmetic": result.arithmetic,
                    "all_quantized": {"sqnr_db": finite_or_none(everything.sqnr_db), "cosine": everything.cosine},
                    "points": [{"tensor": s.tensor, "role": s.role, "sqnr_db": finite_or_none(s.sqnr_db),
                                "cosine": s.cosine} for s in result.points]})
        return
    click.echo(result.arithmetic)
    click.echo(f"all quantized: SQNR {everything.sqnr_db:.2f} dB, cosine {everything.cosine:.6f}")
    click.echo(f"{'SQNR dB':>8}  {'cosine':>8}  {'role':10}  tensor (only this one quantized)")
    for s in result.points[:top]:
        click.echo(f"{s.sqnr_db:8.2f}  {s.cosine:8.6f}  {s.role:10}  {s.tensor}")


_RUN_PROGRESS = {"observe": ("observing", "samples"), "ranges": ("choosing ranges", "scale groups"),
                 "simulate": ("simulating", "samples"), "evaluate": ("evaluating", "samples")}


@main.command(short_help="Calibrate, export, evaluate and check a gate, from one TOML file (for CI).")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path))
@click.option("--print-config", is_flag=True,
              help="Print the resolved configuration (absolute paths, every default) as TOML and stop.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or summary on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON summary on stdout as well.")
@reported
def run(config, print_config, quiet, as_json) -> None:
    """Calibrate, export, simulate (optional) and evaluate as CONFIG says, check its gate, and
    write a JSON summary and a JUnit XML report.

    Exit codes: 0 the gate holds, 3 the model was written but the gate failed, 1 an error (the
    reports say which stage), 2 a bad configuration (the key is named).
    """
    from ptqcli import api
    from ptqcli.pipeline import config as run_config
    from ptqcli.pipeline.summary import as_json as summary_json
    from ptqcli.pipeline.summary import as_text

    if print_config:
        click.echo(run_config.dumps(api.load_run_config(config), config), nl=False)
        return
    silent = quiet or as_json

    def progress(stage: str) -> api.ProgressFactory:
        label, unit = _RUN_PROGRESS[stage]
        return stage_progress(label, silent, unit=unit)

    result = api.run(config, progress=progress)
    if as_json:
        emit_json(summary_json(result))
    if not quiet:
        click.echo(as_text(result), err=True)
        click.echo(f"wrote {result.outputs['summary']} and {result.outputs['junit']}", err=True)
    if result.status == "failed":
        failed = "; ".join(c.text for c in result.checks if not c.passed)
        raise Failure(f"gate failed: {failed}", 3)
