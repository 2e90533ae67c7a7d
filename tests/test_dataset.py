import numpy as np
import pytest
from onnx import numpy_helper
from PIL import Image

from ptqcli.errors import DataError
from ptqcli.graph import InputSpec
from ptqcli.observe.dataset import ImageSpec, batches, list_samples, read_sample

IMG = (InputSpec("x", np.dtype(np.float32), ("N", 3, 4, 4)),)


def test_files_are_sorted_and_other_files_ignored(tmp_path):
    for name in ["b.npy", "a.npy", "c.npz", "labels.csv", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_samples(tmp_path)] == ["a.npy", "b.npy", "c.npz"]
    assert [p.name for p in list_samples(tmp_path, limit=2)] == ["a.npy", "b.npy"]


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match="no samples"):
        list_samples(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        list_samples(tmp_path / "nope")


def test_npy_gets_a_batch_axis_and_is_checked(tmp_path):
    np.save(tmp_path / "ok.npy", np.ones((3, 4, 4), np.float32))
    feed = read_sample(tmp_path / "ok.npy", IMG)
    assert feed["x"].shape == (1, 3, 4, 4)
    np.save(tmp_path / "bad.npy", np.ones((3, 5, 4), np.float32))
    with pytest.raises(DataError, match=r"bad\.npy: input 'x' expects shape \[N, 3, 4, 4\]"):
        read_sample(tmp_path / "bad.npy", IMG)
    np.save(tmp_path / "rank.npy", np.ones((4, 4), np.float32))
    with pytest.raises(DataError, match="rank.npy: input 'x' expects rank 4"):
        read_sample(tmp_path / "rank.npy", IMG)


def test_dtype_kind_and_nan(tmp_path):
    np.save(tmp_path / "int.npy", np.ones((1, 3, 4, 4), np.int32))
    with pytest.raises(DataError, match="int.npy: input 'x' expects float32, got int32"):
        read_sample(tmp_path / "int.npy", IMG)
    bad = np.ones((1, 3, 4, 4), np.float64)
    bad[0, 1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match="nan.npy: input 'x' holds NaN"):
        read_sample(tmp_path / "nan.npy", IMG)
    np.save(tmp_path / "f64.npy", np.ones((1, 3, 4, 4), np.float64))
    assert read_sample(tmp_path / "f64.npy", IMG)["x"].dtype == np.float32


def test_npz_names_inputs(tmp_path):
    two = (InputSpec("a", np.dtype(np.float32), (1, 2)), InputSpec("b", np.dtype(np.int64), (1,)))
    np.savez(tmp_path / "s.npz", a=np.ones((1, 2), np.float32), b=np.array([3]))
    feed = read_sample(tmp_path / "s.npz", two)
    assert feed["b"].dtype == np.int64 and feed["a"].shape == (1, 2)
    np.savez(tmp_path / "t.npz", a=np.ones((1, 2), np.float32), c=np.array([3]))
    with pytest.raises(DataError, match="t.npz: inputs do not match the model .missing 'b'; unknown 'c'"):
        read_sample(tmp_path / "t.npz", two)
    np.save(tmp_path / "u.npy", np.ones((1, 2), np.float32))
    with pytest.raises(DataError, match="use .npz files"):
        read_sample(tmp_path / "u.npy", two)


def test_tensorproto_sample(tmp_path):
    arr = np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4)
    (tmp_path / "s.pb").write_bytes(numpy_helper.from_array(arr).SerializeToString())
    assert np.array_equal(read_sample(tmp_path / "s.pb", IMG)["x"], arr)
    (tmp_path / "junk.pb").write_bytes(b"\xff\x00garbage")
    with pytest.raises(DataError, match="junk.pb: cannot read sample"):
        read_sample(tmp_path / "junk.pb", IMG)


def test_images_are_resized_normalized_and_laid_out(tmp_path):
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[..., 0] = 255  # pure red
    Image.fromarray(pixels).save(tmp_path / "red.png")
    spec = ImageSpec(size=None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = read_sample(tmp_path / "red.png", IMG, spec)["x"]
    assert x.shape == (1, 3, 4, 4)  # resized to the model's static size
    assert np.allclose(x[0, 0], 1.0) and np.allclose(x[0, 1:], -1.0)
    bgr = read_sample(tmp_path / "red.png", IMG, ImageSpec(bgr=True))["x"]
    assert np.allclose(bgr[0, 2], 1.0) and np.allclose(bgr[0, 0], 0.0)
    nhwc = (InputSpec("x", np.dtype(np.float32), (1, 6, 5, 3)),)
    y = read_sample(tmp_path / "red.png", nhwc, ImageSpec(layout="NHWC"))["x"]
    assert y.shape == (1, 6, 5, 3)


def test_batches_stack_equal_shapes_only(tmp_path):
    dyn = (InputSpec("x", np.dtype(np.float32), ("N", 2, "W")),)
    widths = [3, 3, 3, 5, 5, 3]
    for i, w in enumerate(widths):
        np.save(tmp_path / f"{i}.npy", np.full((1, 2, w), i, np.float32))
    got = list(batches(list_samples(tmp_path), dyn, batch_size=2))
    assert [b.count for b in got] == [2, 1, 2, 1]
    assert [b.feeds["x"].shape[2] for b in got] == [3, 3, 5, 3]
    assert sum(b.count for b in got) == len(widths)
    static = (InputSpec("x", np.dtype(np.float32), (1, 2, "W")),)
    assert all(b.count == 1 for b in batches(list_samples(tmp_path), static, batch_size=4))
