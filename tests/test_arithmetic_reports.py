"""Every measuring command says which arithmetic it measured (issue 10): ONNX Runtime's fused
kernels of this CPU, or the reference arithmetic; and whether those kernels saturate."""

import json

from click.testing import CliRunner

from ptqcli import api, runtime
from ptqcli.cli import main
from ptqcli.quantize.decide import CalibrationOptions


def _export(tmp_path, cnn_model, calib_dir, cpu):
    r = api.calibrate(cnn_model, data=calib_dir, output=tmp_path / f"{cpu}.json", options=CalibrationOptions(cpu=cpu),
                      data_options=api.DataOptions(limit=32))
    return r.table_path, api.export(cnn_model, r.table_path, tmp_path / f"{cpu}.onnx")


def test_evaluate_names_the_fused_kernels_or_the_reference_arithmetic(tmp_path, cnn_model, calib_dir, eval_dir):
    _, qdq = _export(tmp_path, cnn_model, calib_dir, "any")
    here = runtime.int8_arithmetic()
    args = ["evaluate", str(cnn_model), str(qdq), "--data", str(eval_dir), "--limit", "8", "--json"]
    fused = json.loads(CliRunner().invoke(main, args).output)["ort_arithmetic"]
    reference = json.loads(CliRunner().invoke(main, args + ["--reference"]).output)["ort_arithmetic"]
    assert fused.startswith("this CPU's fused int8 kernels")
    assert ("saturating" in fused) == here.saturating
    assert reference.startswith("the reference arithmetic")


def test_sensitivity_warns_when_the_tables_weights_can_saturate_this_cpus_kernels(tmp_path, cnn_model, calib_dir,
                                                                                  monkeypatch):
    tables = {cpu: _export(tmp_path, cnn_model, calib_dir, cpu)[0] for cpu in ("any", "x86-vnni")}
    monkeypatch.setattr(runtime, "int8_arithmetic", lambda: runtime.Int8Arithmetic(saturating=True, vnni=False))
    texts = {cpu: api.sensitivity(cnn_model, t, calib_dir, api.DataOptions(limit=4)).arithmetic
             for cpu, t in tables.items()}
    assert all(t.startswith("measured with ONNX Runtime's reference arithmetic") for t in texts.values())
    assert "saturating int16 pairs" in texts["any"]
    assert "--cpu x86-vnni" in texts["x86-vnni"] and "can saturate" in texts["x86-vnni"]
    assert "can saturate" not in texts["any"]
