"""Resumable calibration: a pass continued from any checkpoint gives what an uninterrupted pass
gives, byte for byte; a checkpoint made with another model, data or options is refused; Ctrl-C
and SIGTERM sent to a real ``ptq`` keep the last checkpoint, and ``--resume`` finishes the job."""

import os
import random
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import one_line_error, run
from test_guard import SUBSAMPLE, hidden  # noqa: F401  (a fixture: a tensor the subsample misses)
from test_signals import error_line, wait_for

from ptqcli import api
from ptqcli.graph import prepare
from ptqcli.observe import checkpoint, collect
from ptqcli.observe.dataset import batches, list_samples
from ptqcli.observe.state import Every
from ptqcli.quantize.plan import analyse
from ptqcli.quantize.scale_groups import observed_tensors


def same(a, b) -> None:
    assert (a.samples, a.strides, a.recounted) == (b.samples, b.strides, b.recounted)
    assert a.histograms.keys() == b.histograms.keys()
    for t, h in a.histograms.items():
        g = b.histograms[t]
        assert (h.width_exp, h.offset, h.minimum, h.maximum) == (g.width_exp, g.offset, g.minimum, g.maximum), t
        assert np.array_equal(h.counts, g.counts), t


def every_resume_matches(model, folder, tensors, batch_size, subsample, tmp_path) -> list:
    """Checkpoint after every batch; resume from each checkpoint, read back from disk; compare."""
    prepared = prepare(model)
    files = list_samples(folder)
    tensors = tensors or observed_tensors(prepared.index, analyse(prepared.index))

    def feed(start=0):
        return batches(files, prepared.inputs, batch_size=batch_size, start=start)

    saved = []
    whole = collect.observe(prepared, tensors, feed(), subsample=subsample, again=feed, checkpoint=saved.append,
                            every=Every(samples=1))
    key = checkpoint.Key.of(prepared.fingerprint, files, {"subsample": subsample})
    path = tmp_path / "c.ckpt.npz"
    for state in saved:
        checkpoint.save(state, key, path)
        state = checkpoint.load(path, key)
        later = []
        resumed = collect.observe(prepared, tensors, feed(len(files) if state.recount else state.files),
                                  subsample=subsample, again=feed, resume=state, first=next(feed()),
                                  checkpoint=later.append, every=Every(samples=1))
        same(whole, resumed)
        assert len(later) == len(saved) - saved.index(next(s for s in saved if s.files == state.files
                                                           and s.recount == state.recount)) - 1
    return saved


@pytest.mark.parametrize("batch_size", [1, 7])
def test_resuming_from_any_checkpoint_gives_the_uninterrupted_histograms(cnn_model, calib_dir, tmp_path, batch_size):
    folder = tmp_path / "calib"
    folder.mkdir()
    for f in list_samples(calib_dir, limit=30):
        shutil.copy(f, folder / f.name)
    saved = every_resume_matches(cnn_model, folder, None, batch_size, 50, tmp_path)
    assert len(saved) == -(-30 // batch_size)
    assert any(k > 1 for k in saved[0].strides.values())  # subsampled: offsets matter


def test_resuming_in_the_second_stage_counts_the_missed_values_once(hidden, tmp_path):  # noqa: F811
    model, folder = hidden
    saved = every_resume_matches(model, folder, ["x"], 5, SUBSAMPLE, tmp_path)
    assert any(s.recount for s in saved) and any(not s.recount for s in saved)


def make_folder(calib_dir, folder, copies):
    folder.mkdir()
    for i in range(copies):
        for f in list_samples(calib_dir):
            shutil.copy(f, folder / f"{i}-{f.name}")
    return folder


def interrupt_after(n):
    """A progress factory that sends Ctrl-C once ``n`` samples have been observed."""
    import contextlib

    @contextlib.contextmanager
    def factory(total):
        done = [0]

        def update(k):
            done[0] += k
            if done[0] >= n:
                raise KeyboardInterrupt

        yield update
    return factory


def test_a_checkpoint_from_another_model_data_or_options_is_refused(cnn_model, transformer_model, calib_dir,
                                                                     tmp_path):
    folder = make_folder(calib_dir, tmp_path / "calib", 1)
    table = tmp_path / "t.json"
    ckpt = api.checkpoint_path_for(table)
    with pytest.raises(KeyboardInterrupt) as caught:
        api.calibrate(cnn_model, data=folder, output=table, data_options=api.DataOptions(batch_size=4),
                      pass_options=api.PassOptions(checkpoint_every=8), progress=interrupt_after(50))
    assert caught.value.checkpoint == str(ckpt) and caught.value.done == 48 and ckpt.exists()
    before = ckpt.read_bytes()
    code, out = run("calibrate", cnn_model, "--data", folder, "-o", table, "--batch-size", "5", "--resume")
    assert code == 1 and one_line_error(out) == (f"Error: {ckpt}: the checkpoint was made with another options; "
                                                 f"run without --resume to start again")
    code, out = run("calibrate", transformer_model, "--data", folder, "-o", table, "--batch-size", "4", "--resume")
    assert code == 1 and "made with another model and options" in one_line_error(out)
    os.utime(next(folder.iterdir()), ns=(1, 1))  # a sample changed since
    code, out = run("calibrate", cnn_model, "--data", folder, "-o", table, "--batch-size", "4", "--resume")
    assert code == 1 and "made with another data;" in one_line_error(out)
    assert ckpt.read_bytes() == before and not table.exists()  # refused: nothing touched


def test_the_checkpoint_goes_once_the_observations_are_saved(cnn_model, calib_dir, tmp_path):
    table = tmp_path / "t.json"
    code, out = run("calibrate", cnn_model, "--data", calib_dir, "-o", table, "--checkpoint-every", "16",
                    "--batch-size", "4", "--resume")
    assert code == 0 and "no checkpoint" in out and "starting from the first sample" in out
    assert table.exists() and not api.checkpoint_path_for(table).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "t.obs.npz"]


@pytest.mark.parametrize("text, every", [("256", Every(samples=256)), (256, Every(samples=256)),
                                         ("30s", Every(seconds=30.0)), ("0.5S", Every(seconds=0.5)),
                                         ("0", Every()), ("0s", Every())])
def test_checkpoint_every_reads_samples_seconds_or_never(text, every):
    assert Every.parse(text) == every and bool(every) == (every != Every())


@pytest.mark.parametrize("text", ["5m", "-1", "x", "nans", "infs", "1.5", ""])
def test_a_bad_checkpoint_interval_is_named(cnn_model, calib_dir, tmp_path, text):
    with pytest.raises(ValueError):
        Every.parse(text)
    code, out = run("calibrate", cnn_model, "--data", calib_dir, "-o", tmp_path / "t.json", "--checkpoint-every",
                    text)
    assert code == 2 and one_line_error(out).startswith(f"Error: --checkpoint-every {text!r}: give a count")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seconds, after_every_batch", [(1e-9, True), (3600.0, False)])
def test_the_clock_decides_when_a_checkpoint_is_due(cnn_model, calib_dir, seconds, after_every_batch):
    prepared = prepare(cnn_model)
    files = list_samples(calib_dir)
    saved = []
    collect.observe(prepared, observed_tensors(prepared.index, analyse(prepared.index)),
                    batches(files, prepared.inputs, batch_size=10), checkpoint=saved.append,
                    every=Every(seconds=seconds))
    expected = list(range(10, len(files) + 1, 10)) if after_every_batch else []
    assert [s.files for s in saved] == expected


def ptq(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ptqcli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum, every", [(signal.SIGINT, "20"), (signal.SIGTERM, "20"), (signal.SIGINT, "3600s")])
def test_a_signal_at_a_random_point_then_resume_gives_the_same_table_bytes(cnn_model, calib_dir, tmp_path, signum,
                                                                            every):
    """The pass stops after the batch under way and checkpoints every sample run so far, whether
    or not a periodic checkpoint was due (3600s: none would be)."""
    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.0, 0.5)
    folder = make_folder(calib_dir, tmp_path / "calib", 3)  # 600 samples, one per run
    args = ["--data", folder, "--batch-size", "1", "--checkpoint-every", every]
    whole = tmp_path / "whole.json"
    code, out = run("calibrate", cnn_model, *args, "-o", whole, "-q")
    assert code == 0, out
    table = tmp_path / "t.json"
    ckpt = api.checkpoint_path_for(table)
    import time
    for attempt in range(8):  # a signal that lands after the pass is tried again, sooner
        process = ptq("calibrate", cnn_model, *args, "-o", table)
        assert process.stderr.readline().startswith("observing: 600 samples")  # the pass is under way
        time.sleep(delay / 2 ** attempt)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
        if "observing: done" not in stderr:
            break
        for done_with in (table, tmp_path / "t.obs.npz"):  # ended, or stopped after the pass
            done_with.unlink(missing_ok=True)
    assert process.returncode == 128 + signum, (seed, stderr)
    line = error_line(stderr)
    assert line.startswith(f"Error: interrupted by {signal.Signals(signum).name}; the checkpoint {ckpt} holds ")
    assert line.endswith("samples: rerun with --resume to continue from it") and not table.exists()
    done = int(line.split(" holds ")[1].split()[0])
    assert 1 <= done < 600, (seed, line)
    process = ptq("calibrate", cnn_model, *args, "-o", table, "--resume")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert f"note: resuming from {ckpt}: {done} samples observed" in stderr
    assert table.read_bytes() == whole.read_bytes(), seed
    assert not ckpt.exists()


def test_a_signal_as_soon_as_the_pass_is_announced_waits_for_the_first_batch(cnn_model, calib_dir, tmp_path):
    """The progress line is out before the pass has set itself up (imports, the checkpoint key,
    the session): a Ctrl-C then must still wait for a batch and leave a checkpoint, not stop
    with nothing saved (what a test that signals at a random point met now and then)."""
    folder = make_folder(calib_dir, tmp_path / "calib", 3)
    table = tmp_path / "t.json"
    process = ptq("calibrate", cnn_model, "--data", folder, "--batch-size", "1", "-o", table)
    assert process.stderr.readline().startswith("observing: 600 samples")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    line = error_line(stderr)
    assert f"the checkpoint {api.checkpoint_path_for(table)} holds " in line, line
    assert 1 <= int(line.split(" holds ")[1].split()[0]) < 600, line
