"""What ptq writes: never over one of its inputs, with the modes open() gives, only where it can
write (checked before the pass), one writer per output."""

import json
import os
import stat

import pytest
from conftest import one_line_error, run


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def table(tmp_path, cnn_model, small_calib):
    path = tmp_path / "t.json"
    code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", path, "-q")
    assert code == 0, out
    return path


def test_calibrate_refuses_to_write_over_its_model_however_spelled(tmp_path, cnn_model, small_calib, monkeypatch):
    model = tmp_path / "m.onnx"
    model.write_bytes(cnn_model.read_bytes())
    os.symlink(model, tmp_path / "alias.onnx")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for spelling in (model, "../m.onnx", tmp_path / "alias.onnx"):
        code, out = run("calibrate", model, "--data", small_calib, "-o", spelling)
        assert code == 2 and "that is the model" in one_line_error(out) and "-o" in out
    assert model.read_bytes() == cnn_model.read_bytes()


def test_calibrate_refuses_a_data_sample_or_its_observations_as_output(tmp_path, cnn_model, small_calib, table):
    sample = small_calib / "0003.npy"
    before = sample.read_bytes()
    code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", sample)
    assert code == 2 and "that is the data sample" in one_line_error(out)
    assert sample.read_bytes() == before
    obs = tmp_path / "t.obs.npz"
    before = obs.read_bytes()
    code, out = run("calibrate", cnn_model, "--observations", obs, "-o", obs)
    assert code == 2 and "that is the observations file" in one_line_error(out)
    assert obs.read_bytes() == before


def test_export_refuses_to_write_over_its_model_or_table(tmp_path, cnn_model, table):
    model = tmp_path / "m.onnx"
    model.write_bytes(cnn_model.read_bytes())
    before = table.read_bytes()
    code, out = run("export", model, "--table", table, "-o", model)
    assert code == 2 and "that is the model" in one_line_error(out)
    code, out = run("export", model, "--table", table, "-o", table)
    assert code == 2 and "that is the table" in one_line_error(out)
    assert model.read_bytes() == cnn_model.read_bytes() and table.read_bytes() == before


def test_outputs_get_the_mode_open_gives_and_replaced_ones_keep_theirs(tmp_path, cnn_model, small_calib):
    old = os.umask(0o022)
    try:
        code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", tmp_path / "t.json", "-q")
        assert code == 0, out
        code, out = run("export", cnn_model, "--table", tmp_path / "t.json", "-o", tmp_path / "q.onnx", "-q")
        assert code == 0, out
        assert [mode(tmp_path / n) for n in ("t.json", "t.obs.npz", "q.onnx")] == [0o644] * 3
        os.chmod(tmp_path / "t.json", 0o640)
        os.chmod(tmp_path / "q.onnx", 0o600)
        os.umask(0o002)
        code, out = run("calibrate", cnn_model, "--observations", tmp_path / "t.obs.npz", "-o", tmp_path / "t.json",
                        "--method", "max", "-q")
        assert code == 0, out
        code, out = run("export", cnn_model, "--table", tmp_path / "t.json", "-o", tmp_path / "q.onnx", "-q")
        assert code == 0, out
        assert mode(tmp_path / "t.json") == 0o640 and mode(tmp_path / "q.onnx") == 0o600
        assert json.loads((tmp_path / "t.json").read_text())["calibration"]["options"]["method"] == "max"
    finally:
        os.umask(old)


def test_a_read_only_output_folder_is_refused_before_the_pass(cnn_model, small_calib, read_only_folder):
    code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", read_only_folder / "t.json")
    line = one_line_error(out)
    assert code == 1 and "t.json: cannot write in" in line and "internal error" not in line
    assert "observing" not in out  # refused before the pass, not after it
    code, out = run("export", cnn_model, "--table", "missing.json", "-o", read_only_folder / "q.onnx")
    assert code == 1 and "q.onnx: cannot write in" in one_line_error(out)


def test_a_second_run_writing_the_same_output_is_stopped(tmp_path, cnn_model, small_calib):
    from ptqcli import files

    out_path = tmp_path / "t.json"
    with files.claimed([("output", out_path)]):  # stands for a first ptq process still running
        code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", out_path)
        line = one_line_error(out)
        assert code == 1 and f"another ptq process (pid {os.getpid()}) is writing it" in line
    assert not out_path.exists()
    code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", out_path, "-q")
    assert code == 0 and out_path.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no lock or temporary left
