"""Shared fixtures: paths to the bundled sample models and small generated models."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

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
