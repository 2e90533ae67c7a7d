"""Bad inputs a new user hit: each gives one line naming the file, tensor or option, the usual exit
code (1 for a bad model, data or table, 2 for bad usage), and no traceback or partial output."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
from builders import detector_model, if_model, matmul_integer_model, qdq_relu_model, save, write_npy_folder
from conftest import one_line_error, run
from PIL import Image


def png_folder(folder, count=4, size=(16, 16), mode="RGB"):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        shape = size + ((3,) if mode == "RGB" else ())
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i:04d}.png")
    return folder


def huge_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (the pixel data is not there)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR: width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_a_hand_edited_table_one_channel_scale_short(tmp_path, cnn_model, small_calib, eval_dir):
    table = tmp_path / "t.json"
    assert run("calibrate", cnn_model, "--data", small_calib, "-o", table, "-q")[0] == 0
    doc = json.loads(table.read_text())
    name, entry = next((n, e) for n, e in sorted(doc["tensors"].items()) if e["role"] == "weight" and e["axis"] == 0)
    channels = len(entry["scale"])
    entry["scale"].pop()
    entry["zero_point"].pop()
    table.write_text(json.dumps(doc))
    code, out = run("export", cnn_model, "--table", table, "-o", tmp_path / "q.onnx")
    line = one_line_error(out)
    assert code == 1 and f"tensor {name!r} has {channels - 1} scales and zero points, but {channels} channels" in line
    assert not (tmp_path / "q.onnx").exists()
    code, out = run("simulate", cnn_model, "--table", table, "--data", eval_dir, "--limit", "2")
    assert code == 1 and f"{channels} channels along axis 0" in one_line_error(out)


def test_an_image_too_large_to_decode(tmp_path, cnn_model):
    folder = png_folder(tmp_path / "imgs", size=(8, 8), mode="L")
    (folder / "0002.png").write_bytes(huge_png(20000, 20000))
    code, out = run("calibrate", cnn_model, "--data", folder, "-o", tmp_path / "t.json")
    line = one_line_error(out)
    assert code == 1 and "0002.png: image too large to decode" in line and "internal error" not in line
    assert list(tmp_path.glob("t.*")) == []


def test_a_zero_std_is_refused_before_any_pixel_is_divided(tmp_path, cnn_model):
    folder = png_folder(tmp_path / "imgs", size=(8, 8), mode="L")
    code, out = run("calibrate", cnn_model, "--data", folder, "--std", "0", "-o", tmp_path / "t.json")
    assert code == 2 and "--std must not contain 0" in one_line_error(out)
    assert "Warning" not in out and list(tmp_path.glob("t.*")) == []


def test_hidden_files_are_skipped_and_counted(tmp_path, cnn_model, small_calib):
    (small_calib / "._0000.npy").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")  # AppleDouble
    code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", tmp_path / "t.json", "--json")
    assert code == 0, out
    assert "note: " in out and "skipped 1 hidden file" in out and "._0000.npy" in out
    assert json.loads(out[out.index("{"):])["samples"] == 16
    code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", tmp_path / "t.json", "-q")
    assert code == 0 and out == ""  # -q silences notes too


def test_images_resized_and_made_gray_without_being_asked_are_noted_once(tmp_path, cnn_model):
    folder = png_folder(tmp_path / "imgs", size=(16, 12), mode="RGB")
    code, out = run("calibrate", cnn_model, "--data", folder, "-o", tmp_path / "t.json", "--method", "auto")
    assert code == 0, out
    notes = [ln for ln in out.splitlines() if ln.startswith("note: image samples")]
    assert notes == ["note: image samples are resized to 8x8, the model input's size (the first, 0000.png, is "
                     "16x12) and converted from RGB to grayscale (input 'image' has 1 channel)"]
    code, out = run("calibrate", cnn_model, "--data", folder, "-o", tmp_path / "t.json", "--size", "8x8")
    notes = [ln for ln in out.splitlines() if ln.startswith("note: ")]
    assert code == 0
    assert notes == ["note: image samples are converted from RGB to grayscale (input 'image' has 1 channel)"]


def test_a_file_that_is_not_numpy_gets_no_pickle_hint(tmp_path, cnn_model, small_calib):
    (small_calib / "0004.npy").write_text("not an array")
    code, out = run("calibrate", cnn_model, "--data", small_calib, "-o", tmp_path / "t.json")
    line = one_line_error(out)
    assert code == 1 and "0004.npy: not a NumPy .npy file" in line and "pickle" not in line


def test_observations_that_are_not_an_observation_file(tmp_path, cnn_model):
    (tmp_path / "t.json").write_text("{}")
    code, out = run("calibrate", cnn_model, "--observations", tmp_path / "t.json", "-o", tmp_path / "k.json")
    line = one_line_error(out)
    assert code == 1 and "t.json: not a ptq observation file" in line and "pickle" not in line


def test_data_and_observations_together_are_refused_unless_auto_needs_both(tmp_path, cnn_model, small_calib):
    assert run("calibrate", cnn_model, "--data", small_calib, "-o", tmp_path / "t.json", "-q")[0] == 0
    code, out = run("calibrate", cnn_model, "--data", small_calib, "--observations", tmp_path / "t.obs.npz",
                    "-o", tmp_path / "k.json", "--method", "kl")
    line = one_line_error(out)
    assert code == 2 and "--data and --observations were both given" in line and "--method 'auto'" in line
    assert not (tmp_path / "k.json").exists()


def test_sensitivity_of_a_table_with_int16_tensors(tmp_path, transformer_model, small_calib):
    table = tmp_path / "t.json"
    assert run("calibrate", transformer_model, "--data", small_calib, "-o", table, "-q")[0] == 0
    int16 = {n for n, e in json.loads(table.read_text())["tensors"].items() if e["dtype"] == "int16"}
    assert int16  # Softmax and LayerNormalization default to 16 bits
    code, out = run("sensitivity", transformer_model, "--table", table, "--data", small_calib, "--limit", "2", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert int16 & {p["tensor"] for p in report["points"]}
    assert all(p["sqnr_db"] is None or p["sqnr_db"] > 10 for p in report["points"])


@pytest.mark.parametrize("build, found", [(qdq_relu_model, "1 DequantizeLinear, 1 QuantizeLinear"),
                                          (matmul_integer_model, "1 MatMulInteger")])
def test_an_already_quantized_model_is_said_to_be(tmp_path, build, found):
    model = save(build(), tmp_path / "q.onnx")
    data = write_npy_folder(tmp_path / "data", [np.ones((1, 4), np.float32)])
    code, out = run("calibrate", model, "--data", data, "-o", tmp_path / "t.json")
    line = one_line_error(out)
    assert code == 1 and f"q.onnx: the model is already quantized ({found})" in line
    assert not (tmp_path / "t.json").exists()


def if_data(folder, rng):
    folder.mkdir()
    for i in range(2):
        np.savez(folder / f"{i}.npz", x=rng.normal(size=(1, 3, 8, 8)).astype(np.float32), flag=np.array(i == 0))
    return folder


def test_a_model_whose_compute_sits_in_subgraphs(tmp_path, rng):
    model = save(if_model(rng), tmp_path / "vad.onnx")
    code, out = run("calibrate", model, "--data", if_data(tmp_path / "data", rng), "-o", tmp_path / "t.json")
    line = one_line_error(out)
    assert code == 1, out  # a limit of ptq, not bad usage (exit code 2)
    assert "nothing to quantize" in line and "in the main graph" in line
    assert "4 nodes sit inside the subgraphs of 1 If node (2 Conv among them)" in line
    assert "does not quantize subgraphs" in line


def test_subgraphs_beside_a_quantized_main_graph_are_named(tmp_path, rng):
    model = save(if_model(rng, main_conv=True), tmp_path / "vad.onnx")
    code, out = run("calibrate", model, "--data", if_data(tmp_path / "data", rng), "-o", tmp_path / "t.json")
    assert code == 0, out
    assert "note: vad.onnx: 4 nodes sit inside the subgraphs of 1 If node (2 Conv among them)" in out
    assert "they stay float" in out


def test_top1_is_reported_for_class_scores_only(tmp_path, rng):
    model = save(detector_model(rng), tmp_path / "det.onnx")
    data = write_npy_folder(tmp_path / "data", [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(6)])
    assert run("calibrate", model, "--data", data, "-o", tmp_path / "t.json", "-q")[0] == 0
    assert run("export", model, "--table", tmp_path / "t.json", "-o", tmp_path / "q.onnx", "-q")[0] == 0
    code, out = run("simulate", model, "--table", tmp_path / "t.json", "--data", data, "-q")
    assert code == 0 and "output boxes" in out and "top-1" not in out, out
    code, out = run("simulate", model, "--table", tmp_path / "t.json", "--data", data, "-q", "--json")
    assert code == 0 and json.loads(out)["top1"] is None
    code, out = run("evaluate", model, tmp_path / "q.onnx", "--data", data, "-q")
    assert code == 0 and "output boxes" in out and "top-1" not in out, out
