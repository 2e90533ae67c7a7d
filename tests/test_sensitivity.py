from dataclasses import replace

import numpy as np

from ptqcli import api
from ptqcli.analysis.sensitivity import layerwise
from ptqcli.graph import prepare
from ptqcli.observe.dataset import batches, list_samples
from ptqcli.quantize import scale_table
from ptqcli.quantize.decide import CalibrationOptions


def test_layerwise_sensitivity_ranks_quantization_points(tmp_path, cnn_model, calib_dir):
    r = api.calibrate(cnn_model, data=calib_dir, output=tmp_path / "t.json",
                      options=CalibrationOptions(method="max"))
    prepared = prepare(cnn_model)
    table = scale_table.load(r.table_path)
    feeds = [b.feeds for b in batches(list_samples(calib_dir, limit=16), prepared.inputs)]
    everything, ranked = layerwise(prepared, table, feeds)
    assert 20 < everything.sqnr_db < 80
    assert all(a.sqnr_db <= b.sqnr_db for a, b in zip(ranked, ranked[1:]))
    # each single point costs less than all of them together
    assert ranked[0].sqnr_db >= everything.sqnr_db - 0.5
    roles = {s.role for s in ranked}
    assert roles == {"activation", "weight", "constant"} or roles == {"activation", "weight"}
    names = {s.tensor for s in ranked}
    assert "/pool/MaxPool_output_0" not in names  # a copy of a Concat-scale tensor, not its own decision

    # squeeze one tensor's range fifty-fold: it must come out as the most sensitive

    target = "/res_a/res_a.2/Relu_output_0"
    entry = table.tensors[target]
    squeezed = replace(entry, params=replace(entry.params, scale=(entry.params.scale[0] / 50,)))
    bad = replace(table, tensors={**table.tensors, target: squeezed})
    _, ranked_bad = layerwise(prepared, bad, feeds)
    assert ranked_bad[0].tensor == target
    assert ranked_bad[0].sqnr_db < ranked[0].sqnr_db
    assert np.isfinite(ranked_bad[0].cosine)
