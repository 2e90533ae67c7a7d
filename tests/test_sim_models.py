"""The simulator on the bundled sample models: against ONNX Runtime's QDQ execution, against
itself (re-runs and batch sizes), and through ``ptq simulate``."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ptqcli import api
from ptqcli.analysis.evaluate import read_labels
from ptqcli.cli import main
from ptqcli.graph import prepare
from ptqcli.observe.dataset import batches, list_samples
from ptqcli.quantize import scale_table
from ptqcli.sim import build, run
from ptqcli.sim.compare import compare

MODELS = ["cnn_model", "transformer_model"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    from conftest import SAMPLES

    out = {}
    for key, name in (("cnn_model", "digits_cnn"), ("transformer_model", "digits_transformer")):
        path = tmp_path_factory.mktemp(name) / f"{name}.table.json"
        api.calibrate(SAMPLES / f"{name}.onnx", data=SAMPLES / "digits" / "calib", output=path)
        out[key] = path
    return out


@pytest.mark.parametrize("which", MODELS)
def test_agrees_with_onnx_runtime_qdq(request, tables, eval_dir, which):
    model = request.getfixturevalue(which)
    p = prepare(model)
    files = list_samples(eval_dir, limit=300)
    result = compare(p, scale_table.load(tables[which]), files, batch_size=50,
                     labels=read_labels(eval_dir / "labels.csv"))
    assert result.output_codes_within1 >= 0.99
    assert abs(result.accuracy["sim"] - result.accuracy["ort"]) <= 0.005
    assert result.top1["sim_vs_ort"] >= 0.99
    assert result.fallbacks == () and result.overflows == ()
    for t in result.outputs:
        assert t.sim_vs_float.cosine > 0.999


@pytest.mark.parametrize("which", MODELS)
def test_bit_identical_on_rerun_and_across_batch_sizes(request, tables, eval_dir, which):
    p = prepare(request.getfixturevalue(which))
    program = build(p, scale_table.load(tables[which]), keep=["/Relu_output_0"] if which == "cnn_model" else [])
    files = list_samples(eval_dir, limit=37)
    keep = ["/Relu_output_0"] if which == "cnn_model" else []

    def outputs(batch_size):
        parts = [run(program, b.feeds, keep=keep) for b in batches(files, p.inputs, batch_size=batch_size)]
        return {k: np.concatenate([r.tensors[k].values for r in parts]) for k in parts[0].tensors}

    first = outputs(37)
    for size in (37, 1, 5):
        again = outputs(size)
        for k in first:
            assert np.array_equal(first[k], again[k]), (k, size)


def test_cli_simulate_text_and_json(cnn_model, tables, eval_dir):
    runner = CliRunner()
    args = ["simulate", str(cnn_model), "--table", str(tables["cnn_model"]), "--data", str(eval_dir),
            "--limit", "40", "--labels", str(eval_dir / "labels.csv"), "-q"]
    text = runner.invoke(main, args + ["--per-layer"])
    assert text.exit_code == 0, text.output
    assert "within 1" in text.output and "float fallbacks: none" in text.output
    assert "first tensor more than 1 code from ORT QDQ" in text.output
    assert "on ORT's own inputs" in text.output
    as_json = runner.invoke(main, args + ["--json", "--per-layer"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)
    assert doc["samples"] == 40 and doc["fallbacks"] == [] and doc["output_codes_within_1"] >= 0.99
    assert set(doc["accuracy"]) == {"float", "ort", "sim"}
    # the reported first local difference is the first layer, in graph order, whose kernel fed
    # ORT's own input codes does not reproduce ORT's codes
    local = [layer for layer in doc["layers"] if layer.get("local_equal") is not None]
    assert len(local) >= 10
    assert doc["first_local_difference"] == next((lay["name"] for lay in local if lay["local_equal"] < 1.0), None)
    first = doc["first_local_difference"] or "none"
    assert f"first tensor whose kernel differs from ORT on ORT's own inputs: {first}" in text.output


def test_cli_simulate_fp32_gives_onnx_runtimes_codes(cnn_model, tables, eval_dir):
    """The sample CNN under ``--requant fp32``: every quantized tensor equals ONNX Runtime's."""
    result = CliRunner().invoke(main, ["simulate", str(cnn_model), "--table", str(tables["cnn_model"]), "--data",
                                       str(eval_dir), "--limit", "64", "--requant", "fp32", "--per-layer",
                                       "--json", "-q"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["requant"] == "fp32"
    assert doc["first_local_difference"] is None
    compared = [layer for layer in doc["layers"] if layer.get("codes_equal") is not None]
    assert len(compared) == len(doc["layers"]) >= 12  # every quantized tensor of the sample CNN
    assert all(layer["codes_equal"] == 1.0 for layer in compared)


def test_cli_simulate_refuses_a_table_of_another_model(transformer_model, tables, eval_dir):
    result = CliRunner().invoke(main, ["simulate", str(transformer_model), "--table", str(tables["cnn_model"]),
                                       "--data", str(eval_dir), "--limit", "4"])
    assert result.exit_code == 1
    assert "made for another model" in result.output


def test_nothing_compared_is_no_agreement():
    from ptqcli.sim.compare import Codes

    empty = Codes()
    assert empty.equal_fraction is None and empty.within1_fraction is None
    one = empty.add(np.array([3, 4], np.uint8), np.array([3, 6], np.uint8))
    assert (one.equal_fraction, one.within1_fraction, one.max_diff) == (0.5, 0.5, 2)
