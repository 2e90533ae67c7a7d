"""ptqcli.pipeline.calibrate: the stages api.calibrate runs, checked one by one where they decide
something on their own (option combinations, the files claimed, which samples are kept), and the
imports a plain calibration does without."""

import pathlib
import subprocess
import sys

import pytest

from ptqcli.errors import OptionError
from ptqcli.observe.run_pass import PassOptions
from ptqcli.pipeline import calibrate as stages
from ptqcli.quantize.decide import CalibrationOptions
from ptqcli.rounding.options import RoundingOptions


def test_check_sources_reports_the_first_problem_in_a_fixed_order():
    data_free = CalibrationOptions(rounding=RoundingOptions(data_free=True))
    with pytest.raises(OptionError, match="^on_bad_sample 'drop': known: fail, skip"):
        stages.check_sources(data_free, data="d", observations=None, on_bad_sample="drop")
    with pytest.raises(OptionError, match="^data_free observes synthetic tensors"):
        stages.check_sources(data_free, data="d", observations=None, on_bad_sample="fail")
    with pytest.raises(OptionError, match="^give data"):
        stages.check_sources(CalibrationOptions(method="auto"), data=None, observations=None, on_bad_sample="fail")
    with pytest.raises(OptionError, match="^data and observations were both given"):
        stages.check_sources(CalibrationOptions(), data="d", observations="o", on_bad_sample="fail")
    adaround = CalibrationOptions(method="auto", rounding=RoundingOptions(weights="adaround"))
    with pytest.raises(OptionError, match="^weights 'adaround' learns from calibration samples"):
        stages.check_sources(adaround, data=None, observations="o", on_bad_sample="fail")
    with pytest.raises(OptionError, match="^method 'auto' scores candidate tables"):
        stages.check_sources(CalibrationOptions(method="auto"), data=None, observations="o", on_bad_sample="fail")
    stages.check_sources(adaround, data="d", observations="o", on_bad_sample="skip")


def test_skipping_bad_samples_turns_checkpoints_off_and_refuses_resume_and_workers():
    assert stages.pass_options_for(PassOptions(), "skip").checkpoint_every == 0
    assert stages.pass_options_for(PassOptions(), "fail") == PassOptions()
    with pytest.raises(OptionError, match="^on_bad_sample 'skip' runs in one process .* drop resume$"):
        stages.pass_options_for(PassOptions(resume=True), "skip")
    with pytest.raises(OptionError, match="drop workers$"):
        stages.pass_options_for(PassOptions(workers=2), "skip")
    with pytest.raises(OptionError, match="^resume continues a single-process pass"):  # checked first
        stages.pass_options_for(PassOptions(resume=True, workers=2), "skip")


def test_paths_claim_the_observations_only_when_this_run_writes_them():
    table = pathlib.Path("t.json")
    new = stages.Paths(table=table, observations=pathlib.Path("t.obs.npz"), checkpoint=pathlib.Path("t.ck.npz"))
    assert [p.name for _, p in new.outputs()] == ["t.json", "t.weights.npz", "t.obs.npz", "t.ck.npz"]
    sample = pathlib.Path("a.npy")
    assert new.inputs("m.onnx", [sample]) == [("model", "m.onnx"), ("data sample", sample)]
    given = stages.Paths(table=table, observations=pathlib.Path("o.npz"), checkpoint=pathlib.Path("t.ck.npz"),
                         given="./o.npz")
    assert [p.name for _, p in given.outputs()] == ["t.json", "t.weights.npz"]
    assert given.inputs("m.onnx", []) == [("model", "m.onnx"), ("observations file", "./o.npz")]  # as spelled


def test_kept_samples_keep_their_order():
    files = [pathlib.Path(f"{i}.npy") for i in range(4)]
    observed = stages.Observed(None, 0.0, (stages.SkippedSample(files[2], "bad"), stages.SkippedSample(files[0], "")))
    assert observed.kept(files) == [files[1], files[3]]


def test_a_plain_calibration_loads_neither_scipy_nor_the_rounding_algorithms_nor_the_search(tmp_path, cnn_model,
                                                                                           small_calib):
    code = ("import sys\nfrom ptqcli import api\n"
            f"api.calibrate({str(cnn_model)!r}, data={str(small_calib)!r}, output={str(tmp_path / 't.json')!r})\n"
            "print(sorted(m for m in sys.modules if m == 'scipy' or m.startswith(('ptqcli.rounding.', "
            "'ptqcli.quantize.autosearch'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "['ptqcli.rounding.options']", (done.stdout, done.stderr)
