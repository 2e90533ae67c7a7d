"""Cross-layer equalization: the float function is kept, the ranges it claims to match match, and a
per-tensor table gains from it."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from builders import float_input, make_model, save, write_npy_folder
from ptqcli import api, runtime
from ptqcli.analysis.metrics import Agreement
from ptqcli.export.qdq import export
from ptqcli.graph import prepare
from ptqcli.observe.dataset import list_samples
from ptqcli.quantize import scale_table
from ptqcli.quantize.decide import CalibrationOptions
from ptqcli.quantize.stored import with_values
from ptqcli.rounding.equalize import equalize, find_pairs
from ptqcli.rounding.options import RoundingOptions
from ptqcli.sim.compare import compare


def unbalanced(rng, *, clip=False):
    """Conv -> Relu -> Conv -> Conv(depthwise) -> Relu -> MaxPool -> GAP -> Flatten -> Gemm, whose
    channels span four decades of weight range (as after BatchNorm folding)."""
    f32 = np.float32

    def spread(w):
        return (w * 10.0 ** rng.uniform(-2, 2, (w.shape[0],) + (1,) * (w.ndim - 1))).astype(f32)

    inits = [("w1", spread(rng.normal(0, 0.3, (8, 3, 3, 3)))), ("b1", rng.normal(0, 0.1, 8).astype(f32)),
             ("w2", spread(rng.normal(0, 0.3, (8, 8, 1, 1)))), ("b2", rng.normal(0, 0.1, 8).astype(f32)),
             ("w3", spread(rng.normal(0, 0.3, (8, 1, 3, 3)))), ("b3", rng.normal(0, 0.1, 8).astype(f32)),
             ("wf", rng.normal(0, 0.3, (5, 8)).astype(f32)), ("bf", rng.normal(0, 0.1, 5).astype(f32)),
             ("zero", np.array(0.0, f32)), ("six", np.array(6.0, f32))]
    act = helper.make_node("Clip", ["c1", "zero", "six"], ["r1"], name="act1") if clip else \
        helper.make_node("Relu", ["c1"], ["r1"], name="act1")
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"), act,
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Conv", ["c2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], group=8, name="dw"),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("MaxPool", ["r3"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("GlobalAveragePool", ["mp"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "wf", "bf"], ["y"], transB=1, name="fc")]
    return make_model(nodes, [float_input("x", ["N", 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)


@pytest.fixture()
def model_path(tmp_path, rng):
    return save(unbalanced(rng), tmp_path / "unbalanced.onnx")


def test_float_outputs_unchanged_and_pair_ranges_equal(model_path, rng):
    prepared = prepare(model_path)
    pairs, skipped = find_pairs(prepared.index)
    assert [(p.first, p.second) for p in pairs] == [("conv1", "conv2"), ("conv2", "dw"), ("dw", "fc")]
    assert not skipped
    done = equalize(prepared.index)
    assert done.rounds > 1 and set(done.values) == {"w1", "b1", "w2", "b2", "w3", "b3", "wf"}
    x = rng.normal(size=(16, 3, 8, 8)).astype(np.float32)
    before = runtime.session(prepared.model).run(None, {"x": x})[0]
    after = runtime.session(with_values(prepared, done.values).model).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5 * np.abs(before).max())
    v = done.values
    out_range = {w: np.abs(v[w].reshape(v[w].shape[0], -1)).max(axis=1) for w in ("w1", "w2", "w3")}
    in_range = {"w2": np.abs(v["w2"]).max(axis=(0, 2, 3)), "w3": np.abs(v["w3"]).reshape(8, -1).max(axis=1),
                "wf": np.abs(v["wf"]).max(axis=0)}
    for first, second in (("w1", "w2"), ("w2", "w3"), ("w3", "wf")):
        np.testing.assert_allclose(out_range[first], in_range[second], rtol=1e-3)
    spread_before = np.abs(prepared.index.array("w2")).max(axis=(1, 2, 3))
    assert np.ptp(np.log10(out_range["w2"])) < 0.5 * np.ptp(np.log10(spread_before))


def test_a_relu6_pair_is_left_alone(tmp_path, rng):
    prepared = prepare(save(unbalanced(rng, clip=True), tmp_path / "clip.onnx"))
    pairs, skipped = find_pairs(prepared.index)
    assert ("conv1", "conv2") not in [(p.first, p.second) for p in pairs]
    assert skipped and skipped[0][0] == "conv1" and "Clip" in skipped[0][1]


def test_per_tensor_weights_gain_and_export_matches_the_simulator(model_path, tmp_path, rng):
    calib = write_npy_folder(tmp_path / "calib", rng.normal(size=(48, 1, 3, 8, 8)).astype(np.float32))
    prepared = prepare(model_path)
    x = rng.normal(size=(64, 3, 8, 8)).astype(np.float32)
    reference = runtime.session(prepared.model).run(None, {"x": x})[0]
    sqnr = {}
    for eq in (False, True):
        r = api.calibrate(model_path, data=calib, output=tmp_path / f"{eq}.json",
                          options=CalibrationOptions(per_channel=False, rounding=RoundingOptions(equalize=eq)))
        table = scale_table.load(r.table_path)
        assert table.fingerprint == prepared.fingerprint
        q = runtime.session(export(prepared, table)).run(None, {"x": x})[0]
        sqnr[eq] = Agreement().add(reference, q).sqnr_db
        if eq:
            assert r.equalized is not None and len(r.equalized.pairs) == 3
            result = compare(prepared, table, list_samples(calib), batch_size=16)
            assert result.output_codes_within1 >= 0.99 and result.fallbacks == ()
    assert sqnr[True] > sqnr[False] + 6.0
