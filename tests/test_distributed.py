"""Calibration sharded over Dask workers: on a local cluster of two worker processes the table is
byte-identical to the single-process one, also when a worker is killed mid-run (its shard runs
again elsewhere); without Dask, the flag says how to install it."""

import os
import signal
import sys
import threading
import time

import pytest
from conftest import one_line_error, run
from test_guard import SUBSAMPLE, hidden  # noqa: F401  (a fixture: a tensor the subsample misses)
from test_resume import make_folder, same

from ptqcli import api
from ptqcli.graph import prepare
from ptqcli.observe import collect
from ptqcli.observe.dataset import ImageSpec, batches, list_samples
from ptqcli.quantize.plan import analyse
from ptqcli.quantize.scale_groups import observed_tensors

NO_DASK = "dask[distributed] is not installed (pip install ptq[dask]); `make test` installs it"


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed", reason=NO_DASK)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=40) as local, distributed.Client(local) as client:
        yield local, client


@pytest.mark.parametrize("model", ["digits_cnn", "digits_transformer"])
def test_two_workers_write_the_table_one_process_writes(cluster, calib_dir, tmp_path, model):
    local, _ = cluster
    path = calib_dir.parent.parent / f"{model}.onnx"
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    api.calibrate(path, data=calib_dir, output=one, subsample=64)
    api.calibrate(path, data=calib_dir, output=two, subsample=64,
                  pass_options=api.PassOptions(scheduler=local.scheduler_address))
    assert two.read_bytes() == one.read_bytes()
    assert (tmp_path / "two.obs.npz").exists() and not api.checkpoint_path_for(two).exists()


def test_the_second_stage_is_sharded_too(cluster, hidden):  # noqa: F811
    from ptqcli.observe import distributed

    _, client = cluster
    model, folder = hidden
    prepared = prepare(model)
    files = list_samples(folder)

    def feed(start=0):
        return batches(files, prepared.inputs, batch_size=5, start=start)

    alone = collect.observe(prepared, ["x"], feed(), subsample=SUBSAMPLE, again=feed)
    sharded = distributed.observe(prepared, ["x"], files, image=ImageSpec(), batch_size=5, subsample=SUBSAMPLE,
                                  budget=None, workers=None, scheduler=None, dask_client=client)
    assert alone.recounted == {"x"}
    same(alone, sharded)


def test_a_worker_killed_mid_run_has_its_shard_run_again(cluster, cnn_model, calib_dir, tmp_path):
    from ptqcli.observe import distributed

    _, client = cluster
    client.wait_for_workers(2)
    prepared = prepare(cnn_model)
    tensors = observed_tensors(prepared.index, analyse(prepared.index))
    files = list_samples(make_folder(calib_dir, tmp_path / "calib", 3))

    def feed(start=0):
        return batches(files, prepared.inputs, batch_size=1, start=start)

    alone = collect.observe(prepared, tensors, feed(), subsample=64, again=feed)
    pids = client.run(os.getpid)
    killed = []

    def kill_one_busy_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            busy = [w for w, keys in client.processing().items() if keys and w in pids]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_one_busy_worker)
    killer.start()
    sharded = distributed.observe(prepared, tensors, files, image=ImageSpec(), batch_size=1, subsample=64,
                                  budget=None, workers=None, scheduler=None, dask_client=client)
    killer.join()
    assert killed, "no worker was busy"
    same(alone, sharded)
    assert killed[0] not in client.scheduler_info()["workers"]  # it died; the nanny started another
    client.wait_for_workers(2)


def test_without_dask_the_flag_says_how_to_install_it(cnn_model, calib_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed raises ImportError
    for flag in (["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:1"]):
        code, out = run("calibrate", cnn_model, "--data", calib_dir, "-o", tmp_path / "t.json", *flag)
        assert code == 2, out
        assert one_line_error(out) == (f"Error: {flag[0]} needs Dask, which is not installed: pip install ptq[dask]")
    assert list(tmp_path.iterdir()) == []


def test_workers_and_resume_do_not_go_together(cnn_model, calib_dir, tmp_path):
    code, out = run("calibrate", cnn_model, "--data", calib_dir, "-o", tmp_path / "t.json", "--workers", "2",
                    "--resume")
    assert code == 2 and "--resume continues a single-process pass" in one_line_error(out)
