"""Shared fixtures: paths to the bundled sample models and small generated models."""

from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = pathlib.Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"


@pytest.fixture(scope="session")
def cnn_model() -> pathlib.Path:
    return SAMPLES / "digits_cnn.onnx"


@pytest.fixture(scope="session")
def transformer_model() -> pathlib.Path:
    return SAMPLES / "digits_transformer.onnx"


@pytest.fixture(scope="session")
def calib_dir() -> pathlib.Path:
    return SAMPLES / "digits" / "calib"


@pytest.fixture(scope="session")
def eval_dir() -> pathlib.Path:
    return SAMPLES / "digits" / "eval"


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture()
def read_only_folder(tmp_path) -> pathlib.Path:
    """A folder where creating a file fails, as the current user: chmod 0555 where permissions
    bind; for root, a folder of sysfs (the kernel refuses new files there)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o555)
    for candidate in (folder, pathlib.Path("/sys")):
        try:
            fd = os.open(candidate / ".ptq-probe", os.O_CREAT | os.O_WRONLY, 0o644)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(candidate / ".ptq-probe")
    pytest.skip("no folder here refuses new files")


def run(*args) -> tuple[int, str]:
    """``ptq ARGS`` through click's CliRunner: exit code and output (stdout and stderr)."""
    from ptqcli.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def one_line_error(output: str) -> str:
    """The error is a single line (progress lines on stderr may precede it), never a traceback."""
    errors = [ln for ln in output.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in output, output
    assert output.rstrip().endswith(errors[0])
    return errors[0]


@pytest.fixture()
def small_calib(tmp_path, calib_dir) -> pathlib.Path:
    """The first 16 calibration samples, in a folder of the test's own."""
    folder = tmp_path / "calib"
    folder.mkdir()
    for f in sorted(calib_dir.glob("*.npy"))[:16]:
        shutil.copy(f, folder / f.name)
    return folder
