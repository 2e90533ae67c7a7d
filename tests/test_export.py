"""Models in the forms users bring them: an opset below 13, weights in external data; and an
export too large for one protobuf file, written as external data."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import conv_net, save, write_npy_folder
from conftest import run

from ptqcli.export import qdq


@pytest.fixture()
def data(tmp_path, rng):
    return write_npy_folder(tmp_path / "data", [rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32) for _ in range(8)])


def outputs(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def quantize(tmp_path, model, data, name):
    table, out = tmp_path / f"{name}.json", tmp_path / f"{name}.int8.onnx"
    code, text = run("calibrate", model, "--data", data, "-o", table, "-q")
    assert code == 0, text
    code, text = run("export", model, "--table", table, "-o", out, "-q")
    assert code == 0, text
    return out


def test_a_model_of_opset_11_is_raised_to_13_and_quantized(tmp_path, data):
    old_path = save(conv_net(np.random.default_rng(7), opset=11), tmp_path / "old.onnx")
    model = save(conv_net(np.random.default_rng(7)), tmp_path / "m.onnx")  # the same weights at opset 13
    qdq_model = onnx.load(str(quantize(tmp_path, old_path, data, "old")))
    assert qdq_model.opset_import[0].version >= 13
    assert sum(n.op_type == "QuantizeLinear" for n in qdq_model.graph.node) >= 5
    x = np.load(data / "0000.npy")
    ref = outputs(model, x)
    got = outputs(tmp_path / "old.int8.onnx", x)
    assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max()


def test_a_model_with_external_data_quantizes_as_the_same_model_in_one_file(tmp_path, rng, data):
    m = conv_net(rng)
    one = save(m, tmp_path / "one.onnx")
    onnx.save(m, str(tmp_path / "split.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="split.weights", size_threshold=0)
    assert (tmp_path / "split.weights").stat().st_size > 0
    a = quantize(tmp_path, one, data, "one")
    b = quantize(tmp_path, tmp_path / "split.onnx", data, "split")
    x = np.load(data / "0001.npy")
    assert np.array_equal(outputs(a, x), outputs(b, x))


def test_an_export_over_the_protobuf_limit_is_written_as_external_data(tmp_path, rng, data, monkeypatch):
    """The 2 GiB decision, tested with the limit lowered (the same code path, no 2 GiB file)."""
    small = quantize(tmp_path, save(conv_net(rng), tmp_path / "m.onnx"), data, "m")
    monkeypatch.setattr(qdq, "PROTOBUF_LIMIT", 1000)
    monkeypatch.setattr(qdq, "EXTERNAL_MIN_BYTES", 64)
    big = tmp_path / "big.onnx"
    code, text = run("export", tmp_path / "m.onnx", "--table", tmp_path / "m.json", "-o", big, "-q")
    assert code == 0, text
    data_file = qdq.data_path(big)
    assert data_file.name == "big.onnx.data" and data_file.stat().st_size > 500
    assert big.stat().st_size < small.stat().st_size
    stored = onnx.load(str(big), load_external_data=False)
    external = [t for t in stored.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all({e.key: e.value for e in t.external_data}["location"] == "big.onnx.data"
                            for t in external)
    onnx.checker.check_model(str(big), full_check=True)
    x = np.load(data / "0002.npy")
    assert np.array_equal(outputs(big, x), outputs(small, x))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
