import numpy as np
import onnxruntime as ort
import pytest

from ptqcli.errors import DataError
from ptqcli.graph import prepare
from ptqcli.observe import collect, probes
from ptqcli.observe.dataset import batches, list_samples
from ptqcli.quantize.plan import analyse
from ptqcli.quantize.scale_groups import observed_tensors


@pytest.fixture(scope="module")
def cnn(cnn_model):
    prepared = prepare(cnn_model)
    return prepared, observed_tensors(prepared.index, analyse(prepared.index))


def run_observe(prepared, tensors, files, batch_size, subsample):
    return collect.observe(prepared, tensors, batches(files, prepared.inputs, batch_size=batch_size),
                           subsample=subsample)


def test_strides_are_primes_that_do_not_divide_the_row_and_cap_it():
    assert collect.stride_for(100, 200) == 1
    assert collect.stride_for(4800, 4096) == 7  # 2, 3 and 5 divide 40 x 120
    assert collect.stride_for(21600, 4096) == 7  # 60 x 360: not 5
    for row, cap in [(1000, 100), (1001, 100), (4096, 64), (50_000, 16_384), (2 * 3 * 5 * 7 * 11 * 13, 1000)]:
        k = collect.stride_for(row, cap)
        assert all(k % d for d in range(2, k)) and row % k and len(range(0, row, k)) <= cap


def test_subsampled_observation_does_not_depend_on_batch_size(cnn, calib_dir):
    prepared, tensors = cnn
    files = list_samples(calib_dir, limit=30)
    runs = [run_observe(prepared, tensors, files, bs, subsample=100) for bs in (1, 4, 7, 30)]
    for other in runs[1:]:
        for t in tensors:
            a, b = runs[0].histograms[t], other.histograms[t]
            assert (a.width_exp, a.offset, a.minimum, a.maximum) == (b.width_exp, b.offset, b.minimum, b.maximum)
            assert np.array_equal(a.counts, b.counts), t
    assert runs[0].samples == 30


def test_extremes_are_exact_and_the_body_is_a_subsample(cnn, calib_dir):
    prepared, tensors = cnn
    files = list_samples(calib_dir, limit=20)
    obs = run_observe(prepared, tensors, files, 5, subsample=100)
    session = ort.InferenceSession(probes.exposing(prepared, tensors).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = np.concatenate([np.load(f) for f in files])
    full = dict(zip(tensors, session.run(list(tensors), {"image": x})))
    for t in tensors:
        h, value = obs.histograms[t], full[t]
        assert (h.minimum, h.maximum) == (float(value.min()), float(value.max()))
        stride = collect.stride_for(value.size // len(value), 100)
        assert h.total == len(range(0, value.size, stride))  # every stride-th value of the stream
    assert any(obs.histograms[t].total < full[t].size for t in tensors)  # subsampling happened


def test_nan_activation_names_the_tensor_and_files(tmp_path, cnn):
    prepared, tensors = cnn
    big = np.full((1, 1, 8, 8), 3e38, np.float32)  # finite input whose activations overflow
    np.save(tmp_path / "0000.npy", np.zeros((1, 1, 8, 8), np.float32))
    np.save(tmp_path / "0001.npy", big)
    with pytest.raises(DataError, match=r"is NaN or infinite on sample\(s\) 0001.npy"):
        run_observe(prepared, tensors, list_samples(tmp_path), 1, subsample=100)


def test_lengths_from_inference_or_from_the_first_run_give_the_same_histograms(cnn, calib_dir, monkeypatch):
    prepared, tensors = cnn
    files = list_samples(calib_dir, limit=9)
    static = run_observe(prepared, tensors, files, 4, subsample=100)
    monkeypatch.setattr(collect, "rows", lambda *args: {})  # every length unknown before the run
    probed = run_observe(prepared, tensors, files, 4, subsample=100)
    for t in tensors:
        a, b = static.histograms[t], probed.histograms[t]
        assert (a.offset, a.minimum, a.maximum) == (b.offset, b.minimum, b.maximum) and np.array_equal(a.counts, b.counts)
    assert static.samples == probed.samples == 9


def test_kept_values_do_not_hold_the_whole_output():
    """Values wait in a list until about 65 Ki of them are counted: a strided view would keep every
    run's whole output alive meanwhile (memory grew with the stride)."""
    out = np.arange(1000, dtype=np.float32).reshape(10, 100)
    kept = collect._kept(out, 3, 7)
    assert kept.base is None and np.array_equal(kept, out.reshape(-1)[3::7])


def test_automatic_runs_hold_what_the_budget_allows_and_count_the_same(cnn, calib_dir, monkeypatch):
    prepared, tensors = cnn
    files = list_samples(calib_dir, limit=24)
    first = next(iter(batches(files[:1], prepared.inputs)))
    plan = collect.plans(prepared, tensors, first, 100)
    per_sample = probes.run_bytes({t: p.row for t, p in plan.items()})
    held, real = [], collect.runtime.session

    class Recording:
        def __init__(self, session):
            self.session = session

        def get_outputs(self):
            return self.session.get_outputs()

        def run(self, names, feeds):
            out = self.session.run(names, feeds)
            held.append((len(feeds["image"]), sum(o.nbytes for o in out)))
            return out

    monkeypatch.setattr(collect.runtime, "session", lambda model, **kw: Recording(real(model, **kw)))
    budgeted = collect.observe(prepared, tensors, batches(files, prepared.inputs, batch_size=8), subsample=100,
                               budget=3 * per_sample)
    assert max(n for n, _ in held) == 3  # runs of 3 samples cut from batches of 8
    assert all(size <= 3 * per_sample for _, size in held)  # outputs within what the budget counted
    whole = run_observe(prepared, tensors, files, 8, subsample=100)
    for t in tensors:
        assert np.array_equal(budgeted.histograms[t].counts, whole.histograms[t].counts), t
