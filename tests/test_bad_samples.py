"""--on-bad-sample skip|fail: a sample that fails its checks stops calibration (fail, the default)
or is left out, named and counted (skip), and the table is the one the folder without it gives."""

import json
import shutil

import numpy as np
import pytest
from conftest import one_line_error, run

from ptqcli import api
from ptqcli.errors import DataError, OptionError
from ptqcli.graph import InputSpec
from ptqcli.observe.dataset import batches

BAD = {"0003.npy": "NaN", "0005.npy": "expects shape", "0007.npy": "not a NumPy .npy file"}


@pytest.fixture()
def folders(tmp_path, small_calib):
    """The 16 samples with three of them broken, and the folder without those three."""
    x = np.load(small_calib / "0003.npy")
    x[0, 0, 2, 2] = np.inf
    np.save(small_calib / "0003.npy", x)
    np.save(small_calib / "0005.npy", np.zeros((1, 1, 8, 9), np.float32))
    (small_calib / "0007.npy").write_bytes(b"not an array")
    good = tmp_path / "good"
    shutil.copytree(small_calib, good)
    for name in BAD:
        (good / name).unlink()
    return small_calib, good


def test_fail_is_the_default_and_names_the_first_bad_file(tmp_path, cnn_model, folders):
    mixed, _ = folders
    code, out = run("calibrate", cnn_model, "--data", mixed, "-o", tmp_path / "t.json")
    assert code == 1 and "0003.npy" in one_line_error(out) and "NaN" in out
    assert not (tmp_path / "t.json").exists()


def test_skip_names_counts_and_gives_the_table_of_the_folder_without_them(tmp_path, cnn_model, folders):
    mixed, good = folders
    code, out = run("calibrate", cnn_model, "--data", mixed, "-o", tmp_path / "skip.json", "--on-bad-sample", "skip",
                    "--json")
    assert code == 0, out
    notes = [ln for ln in out.splitlines() if ln.startswith("note: skipped bad sample")]
    assert [next(n for n in BAD if n in ln) for ln in notes] == list(BAD)
    assert all(BAD[name] in ln for name, ln in zip(BAD, notes))
    summary = json.loads(out[out.index("{"):])
    assert summary["samples"] == 13 and summary["skipped_samples"]["count"] == 3
    assert [f["file"].rsplit("/", 1)[-1] for f in summary["skipped_samples"]["files"]] == list(BAD)
    code, out = run("calibrate", cnn_model, "--data", good, "-o", tmp_path / "good.json", "-q")
    assert code == 0, out
    assert (tmp_path / "skip.json").read_bytes() == (tmp_path / "good.json").read_bytes()


def test_the_api_lists_what_it_skipped_and_refuses_a_folder_of_bad_samples(tmp_path, cnn_model, folders):
    mixed, _ = folders
    result = api.calibrate(cnn_model, data=mixed, output=tmp_path / "t.json", on_bad_sample="skip")
    assert [s.file.name for s in result.skipped] == list(BAD) and result.table.samples == 13
    assert "holds NaN or infinite values" in result.skipped[0].reason and str(mixed) not in result.skipped[0].reason
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    for name in BAD:
        shutil.copy(mixed / name, only_bad / name)
    with pytest.raises(DataError, match="every sample failed its checks"):
        api.calibrate(cnn_model, data=only_bad, output=tmp_path / "b.json", on_bad_sample="skip")
    with pytest.raises(OptionError, match="^on_bad_sample 'ignore'"):
        api.calibrate(cnn_model, data=mixed, output=tmp_path / "b.json", on_bad_sample="ignore")


def test_batches_without_a_callback_raise_and_with_one_leave_the_sample_out(tmp_path):
    spec = [InputSpec("x", np.dtype("float32"), ("batch", 2))]
    for i, value in enumerate([1.0, np.nan, 3.0]):
        np.save(tmp_path / f"{i}.npy", np.full((1, 2), value, np.float32))
    files = sorted(tmp_path.glob("*.npy"))
    with pytest.raises(DataError, match="1.npy"):
        list(batches(files, spec, batch_size=8))
    seen = []
    got = list(batches(files, spec, batch_size=8, on_bad=lambda path, exc: seen.append((path.name, str(exc)))))
    assert [b.files for b in got] == [(files[0], files[2])] and got[0].feeds["x"][:, 0].tolist() == [1.0, 3.0]
    assert seen[0][0] == "1.npy" and "NaN" in seen[0][1]
