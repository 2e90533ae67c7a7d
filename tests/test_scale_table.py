import json

import pytest

from ptqcli import api
from ptqcli.errors import TableError
from ptqcli.quantize import scale_table


@pytest.fixture(scope="module")
def table_path(tmp_path_factory, cnn_model, calib_dir):
    out = tmp_path_factory.mktemp("table") / "t.json"
    api.calibrate(cnn_model, data=calib_dir, output=out, data_options=api.DataOptions(limit=40))
    return out


def test_round_trip_is_byte_identical(table_path, tmp_path):
    table = scale_table.load(table_path)
    scale_table.write(table, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == table_path.read_bytes()


def test_layout_records_what_a_reader_needs(table_path):
    doc = json.loads(table_path.read_text())
    assert doc["format"] == "ptq-scale-table" and doc["schema_version"] == 2
    assert doc["model"]["fingerprint"].startswith("sha256:") and doc["calibration"]["samples"] == 40
    relu = doc["tensors"]["/stem/stem.2/Relu_output_0"]
    assert relu["dtype"] == "uint8" and relu["zero_point"] == [0] and relu["role"] == "activation"
    assert relu["range"][0] == 0.0 and relu["observed"][1] >= relu["range"][1]
    w = doc["tensors"]["fc.weight"]
    assert w["axis"] == 0 and len(w["scale"]) == 10 and set(w["zero_point"]) == {0}
    assert doc["tensors"]["fc.bias"]["dtype"] == "int32"
    # one entry per line, keys sorted
    lines = table_path.read_text().splitlines()
    tensor_lines = [ln for ln in lines if ln.startswith('  "') and '"role"' in ln]
    assert len(tensor_lines) == len(doc["tensors"])
    assert [json.loads("{" + ln.rstrip(",") + "}") for ln in tensor_lines]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("tensors"), "at \\(top level\\): 'tensors' is a required property"),
    (lambda d: d.update(schema_version=3), "at schema_version"),
    (lambda d: d["tensors"]["/Relu_output_0"].update(guard="clipped"), "at tensors//Relu_output_0/guard"),
    (lambda d: d["tensors"]["fc.weight"].update(dtype="int4"), "at tensors/fc.weight/dtype"),
    (lambda d: d["tensors"]["fc.weight"].update(scale=[-1.0] * 10), r"at tensors/fc.weight/scale/\d+: -1.0 is less than or equal to the minimum of 0"),
    (lambda d: d["tensors"]["fc.weight"].update(axis=None), "tensor 'fc.weight' has 10 scales but no axis"),
    (lambda d: d["tensors"]["fc.weight"].update(zero_point=[0]), "10 scales but 1 zero points"),
    (lambda d: d["tensors"]["/Relu_output_0"].update(zero_point=[300]), "zero point outside uint8"),
])
def test_invalid_tables_are_refused_with_the_place_named(table_path, tmp_path, mutate, message):
    doc = json.loads(table_path.read_text())
    mutate(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(TableError, match=message):
        scale_table.load(bad)


def test_not_json_and_missing(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(TableError, match="x.json: not a JSON scale table"):
        scale_table.load(tmp_path / "x.json")
    with pytest.raises(TableError, match="no such scale table"):
        scale_table.load(tmp_path / "missing.json")


def test_version_1_tables_still_load(table_path, tmp_path):
    doc = json.loads(table_path.read_text())
    doc["schema_version"] = 1
    old = tmp_path / "v1.json"
    old.write_text(json.dumps(doc))
    assert scale_table.load(old).tensors == scale_table.load(table_path).tensors


def test_schema_ships_in_the_package():
    assert scale_table.SCHEMA_VERSION in scale_table.schema()["properties"]["schema_version"]["enum"]
