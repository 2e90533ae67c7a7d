"""calibrate -> export -> ONNX Runtime on the bundled sample models."""

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import SAMPLES
from fakequant import fake_quant

from ptqcli import api
from ptqcli.analysis.evaluate import read_labels
from ptqcli.errors import OptionError
from ptqcli.graph import prepare
from ptqcli.observe.dataset import list_samples
from ptqcli.quantize import scale_table
from ptqcli.quantize.autosearch import spread
from ptqcli.quantize.decide import CalibrationOptions
from ptqcli.sim import simulate

METHODS = ["max", "percentile", "kl", "mse"]


def accuracy(model_path, eval_dir):
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    labels = read_labels(eval_dir / "labels.csv")
    files = list_samples(eval_dir)
    x = np.concatenate([np.load(f) for f in files])
    pred = session.run(None, {"image": x})[0].argmax(1)
    return float(np.mean(pred == np.array([labels[f.name] for f in files])))


@pytest.fixture(scope="module")
def cnn_tables(tmp_path_factory, cnn_model, calib_dir):
    """One observation pass, then every method from the saved observations."""
    out = tmp_path_factory.mktemp("cnn")
    first = api.calibrate(cnn_model, data=calib_dir, output=out / "max.table.json",
                          options=CalibrationOptions(method="max"))
    tables = {"max": first.table_path}
    for method in METHODS[1:]:
        r = api.calibrate(cnn_model, observations=first.observations_path, output=out / f"{method}.table.json",
                          options=CalibrationOptions(method=method))
        tables[method] = r.table_path
    return out, tables


@pytest.mark.parametrize("method", METHODS)
def test_every_method_keeps_accuracy_within_one_point(cnn_tables, cnn_model, eval_dir, method):
    out, tables = cnn_tables
    qdq = api.export(cnn_model, tables[method], out / f"{method}.onnx")
    onnx.checker.check_model(onnx.load(str(qdq)), full_check=True)
    ops = {n.op_type for n in onnx.load(str(qdq)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    float_acc, int8_acc = accuracy(cnn_model, eval_dir), accuracy(qdq, eval_dir)
    assert float_acc > 0.95
    assert int8_acc >= float_acc - 0.01, (method, float_acc, int8_acc)


def test_exported_model_matches_numpy_fake_quant_reference(cnn_tables, cnn_model, eval_dir):
    out, tables = cnn_tables
    # Every method gives the image its observed range [-1, 1], on which each pixel (2 p - 255) / 255
    # lies exactly halfway between two codes: NumPy and ONNX Runtime break those ties apart (the
    # quotient x / s lands an ulp either side of the half), which moves 20 % of the logits.  The
    # arithmetic is compared on an input range that puts no pixel on a tie.
    r = api.calibrate(cnn_model, observations=api.observations_path_for(tables["max"]), output=out / "ref.table.json",
                      options=CalibrationOptions(method="percentile", fixed_ranges=(("image", -1.0, 1.0 + 2 / 255 / 3),)))
    qdq = api.export(cnn_model, r.table_path, out / "ref.onnx")
    table = scale_table.load(r.table_path)
    assert "logits" not in table.tensors  # the classifier's output stays float (int32 * scale)
    prepared = prepare(cnn_model)
    x = np.concatenate([np.load(f) for f in list_samples(eval_dir, limit=64)])
    want = fake_quant(prepared, table, {"image": x})[0]
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    unfused = ort.InferenceSession(str(qdq), plain, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    # ONNX Runtime's float kernels sum in another order than NumPy, and in another order again on
    # CPUs without AVX-512 (seen under qemu Haswell): a value on a rounding boundary before a
    # QuantizeLinear can land one code apart, which then moves a few logits by a step.
    close = np.isclose(unfused, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert close.mean() >= 0.98, close.mean()
    assert np.mean(unfused.argmax(1) == want.argmax(1)) >= 0.98
    # With its graph optimizations ONNX Runtime runs fused integer kernels, which requantize with
    # float32 factors (a tie of the reference can round the other way) and, on x86 without VNNI,
    # add products in int16 pairs: the simulator models both ("native": this machine's kernels).
    fused = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    sim = simulate(prepared, table, {"image": x}, requant="fp32", cpu="native").tensors["logits"].values
    assert np.abs(fused - sim).max() <= 1e-5 * np.abs(sim).max()
    assert np.mean(fused.argmax(1) == want.argmax(1)) >= 0.95


def test_table_is_byte_identical_across_runs_batch_sizes_and_file_order(tmp_path, cnn_model, calib_dir):
    def run(data, name, batch):
        r = api.calibrate(cnn_model, data=data, output=tmp_path / name,
                          data_options=api.DataOptions(batch_size=batch, limit=None))
        return r.table_path.read_bytes()

    reference = run(calib_dir, "a.json", 8)
    assert run(calib_dir, "b.json", 8) == reference
    assert run(calib_dir, "c.json", 1) == reference
    assert run(calib_dir, "d.json", 13) == reference
    reversed_dir = tmp_path / "reversed"
    reversed_dir.mkdir()
    files = list_samples(calib_dir)
    for i, f in enumerate(reversed(files)):
        shutil.copy(f, reversed_dir / f"{i:04d}.npy")
    assert run(reversed_dir, "e.json", 8) == reference


def test_saved_observations_give_the_same_table_as_a_fresh_pass(tmp_path, cnn_model, calib_dir):
    fresh = api.calibrate(cnn_model, data=calib_dir, output=tmp_path / "kl.json",
                          options=CalibrationOptions(method="kl"))
    again = api.calibrate(cnn_model, observations=fresh.observations_path, output=tmp_path / "kl2.json",
                          options=CalibrationOptions(method="kl"))
    assert fresh.table_path.read_bytes() == again.table_path.read_bytes()


@pytest.mark.parametrize("method", METHODS)
def test_transformer_block_quantizes_and_keeps_accuracy(tmp_path, transformer_model, calib_dir, eval_dir, method):
    r = api.calibrate(transformer_model, data=calib_dir, output=tmp_path / "t.json",
                      options=CalibrationOptions(method=method))
    kinds = {g.kind for g in r.table.groups.values()}
    assert kinds == {"compute", "binary", "lut", "requantize"}
    ops = {r.table.nodes[n].op_type for g in r.table.groups.values() for n in g.nodes}
    assert {"MatMul", "LayerNormalization", "Softmax", "Erf"} <= ops
    qdq = api.export(transformer_model, r.table_path, tmp_path / "t.onnx")
    assert accuracy(qdq, eval_dir) >= accuracy(transformer_model, eval_dir) - 0.01


def test_int16_exclude_and_fixed_range_options(tmp_path, cnn_model, calib_dir, eval_dir):
    options = CalibrationOptions(int16=("/stem/stem.0/Conv",), exclude=("Gemm",),
                                 fixed_ranges=(("/Relu_output_0", 0.0, 8.0),))
    r = api.calibrate(cnn_model, data=calib_dir, output=tmp_path / "o.json", options=options)
    t = r.table
    assert t.nodes["/fc/Gemm"].precision == "fp32" and "fc.weight" not in t.tensors
    assert t.nodes["/stem/stem.0/Conv"].precision == "int16"
    assert t.tensors["/stem/stem.2/Relu_output_0"].params.dtype == "int16"
    assert t.tensors["/Relu_output_0"].range == (0.0, 8.0) and t.tensors["/Relu_output_0"].method == "fixed"
    qdq = api.export(cnn_model, r.table_path, tmp_path / "o.onnx")
    model = onnx.load(str(qdq))
    assert model.opset_import[0].version >= 21
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert gemm.input[1] == "fc.weight" and any(i.name == "fc.weight" for i in model.graph.initializer)
    assert accuracy(qdq, eval_dir) >= accuracy(cnn_model, eval_dir) - 0.01


def output_sqnr_db(model_path, x) -> float:
    """SQNR of ``model_path``'s first output against the float model's, both run by ONNX Runtime
    here: a measurement independent of the search's own scoring code."""
    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]

    ref = run(SAMPLES / "digits_cnn.onnx").astype(np.float64)
    noise = ((ref - run(model_path).astype(np.float64)) ** 2).sum()
    return float(10 * np.log10((ref ** 2).sum() / noise))


def test_auto_search_beats_every_single_method_when_rescored_independently(tmp_path, cnn_model, calib_dir):
    r = api.calibrate(cnn_model, data=calib_dir, output=tmp_path / "auto.json",
                      options=CalibrationOptions(method="auto"))
    auto = r.table.options["auto"]
    assert r.table.options["method"] == "auto"
    methods = {e.method for e in r.table.tensors.values() if e.role == "activation"}
    assert auto["best_method"] in methods and methods <= {"max", "percentile", "kl", "mse"}
    for tensor, method in auto["switched"].items():
        assert r.table.tensors[tensor].method == method
    # Export the final table and each single method's table, run them on the samples the search
    # scored on, and measure: the search must have found a table at least as good as the best
    # single method, and what it reports must be what the exported model does.
    x = np.concatenate([np.load(f) for f in spread(list_samples(calib_dir))])
    measured = {}
    for method in METHODS:
        single = api.calibrate(cnn_model, observations=r.observations_path, output=tmp_path / f"{method}.json",
                               options=CalibrationOptions(method=method))
        measured[method] = output_sqnr_db(api.export(cnn_model, single.table_path, tmp_path / f"{method}.onnx"), x)
    measured["auto"] = output_sqnr_db(api.export(cnn_model, r.table_path, tmp_path / "auto.onnx"), x)
    best = max(METHODS, key=measured.get)
    assert measured["auto"] >= measured[best], measured
    assert abs(measured["auto"] - auto["output_sqnr_db"]["chosen"]) < 0.1, (measured, auto)
    for method in METHODS:  # each candidate was scored as itself, biases included
        assert abs(measured[method] - auto["output_sqnr_db"][method]) < 0.1, (method, measured, auto)
    assert abs(measured[auto["best_method"]] - measured[best]) < 0.2, (measured, auto)
    again = api.calibrate(cnn_model, data=calib_dir, output=tmp_path / "again.json",
                          options=CalibrationOptions(method="auto"))
    assert again.table_path.read_bytes() == r.table_path.read_bytes()
    with pytest.raises(OptionError, match="^method 'auto' scores candidate tables on calibration samples"):
        api.calibrate(cnn_model, observations=r.observations_path, output=tmp_path / "x.json",
                      options=CalibrationOptions(method="auto"))
