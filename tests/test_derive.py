import numpy as np
import onnxruntime as ort
from builders import conv_net, save

from ptqcli.graph import prepare
from ptqcli.observe import collect, probes
from ptqcli.observe.dataset import batches, list_samples
from ptqcli.observe.derive import derive
from ptqcli.quantize.plan import analyse
from ptqcli.quantize.scale_groups import observation_plan


def test_table_output_histogram_follows_from_its_input(tmp_path, rng):
    prepared = prepare(save(conv_net(rng), tmp_path / "m.onnx"))
    structure = analyse(prepared.index)
    observed, derived = observation_plan(prepared.index, structure)
    assert set(derived) == {"hs"} and "res" in observed and "hs" not in observed
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(20):
        np.save(folder / f"{i:03d}.npy", rng.normal(size=(1, 3, 8, 8)).astype(np.float32))
    files = list_samples(folder)
    obs = collect.observe(prepared, observed, batches(files, prepared.inputs))
    got = derive(prepared, obs, derived).histograms["hs"]
    exposed = probes.exposing(prepared, ["hs"]).SerializeToString()
    hs = np.concatenate([ort.InferenceSession(exposed).run(None, b.feeds)[0].ravel()
                         for b in batches(files, prepared.inputs)])
    assert got.total == hs.size
    span = hs.max() - hs.min()
    assert abs(got.maximum - hs.max()) <= 1e-3 * span and abs(got.minimum - hs.min()) <= 1e-2 * span
    cum = np.cumsum(got.counts) / got.total
    for q in (0.1, 0.5, 0.9, 0.99):  # the sparse far tail of 2,560 values says little
        derived_q = (got.offset + np.searchsorted(cum, q)) * got.width
        assert abs(derived_q - np.quantile(hs, q)) <= 0.01 * span
