"""ptq run: one TOML file, calibrate -> export -> simulate -> evaluate, a gate, a JSON summary and
a JUnit report; exit 0 (gate holds), 3 (gate failed), 1 (a stage failed), 2 (bad configuration)."""

import json
import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import xmlschema
from conftest import JUNIT_XSD, ROOT, SAMPLES, one_line_error, run, valid_junit

from ptqcli import api
from ptqcli.analysis.evaluate import Evaluation
from ptqcli.analysis.metrics import Agreement
from ptqcli.errors import ConfigError
from ptqcli.pipeline import config as run_config
from ptqcli.pipeline.run import gate


def write_config(folder: pathlib.Path, gate_lines: str = "min_sqnr = 10.0", *, calibrate: str = "", top: str = "",
                 extra: str = "", calib: pathlib.Path | None = None, model: str = "digits_cnn.onnx") -> pathlib.Path:
    """``folder/run.toml`` on the sample model and data, every path relative to ``folder``, with
    ``top`` lines first, ``calibrate`` lines in [calibrate], ``extra`` tables at the end."""
    rel = pathlib.Path(os.path.relpath(SAMPLES, folder)).as_posix()
    calib_rel = os.path.relpath(calib, folder) if calib is not None else f"{rel}/digits/calib"
    path = folder / "run.toml"
    path.write_text(f'{top}\nmodel = "{rel}/{model}"\n\n[calibrate]\ndata = "{calib_rel}"\n{calibrate}\n\n'
                    f'[evaluate]\ndata = "{rel}/digits/eval"\nlabels = "{rel}/digits/eval/labels.csv"\n\n'
                    f'[data]\nlimit = 40\n\n[gate]\n{gate_lines}\n\n{extra}\n')
    return path


def invoke(how: str, config: pathlib.Path, *args) -> tuple[int, str]:
    if how == "CliRunner":
        return run("run", config, *args)
    done = subprocess.run([sys.executable, "-m", "ptqcli", "run", str(config), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("how", ["CliRunner", "subprocess"])
@pytest.mark.parametrize("gate_lines, code, status", [("max_drop = 0.05\nmin_sqnr = 20.0", 0, "passed"),
                                                     ("max_drop = 0.05\nmin_sqnr = 60.0", 3, "failed")])
def test_the_gate_decides_the_exit_code(tmp_path, how, gate_lines, code, status):
    config = write_config(tmp_path, gate_lines)
    got, out = invoke(how, config)
    assert got == code, out
    out_dir = tmp_path / "ptq-out"  # relative to the configuration, not to the working folder
    assert (out_dir / "digits_cnn.int8.onnx").is_file() and (out_dir / "digits_cnn.table.json").is_file()
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["status"] == status and summary["exit_code"] == code and summary["error"] is None
    assert [s["name"] for s in summary["stages"]] == ["calibrate", "export", "simulate", "evaluate"]
    assert [s["status"] for s in summary["stages"]] == ["passed", "passed", "skipped", "passed"]
    assert summary["calibrate"]["samples"] == 40 and summary["evaluate"]["samples"] == 40
    sqnr = summary["evaluate"]["outputs"]["logits"]["sqnr_db"]
    limit = 20.0 if code == 0 else 60.0
    assert summary["gate"]["min_sqnr"] == {"limit": limit, "value": sqnr, "passed": code == 0,
                                           "text": f"output logits: SQNR {sqnr:.2f} dB {'>=' if code == 0 else '<'} "
                                                   f"min_sqnr {limit:.2f} dB"}
    assert summary["gate"]["max_drop"]["passed"] is True
    valid_junit(out_dir / "junit.xml")
    suite = ET.parse(out_dir / "junit.xml").getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == ["calibrate", "export", "simulate", "evaluate", "gate max_drop", "gate min_sqnr"]
    assert cases["simulate"].find("skipped") is not None
    assert (cases["gate min_sqnr"].find("failure") is not None) == (code == 3)
    assert suite.get("failures") == str(int(code == 3)) and suite.get("errors") == "0"
    if code == 3:
        line = one_line_error(out)
        assert line.startswith("Error: gate failed: output logits: SQNR ") and "< min_sqnr 60.00 dB" in line
    assert list(tmp_path.rglob("*.tmp")) == [] and list(tmp_path.rglob(".*.lock")) == []


def test_simulate_and_skipped_samples_reach_the_summary(tmp_path, small_calib):
    (small_calib / "0009.npy").write_bytes(b"broken")
    config = write_config(tmp_path, calib=small_calib, calibrate='on_bad_sample = "skip"',
                          extra='[simulate]\nenabled = true\nrequant = "fp32"\n\n[outputs]\ndir = "out"')
    code, out = run("run", config, "--json")
    assert code == 0, out
    assert "note: skipped bad sample" in out and "0009.npy" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["calibrate"]["samples"] == 15 and summary["calibrate"]["skipped_samples"]["count"] == 1
    assert summary["calibrate"]["skipped_samples"]["files"][0]["file"].endswith("0009.npy")
    assert summary["simulate"]["requant"] == "fp32" and summary["simulate"]["samples"] == 40
    assert [s["status"] for s in summary["stages"]] == ["passed"] * 4
    valid_junit(tmp_path / "out" / "junit.xml")


def test_a_failing_stage_exits_1_and_still_reports(tmp_path):
    config = write_config(tmp_path, model="no_such_model.onnx")
    code, out = run("run", config)
    assert code == 1 and "no_such_model.onnx: no such model file" in one_line_error(out)
    summary = json.loads((tmp_path / "ptq-out" / "summary.json").read_text())
    assert summary["status"] == "error" and summary["exit_code"] == 1 and "no such model" in summary["error"]
    assert [s["status"] for s in summary["stages"]] == ["error", "skipped", "skipped", "skipped"]
    valid_junit(tmp_path / "ptq-out" / "junit.xml")
    suite = ET.parse(tmp_path / "ptq-out" / "junit.xml").getroot().find("testsuite")
    assert (suite.get("errors"), suite.get("skipped"), suite.get("failures")) == ("1", "4", "0")


BAD = [  # (where the lines go, the lines, what the message says)
    ("calibrate", 'methd = "kl"', "unknown key 'calibrate.methd'; valid keys in [calibrate]: data, on_bad_sample, "
                                  "method, method_for, percentile,"),
    ("calibrate", 'percentile = "high"', "calibrate.percentile must be a number, got a string 'high'"),
    ("calibrate", 'method = "entropy"', "calibrate.method 'entropy': unknown range method; known: max,"),
    ("calibrate", 'int16 = "x"', "calibrate.int16 must be an array of strings, got a string 'x'"),
    ("calibrate", "fixed_ranges = {x = [1, 2]}", "calibrate.fixed_ranges 'x=1.0:2.0': the range must contain 0"),
    ("calibrate", 'on_bad_sample = "ignore"', "calibrate.on_bad_sample 'ignore': known: fail, skip"),
    ("top", "colour = 1", "unknown key 'colour'; valid keys at the top level: model, calibrate, evaluate, data, "
                          "simulate, gate, outputs"),
    ("extra", "[data.image]\nsize = [8]", "data.image.size must be an array of 2 integers, got an array [8]"),
    ("extra", '[simulate]\nrequant = "float"', "simulate.requant 'float': known: fixed, fp32"),
    ("extra", '[outputs]\nsummary = "x.json"\njunit = "x.json"', "outputs.summary and outputs.junit are the same"),
    ("gate", "max_drop = 2", "gate.max_drop must be a fraction in [0, 1]"),
    ("gate", "", "[gate] sets neither max_drop nor min_sqnr"),
    ("gate", "min_sqnr = [", "not valid TOML"),
]


@pytest.mark.parametrize("where, lines, message", BAD, ids=[m.split(" ")[0] + m.split(" ")[-1] for *_, m in BAD])
def test_a_bad_config_exits_2_naming_the_key_and_writes_nothing(tmp_path, where, lines, message):
    config = write_config(tmp_path, **({"gate_lines": lines} if where == "gate" else {where: lines}))
    code, out = run("run", config)
    line = one_line_error(out)
    assert code == 2 and line.startswith(f"Error: {config}: ") and message in line, line
    assert not (tmp_path / "ptq-out").exists()


def test_a_wrong_type_in_data_and_evaluate(tmp_path):
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("limit = 40", "batch_size = 0"))
    assert "data.batch_size must be at least 1, got 0" in one_line_error(run("run", config)[1])
    config.write_text(config.read_text().replace("[evaluate]\n", "[evaluate]\nreference = 1\n"))
    code, out = run("run", config)
    assert code == 2 and "evaluate.reference must be true or false, got an integer 1" in one_line_error(out)


def test_print_config_writes_every_key_and_reads_back_the_same(tmp_path):
    config = write_config(tmp_path, "max_drop = 0.01", calibrate='method_for = {"/Relu_output_0" = "kl"}')
    code, out = run("run", "--print-config", config)
    assert code == 0, out
    again = tmp_path / "elsewhere" / "printed.toml"
    again.parent.mkdir()
    again.write_text(out)
    assert run_config.load(again) == run_config.load(config)  # absolute paths: the folder no longer matters
    assert run("run", "--print-config", again)[1] == out.replace(str(config), str(again))
    for key in run_config.all_keys():
        name = key.rsplit(".", 1)[-1]
        assert f"\n{name} = " in out or f"\n# {name}: not set" in out, key
    assert f'model = "{SAMPLES / "digits_cnn.onnx"}"' in out and 'method_for = {"/Relu_output_0" = "kl"}' in out
    assert f'summary = "{tmp_path / "ptq-out" / "summary.json"}"' in out
    assert not (tmp_path / "ptq-out").exists()


def test_the_config_keys_come_from_the_option_dataclasses():
    keys = run_config.all_keys()
    for field in api.CalibrationOptions.__dataclass_fields__.values():
        if field.metadata.get("flatten"):  # the rounding options sit beside the others, as their flags do
            nested = getattr(api.CalibrationOptions(), field.name).__dataclass_fields__
            assert {f"calibrate.{name}" for name in nested} <= set(keys)
        else:
            assert f"calibrate.{field.name}" in keys
    for field in api.ImageSpec.__dataclass_fields__:
        assert f"data.image.{field}" in keys
    resolved = run_config.loads('model = "m.onnx"\n[calibrate]\ndata = "c"\n[evaluate]\ndata = "e"\n'
                                '[gate]\nmin_sqnr = 1', pathlib.Path("/base"))
    assert resolved.calibrate.options == api.CalibrationOptions() and resolved.data == api.DataOptions()
    assert resolved.model == pathlib.Path("/base/m.onnx") and resolved.outputs.junit == pathlib.Path(
        "/base/ptq-out/junit.xml")
    with pytest.raises(ConfigError, match="missing key 'evaluate.data'"):
        run_config.loads('model = "m.onnx"\n[calibrate]\ndata = "c"\n[evaluate]\n[gate]\nmin_sqnr = 1',
                         pathlib.Path("/base"))


def test_the_gate_arithmetic():
    config = run_config.loads('model = "m.onnx"\n[calibrate]\ndata = "c"\n[evaluate]\ndata = "e"\nlabels = "l"\n'
                              '[gate]\nmax_drop = 0.002\nmin_sqnr = 30', pathlib.Path("/b"))
    logits = Agreement().add(*[__import__("numpy").array([1.0, 2.0])] * 2)
    ev = Evaluation({"logits": logits}, 500, 0.99, {"float": 0.988, "quantized": 0.986})
    drop, sqnr = gate(config, ev)
    assert drop.passed and drop.value == pytest.approx(0.002)  # 0.988 - 0.986 is 0.0020000000000000018
    assert sqnr.passed and sqnr.value == float("inf")
    ev = Evaluation({"logits": logits}, 500, 0.99, {"float": 0.988, "quantized": 0.985})
    assert not gate(config, ev)[0].passed and "drop 0.30 points" in gate(config, ev)[0].text


def test_the_schema_rejects_what_ci_systems_would_not_read(tmp_path):
    schema = xmlschema.XMLSchema(str(JUNIT_XSD))
    good = '<testsuites><testsuite name="s" tests="1"><testcase name="c" time="0.5"/></testsuite></testsuites>'
    assert schema.is_valid(good)
    for bad in [good.replace(' name="c"', ""), good.replace('tests="1"', 'tests="one"'),
                good.replace('time="0.5"', 'time="-1"'), good.replace("<testcase", "<case").replace("/>", "/>"),
                good.replace('/></testsuite>', '><skipped/><failure/></testcase></testsuite>')]:
        assert not schema.is_valid(bad), bad
