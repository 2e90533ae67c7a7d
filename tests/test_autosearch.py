"""The auto-search's scoring session: every table it scores is scored as the exported model of
that table would compute, operands (biases, weights) included."""

from dataclasses import replace

import numpy as np
import pytest

from ptqcli import api, runtime
from ptqcli.analysis.metrics import Agreement
from ptqcli.export.qdq import export
from ptqcli.graph import prepare
from ptqcli.observe.dataset import batches, list_samples
from ptqcli.quantize import scale_table
from ptqcli.quantize.autosearch import Evaluator, spread
from ptqcli.quantize.stored import Stored, codes


@pytest.fixture(scope="module")
def table_path(tmp_path_factory, cnn_model, calib_dir):
    out = tmp_path_factory.mktemp("auto") / "t.json"
    api.calibrate(cnn_model, data=calib_dir, output=out, data_options=api.DataOptions(limit=40))
    return out


def _exported_sqnr_db(prepared, table, feeds) -> float:
    quantized = runtime.session(export(prepared, table))
    reference = runtime.session(prepared.model)
    total = Agreement()
    for feed in feeds:
        for r, q in zip(reference.run(None, feed), quantized.run(None, feed)):
            total = total.add(r, q)
    return total.sqnr_db


def test_a_table_whose_bias_differs_is_scored_with_its_own_bias(table_path, cnn_model, calib_dir):
    prepared = prepare(cnn_model)
    table = scale_table.load(table_path)
    bias = next(n for n, e in sorted(table.tensors.items()) if e.role == "bias" and "fc" in n)
    q = codes(table, bias, prepared.index.array(bias))
    step = round(0.5 / table.tensors[bias].params.scale[0])  # every logit moves by about 0.5
    shifted = replace(table, stored=Stored(codes={bias: (q + step).astype(np.int32)}))
    feeds = [b.feeds for b in batches(spread(list_samples(calib_dir), 16), prepared.inputs)]
    evaluator = Evaluator(prepared, [table, shifted], feeds)
    scored = {"table": evaluator.sqnr_db(table), "shifted": evaluator.sqnr_db(shifted)}
    measured = {"table": _exported_sqnr_db(prepared, table, feeds),
                "shifted": _exported_sqnr_db(prepared, shifted, feeds)}
    assert scored["shifted"] < scored["table"] - 3.0, scored
    for name in scored:
        assert abs(scored[name] - measured[name]) < 0.1, (scored, measured)
