"""--data-free: BatchNorm statistics, the synthetic tensors built from them, analytic bias
correction, and what it refuses."""


import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy.stats import norm

from builders import conv_net, float_input, make_model, save
from ptqcli import api, runtime
from ptqcli.errors import ModelError, OptionError
from ptqcli.export.qdq import export
from ptqcli.graph import prepare
from ptqcli.quantize import scale_table
from ptqcli.quantize.decide import CalibrationOptions
from ptqcli.rounding import datafree
from ptqcli.rounding.layers import view
from ptqcli.rounding.options import RoundingOptions

DATA_FREE = RoundingOptions(data_free=True)


def _options(rounding=DATA_FREE, **kw):
    return CalibrationOptions(rounding=rounding, fixed_ranges=(("x", -1.0, 1.0),), **kw)


def test_statistics_come_from_the_file_before_folding(tmp_path, rng):
    model = conv_net(rng)
    path = save(model, tmp_path / "net.onnx")
    stats = datafree.statistics(path)
    assert set(stats.mean) == {"bn1"}
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(stats.mean["bn1"], values["bn_bias"])
    np.testing.assert_array_equal(stats.std["bn1"], np.abs(values["bn_scale"]))
    assert "BatchNormalization" not in {n.op_type for n in prepare(path).index.nodes}  # folded by preparation


def test_a_model_without_batchnorm_is_refused(transformer_model):
    with pytest.raises(ModelError, match="needs BatchNormalization statistics"):
        datafree.statistics(transformer_model)


def test_data_free_refuses_data_it_would_not_read(cnn_model, calib_dir, tmp_path):
    options = CalibrationOptions(rounding=DATA_FREE, fixed_ranges=(("image", -1.0, 1.0),))
    with pytest.raises(OptionError, match="^data_free observes synthetic tensors .* give neither data nor observations"):
        api.calibrate(cnn_model, data=calib_dir, output=tmp_path / "t.json", options=options)
    assert not (tmp_path / "t.json").exists()


def test_inputs_need_a_range_and_a_size(cnn_model, tmp_path):
    with pytest.raises(OptionError, match="give the range of input 'image' with --fixed-range"):
        api.calibrate(cnn_model, output=tmp_path / "t.json", options=CalibrationOptions(rounding=DATA_FREE))
    dynamic = make_model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                          helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn")],
                         [float_input("x", ["N", 1, "H", "W"])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "H", "W"])],
                         [("w", np.ones((2, 1, 1, 1), np.float32)), ("g", np.ones(2, np.float32)),
                          ("b", np.zeros(2, np.float32)), ("m", np.zeros(2, np.float32)), ("v", np.ones(2, np.float32))])
    path = save(dynamic, tmp_path / "dynamic.onnx")
    with pytest.raises(OptionError, match="give --size HxW"):
        api.calibrate(path, output=tmp_path / "t.json", options=_options())
    api.calibrate(path, output=tmp_path / "t.json", options=_options(),
                  data_options=api.DataOptions(image=api.ImageSpec(size=(6, 5))))


def _bn_relu_conv(rng, tmp_path):
    """x -> Conv -> BatchNorm (statistics measured on the data x comes from) -> Relu -> Conv 1x1
    whose weights nearest rounding moves down by 0.4 of a step: a built-in mean output error."""
    c, o = 6, 4
    w1 = rng.normal(0, 0.5, (c, 3, 3, 3)).astype(np.float32)
    x = rng.normal(0, 1, (256, 3, 8, 8)).astype(np.float32)
    conv = make_model([helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1])], [float_input("x", ["N", 3, 8, 8])],
                      [helper.make_tensor_value_info("c1", TensorProto.FLOAT, ["N", 6, 8, 8])], [("w1", w1)])
    c1 = runtime.session(conv).run(None, {"x": x})[0]
    mean, var = c1.mean(axis=(0, 2, 3)), c1.var(axis=(0, 2, 3))
    gamma, beta = rng.uniform(0.5, 2, c).astype(np.float32), rng.normal(0, 0.5, c).astype(np.float32)
    w2 = (0.01 * (rng.integers(-40, 40, (o, c, 1, 1)) + 0.4)).astype(np.float32)
    w2[:, 0] = 1.27  # scale 0.01 exactly in every output channel
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["bn"], name="bn", epsilon=0.0),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2")]
    model = make_model(nodes, [float_input("x", ["N", 3, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", o, 8, 8])],
                       [("w1", w1), ("g", gamma), ("b", beta), ("m", mean.astype(np.float32)),
                        ("v", var.astype(np.float32)), ("w2", w2), ("b2", np.zeros(o, np.float32))])
    return save(model, tmp_path / "bn.onnx"), rng.normal(0, 1, (128, 3, 8, 8)).astype(np.float32), beta, gamma


def test_synthetic_tensors_follow_the_statistics_and_give_the_clipped_normal_mean(tmp_path, rng):
    path, _, beta, gamma = _bn_relu_conv(rng, tmp_path)
    prepared = prepare(path)
    synthetic = datafree.synthetic_model(prepared, datafree.statistics(path), [("x", -4.0, 4.0)], None)
    values = np.concatenate([b.feeds["bn"] for b in synthetic.batches()])
    assert np.allclose(values.mean(axis=(0, 2, 3)), beta, atol=0.1 * gamma)
    assert np.allclose(values.std(axis=(0, 2, 3)), gamma, rtol=0.1)
    assert np.all(np.abs(values - beta[None, :, None, None]) <= datafree.K_SIGMA * gamma[None, :, None, None] + 1e-5)
    again = np.concatenate([b.feeds["bn"] for b in synthetic.batches()])
    assert np.array_equal(values, again)
    table = scale_table.load(api.calibrate(path, output=tmp_path / "t.json", options=CalibrationOptions(
        rounding=DATA_FREE, fixed_ranges=(("x", -4.0, 4.0),))).table_path)
    conv2 = view(prepared.index, table.groups["conv2"])
    total, count = datafree.mean_inputs(synthetic, [conv2])["conv2"]
    # E[relu(z)] for z ~ N(b, g^2): b (1 - Phi(-b/g)) + g phi(-b/g)  (Nagel et al. 2019, eq. 19)
    analytic = beta * (1 - norm.cdf(-beta / gamma)) + gamma * norm.pdf(-beta / gamma)
    np.testing.assert_allclose(total[0] / count, analytic, rtol=0.05, atol=0.02 * gamma.max())


def test_analytic_bias_correction_removes_most_of_a_built_in_mean_error(tmp_path, rng):
    path, x, _, _ = _bn_relu_conv(rng, tmp_path)
    prepared = prepare(path)
    reference = runtime.session(prepared.model).run(None, {"x": x})[0]
    errors = {}
    for corrected in (False, True):
        r = api.calibrate(path, output=tmp_path / f"{corrected}.json", options=CalibrationOptions(
            rounding=RoundingOptions(data_free=True, bias_correction=corrected), fixed_ranges=(("x", -4.0, 4.0),),
            cpu="arm"))
        q = runtime.session(export(prepared, scale_table.load(r.table_path))).run(None, {"x": x})[0]
        errors[corrected] = (q - reference).mean(axis=(0, 2, 3))
    assert np.all(errors[False] < -0.01)
    assert np.abs(errors[True]).max() < 0.3 * np.abs(errors[False]).min()


def test_data_free_digits_cnn_keeps_the_float_decisions(cnn_model, tmp_path, eval_dir):
    r = api.calibrate(cnn_model, output=tmp_path / "t.json", options=CalibrationOptions(
        rounding=RoundingOptions(data_free=True, bias_correction=True, equalize=True),
        fixed_ranges=(("image", -1.0, 1.0),)))
    assert r.table.samples == datafree.SAMPLES
    api.export(cnn_model, r.table_path, tmp_path / "q.onnx")
    ev = api.evaluate(cnn_model, tmp_path / "q.onnx", eval_dir, data_options=api.DataOptions(limit=200))
    assert ev.top1_agreement >= 0.97
