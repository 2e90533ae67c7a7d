"""Stored codes and values: the sidecar round trip, its fingerprint, and that export, the
simulator and the sensitivity analysis all take a weight's codes from the one source."""

import json
from dataclasses import replace

import numpy as np
import pytest
from onnx import numpy_helper

from ptqcli import api
from ptqcli.analysis.sensitivity import switchable_model
from ptqcli.errors import TableError
from ptqcli.export.qdq import export
from ptqcli.graph import prepare
from ptqcli.observe.dataset import batches, list_samples
from ptqcli.quantize import scale_table, stored
from ptqcli.quantize.qparams import dequantize, quantize
from ptqcli.quantize.stored import Stored
from ptqcli.sim import build, run


@pytest.fixture(scope="module")
def base(tmp_path_factory, cnn_model, calib_dir):
    out = tmp_path_factory.mktemp("stored") / "t.json"
    api.calibrate(cnn_model, data=calib_dir, output=out, data_options=api.DataOptions(limit=40))
    return out


def _flipped(table, prepared, name="fc.weight"):
    """``table`` with the codes of ``name`` rounded the other way wherever that is one step."""
    p = table.tensors[name].params
    w = prepared.index.array(name)
    q = quantize(w, p)
    scale, _ = p.arrays(w.ndim)
    up = np.where(w / scale > q, 1, -1)
    other = np.clip(q + up, -127, 127).astype(np.int8)
    assert (other != q).mean() > 0.9
    return replace(table, stored=Stored(codes={name: other})), other


def test_sidecar_round_trip_is_byte_identical_and_named_by_the_table(base, tmp_path, cnn_model):
    prepared = prepare(cnn_model)
    table, codes = _flipped(scale_table.load(base), prepared)
    scale_table.write(table, tmp_path / "a.json")
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["weights"]["file"] == "a.weights.npz" and doc["weights"]["codes"] == ["fc.weight"]
    assert doc["weights"]["sha256"] == table.stored.digest()
    loaded = scale_table.load(tmp_path / "a.json")
    assert np.array_equal(loaded.stored.codes["fc.weight"], codes)
    scale_table.write(loaded, tmp_path / "b.json")
    assert (tmp_path / "b.weights.npz").read_bytes() == (tmp_path / "a.weights.npz").read_bytes()
    assert (tmp_path / "b.json").read_text().replace("b.weights", "a.weights") == (tmp_path / "a.json").read_text()


def test_a_changed_or_missing_sidecar_is_refused(base, tmp_path, cnn_model):
    table, codes = _flipped(scale_table.load(base), prepare(cnn_model))
    scale_table.write(table, tmp_path / "t.json")
    other = Stored(codes={"fc.weight": np.zeros_like(codes)})
    stored.save(other, tmp_path / "t.weights.npz")
    with pytest.raises(TableError, match="does not match the table"):
        scale_table.load(tmp_path / "t.json")
    (tmp_path / "t.weights.npz").unlink()
    with pytest.raises(TableError, match="weights file .* is missing"):
        scale_table.load(tmp_path / "t.json")


def test_codes_outside_the_dtype_are_refused(base, tmp_path):
    table = scale_table.load(base)
    bad = replace(table, stored=Stored(codes={"fc.weight": np.zeros((10, 32), np.int32)}))
    scale_table.write(bad, tmp_path / "t.json")
    with pytest.raises(TableError, match="not int8 codes"):
        scale_table.load(tmp_path / "t.json")


def test_export_simulator_and_sensitivity_use_the_stored_codes(base, cnn_model, calib_dir):
    prepared = prepare(cnn_model)
    table, codes = _flipped(scale_table.load(base), prepared)
    model = export(prepared, table)
    written = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.array_equal(written["fc.weight_quantized"], codes)
    program = build(prepared, table)
    feed = next(iter(batches(list_samples(calib_dir, limit=8), prepared.inputs))).feeds
    nearest = run(build(prepared, scale_table.load(base)), feed).tensors["logits"].values
    flipped = run(program, feed).tensors["logits"].values
    assert not np.allclose(nearest, flipped)
    sw = switchable_model(prepared, table)
    consts = {t.name: numpy_helper.to_array(t) for t in sw.model.graph.initializer}
    expected = dequantize(codes, table.tensors["fc.weight"].params)
    assert any(v.shape == expected.shape and np.array_equal(v, expected) for v in consts.values())


def test_stored_values_replace_the_initializers_everywhere(base, cnn_model):
    prepared = prepare(cnn_model)
    table = scale_table.load(base)
    w = prepared.index.array("fc.weight")
    halved = replace(table, stored=Stored(values={"fc.weight": (w * 0.5).astype(np.float32)}))
    overlaid = stored.overlay(prepared, halved)
    assert overlaid.fingerprint == prepared.fingerprint
    assert np.array_equal(overlaid.index.array("fc.weight"), w * 0.5)
    model = export(prepared, halved)
    written = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.array_equal(written["fc.weight_quantized"], quantize(w * 0.5, table.tensors["fc.weight"].params))
