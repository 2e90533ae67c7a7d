"""The guard: a range never clips values its histogram did not count without knowing it.

Outliers are placed where the subsample cannot see them (stream positions between its strides),
so the histogram's body ends near 4 while the exact maximum is 50.  A method reading only the
histogram clips them; with the data at hand they are counted in a second pass before the method
chooses, and without it the range is widened to the exact extreme.  Either way the table says so.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from builders import float_input, make_model, save, write_npy_folder
from onnx import TensorProto, helper

import calibrators
from calibrators import RangeSpec, guard, histogram
from ptqcli import api
from ptqcli.graph import prepare
from ptqcli.observe import collect
from ptqcli.observe import observations as obs_io
from ptqcli.observe.dataset import batches, list_samples
from ptqcli.quantize.decide import CalibrationOptions, build_table

ROW, SAMPLES, OUTLIER = 1000, 12, 50.0
SUBSAMPLE = 100  # stride 11: 1,000 is not a multiple of it


def _hist(values, lo=None, hi=None):
    return histogram.update(histogram.empty(), np.asarray(values, np.float32), minimum=lo, maximum=hi)


def test_an_extreme_beyond_the_body_by_more_than_its_spread_is_flagged():
    body = np.random.default_rng(0).normal(size=20_000)
    assert guard.uncounted(_hist(body)) == (False, False)  # the extremes are counted
    assert guard.uncounted(_hist(body, hi=OUTLIER)) == (False, True)
    lo, hi = guard.counted_extremes(_hist(body))
    spread = hi - lo
    assert guard.uncounted(_hist(body, hi=hi + 0.9 * spread)) == (False, False)  # within the body's spread
    assert guard.uncounted(_hist(np.abs(body), lo=-0.1)) == (False, False)  # a stray negative hair
    assert guard.uncounted(_hist(np.abs(body), lo=-2 * np.abs(body).max() - 1)) == (True, False)


def test_cover_widens_the_flagged_side_only():
    h = _hist(np.random.default_rng(1).normal(size=5000), lo=-30.0, hi=40.0)
    r = calibrators.Range(-3.0, 3.5)
    assert guard.cover(r, h, RangeSpec(symmetric=False), True, False) == calibrators.Range(-30.0, 3.5)
    assert guard.cover(r, h, RangeSpec(symmetric=True), False, True) == calibrators.Range(-40.0, 40.0)


def _matmul(path):
    """y = x @ w with x[N, 1000]: x is an observed activation."""
    w = np.full((ROW, 2), 0.01, np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [float_input("x", ["N", ROW])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [("w", w)])
    return save(model, path)


@pytest.fixture()
def hidden(tmp_path):
    """A MatMul reading x[N, 1000]; each sample holds 3 outliers of 50 at stream positions the
    stride-11 subsample skips."""
    k = collect.stride_for(ROW, SUBSAMPLE)
    assert k == 11
    rng = np.random.default_rng(5)
    arrays = []
    for s in range(SAMPLES):
        x = np.clip(rng.normal(size=(1, ROW)), -4, 4).astype(np.float32)
        hidden = [p for p in range(ROW) if (s * ROW + p) % k == 1][:3]
        x[0, hidden] = OUTLIER
        arrays.append(x)
    return _matmul(tmp_path / "mm.onnx"), write_npy_folder(tmp_path / "calib", arrays)


def test_the_subsample_misses_them_and_a_method_alone_would_clip_them(hidden):
    model, folder = hidden
    prepared = prepare(model)
    obs = collect.observe(prepared, ["x"], batches(list_samples(folder), prepared.inputs), subsample=SUBSAMPLE)
    h = obs.histograms["x"]
    assert h.maximum == OUTLIER and guard.counted_extremes(h)[1] <= 4.0 and obs.strides["x"] == 11
    assert calibrators.method("mse")(h, RangeSpec(symmetric=False)).hi < 5.0
    assert guard.uncounted(h) == (False, True)


def test_with_the_data_they_are_counted_again_and_the_table_says_so(hidden, tmp_path):
    model, folder = hidden
    out = tmp_path / "t.json"
    api.calibrate(model, data=folder, output=out, subsample=SUBSAMPLE, data_options=api.DataOptions(batch_size=5))
    entry = json.loads(out.read_text())["tensors"]["x"]
    assert entry["guard"] == "recounted" and entry["range"][1] >= OUTLIER * 0.98
    obs = obs_io.load(api.observations_path_for(out))
    assert obs.recounted == {"x"} and obs.dense("x")
    assert obs.histograms["x"].total == SAMPLES * ROW  # every value
    assert obs.histograms["x"].counts[-1] == 3 * SAMPLES  # the outliers, all of them


def test_without_a_second_pass_the_range_is_widened_to_the_extreme(hidden):
    model, folder = hidden
    prepared = prepare(model)
    obs = collect.observe(prepared, ["x"], batches(list_samples(folder), prepared.inputs), subsample=SUBSAMPLE)
    entry = build_table(prepared, obs, CalibrationOptions()).tensors["x"]
    assert entry.guard == "widened" and entry.range[1] == OUTLIER
    # A histogram that counted every value needs no guard: the method clips knowingly.
    dense = replace(obs, strides={"x": 1})
    assert build_table(prepared, dense, CalibrationOptions()).tensors["x"].guard is None


def test_the_same_folder_without_outliers_is_left_alone(tmp_path):
    rng = np.random.default_rng(6)
    folder = write_npy_folder(tmp_path / "calib", [np.clip(rng.normal(size=(1, ROW)), -4, 4).astype(np.float32)
                                                   for _ in range(SAMPLES)])
    out = tmp_path / "t.json"
    api.calibrate(_matmul(tmp_path / "mm.onnx"), data=folder, output=out, subsample=SUBSAMPLE)
    assert "guard" not in json.loads(out.read_text())["tensors"]["x"]
    assert obs_io.load(api.observations_path_for(out)).recounted == frozenset()


def test_observation_files_keep_strides_and_recounts_and_version_1_still_loads(hidden, tmp_path):
    model, folder = hidden
    out = tmp_path / "t.json"
    api.calibrate(model, data=folder, output=out, subsample=SUBSAMPLE)
    path = api.observations_path_for(out)
    obs = obs_io.load(path)
    with np.load(path) as npz:
        arrays = dict(npz)
    meta = json.loads(bytes(arrays["meta"]).decode())
    assert meta["version"] == 2 and meta["strides"] == [1] and meta["recounted"] == ["x"]
    for key in ("strides", "recounted"):
        del meta[key]
    meta["version"] = 1
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "v1.npz", **arrays)
    old = obs_io.load(tmp_path / "v1.npz")
    assert old.strides == {} and old.recounted == frozenset() and not old.dense("x")
    assert np.array_equal(old.histograms["x"].counts, obs.histograms["x"].counts)
