"""The ptq command through click's CliRunner: exit codes, one-line errors, no partial outputs."""

import json

import numpy as np
from conftest import one_line_error, run


def test_calibrate_export_evaluate_json(tmp_path, cnn_model, small_calib, eval_dir):
    table = tmp_path / "t.json"
    code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", table, "--method", "mse", "--json")
    assert code == 0, out
    summary = json.loads(out)
    assert summary["samples"] == 16 and summary["method"] == "mse" and summary["table"] == str(table)
    assert summary["tensors"]["weight"] == 7 and (tmp_path / "t.obs.npz").exists()
    code, out = run("calibrate", cnn_model, "--observations", tmp_path / "t.obs.npz", "-o", tmp_path / "k.json",
                    "--method", "kl", "--json")
    assert code == 0 and json.loads(out)["samples"] == 16
    code, out = run("export", cnn_model, "--table", table, "-o", tmp_path / "q.onnx")
    assert code == 0 and (tmp_path / "q.onnx").exists()
    code, out = run("evaluate", cnn_model, tmp_path / "q.onnx", "--data", eval_dir,
                    "--labels", eval_dir / "labels.csv", "--limit", "50", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["samples"] == 50 and report["outputs"]["logits"]["sqnr_db"] > 20
    assert report["accuracy"]["quantized"] >= report["accuracy"]["float"] - 0.04


def test_corrupt_model(tmp_path, small_calib):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not protobuf\xff\xff")
    code, out = run("calibrate", bad, "--data", small_calib, "-o", tmp_path / "t.json")
    assert code == 1 and "broken.onnx" in one_line_error(out)
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "t.obs.npz").exists()


def test_empty_folder(tmp_path, cnn_model):
    (tmp_path / "empty").mkdir()
    code, out = run("calibrate", cnn_model, "--data", tmp_path / "empty", "-o", tmp_path / "t.json")
    assert code == 1 and "empty: no samples" in one_line_error(out)
    assert list(tmp_path.glob("t.*")) == []


def test_sample_of_the_wrong_shape(tmp_path, cnn_model, small_calib):
    np.save(small_calib / "0005.npy", np.zeros((1, 1, 8, 9), np.float32))
    code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", tmp_path / "t.json")
    line = one_line_error(out)
    assert code == 1 and "0005.npy" in line and "expects shape" in line
    assert list(tmp_path.glob("t.*")) == []


def test_nan_in_the_data(tmp_path, cnn_model, small_calib):
    x = np.load(small_calib / "0003.npy")
    x[0, 0, 2, 2] = np.nan
    np.save(small_calib / "0003.npy", x)
    code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", tmp_path / "t.json")
    line = one_line_error(out)
    assert code == 1 and "0003.npy" in line and "NaN" in line
    assert list(tmp_path.glob("t.*")) == []


def test_table_for_another_model(tmp_path, cnn_model, transformer_model, small_calib):
    code, _ = run("calibrate", transformer_model, "--data", small_calib, "-o", tmp_path / "tr.json", "-q")
    assert code == 0
    code, out = run("export", cnn_model, "--table", tmp_path / "tr.json", "-o", tmp_path / "q.onnx")
    line = one_line_error(out)
    assert code == 1 and "tr.json" in line and "another model" in line and "digits_transformer.onnx" in line
    assert not (tmp_path / "q.onnx").exists()


def test_bad_usage_exits_2(tmp_path, cnn_model, small_calib):
    code, out = run("calibrate", cnn_model, "--data", small_calib, "--method", "entropy")
    assert code == 2 and "entropy" in out
    code, out = run("calibrate", cnn_model, "--data", small_calib, "--fixed-range", "oops")
    assert code == 2 and "NAME=LO:HI" in out
    code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", tmp_path / "t.json",
                    "--exclude", "NoSuchNode")
    assert code == 2 and "NoSuchNode" in one_line_error(out)
    code, out = run("calibrate", cnn_model, "-o", tmp_path / "t.json")
    assert code == 2 and "--data" in one_line_error(out)
    code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", tmp_path / "nodir" / "t.json")
    assert code == 2 and "does not exist" in one_line_error(out)
    assert list(tmp_path.glob("t.*")) == []


def test_sensitivity_command(tmp_path, cnn_model, small_calib):
    code, _ = run("calibrate", cnn_model, "--data", small_calib, "-o", tmp_path / "t.json", "-q")
    assert code == 0
    code, out = run("sensitivity", cnn_model, "--table", tmp_path / "t.json", "--data", small_calib,
                    "--limit", "4", "--json")
    assert code == 0, out
    report = json.loads(out)
    sqnr = [p["sqnr_db"] for p in report["points"]]
    assert sqnr == sorted(sqnr) and report["all_quantized"]["sqnr_db"] <= sqnr[0] + 0.5
    assert {"weight", "activation"} <= {p["role"] for p in report["points"]}
    code, out = run("sensitivity", cnn_model, "--table", tmp_path / "t.json", "--data", small_calib, "--top", "3")
    assert code == 0 and len([ln for ln in out.splitlines() if ln.strip().startswith(("-", "1", "2", "3", "4", "5", "6", "7", "8", "9"))]) == 3
