"""The histogram subsample sees every channel: no aliasing with a channels-last layout.

A transformer-style tensor ``[N, T, C]`` may carry a "massive activation" channel (a large
constant offset on every token).  Observed with the outlier at each channel position in turn, for
inner sizes from 2 to 1,024 and first samples of several lengths (the stride is chosen on the
first sample; later samples are longer or shorter), the outlier channel must be counted with its
share of the histogram, and the range the default method picks must cover it.  A fixed stride
that shares a factor with C (3 with 120, 5 with 360) counts only some channels, forever.

Which values are counted depends on their positions only, never on the values, so one tensor
whose values are their own channel numbers shows at once how many values of each channel are
counted: what an outlier at that position would get.  The range check puts the outlier at every
position for real, one model input per position.
"""

from __future__ import annotations

import numpy as np
import pytest
from builders import float_input, make_model, save
from onnx import TensorProto, helper

from ptqcli.graph import prepare
from ptqcli.observe import collect
from ptqcli.observe.dataset import Batch
from ptqcli.quantize.decide import CalibrationOptions, build_table

#: Inner sizes from 2 to 1,024: every power of two, the issue's 120 and 360, 768 (a transformer
#: width), and sizes with many small factors (the strides a first sample could give).
CHANNELS = [2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 16, 21, 24, 30, 32, 48, 60, 64, 96, 100, 105, 120, 128,
            192, 210, 255, 256, 360, 384, 512, 640, 768, 1000, 1020, 1024]
OUTLIER = -10.0
SUBSAMPLE = 256
SAMPLES = 8


def _model(tmp_path, channels: int, inputs: int):
    """``inputs`` inputs ``[N, T, channels]``, each read by its own MatMul (so each is a quantized,
    observed activation with its own range)."""
    w = np.full((channels, 1), 1.0 / channels, np.float32)
    nodes = [helper.make_node("MatMul", [f"x{p}", "w"], [f"y{p}"], name=f"mm{p}") for p in range(inputs)]
    ins = [float_input(f"x{p}", ["N", "T", channels]) for p in range(inputs)]
    outs = [helper.make_tensor_value_info(f"y{p}", TensorProto.FLOAT, ["N", "T", 1]) for p in range(inputs)]
    return prepare(save(make_model(nodes, ins, outs, [("w", w)]), tmp_path / f"c{channels}x{inputs}.onnx"))


def _lengths(channels: int, first: int) -> list[int]:
    """Tokens per sample: the first sample's row is about ``first * 1.7`` subsamples long (strides
    of 2 to 7 before they are made prime), later samples are longer or shorter."""
    t0 = max(1, round(first * 1.7 * SUBSAMPLE / channels))
    return [t0] + [t0 + d for d in (1, 2, -1 if t0 > 1 else 3, 5, 0, 7, 4)][:SAMPLES - 1]


@pytest.mark.parametrize("first", [1, 2, 3])
def test_every_channel_gets_its_share(tmp_path, first):
    for channels in CHANNELS:
        prepared = _model(tmp_path, channels, 1)
        ids = np.arange(channels, dtype=np.float32)
        samples = [Batch({"x0": np.broadcast_to(ids, (1, t, channels)).copy()}, (), 1)
                   for t in _lengths(channels, first)]
        hist = collect.observe(prepared, ["x0"], iter(samples), subsample=SUBSAMPLE).histograms["x0"]
        counts = hist.counts[np.floor(ids / hist.width).astype(np.int64) - hist.offset]
        assert counts.sum() == hist.total < sum(t * channels for t in _lengths(channels, first))
        share = hist.total / channels
        never = np.flatnonzero(counts == 0)
        assert not never.size, f"C={channels}: channels {never[:8]}... never counted"
        assert counts.min() >= np.floor(share) and counts.max() <= np.ceil(share), (channels, share)


@pytest.mark.parametrize("channels,first", [(2, 3), (3, 1), (7, 2), (16, 1), (64, 3), (120, 1), (120, 3),
                                            (255, 2), (360, 1), (360, 2), (512, 3), (768, 1)])
def test_an_outlier_channel_at_every_position_is_covered(tmp_path, channels, first):
    rng = np.random.default_rng(channels + first)
    prepared = _model(tmp_path, channels, channels)
    samples = []
    for t in _lengths(channels, first):
        body = np.clip(rng.normal(size=(1, t, channels)), -4, 4).astype(np.float32)
        feeds = {}
        for p in range(channels):  # input x{p} carries the outlier on channel p
            feeds[f"x{p}"] = body.copy()
            feeds[f"x{p}"][..., p] = OUTLIER
        samples.append(Batch(feeds, (), 1))
    names = [f"x{p}" for p in range(channels)]
    obs = collect.observe(prepared, names, iter(samples), subsample=SUBSAMPLE)
    table = build_table(prepared, obs, CalibrationOptions())
    for p, name in enumerate(names):
        hist = obs.histograms[name]
        counted = int(hist.counts[:int(np.floor(-5.0 / hist.width)) - hist.offset].sum())  # below -5
        assert counted >= np.floor(hist.total / channels) > 0, (p, counted)
        lo, hi = table.tensors[name].range
        assert lo <= OUTLIER + (hi - lo) / 255, (p, lo, hi)  # within one step of the outlier
