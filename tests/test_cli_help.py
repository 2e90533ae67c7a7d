"""What the CLI says about itself: help, version, usage errors without loading the heavy
libraries, and progress for every stage that takes time."""

import subprocess
import sys

import pytest
from conftest import run

from ptqcli.cli import main

HEAVY = ("onnx", "onnxruntime", "scipy")


def test_help_lists_every_command_in_the_description_and_the_listing():
    code, out = run("--help")
    assert code == 0
    description, listing = out.split("Commands:")
    for command in main.commands:
        assert command in description and f"  {command}  " in listing, command
    assert "130" in description and "143" in description  # exit codes of Ctrl-C and SIGTERM


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["calibrate", "--help"], ["simulate", "--help"],
                                  ["calibrate", "m.onnx", "--method", "entropy"]])
def test_help_version_and_usage_errors_do_not_import_onnx_onnxruntime_or_scipy(args):
    code = ("import sys\nfrom ptqcli.cli import main\n"
            f"try:\n    main({args!r}, prog_name='ptq')\nexcept SystemExit as exc:\n    status = exc.code\n"
            f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules), status)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    status = 2 if "entropy" in args else 0
    assert done.stdout.strip().splitlines()[-1] == f"LOADED [] {status}", (done.stdout, done.stderr)


def test_range_choice_shows_progress_like_the_pass(tmp_path, cnn_model, small_calib):
    code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", tmp_path / "t.json")
    assert code == 0 and "observing: 16 samples..." in out and "choosing ranges: " in out
    code, out = run("calibrate", cnn_model, "--observations", tmp_path / "t.obs.npz", "-o", tmp_path / "kl.json",
                    "--method", "kl")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("choosing ranges: ") and lines[0].endswith(" scale groups...")
    assert lines[1].startswith("choosing ranges: done in ")
    code, out = run("calibrate", cnn_model, "--observations", tmp_path / "t.obs.npz", "--data", small_calib,
                    "-o", tmp_path / "auto.json", "--method", "auto")
    assert code == 0, out
    assert "searching (auto): " in out and " steps..." in out and "searching (auto): done in " in out
    code, out = run("calibrate", cnn_model, "--observations", tmp_path / "t.obs.npz", "-o", tmp_path / "kl.json",
                    "--method", "kl", "-q")
    assert code == 0 and out == ""


def test_version_and_calibrate_help():
    code, out = run("--version")
    assert code == 0 and out.startswith("ptq, version")
    code, out = run("calibrate", "--help")
    assert code == 0 and "--fixed-range" in out and "--int16" in out and "--all-int8" in out
    assert "spread over the folder" in out and "first calibration samples" not in out
