"""The sequential rounding pass (AdaRound, bias correction) through the API: determinism, the
x86 pair bound, 4-bit codes, the simulator against ONNX Runtime, and bias correction."""

import json
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from builders import float_input, make_model, save, write_npy_folder
from onnx import TensorProto, helper
from ptqcli import api, runtime
from ptqcli.analysis.evaluate import read_labels
from ptqcli.cli import main
from ptqcli.export.qdq import export
from ptqcli.graph import attr, prepare
from ptqcli.observe.dataset import list_samples
from ptqcli.quantize import scale_table
from ptqcli.quantize.decide import CalibrationOptions
from ptqcli.quantize.stored import codes
from ptqcli.rounding import pairs, sequential
from ptqcli.rounding.options import RoundingOptions
from ptqcli.sim.compare import compare
from ptqcli.targets import PAIR_LIMIT, pair_peaks, reduction_rows

FAST = RoundingOptions(weights="adaround", bias_correction=True, adaround_iters=200, adaround_samples=1024)


def _calibrate(model, calib_dir, out, rounding=FAST, **kw):
    return api.calibrate(model, data=calib_dir, output=out, options=CalibrationOptions(rounding=rounding, **kw),
                         data_options=api.DataOptions(limit=64))


@pytest.fixture(scope="module")
def adaround_table(tmp_path_factory, cnn_model, calib_dir):
    return _calibrate(cnn_model, calib_dir, tmp_path_factory.mktemp("ada") / "t.json")


def _peaks(prepared, table):
    """Per layer, the largest same-sign pair sum of the codes in MLAS's reduction order."""
    out = {}
    for anchor, g in table.groups.items():
        if g.weight is None:
            continue
        node = prepared.index.node_by_name[anchor]
        q = codes(table, g.weight, prepared.index.array(g.weight)).astype(np.int64)
        rows = reduction_rows(node.op_type, q, group=int(attr(node, "group", 1)), trans_b=bool(attr(node, "transB", 0)))
        if rows is not None:
            out[anchor] = int(pair_peaks(rows).max())
    return out


def test_same_inputs_give_byte_identical_table_and_weights(adaround_table, tmp_path, cnn_model, calib_dir):
    again = _calibrate(cnn_model, calib_dir, tmp_path / "t.json")
    first = adaround_table.table_path
    assert again.table_path.read_bytes() == first.read_bytes()
    side = first.with_name("t.weights.npz")
    assert (tmp_path / "t.weights.npz").read_bytes() == side.read_bytes()
    doc = json.loads(first.read_text())
    assert doc["weights"]["codes"] and doc["calibration"]["options"]["rounding"]["weights"] == "adaround"


def test_saved_observations_with_data_give_the_same_table(adaround_table, tmp_path, cnn_model, calib_dir):
    """Observations reused from an earlier run replace the pass; AdaRound still reads --data."""
    again = api.calibrate(cnn_model, data=calib_dir, observations=adaround_table.observations_path,
                          output=tmp_path / "t.json", options=CalibrationOptions(rounding=FAST),
                          data_options=api.DataOptions(limit=64))
    assert again.rounding is not None and again.seconds_observe == 0.0
    assert again.table_path.read_bytes() == adaround_table.table_path.read_bytes()
    assert (tmp_path / "t.weights.npz").read_bytes() == adaround_table.table_path.with_name("t.weights.npz").read_bytes()


def test_learned_codes_round_up_or_down_and_beat_nearest_where_kept(adaround_table, cnn_model):
    report = adaround_table.rounding
    prepared = prepare(cnn_model)
    table = adaround_table.table
    assert report.layers and all(r.iterations == 200 for r in report.layers)
    kept = [r for r in report.layers if r.learned]
    assert kept and all(r.loss_learned < r.loss_nearest for r in kept)
    for r in report.layers:
        g = table.groups[r.anchor]
        w = prepared.index.array(g.weight)
        p = table.tensors[g.weight].params
        scale, _ = p.arrays(w.ndim)
        q = codes(table, g.weight, w)
        assert np.all(np.abs(q - w / scale) < 1.0 + 1e-4)  # floor or ceil of w / s
        assert (g.weight in table.stored.codes) == r.learned
        assert r.bias_shift is not None  # every layer of the CNN has a bias


def test_learned_codes_keep_the_x86_pair_bound(adaround_table, cnn_model):
    prepared = prepare(cnn_model)
    assert max(_peaks(prepared, adaround_table.table).values()) <= PAIR_LIMIT
    # the bound was at stake: without the repair, learned codes break it
    assert sum(r.repaired for r in adaround_table.rounding.layers) > 0
    table = scale_table.load(adaround_table.table_path)
    unrepaired, _ = sequential.round_weights(prepared, replace(table, stored=None), _feeds(prepared),
                                             replace(FAST, bias_correction=False), qmax=127, pair_bound=False)
    assert max(_peaks(prepared, unrepaired).values()) > PAIR_LIMIT


def _feeds(prepared):
    from conftest import SAMPLES

    return sequential.feeds(list_samples(SAMPLES / "digits" / "calib", limit=64), prepared.inputs, FAST)


def test_repair_moves_the_code_farthest_from_its_value_back_toward_zero():
    ratio = np.array([[63.6, 64.4, -63.6, -64.4, 63.4, 65.4, 70.0, -3.0]], dtype=np.float64)
    learned = np.array([[64, 65, -64, -65, 64, 66, 70, -3]], dtype=np.int8)  # every pair rounded away
    fixed, moved = pairs.repair("Gemm", learned, ratio, trans_b=True)
    assert fixed.tolist() == [[64, 64, -64, -64, 63, 65, 70, -3]] and moved == 4
    assert np.all(np.abs(fixed - ratio) < 1.0)
    assert pair_peaks(reduction_rows("Gemm", fixed, trans_b=True)).max() <= PAIR_LIMIT


def test_simulator_and_onnx_runtime_agree_on_an_adaround_export(adaround_table, cnn_model, eval_dir):
    result = compare(prepare(cnn_model), scale_table.load(adaround_table.table_path), list_samples(eval_dir, limit=200),
                     batch_size=50, labels=read_labels(eval_dir / "labels.csv"))
    assert result.output_codes_within1 >= 0.99
    assert result.top1["sim_vs_ort"] >= 0.99
    assert abs(result.accuracy["sim"] - result.accuracy["ort"]) <= 0.005
    assert result.fallbacks == () and result.overflows == ()


def test_four_bit_weights_stay_within_seven(tmp_path, cnn_model, calib_dir):
    prepared = prepare(cnn_model)
    for rounding in (RoundingOptions(), replace(FAST, bias_correction=False)):
        r = _calibrate(cnn_model, calib_dir, tmp_path / f"{rounding.weights}.json", rounding, weight_bits=4)
        table = scale_table.load(r.table_path)
        for g in table.groups.values():
            if g.weight:
                q = codes(table, g.weight, prepared.index.array(g.weight))
                assert q.dtype == np.int8 and np.abs(q).max() == 7
        runtime.session(export(prepared, table))


def _biased_gemm(tmp_path, rng):
    """y = x W + b with inputs of mean 1 and weights that nearest rounding moves down by 0.4 of
    a step each: a built-in mean output error of about -0.4 * 0.01 * 15 = -0.06 per channel."""
    k, o = 16, 6
    w = 0.01 * (rng.integers(-50, 50, (k, o)) + 0.4)
    w[0] = 1.27  # the largest weight of every column: scale 0.01 exactly
    b = rng.normal(0, 0.1, o)
    model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")], [float_input("x", ["N", k])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", o])],
                       [("w", w.astype(np.float32)), ("b", b.astype(np.float32))])
    path = save(model, tmp_path / "gemm.onnx")
    calib = write_npy_folder(tmp_path / "calib", rng.uniform(0.5, 1.5, (64, 1, k)).astype(np.float32))
    test = rng.uniform(0.5, 1.5, (512, k)).astype(np.float32)
    return path, calib, test


def test_bias_correction_removes_a_built_in_mean_error(tmp_path, rng):
    path, calib, x = _biased_gemm(tmp_path, rng)
    prepared = prepare(path)
    reference = runtime.session(prepared.model).run(None, {"x": x})[0]
    errors = {}
    for corrected in (False, True):
        r = _calibrate(path, calib, tmp_path / f"{corrected}.json", RoundingOptions(bias_correction=corrected),
                       cpu="arm")  # no scale raised for x86 pairs: the rounding stays as built
        q = runtime.session(export(prepared, scale_table.load(r.table_path))).run(None, {"x": x})[0]
        errors[corrected] = (q - reference).mean(axis=0)
    assert np.all(errors[False] < -0.04)
    assert np.abs(errors[True]).max() < 0.1 * np.abs(errors[False]).min()


def test_cli_reports_the_rounding(tmp_path, cnn_model, calib_dir):
    out = tmp_path / "t.json"
    result = CliRunner().invoke(main, ["calibrate", str(cnn_model), "--data", str(calib_dir), "-o", str(out),
                                       "--limit", "32", "--weights", "adaround", "--adaround-iters", "20",
                                       "--adaround-samples", "256", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    layers = doc["rounding"]["layers"]
    assert len(layers) == 7 and all(x["iterations"] == 20 for x in layers)
    assert doc["rounding"]["passes"] >= 2
    text = CliRunner().invoke(main, ["calibrate", str(cnn_model), "--data", str(calib_dir), "-o", str(out),
                                     "--limit", "32", "--bias-correction"])
    assert text.exit_code == 0 and "biases corrected on 7" in text.output
    bad = CliRunner().invoke(main, ["calibrate", str(cnn_model), "--observations", str(out.with_suffix(".obs.npz")),
                                    "-o", str(out), "--weights", "adaround"])
    assert bad.exit_code == 2 and "give --data too" in bad.output


def test_progress_counts_every_weight_including_a_layer_left_at_nearest(tmp_path, rng):
    """The bar's total is every weight; a layer the pass cannot view (a Gemm with alpha) is counted
    as done when it is skipped, so the bar ends full."""
    k, h, o = 8, 12, 4
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="scaled", alpha=2.0),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="plain")]
    model = make_model(nodes, [float_input("x", ["N", k])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", o])],
                       [("w1", rng.normal(0, 0.3, (k, h)).astype(np.float32)), ("b1", np.zeros(h, np.float32)),
                        ("w2", rng.normal(0, 0.3, (h, o)).astype(np.float32)), ("b2", np.zeros(o, np.float32))])
    path = save(model, tmp_path / "two.onnx")
    calib = write_npy_folder(tmp_path / "calib", rng.normal(0, 1, (32, 1, k)).astype(np.float32))
    seen = {"total": [], "done": 0}

    def progress(total):
        seen["total"].append(total)

        def update(n):
            seen["done"] += n
        return nullcontext(update)

    r = api.calibrate(path, data=calib, output=tmp_path / "t.json", rounding_progress=progress,
                      options=CalibrationOptions(rounding=replace(FAST, adaround_iters=20, adaround_samples=64)))
    assert [a for a, _ in r.rounding.skipped] == ["scaled"]
    assert seen["total"] == [k * h + h * o] and seen["done"] == k * h + h * o
