"""Per-tensor weight ranges chosen by the layer's output error (ptqcli.rounding.weight_range) and
the pair saturation that keeps their codes within the x86 bound."""

import numpy as np
import pytest

from builders import float_input, make_model, save, write_npy_folder
from onnx import TensorProto, helper
from ptqcli import api, runtime
from ptqcli.export.qdq import export
from ptqcli.graph import prepare
from ptqcli.quantize import scale_table
from ptqcli.quantize.decide import CalibrationOptions
from ptqcli.quantize.stored import codes
from ptqcli.rounding import pairs
from ptqcli.rounding.options import RoundingOptions
from ptqcli.targets import PAIR_LIMIT, pair_peaks, reduction_rows


def test_saturate_lowers_the_larger_code_of_each_pair_over_the_bound():
    q = np.array([[127, 40, -127, -3, 100, -100, 64, 64]], dtype=np.int8)
    fixed, changed = pairs.saturate("Gemm", q, trans_b=True)
    assert fixed.tolist() == [[88, 40, -125, -3, 100, -100, 64, 64]] and changed == 2
    assert pair_peaks(reduction_rows("Gemm", fixed, trans_b=True)).max() <= PAIR_LIMIT


def _outlier_gemm(tmp_path, rng):
    """y = x W + b whose weight has one entry 60x the others on an input 100x smaller than the
    rest (a folded identity branch): per tensor, the max range leaves every other weight about
    two codes."""
    k, o = 16, 8
    w = rng.normal(0, 0.05, (k, o))
    w[3, 5] = 6.0
    scale = np.ones(k)
    scale[3] = 0.01
    model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")], [float_input("x", ["N", k])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", o])],
                       [("w", w.astype(np.float32)), ("b", rng.normal(0, 0.1, o).astype(np.float32))])
    path = save(model, tmp_path / "gemm.onnx")
    calib = write_npy_folder(tmp_path / "calib", (rng.normal(0, 1, (64, 1, k)) * scale).astype(np.float32))
    test = (rng.normal(0, 1, (512, k)) * scale).astype(np.float32)
    return path, calib, test


@pytest.mark.parametrize("cpu", ["arm", "any"])
def test_a_per_tensor_range_clipped_by_output_error_beats_max(tmp_path, rng, cpu):
    path, calib, x = _outlier_gemm(tmp_path, rng)
    prepared = prepare(path)
    reference = runtime.session(prepared.model).run(None, {"x": x})[0]
    errors, tables = {}, {}
    for bc in (False, True):  # the sequential pass (here: bias correction) brings the data to choose with
        r = api.calibrate(path, data=calib, output=tmp_path / f"{cpu}{bc}.json",
                          options=CalibrationOptions(per_channel=False, cpu=cpu,
                                                     rounding=RoundingOptions(bias_correction=bc)))
        table = tables[bc] = scale_table.load(r.table_path)
        q = runtime.session(export(prepared, table)).run(None, {"x": x})[0]
        errors[bc] = float(np.square(q - reference).mean())
        if bc:
            layer = r.rounding.layers[0]
            assert layer.weight_range > 2.0
    w_max, w_out = tables[False].tensors["w"], tables[True].tensors["w"]
    assert w_out.method == "output-mse" and w_out.params.scale[0] < w_max.params.scale[0] / 2
    b = tables[True].tensors["b"].params
    assert b.scale[0] == pytest.approx(tables[True].tensors["x"].params.scale[0] * w_out.params.scale[0], rel=1e-6)
    assert errors[True] < 0.5 * errors[False]
    q = codes(tables[True], "w", prepared.index.array("w"))
    if cpu == "any":
        assert pair_peaks(reduction_rows("Gemm", q.astype(np.int64))).max() <= PAIR_LIMIT
