"""ptqcli.api: the CLI's verbs for Python, typed, with errors that name keywords, not flags."""

import importlib.resources
import inspect
import typing

import numpy as np
import pytest

from ptqcli import api
from ptqcli.errors import OptionError


def test_the_namespace_is_the_api():
    public = {n for n in dir(api) if not n.startswith("_")} - {"annotations"}
    assert public == set(api.__all__)
    assert {"calibrate", "export", "evaluate", "simulate", "sensitivity"} <= public
    assert not {"dataclass", "pathlib", "time"} & public


@pytest.mark.parametrize("verb", ["calibrate", "export", "evaluate", "simulate", "sensitivity"])
def test_every_verb_is_typed_and_documented(verb):
    fn = getattr(api, verb)
    hints = typing.get_type_hints(fn)
    assert set(inspect.signature(fn).parameters) | {"return"} == set(hints), verb
    assert fn.__doc__


def test_the_package_says_it_is_typed():
    assert importlib.resources.files("ptqcli").joinpath("py.typed").is_file()


def test_evaluate(tmp_path, cnn_model, small_calib, eval_dir):
    table = api.calibrate(cnn_model, data=small_calib, output=tmp_path / "t.json").table_path
    qdq = api.export(cnn_model, table, tmp_path / "q.onnx")
    ev = api.evaluate(cnn_model, qdq, eval_dir, labels=eval_dir / "labels.csv",
                      data_options=api.DataOptions(limit=40))
    assert isinstance(ev, api.Evaluation) and ev.samples == 40
    assert ev.outputs["logits"].sqnr_db > 20 and ev.top1_agreement > 0.9
    assert set(ev.accuracy) == {"float", "quantized"}


def test_sensitivity_returns_a_dataclass(tmp_path, cnn_model, small_calib):
    table = api.calibrate(cnn_model, data=small_calib, output=tmp_path / "t.json").table_path
    result = api.sensitivity(cnn_model, table, small_calib, api.DataOptions(limit=2))
    assert isinstance(result, api.SensitivityResult)
    assert isinstance(result.all_quantized, api.Agreement) and result.points
    assert all(isinstance(p, api.Sensitivity) for p in result.points)
    assert [p.sqnr_db for p in result.points] == sorted(p.sqnr_db for p in result.points)


def test_options_as_a_mapping_are_read_like_the_tables_record(tmp_path, cnn_model, small_calib):
    first = api.calibrate(cnn_model, data=small_calib, output=tmp_path / "a.json",
                          options=api.CalibrationOptions(method="max", exclude=("Gemm",)))
    again = api.calibrate(cnn_model, observations=first.observations_path, output=tmp_path / "b.json",
                          options=first.table.options)  # the JSON form the table recorded
    assert again.table_path.read_bytes() == first.table_path.read_bytes()
    with pytest.raises(OptionError, match="^options: unknown field 'mehtod'; known: method, "):
        api.calibrate(cnn_model, data=small_calib, output=tmp_path / "c.json", options={"mehtod": "kl"})
    with pytest.raises(OptionError, match="^options must be a CalibrationOptions or a mapping"):
        api.calibrate(cnn_model, data=small_calib, output=tmp_path / "c.json", options="kl")


def test_errors_name_keywords_not_flags(tmp_path, cnn_model, small_calib):
    cases = [
        (dict(data=small_calib, options=api.CalibrationOptions(exclude=("Nope",))), "exclude 'Nope': no node"),
        (dict(data=small_calib, options=api.CalibrationOptions(percentile=120.0)), "percentile must be in (0, 100]"),
        (dict(), "give data (a folder of samples) or observations"),
        (dict(data=small_calib, data_options=api.DataOptions(batch_size=0)), "batch_size must be at least 1"),
    ]
    for kwargs, message in cases:
        with pytest.raises(OptionError) as caught:
            api.calibrate(cnn_model, output=tmp_path / "t.json", **kwargs)
        assert str(caught.value).startswith(message) and "--" not in str(caught.value), str(caught.value)
    with pytest.raises(OptionError, match="^std must not contain 0"):
        api.ImageSpec(std=(0.0,))
    with pytest.raises(OptionError, match="^requant 'bogus': expected one of fixed, fp32"):
        table = api.calibrate(cnn_model, data=small_calib, output=tmp_path / "t.json").table_path
        api.simulate(cnn_model, table, {"image": np.zeros((1, 1, 8, 8), np.float32)}, requant="bogus")
