"""Ctrl-C and SIGTERM sent to a real ``ptq`` process: exit 130 / 143 with one line, no temporary or
lock file left, complete outputs kept, and an interrupted search resumable from the observations
it had already saved."""

import signal
import subprocess
import sys
import time

from conftest import run

from ptqcli.observe import observations


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ptqcli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"ptq ended first: {process.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1] and "Traceback" not in stderr, stderr
    return errors[0]


def hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_ctrl_c_during_the_search_keeps_the_observations_to_resume_from(tmp_path, cnn_model, calib_dir):
    table, obs = tmp_path / "t.json", tmp_path / "t.obs.npz"
    process = start("calibrate", cnn_model, "--data", calib_dir, "-o", table, "--method", "auto")
    wait_for(obs.exists, process)  # the pass is over; the search has begun
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    line = error_line(stderr)
    assert line.startswith("Error: interrupted by SIGINT") and f"rerun with --observations {obs}" in line
    assert not table.exists() and hidden(tmp_path) == []
    assert observations.load(obs).samples == 200  # complete, not a partial file
    code, out = run("calibrate", cnn_model, "--observations", obs, "--data", calib_dir, "-o", table,
                    "--method", "auto", "-q")
    assert code == 0 and table.exists(), out


def test_sigterm_during_the_pass_leaves_nothing_behind(tmp_path, cnn_model, calib_dir):
    table, obs = tmp_path / "t.json", tmp_path / "t.obs.npz"
    process = start("calibrate", cnn_model, "--data", calib_dir, "-o", table, "--batch-size", "1")
    while "observing:" not in process.stderr.readline():  # the pass has started
        assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert error_line(stderr).startswith("Error: interrupted by SIGTERM")
    assert not table.exists() and hidden(tmp_path) == []
    if obs.exists():  # the signal came after the pass: then the file is whole
        assert observations.load(obs).samples == 200
