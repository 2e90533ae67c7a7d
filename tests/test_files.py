"""ptqcli.files: whole-or-nothing writes with the modes open() gives, outputs that are not inputs,
one writer per output."""

import os
import stat

import pytest

from ptqcli import files
from ptqcli.errors import OptionError, OutputError


@pytest.fixture()
def umask():
    """Set the process umask for one test (restored afterwards)."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_mode_open_would_give(tmp_path, umask, mask, expected):
    umask(mask)
    files.write_text_atomic(tmp_path / "t.json", "{}\n")
    with open(tmp_path / "plain", "w"):
        pass
    assert mode(tmp_path / "t.json") == mode(tmp_path / "plain") == expected
    assert (tmp_path / "t.json").read_text() == "{}\n" and leftovers(tmp_path) == []


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o077)
    target = tmp_path / "t.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    files.write_text_atomic(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o640


@pytest.mark.parametrize("error", [ValueError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, error):
    target = tmp_path / "t.json"
    target.write_text("old")

    def half_then_fail(f):
        f.write(b"partial")
        raise error

    with pytest.raises(type(error)):
        files.write_atomic(target, half_then_fail)
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_an_interruption_that_a_library_turns_into_another_error_is_still_an_interruption(tmp_path):
    """A signal inside ``np.savez`` surfaced as zipfile's "Can't close the ZIP file while there is
    an open writing handle" (seen: a SIGTERM during a checkpoint gave exit 1, not 143)."""
    target = tmp_path / "t.npz"
    target.write_bytes(b"old")
    stop = KeyboardInterrupt()

    def interrupted_then_cleanup_fails(f):
        f.write(b"partial")
        try:
            raise stop
        finally:
            raise ValueError("Can't close the ZIP file while there is an open writing handle on it")

    with pytest.raises(KeyboardInterrupt) as caught:
        files.write_atomic(target, interrupted_then_cleanup_fails)
    assert caught.value is stop
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_staged_publishes_every_file_or_none(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with pytest.raises(RuntimeError):
        with files.staged(a, b) as (ta, tb):
            ta.write_text("a")
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    with files.staged(a, b) as (ta, tb):
        ta.write_text("a")
        tb.write_text("b")
    assert a.read_text() == "a" and b.read_text() == "b" and leftovers(tmp_path) == []


def test_an_output_that_is_an_input_is_refused_however_spelled(tmp_path, monkeypatch):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    (tmp_path / "sub").mkdir()
    os.symlink(model, tmp_path / "link.onnx")
    monkeypatch.chdir(tmp_path / "sub")
    for spelling in (model, "../m.onnx", tmp_path / "sub" / ".." / "m.onnx", tmp_path / "link.onnx"):
        with pytest.raises(OptionError, match="that is the model") as caught:
            with files.claimed([("output", spelling)], [("model", model)]):
                pass
        assert caught.value.exit_code == 2
    with files.claimed([("output", tmp_path / "other.json")], [("model", model)]):
        pass
    assert model.read_bytes() == b"model"


def test_a_second_writer_of_the_same_output_is_told_and_stopped(tmp_path):
    out = tmp_path / "t.json"
    with files.claimed([("output", out)]):
        with pytest.raises(OutputError, match=rf"t.json: another ptq process \(pid {os.getpid()}\) is writing it"):
            with files.claimed([("output", out)]):
                pass
        with files.claimed([("output", tmp_path / "u.json")]):  # another output: no conflict
            pass
    assert leftovers(tmp_path) == []  # the lock file goes with the lock
    with files.claimed([("output", out)]):  # free again
        pass


def test_an_unwritable_folder_is_found_before_any_work(tmp_path, read_only_folder):
    with pytest.raises(OutputError, match="cannot write in"):
        with files.claimed([("output", read_only_folder / "t.json")]):
            pytest.fail("the block must not run")
    with pytest.raises(OptionError, match="does not exist"):
        with files.claimed([("output", tmp_path / "missing" / "t.json")]):
            pass
