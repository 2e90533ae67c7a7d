"""``--data-free``: activation ranges and bias correction from BatchNorm statistics, no data
(Nagel et al., 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction").

A BatchNormalization after a convolution says what its output looks like on the training data:
per channel, mean ``beta`` and standard deviation ``|gamma|``.  Preparation folds BatchNorm into
the convolution, so the statistics are read from the model file first (:func:`statistics`).

The rest of the model is reached by running it on *synthetic* tensors (:func:`synthetic_model`):
every BatchNorm output becomes a graph input fed with Gaussian values of its statistics; the model
inputs are fed uniform values over the range the user gives with ``--fixed-range`` (a data-free
run knows the preprocessing, not the data).  Half of each channel's variance is shared by all
positions of a sample (``SHARED``): real feature maps are spatially correlated, and a
GlobalAveragePool of independent values would collapse to the mean.  The Gaussian values are
stratified rather than drawn (normal quantiles at ``(i + 1/2) / n`` in a seeded random order,
across samples for the shared part and across positions for the rest), so that each channel's
mean is exactly its BatchNorm mean, and each channel holds the two values ``mean +- K_SIGMA *
std``.  The observation pass then runs on those tensors as on calibration data and the range
method picks each range: ``--method max`` gives ``mean +- 6 std`` over the channels of a
BatchNorm output, ``mse`` (the default) the cut of least error on its Gaussian histogram.

Bias correction is the paper's analytic one (section 4.2): the expected output error of a layer
is ``(W~ - W) E[x]``, with ``E[x]`` the mean input row on the synthetic tensors (for a BatchNorm +
Relu input, the clipped-normal mean of the paper's eq. 19, up to sampling), and ``b -= (W~ - W)
E[x]``.

What it cannot serve: a model without BatchNorm (Magika, the digits transformer): every range
would then come from the synthetic inputs through the whole network, which says nothing about
real activations; :func:`statistics` refuses it.  Models whose BatchNorms were folded before export
(most of PP-OCRv4 det and rec) keep few statistics, and their other tensors are as uninformed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from scipy.special import ndtri

from ptqcli import runtime
from ptqcli.errors import ModelError, OptionError
from ptqcli.graph import GraphIndex, InputSpec, Prepared, input_specs
from ptqcli.observe.dataset import Batch

#: Synthetic values reach at most this many standard deviations from the mean.
K_SIGMA = 6.0
#: Share of a channel's variance common to every position of one synthetic sample.
SHARED = 0.5
#: Synthetic samples, at most, and the most input values they may hold.
SAMPLES = 64
SAMPLE_VALUES = 1 << 22
BATCH = 8


@dataclass(frozen=True)
class Statistics:
    """Per BatchNorm output tensor: the per-channel mean and standard deviation it was trained to."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]


def statistics(path) -> Statistics:
    """The BatchNorm statistics of the model file at ``path`` (before any folding)."""
    model = onnx.load(str(path))
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    mean, std = {}, {}
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and node.input[1] in consts and node.input[2] in consts:
            std[node.output[0]] = np.abs(consts[node.input[1]].astype(np.float64)).reshape(-1)
            mean[node.output[0]] = consts[node.input[2]].astype(np.float64).reshape(-1)
    if not mean:
        raise ModelError(f"{path}: --data-free needs BatchNormalization statistics, and the model has none "
                         f"(no BatchNormalization with constant parameters)")
    return Statistics(mean, std)


def _shape(spec: InputSpec, samples: int, size: tuple[int, int] | None) -> tuple[int, ...]:
    dims = list(spec.shape)
    if not dims:
        return ()
    dims[0] = samples
    for i, d in enumerate(dims[1:], start=1):
        if not isinstance(d, int):
            if size is not None and len(dims) == 4 and i in (2, 3):
                dims[i] = size[i - 2]
            else:
                raise OptionError(f"--data-free: input {spec.name!r} has dimension {i} of unknown size "
                                  f"({d!r}); give --size HxW for the spatial size of an NCHW image")
    return tuple(int(d) for d in dims)


@dataclass(frozen=True)
class Synthetic:
    """The model with every BatchNorm output fed as an input, and how to make its feeds."""

    prepared: Prepared      # the modified model (fingerprint of the original)
    stats: Statistics       # restricted to the tensors of the model
    shapes: dict[str, tuple[int, ...]]   # per fed tensor, the shape of one sample
    ranges: dict[str, tuple[float, float]]
    samples: int
    seed: int

    def batches(self) -> Iterator[Batch]:
        """The synthetic samples, ``BATCH`` at a time, the same on every call."""
        shared = {}
        for i, name in enumerate(sorted(self.stats.mean)):  # [samples, C]: one value per sample and channel
            rng = np.random.default_rng([self.seed, 1, i])
            shared[name] = _quantiles(rng, self.samples, self.shapes[name][1])
        for start in range(0, self.samples, BATCH):
            n = min(BATCH, self.samples - start)
            rng = np.random.default_rng([self.seed, 0, start])
            feeds = {}
            for name, (lo, hi) in self.ranges.items():
                feeds[name] = rng.uniform(lo, hi, (n,) + self.shapes[name][1:]).astype(np.float32)
            for name in sorted(self.stats.mean):
                shape = (n,) + self.shapes[name][1:]
                positions = int(np.prod(shape[2:]))
                common = SHARED if positions > 1 else 1.0
                own = _quantiles(rng, positions, n * shape[1]).T.reshape(shape)
                z = np.sqrt(common) * shared[name][start:start + n].reshape(shape[:2] + (1,) * (len(shape) - 2)) \
                    + np.sqrt(1 - common) * own
                if start == 0:  # the stated extremes, mean +- K_SIGMA std, in every channel
                    flat = z.reshape(n, shape[1], -1)
                    flat[0, :, 0], flat[-1, :, -1] = K_SIGMA, -K_SIGMA
                channel = (1, -1) + (1,) * (len(shape) - 2)
                value = self.stats.mean[name].reshape(channel) + self.stats.std[name].reshape(channel) * z
                feeds[name] = value.astype(np.float32)
            yield Batch(feeds, (), n)


def _quantiles(rng: np.random.Generator, count: int, columns: int) -> np.ndarray:
    """``[count, columns]``: in each column the standard normal quantiles at ``(i + 1/2) / count``,
    in a random order (stratified sampling: the column's mean is exactly 0)."""
    q = ndtri((np.arange(count) + 0.5) / count)
    return q[rng.permuted(np.tile(np.arange(count)[:, None], (1, columns)), axis=0)]


def synthetic_model(prepared: Prepared, stats: Statistics, fixed_ranges: Sequence[tuple[str, float, float]],
                    size: tuple[int, int] | None, seed: int = 0) -> Synthetic:
    """``prepared`` with its BatchNorm outputs turned into inputs (module docstring).  Every model
    input needs a range in ``fixed_ranges``."""
    ranges = {}
    given = {name: (lo, hi) for name, lo, hi in fixed_ranges}
    for spec in prepared.inputs:
        if spec.name not in given:
            raise OptionError(f"--data-free: give the range of input {spec.name!r} with --fixed-range "
                              f"{spec.name}=LO:HI (what the preprocessing produces)")
        ranges[spec.name] = given[spec.name]
    index = prepared.index
    fed = sorted(t for t in stats.mean if t in index.producer and index.is_float(t))
    if not fed:
        raise ModelError(f"{prepared.source}: none of its BatchNormalization outputs survives preparation")
    per_sample = sum(int(np.prod(_shape(s, 1, size))) for s in prepared.inputs)
    samples = max(1, min(SAMPLES, SAMPLE_VALUES // max(per_sample, 1)))
    probe = {s.name: np.zeros(_shape(s, 1, size), dtype=np.float32) for s in prepared.inputs}
    model = onnx.ModelProto()
    model.CopyFrom(prepared.model)
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in fed if t not in have)
    shapes = dict(zip(fed, (a.shape for a in runtime.session(model).run(fed, probe))))
    shapes.update({s.name: _shape(s, 1, size) for s in prepared.inputs})
    fed_model = _feed_tensors(prepared.model, fed, shapes)
    modified = Prepared(fed_model, prepared.source, prepared.fingerprint, input_specs(fed_model), GraphIndex(fed_model))
    kept = Statistics({t: stats.mean[t] for t in fed}, {t: stats.std[t] for t in fed})
    return Synthetic(modified, kept, shapes, ranges, samples, seed)


def _feed_tensors(model: onnx.ModelProto, names: Sequence[str], shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy of ``model`` in which each tensor of ``names`` is a graph input; its producer
    writes an unused ``name::computed`` instead."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    wanted = set(names)
    for node in out.graph.node:
        for i, o in enumerate(node.output):
            if o in wanted:
                node.output[i] = o + "::computed"
    keep = [vi for vi in out.graph.value_info if vi.name not in wanted]
    del out.graph.value_info[:]
    out.graph.value_info.extend(keep)
    for name in names:
        out.graph.input.append(onnx.helper.make_tensor_value_info(
            name, onnx.TensorProto.FLOAT, ["N"] + list(shapes[name][1:])))
    return out


def mean_inputs(synthetic: Synthetic, views: Sequence) -> dict[str, tuple[np.ndarray, int]]:
    """Per layer view (``ptqcli.rounding.layers.LayerView``): the sum of its float input rows over
    every position of the synthetic samples, and their number."""
    graph_inputs = set(synthetic.prepared.index.input_names)
    exposed = sorted({v.input for v in views if v.input not in graph_inputs})
    model = onnx.ModelProto()
    model.CopyFrom(synthetic.prepared.model)
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in exposed if t not in have)
    session = runtime.session(model)
    sums: dict[str, tuple[np.ndarray, int]] = {}
    for batch in synthetic.batches():
        outs = dict(zip(exposed, session.run(exposed, batch.feeds))) if exposed else {}
        for v in views:
            x = batch.feeds[v.input] if v.input in graph_inputs else outs[v.input]
            s, n = v.mean_row(x)
            old = sums.get(v.anchor)
            sums[v.anchor] = (s, n) if old is None else (old[0] + s, old[1] + n)
    return sums


def rescaled(stats: Statistics, scales: dict[str, np.ndarray]) -> Statistics:
    """``stats`` after cross-layer equalization divided the channels of tensors by ``scales``."""
    mean = {t: m / scales[t] if t in scales else m for t, m in stats.mean.items()}
    std = {t: s / scales[t] if t in scales else s for t, s in stats.std.items()}
    return Statistics(mean, std)


def correct_biases(prepared: Prepared, table, synthetic: Synthetic):
    """``table`` with every bias shifted by its layer's expected output error ``(W~ - W) E[x]``
    (module docstring), ``E[x]`` from the synthetic tensors; and the number of biases corrected."""
    from dataclasses import replace

    from ptqcli.quantize.qparams import quantize_bias
    from ptqcli.quantize.stored import Stored, codes
    from ptqcli.rounding.layers import Unsupported, view

    index = prepared.index
    views = []
    for group in table.groups.values():
        if group.kind == "compute" and group.weight is not None and group.bias is not None:
            try:
                views.append(view(index, group))
            except Unsupported:
                continue
    sums = mean_inputs(synthetic, views)
    new = {}
    for v in views:
        w = index.array(v.weight)
        p = table.tensors[v.weight].params
        error = v.view(codes(table, v.weight, w)).astype(np.float64) * v.scale(p) - v.view(w).astype(np.float64)
        total, count = sums[v.anchor]
        delta = np.einsum("gok,gk->go", error, total / max(count, 1)).reshape(-1)
        b = index.array(v.bias)
        corrected = (b.reshape(-1) - delta).astype(np.float32).reshape(b.shape)
        new[v.bias] = quantize_bias(corrected, table.tensors[v.bias].params)
    stored = (table.stored or Stored()).merged(codes=new)
    return replace(table, stored=stored if stored else None), len(new)
